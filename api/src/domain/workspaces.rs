//! Workspaces: create, rename, delete, read.

use chrono::Utc;
use diesel_async::AsyncPgConnection;
use serde_json::json;

use super::audit::{self, Change};
use super::mutation::{self, Effect};
use super::{Actor, BillingMode, DomainError, DomainResult, Role, Services, check_name};
use crate::db::models::WorkspaceRow;
use crate::db::repo::{Page, members, workspaces};
use crate::ids::WorkspaceId;

/// Maximum length of a workspace name.
pub const NAME_MAX: usize = 50;
/// Maximum length of a workspace description.
pub const DESCRIPTION_MAX: usize = 200;

/// Input of `create`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewWorkspace {
    /// Name, 1–50 characters.
    pub name: String,
    /// Description, up to 200 characters.
    pub description: Option<String>,
    /// Billing mode, fixed forever.
    pub billing_mode: BillingMode,
}

fn check_description(d: Option<&str>) -> DomainResult<Option<String>> {
    match d.map(str::trim) {
        None | Some("") => Ok(None),
        Some(d) if d.chars().count() > DESCRIPTION_MAX => Err(DomainError::bad_input(
            "description",
            format!("description must be at most {DESCRIPTION_MAX} characters"),
        )),
        Some(d) => Ok(Some(d.to_string())),
    }
}

/// Checks that `actor` is a member of the live workspace `ws` with a role `allowed` accepts.
/// A workspace the actor does not belong to is reported exactly like a missing one.
pub(crate) async fn require_role(
    conn: &mut diesel_async::AsyncPgConnection,
    actor: &Actor,
    ws: WorkspaceId,
    allowed: impl Fn(Role) -> bool,
    what: &str,
) -> DomainResult<Role> {
    let role = members::role_of(conn, ws.0, actor.user_id.0)
        .await?
        .and_then(|r| Role::parse(&r));
    let Some(role) = role else {
        return Err(DomainError::NotFound("workspace"));
    };
    actor.admit(ws.0).await?;
    match role {
        r if allowed(r) => Ok(r),
        r => Err(DomainError::Forbidden(format!(
            "your role {} may not {what}",
            r.as_str()
        ))),
    }
}

/// Creates a workspace; the creator becomes its owner.
pub async fn create(
    services: &Services,
    actor: &Actor,
    input: NewWorkspace,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<WorkspaceRow>> {
    actor.gate.person_only("create workspaces")?;
    let name = check_name("name", &input.name, NAME_MAX)?;
    let description = check_description(input.description.as_deref())?;
    let mode = input.billing_mode;
    mutation::run(
        services,
        actor,
        "createWorkspace",
        key,
        &input,
        |c, _| -> Effect<'_, _> {
            Box::pin(create_effect(
                c,
                name.clone(),
                description.clone(),
                actor.clone(),
                mode,
            ))
        },
    )
    .await
}

/// The effect of `createWorkspace`, in the mutation's transaction.
async fn create_effect(
    conn: &mut AsyncPgConnection,
    name: String,
    description: Option<String>,
    actor: Actor,
    mode: BillingMode,
) -> DomainResult<WorkspaceRow> {
    let id = WorkspaceId::new();
    let ws = workspaces::insert(
        conn,
        id.0,
        &name,
        description.as_deref(),
        mode.as_str(),
        actor.user_id.0,
    )
    .await?;
    crate::db::repo::resources::insert_built_ins(conn, id.0).await?;
    let owner = members::insert(conn, id.0, actor.user_id.0, Role::Owner.as_str(), None).await?;
    audit::record(conn, Change {
        workspace: id,
        action: "workspace.create",
        target_type: "Workspace",
        target_id: id.encode(),
        summary: json!({"name": name, "description": description, "billingMode": mode.as_str(), "ownerMemberId": crate::ids::MemberId(owner.id).encode()}),
        actor: &actor,
    })
    .await?;
    Ok(ws)
}

/// Input of `update`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkspaceUpdate {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// New name.
    pub name: Option<String>,
    /// New description; `Some(None)` clears it.
    pub description: Option<Option<String>>,
}

/// Renames a workspace and/or changes its description (owners and admins). The billing
/// mode cannot be changed.
pub async fn update(
    services: &Services,
    actor: &Actor,
    input: WorkspaceUpdate,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<WorkspaceRow>> {
    let name = input
        .name
        .as_deref()
        .map(|n| check_name("name", n, NAME_MAX))
        .transpose()?;
    let description = match &input.description {
        None => None,
        Some(d) => Some(check_description(d.as_deref())?),
    };
    let ws = input.workspace_id;
    mutation::run(
        services,
        actor,
        "updateWorkspace",
        key,
        &input,
        |c, _| -> Effect<'_, _> {
            Box::pin(update_effect(
                c,
                name.clone(),
                description.clone(),
                actor.clone(),
                ws,
            ))
        },
    )
    .await
}

/// The effect of `updateWorkspace`, in the mutation's transaction.
async fn update_effect(
    conn: &mut AsyncPgConnection,
    name: Option<String>,
    description: Option<Option<String>>,
    actor: Actor,
    ws: WorkspaceId,
) -> DomainResult<WorkspaceRow> {
    require_role(
        conn,
        &actor,
        ws,
        Role::is_manager,
        "change workspace settings",
    )
    .await?;
    let before = workspaces::lock(conn, ws.0)
        .await?
        .ok_or(DomainError::NotFound("workspace"))?;
    let changes = workspaces::WorkspaceChanges {
        name: name.as_deref(),
        description: description.as_ref().map(|d| d.as_deref()),
        updated_at: Utc::now(),
    };
    let after = workspaces::update(conn, ws.0, &changes).await?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "workspace.update",
            target_type: "Workspace",
            target_id: ws.encode(),
            summary: json!({
                "before": {"name": before.name, "description": before.description},
                "after": {"name": after.name, "description": after.description},
            }),
            actor: &actor,
        },
    )
    .await?;
    Ok(after)
}

/// Deletes a workspace (owners only). Its data stays for the audit trail but is invisible.
pub async fn delete(
    services: &Services,
    actor: &Actor,
    ws: WorkspaceId,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<WorkspaceId>> {
    mutation::run(
        services,
        actor,
        "deleteWorkspace",
        key,
        &ws,
        |conn, _| -> Effect<'_, WorkspaceId> { Box::pin(delete_effect(conn, actor.clone(), ws)) },
    )
    .await
}

/// The effect of `deleteWorkspace`, in the mutation's transaction.
async fn delete_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    ws: WorkspaceId,
) -> DomainResult<WorkspaceId> {
    require_role(
        conn,
        &actor,
        ws,
        |r| r == Role::Owner,
        "delete the workspace",
    )
    .await?;
    let before = workspaces::lock(conn, ws.0)
        .await?
        .ok_or(DomainError::NotFound("workspace"))?;
    workspaces::soft_delete(conn, ws.0).await?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "workspace.delete",
            target_type: "Workspace",
            target_id: ws.encode(),
            summary: json!({"name": before.name}),
            actor: &actor,
        },
    )
    .await?;
    Ok(ws)
}

/// The workspaces among `ids` the actor belongs to, with the actor's role (DataLoader).
pub async fn load_visible(
    services: &Services,
    actor: &Actor,
    ids: &[uuid::Uuid],
) -> DomainResult<Vec<(WorkspaceRow, Role)>> {
    let mut conn = services.conn().await?;
    Ok(workspaces::with_roles(&mut conn, actor.user_id.0, ids)
        .await?
        .into_iter()
        .filter_map(|(w, r)| Role::parse(&r).map(|r| (w, r)))
        .collect())
}

/// One page of the actor's workspaces, with the actor's role in each.
pub async fn page_for(
    services: &Services,
    actor: &Actor,
    page: Page,
) -> DomainResult<Vec<(WorkspaceRow, Role)>> {
    let mut conn = services.conn().await?;
    let rows = workspaces::page_for_user(&mut conn, actor.user_id.0, page).await?;
    drop(conn);
    // A workspace whose policies refuse this request is left out (asking for it by id
    // gives the reason).
    let mut out = Vec::with_capacity(rows.len());
    for (w, r) in rows {
        if let Some(r) = Role::parse(&r)
            && actor.gate.lists(w.id).await?
        {
            out.push((w, r));
        }
    }
    Ok(out)
}
