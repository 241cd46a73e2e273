//! The steps every owner's change of a workspace's governance takes (`updateWorkspacePolicy`,
//! `updateSecuritySettings`, `updateQuotas`, `applyTemplate`), in one place so that they take
//! them alike:
//!
//! 1. [`run`]: the mutation runs idempotently in one transaction, then the workspace's cached
//!    settings are forgotten, so that this process enforces the change at once;
//! 2. [`lock_as_owner`]: in the transaction, the actor must own the workspace, whose row is
//!    locked first (the order every writer of its settings, quotas and retention takes);
//! 3. [`hold_security_change`]: a change that touches security is held for a second person
//!    when the workspace lists `CHANGE_SECURITY_SETTINGS`;
//! 4. [`stored_input`]: an approved change reads back the input the requester sent.

use diesel_async::AsyncPgConnection;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::approvals::{self, ApprovalAction, ApprovalRow, Held};
use crate::db::repo::governance::{self as settings_repo, SettingsRow};
use crate::domain::mutation::{self, Completion, Effect};
use crate::domain::workspaces::require_role;
use crate::domain::{Actor, DomainError, DomainResult, Role, Services};
use crate::ids::WorkspaceId;

/// Runs `operation` as [`mutation::run`] does, then forgets the cached settings of `ws` (also
/// when the change was held or replayed: forgetting is cheap and always safe).
pub(crate) async fn run<T, I, F>(
    services: &Services,
    actor: &Actor,
    operation: &'static str,
    ws: WorkspaceId,
    key: Option<&mutation::Key>,
    input: &I,
    effect: F,
) -> DomainResult<mutation::Done<T>>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    I: Serialize + ?Sized,
    F: for<'c> Fn(&'c mut AsyncPgConnection, &'c Completion) -> Effect<'c, T> + Send + Sync,
{
    let done = mutation::run(services, actor, operation, key, input, effect).await?;
    services.governance.forget(ws.0);
    Ok(done)
}

/// Refuses an actor who is not an owner of `ws` (`what` names the change in the refusal), then
/// locks the workspace's row: the first lock of every change to its settings, quotas and
/// retention.
pub(crate) async fn lock_as_owner(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    ws: WorkspaceId,
    what: &'static str,
) -> DomainResult<()> {
    require_role(conn, actor, ws, |r| r == Role::Owner, what).await?;
    crate::db::repo::workspaces::lock(conn, ws.0)
        .await?
        .ok_or(DomainError::NotFound("workspace"))?;
    Ok(())
}

/// The settings of `ws` locked for a change (after [`lock_as_owner`]); the defaults when the
/// workspace has no row yet.
pub(crate) async fn settings_for_update(
    conn: &mut AsyncPgConnection,
    ws: WorkspaceId,
) -> DomainResult<SettingsRow> {
    Ok(settings_repo::settings_for_update(conn, ws.0)
        .await?
        .unwrap_or_else(|| SettingsRow::defaults(ws.0)))
}

/// Holds `operation` on the workspace `ws` (with its validated `input`) for approval when the
/// workspace lists `CHANGE_SECURITY_SETTINGS`: the request, or `None` to go on.
pub(crate) async fn hold_security_change<I: Serialize>(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    ws: WorkspaceId,
    operation: &'static str,
    input: &I,
) -> DomainResult<Option<ApprovalRow>> {
    approvals::hold_if_required(
        conn,
        actor,
        Held {
            workspace: ws,
            action: ApprovalAction::ChangeSecuritySettings,
            operation,
            input,
            target_type: "Workspace",
            target_id: ws.encode(),
        },
    )
    .await
}

/// The input `request` stored when it was held, read back as `T`; `workspace_of` names the
/// workspace it acts in, which must be the request's.
pub(crate) fn stored_input<T: DeserializeOwned>(
    request: &ApprovalRow,
    workspace_of: impl FnOnce(&T) -> WorkspaceId,
) -> DomainResult<T> {
    let input: T = serde_json::from_value(request.input.clone()).map_err(|e| {
        DomainError::internal(anyhow::anyhow!(
            "approval request {} holds an unreadable input: {e}",
            request.id
        ))
    })?;
    if workspace_of(&input).0 != request.workspace_id {
        return Err(DomainError::internal(anyhow::anyhow!(
            "approval request {} names another workspace",
            request.id
        )));
    }
    Ok(input)
}
