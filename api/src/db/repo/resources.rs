//! Resources a workspace meters or allocates.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::models::ResourceRow;
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
                resources::kind.eq("ALLOCATED"),
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
    kind: &str,
    reset_period: Option<&str>,
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

/// All resources of several workspaces (built-ins first, then by key).
pub async fn for_workspaces(
    conn: &mut AsyncPgConnection,
    ws: &[Uuid],
) -> QueryResult<Vec<ResourceRow>> {
    resources::table
        .filter(resources::workspace_id.eq_any(ws))
        .order((resources::built_in.desc(), resources::created_at.asc()))
        .then_order_by(diesel::dsl::sql::<diesel::sql_types::Integer>(
            "CASE key WHEN 'users' THEN 0 WHEN 'locations' THEN 1 WHEN 'sso_connections' THEN 2 ELSE 3 END",
        ))
        .then_order_by(resources::key.asc())
        .select(ResourceRow::as_select())
        .load(conn)
        .await
}
