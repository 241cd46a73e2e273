//! Resources a workspace meters or allocates.

use diesel::prelude::*;

use crate::db::cached::CachedExt;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::models::{ResetPeriod, ResourceKind, ResourceRow};
use crate::db::schema::resources;

/// The built-in resources every workspace has: (key, name, unit).
pub const BUILT_INS: [(&str, &str, &str); 3] = [
    ("users", "Users", "seats"),
    ("locations", "Locations", "locations"),
    ("sso_connections", "SSO connections", "connections"),
];

/// Creates the built-in resources of a new workspace.
pub async fn insert_built_ins(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<()> {
    let rows: Vec<_> = BUILT_INS
        .iter()
        .map(|(key, name, unit)| {
            (
                resources::workspace_id.eq(ws),
                resources::key.eq(*key),
                resources::name.eq(*name),
                resources::unit.eq(*unit),
                resources::kind.eq(ResourceKind::Allocated),
                resources::built_in.eq(true),
            )
        })
        .collect();
    diesel::insert_into(resources::table)
        .values(rows)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Defines a custom resource; `None` when the key is taken.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    key: &str,
    name: &str,
    unit: &str,
    kind: ResourceKind,
    reset_period: Option<ResetPeriod>,
) -> QueryResult<Option<ResourceRow>> {
    diesel::insert_into(resources::table)
        .values((
            resources::workspace_id.eq(ws),
            resources::key.eq(key),
            resources::name.eq(name),
            resources::unit.eq(unit),
            resources::kind.eq(kind),
            resources::reset_period.eq(reset_period),
        ))
        .on_conflict_do_nothing()
        .returning(ResourceRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// A workspace's resource by key.
pub async fn find(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    key: &str,
) -> QueryResult<Option<ResourceRow>> {
    resources::table
        .find((ws, key))
        .select(ResourceRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// All resources of several workspaces (built-ins first, in their fixed order, then custom
/// ones by creation). Constant SQL, kept prepared: a DSL query with a raw `ORDER BY`
/// fragment would be parsed and planned again on every execution.
pub async fn for_workspaces(
    conn: &AsyncPgConnection,
    ws: &[Uuid],
) -> QueryResult<Vec<ResourceRow>> {
    diesel::sql_query(
        "SELECT workspace_id, key, name, unit, kind, reset_period, built_in, created_at
           FROM resources WHERE workspace_id = ANY($1)
          ORDER BY built_in DESC, created_at,
                   CASE key WHEN 'users' THEN 0 WHEN 'locations' THEN 1
                            WHEN 'sso_connections' THEN 2 ELSE 3 END,
                   key",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ws)
    .cached()
    .load(&mut { conn })
    .await
}
