//! Custom workspace templates (`workspace_templates`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// A row of `workspace_templates`.
#[derive(Debug, Clone, QueryableByName)]
pub struct TemplateRow {
    /// Primary key.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// The workspace it belongs to (and is visible to, alone).
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// Key, unique in the workspace (`^[A-Z][A-Z0-9_]{0,39}$`).
    #[diesel(sql_type = Text)]
    pub key: String,
    /// Display name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// What it is for.
    #[diesel(sql_type = Nullable<Text>)]
    pub description: Option<String>,
    /// Always false for custom templates (kept for the column).
    #[diesel(sql_type = Bool)]
    pub public: bool,
    /// The settings it sets (`domain::governance::templates::Preset`).
    #[diesel(sql_type = Jsonb)]
    pub settings: serde_json::Value,
    /// Who saved it.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub created_by: Option<Uuid>,
    /// When.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

/// The custom templates of `ws`, oldest first.
pub async fn list(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<Vec<TemplateRow>> {
    diesel::sql_query(
        "SELECT * FROM workspace_templates WHERE workspace_id = $1 ORDER BY created_at, id",
    )
    .bind::<SqlUuid, _>(ws)
    .load(conn)
    .await
}

/// The custom template `id` of `ws`.
pub async fn find(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    id: Uuid,
) -> QueryResult<Option<TemplateRow>> {
    diesel::sql_query("SELECT * FROM workspace_templates WHERE workspace_id = $1 AND id = $2")
        .bind::<SqlUuid, _>(ws)
        .bind::<SqlUuid, _>(id)
        .get_result(conn)
        .await
        .optional()
}

/// The workspace of the custom template `id`, if it exists.
pub async fn workspace_of(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Uuid>> {
    #[derive(QueryableByName)]
    struct Ws {
        #[diesel(sql_type = SqlUuid)]
        workspace_id: Uuid,
    }
    let row: Option<Ws> =
        diesel::sql_query("SELECT workspace_id FROM workspace_templates WHERE id = $1")
            .bind::<SqlUuid, _>(id)
            .get_result(conn)
            .await
            .optional()?;
    Ok(row.map(|r| r.workspace_id))
}

/// How many custom templates `ws` has.
pub async fn count(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let n: N =
        diesel::sql_query("SELECT count(*) AS n FROM workspace_templates WHERE workspace_id = $1")
            .bind::<SqlUuid, _>(ws)
            .get_result(conn)
            .await?;
    Ok(n.n)
}

/// What `insert` stores.
pub struct NewTemplate<'a> {
    /// Primary key.
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Key.
    pub key: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Description.
    pub description: Option<&'a str>,
    /// Settings.
    pub settings: &'a serde_json::Value,
    /// Who saves it.
    pub created_by: Uuid,
}

/// Stores a custom template; `None` when the workspace already has one with that key.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    t: &NewTemplate<'_>,
) -> QueryResult<Option<TemplateRow>> {
    diesel::sql_query(
        "INSERT INTO workspace_templates (id, workspace_id, key, name, description, settings,
                created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (workspace_id, key) DO NOTHING
         RETURNING *",
    )
    .bind::<SqlUuid, _>(t.id)
    .bind::<SqlUuid, _>(t.workspace_id)
    .bind::<Text, _>(t.key)
    .bind::<Text, _>(t.name)
    .bind::<Nullable<Text>, _>(t.description)
    .bind::<Jsonb, _>(t.settings)
    .bind::<SqlUuid, _>(t.created_by)
    .get_result(conn)
    .await
    .optional()
}

/// Deletes the custom template `id` of `ws`; the row deleted.
pub async fn delete(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    id: Uuid,
) -> QueryResult<Option<TemplateRow>> {
    diesel::sql_query(
        "DELETE FROM workspace_templates WHERE workspace_id = $1 AND id = $2 RETURNING *",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<SqlUuid, _>(id)
    .get_result(conn)
    .await
    .optional()
}
