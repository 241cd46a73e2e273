//! Archive manifests (`archives`) and the statements that move rows between the live tables
//! and archives.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// The manifest of one archive.
#[derive(Debug, Clone, QueryableByName, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ArchiveRow {
    /// Id.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// `AUDIT_EVENTS` or `USAGE_EVENTS`.
    #[diesel(sql_type = Text)]
    pub category: String,
    /// Object path in the store.
    #[diesel(sql_type = Text)]
    pub path: String,
    /// `created_at` of its oldest row.
    #[diesel(sql_type = Timestamptz)]
    pub range_start: DateTime<Utc>,
    /// `created_at` of its newest row.
    #[diesel(sql_type = Timestamptz)]
    pub range_end: DateTime<Utc>,
    /// Rows.
    #[diesel(sql_type = BigInt)]
    pub row_count: i64,
    /// Bytes of the newline-delimited JSON.
    #[diesel(sql_type = BigInt)]
    pub plaintext_bytes: i64,
    /// Bytes of the sealed object.
    #[diesel(sql_type = BigInt)]
    pub object_bytes: i64,
    /// SHA-256 of the plaintext, hex.
    #[diesel(sql_type = Text)]
    pub plaintext_sha256: String,
    /// SHA-256 of the object, hex.
    #[diesel(sql_type = Text)]
    pub object_sha256: String,
    /// When it was written.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// Its last restore.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub restored_at: Option<DateTime<Utc>>,
    /// Rows its last restore put back (the others were there already).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub restored_rows: Option<i64>,
    /// Until when cleanup leaves its restored rows alone.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub held_until: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, workspace_id, category, path, range_start, range_end, row_count,
    plaintext_bytes, object_bytes, plaintext_sha256, object_sha256, created_at, restored_at,
    restored_rows, held_until";

/// Stores a manifest.
pub async fn insert(conn: &mut AsyncPgConnection, a: &ArchiveRow) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO archives (id, workspace_id, category, path, range_start, range_end, row_count,
                               plaintext_bytes, object_bytes, plaintext_sha256, object_sha256, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind::<SqlUuid, _>(a.id)
    .bind::<SqlUuid, _>(a.workspace_id)
    .bind::<Text, _>(&a.category)
    .bind::<Text, _>(&a.path)
    .bind::<Timestamptz, _>(a.range_start)
    .bind::<Timestamptz, _>(a.range_end)
    .bind::<BigInt, _>(a.row_count)
    .bind::<BigInt, _>(a.plaintext_bytes)
    .bind::<BigInt, _>(a.object_bytes)
    .bind::<Text, _>(&a.plaintext_sha256)
    .bind::<Text, _>(&a.object_sha256)
    .bind::<Timestamptz, _>(a.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A manifest by id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ArchiveRow>> {
    diesel::sql_query(format!("SELECT {COLUMNS} FROM archives WHERE id = $1"))
        .bind::<SqlUuid, _>(id)
        .get_result(conn)
        .await
        .optional()
}

/// Newest first: the archives of `ws` (of one category, or all) after archive `after`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    category: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<ArchiveRow>> {
    diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM archives
          WHERE workspace_id = $1 AND ($2::text IS NULL OR category = $2)
            AND ($3::uuid IS NULL OR (created_at, id) < (SELECT created_at, id FROM archives
                                                          WHERE id = $3 AND workspace_id = $1))
          ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind::<SqlUuid, _>(ws)
    .bind::<Nullable<Text>, _>(category)
    .bind::<Nullable<SqlUuid>, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Records a restore of archive `id`: `rows` put back, held from cleanup until `held_until`.
pub async fn mark_restored(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    at: DateTime<Utc>,
    rows: i64,
    held_until: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE archives SET restored_at = $2, restored_rows = $3, held_until = $4 WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Timestamptz, _>(at)
    .bind::<BigInt, _>(rows)
    .bind::<Timestamptz, _>(held_until)
    .execute(conn)
    .await?;
    Ok(())
}

/// One row of a live table as an archive holds it.
#[derive(Debug, QueryableByName)]
pub struct ArchivedRow {
    /// Its id (unique in its workspace).
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// When it was created.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// The row as JSON (`row_to_json`).
    #[diesel(sql_type = Text)]
    pub line: String,
}

/// A live table whose rows cleanup archives. Every statement on it is written out once per
/// table (chosen by a `match`), never assembled from a table name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `audit_events` (archives of category `AUDIT_EVENTS`).
    AuditEvents,
    /// `usage_events` (archives of category `USAGE_EVENTS`).
    UsageEvents,
}

// Expired rows of a table: `created_at < $2` in workspace `$1`, outside the ranges of its
// category's archives restored and held past `$4`.

const OLDEST_AUDIT: &str =
    "SELECT e.id, e.created_at, row_to_json(e)::text AS line FROM audit_events e
  WHERE e.workspace_id = $1 AND e.created_at < $2
    AND NOT EXISTS (SELECT 1 FROM archives a
                     WHERE a.workspace_id = $1 AND a.category = 'AUDIT_EVENTS'
                       AND a.held_until > $4
                       AND e.created_at BETWEEN a.range_start AND a.range_end)
  ORDER BY e.created_at, e.id LIMIT $3";

const OLDEST_USAGE: &str =
    "SELECT e.id, e.created_at, row_to_json(e)::text AS line FROM usage_events e
  WHERE e.workspace_id = $1 AND e.created_at < $2
    AND NOT EXISTS (SELECT 1 FROM archives a
                     WHERE a.workspace_id = $1 AND a.category = 'USAGE_EVENTS'
                       AND a.held_until > $4
                       AND e.created_at BETWEEN a.range_start AND a.range_end)
  ORDER BY e.created_at, e.id LIMIT $3";

const DELETE_OLDEST_AUDIT: &str = "DELETE FROM audit_events WHERE workspace_id = $1 AND id IN (
    SELECT e.id FROM audit_events e
     WHERE e.workspace_id = $1 AND e.created_at < $2
       AND NOT EXISTS (SELECT 1 FROM archives a
                        WHERE a.workspace_id = $1 AND a.category = 'AUDIT_EVENTS'
                          AND a.held_until > $4
                          AND e.created_at BETWEEN a.range_start AND a.range_end)
     ORDER BY e.created_at, e.id LIMIT $3)";

const DELETE_OLDEST_USAGE: &str = "DELETE FROM usage_events WHERE workspace_id = $1 AND id IN (
    SELECT e.id FROM usage_events e
     WHERE e.workspace_id = $1 AND e.created_at < $2
       AND NOT EXISTS (SELECT 1 FROM archives a
                        WHERE a.workspace_id = $1 AND a.category = 'USAGE_EVENTS'
                          AND a.held_until > $4
                          AND e.created_at BETWEEN a.range_start AND a.range_end)
     ORDER BY e.created_at, e.id LIMIT $3)";

const DELETE_IDS_AUDIT: &str = "DELETE FROM audit_events WHERE workspace_id = $1 AND id = ANY($2)";

const DELETE_IDS_USAGE: &str = "DELETE FROM usage_events WHERE workspace_id = $1 AND id = ANY($2)";

const REIMPORT_AUDIT: &str =
    "WITH src AS (SELECT * FROM json_populate_recordset(NULL::audit_events, $1::json)),
      ins AS (INSERT INTO audit_events SELECT * FROM src WHERE workspace_id = $2
              ON CONFLICT DO NOTHING RETURNING 1)
 SELECT (SELECT count(*) FROM src) AS total,
        (SELECT count(*) FROM src WHERE workspace_id = $2) AS own,
        (SELECT count(*) FROM ins) AS inserted";

const REIMPORT_USAGE: &str =
    "WITH src AS (SELECT * FROM json_populate_recordset(NULL::usage_events, $1::json)),
      ins AS (INSERT INTO usage_events SELECT * FROM src WHERE workspace_id = $2
              ON CONFLICT DO NOTHING RETURNING 1)
 SELECT (SELECT count(*) FROM src) AS total,
        (SELECT count(*) FROM src WHERE workspace_id = $2) AS own,
        (SELECT count(*) FROM ins) AS inserted";

/// The oldest `limit` rows of `table` of `ws` past `cutoff` and not held by a restore at
/// `now`, as JSON, oldest first.
pub async fn oldest(
    conn: &mut AsyncPgConnection,
    table: Table,
    ws: Uuid,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<ArchivedRow>> {
    let sql = match table {
        Table::AuditEvents => OLDEST_AUDIT,
        Table::UsageEvents => OLDEST_USAGE,
    };
    diesel::sql_query(sql)
        .bind::<SqlUuid, _>(ws)
        .bind::<Timestamptz, _>(cutoff)
        .bind::<BigInt, _>(limit)
        .bind::<Timestamptz, _>(now)
        .cached()
        .load(conn)
        .await
}

/// Deletes the oldest `limit` rows of `table` of `ws` past `cutoff` and not held by a
/// restore at `now`; how many.
pub async fn delete_oldest(
    conn: &mut AsyncPgConnection,
    table: Table,
    ws: Uuid,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<usize> {
    let sql = match table {
        Table::AuditEvents => DELETE_OLDEST_AUDIT,
        Table::UsageEvents => DELETE_OLDEST_USAGE,
    };
    diesel::sql_query(sql)
        .bind::<SqlUuid, _>(ws)
        .bind::<Timestamptz, _>(cutoff)
        .bind::<BigInt, _>(limit)
        .bind::<Timestamptz, _>(now)
        .cached()
        .execute(conn)
        .await
}

/// Deletes rows `ids` of `table` of `ws`; how many.
pub async fn delete_ids(
    conn: &mut AsyncPgConnection,
    table: Table,
    ws: Uuid,
    ids: &[Uuid],
) -> QueryResult<usize> {
    let sql = match table {
        Table::AuditEvents => DELETE_IDS_AUDIT,
        Table::UsageEvents => DELETE_IDS_USAGE,
    };
    diesel::sql_query(sql)
        .bind::<SqlUuid, _>(ws)
        .bind::<diesel::sql_types::Array<SqlUuid>, _>(ids)
        .cached()
        .execute(conn)
        .await
}

/// What putting rows back found.
#[derive(Debug, QueryableByName)]
pub struct Reimport {
    /// Rows in the input.
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    /// Rows of the input that belong to the workspace.
    #[diesel(sql_type = BigInt)]
    pub own: i64,
    /// Rows inserted (the others were there).
    #[diesel(sql_type = BigInt)]
    pub inserted: i64,
}

/// Puts the rows of `json_array` (a JSON array of rows as `row_to_json` wrote them) back into
/// `table`, those of workspace `ws` only, skipping rows that are there.
pub async fn reimport(
    conn: &mut AsyncPgConnection,
    table: Table,
    ws: Uuid,
    json_array: &str,
) -> QueryResult<Reimport> {
    let sql = match table {
        Table::AuditEvents => REIMPORT_AUDIT,
        Table::UsageEvents => REIMPORT_USAGE,
    };
    diesel::sql_query(sql)
        .bind::<Text, _>(json_array)
        .bind::<SqlUuid, _>(ws)
        .cached()
        .get_result(conn)
        .await
}

/// Takes the session lock of `ws`'s archival (`false` when another session holds it).
pub async fn try_lock(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Got {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        got: bool,
    }
    let g: Got = diesel::sql_query(
        "SELECT pg_try_advisory_lock(hashtextextended('archival:' || $1::text, 0)) AS got",
    )
    .bind::<SqlUuid, _>(ws)
    .get_result(conn)
    .await?;
    Ok(g.got)
}

/// Releases the lock of [`try_lock`].
pub async fn unlock(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_unlock(hashtextextended('archival:' || $1::text, 0))")
        .bind::<SqlUuid, _>(ws)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statements are written out per table: each usage statement is its audit twin with
    /// the table and the category renamed, nothing else.
    #[test]
    fn statements_per_table_differ_in_table_and_category_only() {
        for (audit, usage) in [
            (OLDEST_AUDIT, OLDEST_USAGE),
            (DELETE_OLDEST_AUDIT, DELETE_OLDEST_USAGE),
            (DELETE_IDS_AUDIT, DELETE_IDS_USAGE),
            (REIMPORT_AUDIT, REIMPORT_USAGE),
        ] {
            assert_eq!(
                audit
                    .replace("audit_events", "usage_events")
                    .replace("AUDIT_EVENTS", "USAGE_EVENTS"),
                usage
            );
            assert!(!usage.contains("audit") && !usage.contains("AUDIT"));
        }
    }
}
