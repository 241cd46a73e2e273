//! Resources: what organizations allocate (seats, locations) or consume (API calls).

use diesel_async::AsyncPgConnection;
use serde_json::json;

use super::audit::{self, Change};
use super::mutation::{self, Effect};
use super::usage::check_resource_key;
use super::workspaces::require_role;
use super::{Actor, DomainError, DomainResult, Role, Services, check_name};
use crate::db::models::ResourceRow;
use crate::db::repo::resources;
use crate::ids::WorkspaceId;

pub use crate::db::models::{ResetPeriod, ResourceKind as Kind};

/// Input of `define`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewResource {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Key, e.g. `api_calls`.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Unit, e.g. `calls`.
    pub unit: String,
    /// Allocated or metered.
    pub kind: Kind,
    /// Reset period (metered only).
    pub reset_period: Option<ResetPeriod>,
}

/// Defines a custom resource (owners and admins).
pub async fn define(
    services: &Services,
    actor: &Actor,
    input: NewResource,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<ResourceRow>> {
    check_resource_key(&input.key).map_err(|_| {
        DomainError::bad_input(
            "key",
            "key must be lower-case letters, digits and _, start with a letter, at most 40",
        )
    })?;
    let name = check_name("name", &input.name, 50)?;
    let unit = check_name("unit", &input.unit, 30)?;
    let (kind, reset) = match (input.kind, input.reset_period) {
        (Kind::Allocated, None) => (Kind::Allocated, None),
        (Kind::Metered, Some(period)) => (Kind::Metered, Some(period)),
        (Kind::Allocated, Some(_)) => {
            return Err(DomainError::bad_input(
                "resetPeriod",
                "allocated resources do not reset: leave resetPeriod out",
            ));
        }
        (Kind::Metered, None) => {
            return Err(DomainError::bad_input(
                "resetPeriod",
                "metered resources need a resetPeriod (DAY or MONTH)",
            ));
        }
    };
    let valid = NewResource {
        name,
        unit,
        kind,
        reset_period: reset,
        ..input.clone()
    };
    mutation::run(
        services,
        actor,
        "defineResource",
        key,
        &input,
        |c, _| -> Effect<'_, _> { Box::pin(define_effect(c, valid.clone(), actor.clone())) },
    )
    .await
}

/// The effect of `defineResource`, in the mutation's transaction.
async fn define_effect(
    conn: &mut AsyncPgConnection,
    input: NewResource,
    actor: Actor,
) -> DomainResult<ResourceRow> {
    let NewResource {
        workspace_id: ws,
        name,
        unit,
        kind,
        reset_period: reset,
        ..
    } = &input;
    let (ws, kind, reset) = (*ws, *kind, *reset);
    require_role(conn, &actor, ws, Role::is_manager, "define resources").await?;
    let row = resources::insert(conn, ws.0, &input.key, name, unit, kind, reset)
        .await?
        .ok_or_else(|| {
            DomainError::Conflict(format!(
                "this workspace already has a resource `{}`",
                input.key
            ))
        })?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "resource.define",
            target_type: "Resource",
            target_id: input.key.clone(),
            summary: json!({"key": input.key, "name": name, "unit": unit, "kind": kind, "resetPeriod": reset}),
            actor: &actor,
        },
    )
    .await?;
    Ok(row)
}

/// Resources of several workspaces (the caller checks membership).
pub async fn load_many(services: &Services, ws: &[uuid::Uuid]) -> DomainResult<Vec<ResourceRow>> {
    let conn = services.conn().await?;
    Ok(resources::for_workspaces(&conn, ws).await?)
}
