//! The GraphQL schema: one module per domain concept; resolvers read arguments, call one
//! domain function and shape the result.

pub mod audit;
pub mod documents;
pub mod error;
pub mod json;
pub mod limits;
pub mod loaders;
pub mod members;
pub mod node;
pub mod organizations;
pub mod pagination;
pub mod replay;
pub mod resources;
pub mod shape;
pub mod users;
pub mod workspaces;

use async_graphql::{Context, EmptySubscription, MergedObject, Schema, SchemaBuilder};

use crate::config::Config;
use crate::domain::{Actor, DomainError, Services};
use loaders::Loaders;

/// The query root.
#[derive(MergedObject, Default)]
pub struct Query(
    users::UserQuery,
    workspaces::WorkspaceQuery,
    organizations::OrganizationQuery,
    node::NodeQuery,
);

/// The mutation root.
#[derive(MergedObject, Default)]
pub struct Mutation(
    workspaces::WorkspaceMutation,
    members::MemberMutation,
    organizations::OrganizationMutation,
    resources::ResourceMutation,
);

/// The executable schema.
pub type AppSchema = Schema<Query, Mutation, EmptySubscription>;

/// Per-request data every resolver reads.
pub struct RequestCtx {
    /// Domain services.
    pub services: Services,
    /// The caller.
    pub actor: Actor,
    /// Batching loaders of this request.
    pub loaders: Loaders,
    /// Whether one-step selections may hand their JSON text to the engine as is (the
    /// document cannot merge values; see `json`).
    pub raw_json: bool,
    /// Order, nulls and errors of the response (see `shape`).
    pub shape: std::sync::Arc<shape::Shape>,
    /// Whether selections of plain fields may be answered in one step (`GRAPHQL_ONE_STEP`).
    pub one_step: bool,
    /// How the one-step attempts of this request went.
    pub one_step_outcomes: std::sync::Arc<OneStepOutcomes>,
}

/// Counts of one-step attempts: answered, or handed to the general resolver.
#[derive(Default)]
pub struct OneStepOutcomes {
    /// Answered in one step.
    pub answered: std::sync::atomic::AtomicU64,
    /// Handed to the general resolver.
    pub fallback: std::sync::atomic::AtomicU64,
}

impl OneStepOutcomes {
    /// Counts one attempt.
    pub fn record(&self, answered: bool) {
        let counter = if answered {
            &self.answered
        } else {
            &self.fallback
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl RequestCtx {
    /// Builds the per-request data.
    pub fn new(services: Services, actor: Actor, shape: std::sync::Arc<shape::Shape>) -> Self {
        let loaders = Loaders::new(&services, &actor);
        Self {
            services,
            actor,
            loaders,
            raw_json: false,
            shape,
            one_step: true,
            one_step_outcomes: Default::default(),
        }
    }

    /// Maps a domain error (logging internal ones with the request id).
    pub fn err(&self, e: DomainError) -> async_graphql::Error {
        error::to_graphql(e, &self.actor.request_id)
    }
}

/// The request data of the current operation.
pub fn rc<'a>(ctx: &Context<'a>) -> &'a RequestCtx {
    ctx.data_unchecked::<RequestCtx>()
}

fn builder() -> SchemaBuilder<Query, Mutation, EmptySubscription> {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
}

/// The schema with the limits from `config`.
pub fn schema(config: &Config) -> AppSchema {
    let mut b = builder()
        .limit_depth(config.max_query_depth)
        .limit_complexity(config.max_query_complexity)
        .limit_recursive_depth(64)
        .limit_directives(16)
        .extension(shape::ShapeExtension);
    if !config.introspection {
        b = b.disable_introspection();
    }
    if config.production {
        b = b.disable_suggestions();
    }
    b.finish()
}

/// The SDL (what `api print-schema` prints and `schema.graphql` holds).
pub fn sdl() -> String {
    builder().finish().sdl()
}
