//! Workspaces. Deleted workspaces are invisible to every function here.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::Page;
use crate::db::models::WorkspaceRow;
use crate::db::schema::{members, workspaces};

/// Inserts a workspace.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    name: &str,
    description: Option<&str>,
    billing_mode: &str,
    created_by: Uuid,
) -> QueryResult<WorkspaceRow> {
    diesel::insert_into(workspaces::table)
        .values((
            workspaces::id.eq(id),
            workspaces::name.eq(name),
            workspaces::description.eq(description),
            workspaces::billing_mode.eq(billing_mode),
            workspaces::created_by.eq(created_by),
        ))
        .returning(WorkspaceRow::as_returning())
        .get_result(conn)
        .await
}

/// Locks a live workspace row for the rest of the transaction (serializes member and
/// structural changes). `FOR NO KEY UPDATE`, not `FOR UPDATE`: rows that reference the
/// workspace (audit events, counters) take `KEY SHARE` on it when inserted, and must not
/// wait for a structural change. Returns `None` when it does not exist or is deleted.
pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<WorkspaceRow>> {
    workspaces::table
        .find(id)
        .filter(workspaces::deleted_at.is_null())
        .select(WorkspaceRow::as_select())
        .for_no_key_update()
        .first(conn)
        .await
        .optional()
}

/// Live workspaces by id, in any order.
pub async fn find_many(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<WorkspaceRow>> {
    workspaces::table
        .filter(workspaces::id.eq_any(ids))
        .filter(workspaces::deleted_at.is_null())
        .select(WorkspaceRow::as_select())
        .load(conn)
        .await
}

/// One page of the live workspaces `user` belongs to, oldest first.
pub async fn page_for_user(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    page: Page,
) -> QueryResult<Vec<(WorkspaceRow, String)>> {
    let mut q = workspaces::table
        .inner_join(members::table)
        .filter(members::user_id.eq(user))
        .filter(workspaces::deleted_at.is_null())
        .select((WorkspaceRow::as_select(), members::role))
        .order(workspaces::id.asc())
        .limit(page.limit)
        .into_boxed();
    if let Some(after) = page.after {
        q = q.filter(workspaces::id.gt(after));
    }
    q.load(conn).await
}

/// Changes to a workspace's settings; `None` leaves a field as it is.
#[derive(AsChangeset)]
#[diesel(table_name = workspaces)]
pub struct WorkspaceChanges<'a> {
    /// New name.
    pub name: Option<&'a str>,
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<&'a str>>,
    /// Always set.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Applies `changes` to a live workspace.
pub async fn update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    changes: &WorkspaceChanges<'_>,
) -> QueryResult<WorkspaceRow> {
    diesel::update(
        workspaces::table
            .find(id)
            .filter(workspaces::deleted_at.is_null()),
    )
    .set(changes)
    .returning(WorkspaceRow::as_returning())
    .get_result(conn)
    .await
}

/// Marks a workspace deleted.
pub async fn soft_delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::update(workspaces::table.find(id))
        .set(workspaces::deleted_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
        .map(|_| ())
}

/// The live workspaces among `ids` that `user` belongs to, with the user's role.
pub async fn with_roles(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    ids: &[Uuid],
) -> QueryResult<Vec<(WorkspaceRow, String)>> {
    workspaces::table
        .inner_join(members::table)
        .filter(workspaces::id.eq_any(ids))
        .filter(members::user_id.eq(user))
        .filter(workspaces::deleted_at.is_null())
        .select((WorkspaceRow::as_select(), members::role))
        .load(conn)
        .await
}
