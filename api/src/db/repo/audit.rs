//! Audit events.

use std::sync::LazyLock;

use crate::db::cached::{BoxedSql as Boxed, CachedExt};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::Page;
use crate::db::models::AuditEventRow;

/// Appending one event, as a statement (or a `WITH` part of one) whose binds are `$first`
/// to `$first + 7` (see [`bind_event`]), done only when `condition` (SQL) holds.
pub fn insert_sql(first: usize, condition: &str) -> String {
    let [
        ws,
        id,
        actor,
        action,
        target_type,
        target_id,
        summary,
        request,
    ] = std::array::from_fn(|i| first + i);
    format!(
        "INSERT INTO audit_events (workspace_id, id, actor_id, action, target_type, target_id, summary, request_id)
         SELECT ${ws}, ${id}, ${actor}, ${action}, ${target_type}, ${target_id}, ${summary}, ${request}
          WHERE {condition}"
    )
}

/// Binds the eight values of [`insert_sql`].
pub fn bind_event<'a>(q: Boxed<'a>, row: &'a AuditEventRow) -> Boxed<'a> {
    q.bind::<SqlUuid, _>(row.workspace_id)
        .bind::<SqlUuid, _>(row.id)
        .bind::<Nullable<SqlUuid>, _>(row.actor_id)
        .bind::<Text, _>(&row.action)
        .bind::<Text, _>(&row.target_type)
        .bind::<Text, _>(&row.target_id)
        .bind::<Jsonb, _>(&row.summary)
        .bind::<Nullable<Text>, _>(row.request_id.as_deref())
}

/// Appends one event.
pub async fn insert(conn: &mut AsyncPgConnection, row: &AuditEventRow) -> QueryResult<()> {
    static SQL: LazyLock<String> = LazyLock::new(|| insert_sql(1, "true"));
    bind_event(diesel::sql_query(SQL.as_str()).into_boxed(), row)
        .cached()
        .execute(conn)
        .await
        .map(|_| ())
}

/// Newest-first pages of several workspaces' logs in one statement (for the DataLoader):
/// up to `page.limit` events per workspace, older than `page.after`.
pub async fn pages_for_workspaces(
    conn: &mut AsyncPgConnection,
    workspace_ids: &[Uuid],
    page: Page,
) -> QueryResult<Vec<AuditEventRow>> {
    diesel::sql_query(
        "SELECT e.* FROM unnest($1::uuid[]) AS w(id)
         CROSS JOIN LATERAL (
            SELECT * FROM audit_events a
             WHERE a.workspace_id = w.id AND ($2::uuid IS NULL OR a.id < $2)
             ORDER BY a.id DESC LIMIT $3
         ) e",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(workspace_ids)
    .bind::<diesel::sql_types::Nullable<SqlUuid>, _>(page.after)
    .bind::<BigInt, _>(page.limit)
    .cached()
    .load(conn)
    .await
}

/// An event that `user` may read (an owner or admin of its live workspace), by id: one
/// statement, so that another workspace's event, or one a viewer may not read, costs
/// exactly what a missing one costs.
pub async fn find_visible(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    user: Uuid,
) -> QueryResult<Option<AuditEventRow>> {
    diesel::sql_query(
        "SELECT e.* FROM audit_events e
           JOIN workspaces w ON w.id = e.workspace_id AND w.deleted_at IS NULL
           JOIN members me ON me.workspace_id = e.workspace_id AND me.user_id = $2
                          AND me.role IN ('OWNER', 'ADMIN')
          WHERE e.id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(user)
    .cached()
    .get_result(conn)
    .await
    .optional()
}
