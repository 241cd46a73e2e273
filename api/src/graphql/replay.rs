//! Idempotent mutations at the GraphQL layer: a key carries the fingerprint of the
//! selection it was sent with, and a mutation's payload is [`Replayable`], which stores the
//! first response's rendering of the mutation field and sends it back on a replay (see
//! `domain::mutation`).

use std::borrow::Cow;
use std::fmt::Write as _;

use async_graphql::parser::types::{Field, Selection, SelectionSet};
use async_graphql::{
    Context, ContextSelectionSet, OutputType, Positioned, ServerError, ServerResult, Value,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{RequestCtx, error, json};
use crate::domain::DomainError;
use crate::domain::mutation::{self, Done, Keyed};

/// The idempotency key of the current mutation field, fingerprinting its selection: the
/// fields (fragments inlined, with their type conditions), their aliases and their
/// arguments with variables substituted. The expanded selection is bounded by
/// `GRAPHQL_MAX_FIELDS`, checked before execution.
fn key(ctx: &Context<'_>, key: Option<String>) -> Option<mutation::Key> {
    let key = key?;
    let mut canonical = String::new();
    selection(ctx, &ctx.item.node.selection_set.node, &mut canonical, 0);
    Some(mutation::Key {
        key,
        selection: hex::encode(Sha256::digest(canonical.as_bytes())),
    })
}

fn selection(ctx: &Context<'_>, set: &SelectionSet, out: &mut String, depth: usize) {
    if depth > super::limits::MAX_TEXT_NESTING {
        return;
    }
    out.push('{');
    for item in &set.items {
        match &item.node {
            Selection::Field(f) => {
                let f = &f.node;
                let _ = write!(out, "{}:{}", f.response_key().node, f.name.node);
                if !f.arguments.is_empty() {
                    out.push('(');
                    for (name, value) in &f.arguments {
                        let value = value.node.clone().into_const_with(|v| {
                            ctx.query_env.variables.get(&v).cloned().ok_or(())
                        });
                        let value = value.map(|v| v.to_string()).unwrap_or_default();
                        let _ = write!(out, "{}:{value},", name.node);
                    }
                    out.push(')');
                }
                if !f.selection_set.node.items.is_empty() {
                    selection(ctx, &f.selection_set.node, out, depth + 1);
                }
            }
            Selection::InlineFragment(i) => {
                let on = i
                    .node
                    .type_condition
                    .as_ref()
                    .map(|c| c.node.on.node.as_str());
                let _ = write!(out, "...on {}", on.unwrap_or_default());
                selection(ctx, &i.node.selection_set.node, out, depth + 1);
            }
            Selection::FragmentSpread(s) => {
                if let Some(def) = ctx.query_env.fragments.get(&s.node.fragment_name.node) {
                    let _ = write!(out, "...on {}", def.node.type_condition.node.on.node);
                    selection(ctx, &def.node.selection_set.node, out, depth + 1);
                }
            }
        }
        out.push(',');
    }
    out.push('}');
}

/// A mutation's payload: resolved and stored under the idempotency key the first time,
/// sent back as stored on a replay. The same GraphQL type as `P`.
pub enum Replayable<P> {
    /// This request did the effect: resolve the payload, then settle its rendering under
    /// the key (when one was sent).
    Fresh {
        /// The payload.
        payload: P,
        /// Caller and key to store the rendering under.
        settle: Option<(Uuid, String)>,
    },
    /// A replay of a stored rendering: the first response's JSON text.
    Stored(String),
    /// A replay without a stored rendering: resolved afresh, as a fresh read would be,
    /// which requires that the caller can still see the payload's workspace.
    Afresh {
        /// The payload built from the first request's result.
        payload: P,
        /// The workspace the payload belongs to, when it shows anything the input did not.
        workspace: Option<Uuid>,
    },
}

/// The one path of every mutation resolver once it has decoded its input: the domain call
/// under the field's idempotency key (its selection fingerprinted), domain errors mapped
/// (and internal ones logged), and the payload made [`Replayable`].
pub async fn mutate<T, P>(
    ctx: &Context<'_>,
    idempotency_key: Option<String>,
    call: impl AsyncFnOnce(
        &crate::domain::Services,
        &crate::domain::Actor,
        Option<&mutation::Key>,
    ) -> crate::domain::DomainResult<Done<T>>,
    workspace: impl Fn(&T) -> Option<Uuid>,
    payload: impl FnOnce(T) -> P,
) -> async_graphql::Result<Replayable<P>> {
    let rc = ctx.data_unchecked::<RequestCtx>();
    let key = key(ctx, idempotency_key);
    let done = call(&rc.services, &rc.actor, key.as_ref())
        .await
        .map_err(|e| rc.err(e))?;
    // A replay shows the workspace's data again: only to a current member, and its policies
    // decide as for a fresh read (the first request passed them, this one may not: MFA
    // turned on, another address…). Anyone else is answered as a fresh request of theirs
    // would be (the workspace is missing to them): nothing charged, no policy revealed.
    if matches!(done.keyed, Keyed::Replay { .. })
        && let Some(ws) = workspace(&done.value)
    {
        let member = rc
            .loaders
            .access
            .load_one(ws)
            .await
            .map_err(|e| rc.err(e))?;
        if member.is_none() {
            return Err(error::not_found("workspace"));
        }
        rc.actor.admit(ws).await.map_err(|e| rc.err(e))?;
    }
    Ok(replayable(done, workspace, payload))
}

/// The payload of a mutation's outcome. `workspace` names the workspace whose data the
/// payload shows (`None` when it shows only ids the input held, as deletions do).
fn replayable<T, P>(
    done: Done<T>,
    workspace: impl FnOnce(&T) -> Option<Uuid>,
    payload: impl FnOnce(T) -> P,
) -> Replayable<P> {
    match done.keyed {
        Keyed::None => Replayable::Fresh {
            payload: payload(done.value),
            settle: None,
        },
        Keyed::First { caller, key } => Replayable::Fresh {
            payload: payload(done.value),
            settle: Some((caller, key)),
        },
        Keyed::Replay {
            rendered: Some(text),
        } => Replayable::Stored(text),
        Keyed::Replay { rendered: None } => Replayable::Afresh {
            workspace: workspace(&done.value),
            payload: payload(done.value),
        },
    }
}

impl<P: OutputType + Sync> OutputType for Replayable<P> {
    fn type_name() -> Cow<'static, str> {
        P::type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        P::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        let rc = ctx.data_unchecked::<RequestCtx>();
        let fail = |e: DomainError| {
            let e: async_graphql::Error = rc.err(e);
            e.into_server_error(field.pos)
        };
        match self {
            Replayable::Stored(text) => {
                json::into_value(super::one_step::raw_json(ctx), text.clone()).ok_or_else(|| {
                    fail(DomainError::internal(anyhow::anyhow!(
                        "stored rendering is not JSON"
                    )))
                })
            }
            Replayable::Afresh { payload, workspace } => {
                if let Some(ws) = workspace {
                    let visible = rc.loaders.access.load_one(*ws).await.map_err(fail)?;
                    if visible.is_none() {
                        return Err(error::not_found("workspace").into_server_error(field.pos));
                    }
                    rc.actor.admit(*ws).await.map_err(fail)?;
                }
                payload.resolve(ctx, field).await
            }
            Replayable::Fresh { payload, settle } => {
                let value = payload.resolve(ctx, field).await?;
                let Some((caller, key)) = settle else {
                    return Ok(value);
                };
                // Stored in the order the response will have (the field's own hook orders it
                // only after this returns).
                let value = rc.shape.order_object(
                    &ctx.schema_env.registry,
                    &field.node.selection_set.node,
                    &P::type_name(),
                    value,
                );
                // A response holding errors is not replayed as is: a repeat resolves afresh.
                let text = (!rc.shape.errors_under(ctx.path_node.as_ref()))
                    .then(|| json::to_text(value.clone()));
                if let Err(e) =
                    mutation::settle_rendering(&rc.services, *caller, key, text.as_deref()).await
                {
                    // The effect stands; a repeat resolves the payload afresh.
                    let e: ServerError = fail(e);
                    tracing::warn!(request.id = %rc.actor.request_id, error = %e.message, "storing a mutation's rendering failed");
                }
                Ok(value)
            }
        }
    }
}

/// For a mutation whose response holds a secret: its rendering is never stored under the
/// idempotency key (settled as "none", so a repeat resolves the payload afresh from the stored
/// result, which never holds the secret either).
pub async fn never_stored<P>(
    ctx: &Context<'_>,
    out: Replayable<P>,
    operation: &str,
) -> Replayable<P> {
    match out {
        Replayable::Fresh {
            payload,
            settle: Some((caller, key)),
        } => {
            let rc = ctx.data_unchecked::<RequestCtx>();
            if let Err(e) = mutation::settle_rendering(&rc.services, caller, &key, None).await {
                // A repeat then waits for the rendering a while, and resolves afresh.
                let e = rc.err(e);
                tracing::warn!(request.id = %rc.actor.request_id, error = %e.message, operation, "settling a rendering failed");
            }
            Replayable::Fresh {
                payload,
                settle: None,
            }
        }
        other => other,
    }
}
