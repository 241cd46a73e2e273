//! The audit trail: one event per successful mutation, in the mutation's transaction.

use chrono::Utc;
use diesel_async::AsyncPgConnection;

use super::{Actor, DomainResult, Services};
use crate::db::models::AuditEventRow;
use crate::db::repo::{Page, audit};
use crate::ids::{AuditEventId, WorkspaceId};

/// What changed, for the audit event.
pub struct Change<'a> {
    /// Workspace it happened in.
    pub workspace: WorkspaceId,
    /// Dotted action name, e.g. `member.add`.
    pub action: &'static str,
    /// Kind of the changed object, e.g. `Member`.
    pub target_type: &'static str,
    /// External id of the changed object.
    pub target_id: String,
    /// A summary of the change (before/after values).
    pub summary: serde_json::Value,
    /// Who did it.
    pub actor: &'a Actor,
}

/// Appends the event (call inside the mutation's transaction).
pub async fn record(conn: &mut AsyncPgConnection, change: Change<'_>) -> DomainResult<()> {
    let row = AuditEventRow {
        workspace_id: change.workspace.0,
        id: AuditEventId::new().0,
        actor_id: Some(change.actor.user_id.0),
        action: change.action.to_string(),
        target_type: change.target_type.to_string(),
        target_id: change.target_id,
        summary: change.summary,
        request_id: Some(change.actor.request_id.clone()),
        created_at: Utc::now(),
    };
    audit::insert(conn, &row).await?;
    Ok(())
}

/// An audit event by id, when `actor` may read its workspace's log (owners and admins);
/// `None` alike for missing events, other workspaces' and a viewer's.
pub async fn find_visible(
    services: &Services,
    actor: &Actor,
    id: AuditEventId,
) -> DomainResult<Option<AuditEventRow>> {
    let mut conn = services.conn().await?;
    let row = audit::find_visible(&mut conn, id.0, actor.user_id.0).await?;
    drop(conn);
    if let Some(e) = &row {
        actor.admit(e.workspace_id).await?;
    }
    Ok(row)
}

/// Newest-first pages of audit events for several workspaces (the caller has checked access).
pub async fn pages(
    services: &Services,
    ws_ids: &[uuid::Uuid],
    page: Page,
) -> DomainResult<Vec<AuditEventRow>> {
    let mut conn = services.conn().await?;
    Ok(audit::pages_for_workspaces(&mut conn, ws_ids, page).await?)
}
