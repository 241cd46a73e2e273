//! The GraphQL schema: one module per domain concept; resolvers read arguments, call one
//! domain function and shape the result.

pub mod analytics;
pub mod api_keys;
pub mod api_usage;
pub mod approvals;
pub mod archives;
pub mod audit;
pub mod billing;
pub mod documents;
pub mod error;
pub mod gdpr;
pub mod governance;
pub mod integrations;
pub mod invitations;
pub mod jobs;
pub mod json;
pub mod limits;
pub mod loaders;
pub mod members;
pub mod node;
pub mod notifications;
pub mod one_step;
pub mod organizations;
pub mod pagination;
pub mod quotas;
pub mod replay;
pub mod resources;
pub mod retention;
pub mod shape;
pub mod templates;
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
    jobs::JobQuery,
    gdpr::GdprQuery,
    archives::ArchiveQuery,
    approvals::ApprovalQuery,
    templates::TemplateQuery,
);

/// The mutation root.
#[derive(MergedObject, Default)]
pub struct Mutation(
    workspaces::WorkspaceMutation,
    members::MemberMutation,
    invitations::InvitationMutation,
    organizations::OrganizationMutation,
    resources::ResourceMutation,
    billing::BillingMutation,
    jobs::JobMutation,
    analytics::AnalyticsMutation,
    retention::RetentionMutation,
    gdpr::GdprMutation,
    integrations::IntegrationMutation,
    archives::ArchiveMutation,
    approvals::ApprovalMutation,
    governance::GovernanceSettingsMutation,
    api_keys::ApiKeyMutation,
    quotas::QuotaMutation,
    templates::TemplateMutation,
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
    /// Order, nulls and errors of the response (see `shape`).
    pub shape: std::sync::Arc<shape::Shape>,
    /// Workspaces whose billing reads this request already audited.
    pub audited_reads: crate::domain::governance::settings::AuditedReads,
    /// Field results resolved once for the whole operation (`RequestCtx::once`).
    memo: Memo,
}

/// Results of fields by key, each resolved once (`RequestCtx::once`).
type Memo = std::sync::Mutex<
    std::collections::HashMap<
        (std::any::TypeId, String),
        std::sync::Arc<dyn std::any::Any + Send + Sync>,
    >,
>;

impl RequestCtx {
    /// Builds the per-request data.
    pub fn new(services: Services, actor: Actor, shape: std::sync::Arc<shape::Shape>) -> Self {
        let loaders = Loaders::new(&services, &actor);
        Self {
            services,
            actor,
            loaders,
            shape,
            audited_reads: Default::default(),
            memo: Default::default(),
        }
    }

    /// Resolves `f` once per operation for `key` (the field, its parent object and its
    /// arguments): every alias of the field, and every repeat of its parent, shares the one
    /// result, errors included, so aliases never multiply the database's work. Concurrent
    /// callers wait for the first.
    pub async fn once<T: Send + Sync + 'static>(
        &self,
        key: String,
        f: impl std::future::Future<Output = async_graphql::Result<T>>,
    ) -> async_graphql::Result<std::sync::Arc<T>> {
        type Cell<T> = tokio::sync::OnceCell<async_graphql::Result<std::sync::Arc<T>>>;
        let cell = {
            let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
            memo.entry((std::any::TypeId::of::<T>(), key))
                .or_insert_with(|| std::sync::Arc::new(Cell::<T>::new()))
                .clone()
        };
        let cell = cell
            .downcast::<Cell<T>>()
            .map_err(|_| async_graphql::Error::new("memo keyed by another type"))?;
        cell.get_or_init(|| async { f.await.map(std::sync::Arc::new) })
            .await
            .clone()
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
        .extension(shape::ShapeExtension)
        .data(crate::domain::downloads::LinkSettings {
            ttl: config.download_link_ttl,
        });
    if !config.introspection {
        b = b.disable_introspection();
    }
    if config.production {
        b = b.disable_suggestions();
    }
    if let Err(e) = one_step::check_all() {
        panic!("a one-step declaration does not match the schema: {e}");
    }
    b.finish()
}

/// The SDL (what `api print-schema` prints and `schema.graphql` holds).
pub fn sdl() -> String {
    builder().finish().sdl()
}
