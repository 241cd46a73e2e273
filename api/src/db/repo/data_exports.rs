//! Data exports: one sealed JSON document about one person (`domain::gdpr::export`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::storage::Sealed;

/// A row of `data_exports`.
#[derive(Debug, Clone, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct ExportRow {
    /// Primary key.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// The person the export is about (whose data key seals it).
    #[diesel(sql_type = SqlUuid)]
    pub user_id: Uuid,
    /// Who asked for it (the person, or an owner of `workspace_id`); only they read it.
    #[diesel(sql_type = SqlUuid)]
    pub requested_by: Uuid,
    /// The scope of an owner's export; `None`: everything.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub workspace_id: Option<Uuid>,
    /// The job that builds it.
    #[diesel(sql_type = Text)]
    pub job_id: String,
    /// `PENDING`, `READY` or `FAILED`.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// Where the sealed document is (or will be) in object storage.
    #[diesel(sql_type = Text)]
    pub path: String,
    /// Bytes of the JSON document.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub plaintext_bytes: Option<i64>,
    /// Bytes of the sealed object.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub object_bytes: Option<i64>,
    /// SHA-256 of the JSON document, hex.
    #[diesel(sql_type = Nullable<Text>)]
    pub plaintext_sha256: Option<String>,
    /// SHA-256 of the sealed object, hex.
    #[diesel(sql_type = Nullable<Text>)]
    pub object_sha256: Option<String>,
    /// A section was cut at its cap (the document says which).
    #[diesel(sql_type = Bool)]
    pub truncated: bool,
    /// Why it failed.
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    /// Requested.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// Built (or failed).
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub completed_at: Option<DateTime<Utc>>,
    /// No longer downloadable after this.
    #[diesel(sql_type = Timestamptz)]
    pub expires_at: DateTime<Utc>,
}

/// What a new export is.
pub struct NewExport<'a> {
    /// Its id.
    pub id: Uuid,
    /// The person.
    pub user_id: Uuid,
    /// Who asked.
    pub requested_by: Uuid,
    /// Scope (`None`: everything).
    pub workspace_id: Option<Uuid>,
    /// Its job.
    pub job_id: &'a str,
    /// Object path.
    pub path: &'a str,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

/// The columns of [`ExportRow`]: a pending export whose job failed for good reads `FAILED`.
const SELECT: &str = "SELECT d.id, d.user_id, d.requested_by, d.workspace_id, d.job_id,
        CASE WHEN d.status = 'PENDING' AND (j.id IS NULL OR j.status = 'Killed'
                  OR (j.status = 'Failed' AND j.attempts >= j.max_attempts))
             THEN 'FAILED' ELSE d.status END AS status,
        d.path, d.plaintext_bytes, d.object_bytes, d.plaintext_sha256, d.object_sha256,
        d.truncated, d.error, d.created_at, d.completed_at, d.expires_at
   FROM data_exports d LEFT JOIN apalis.jobs j ON j.id = d.job_id";

/// Records a new (pending) export.
pub async fn insert(conn: &mut AsyncPgConnection, e: &NewExport<'_>) -> QueryResult<ExportRow> {
    diesel::sql_query(
        "INSERT INTO data_exports (id, user_id, requested_by, workspace_id, job_id, status, path, expires_at)
         VALUES ($1, $2, $3, $4, $5, 'PENDING', $6, $7) RETURNING *",
    )
    .bind::<SqlUuid, _>(e.id)
    .bind::<SqlUuid, _>(e.user_id)
    .bind::<SqlUuid, _>(e.requested_by)
    .bind::<Nullable<SqlUuid>, _>(e.workspace_id)
    .bind::<Text, _>(e.job_id)
    .bind::<Text, _>(e.path)
    .bind::<Timestamptz, _>(e.expires_at)
    .get_result(conn)
    .await
}

/// An export by id.
pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<ExportRow>> {
    diesel::sql_query(format!("{SELECT} WHERE d.id = $1"))
        .bind::<SqlUuid, _>(id)
        .get_result(conn)
        .await
        .optional()
}

/// The export its job builds.
pub async fn by_job(conn: &mut AsyncPgConnection, job: &str) -> QueryResult<Option<ExportRow>> {
    diesel::sql_query(format!("{SELECT} WHERE d.job_id = $1"))
        .bind::<Text, _>(job)
        .get_result(conn)
        .await
        .optional()
}

/// An export stays readable by whoever asked for it, and an owner's export (of someone
/// else, limited to a workspace) only while they are an owner of that live workspace.
const READABLE: &str = "(d.workspace_id IS NULL OR d.user_id = d.requested_by OR EXISTS (
        SELECT 1 FROM members m JOIN workspaces w ON w.id = m.workspace_id AND w.deleted_at IS NULL
         WHERE m.workspace_id = d.workspace_id AND m.user_id = d.requested_by AND m.role = 'OWNER'))";

/// Export `id` if `requester` asked for it and may still read it.
pub async fn find_readable(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    requester: Uuid,
) -> QueryResult<Option<ExportRow>> {
    diesel::sql_query(format!(
        "{SELECT} WHERE d.id = $1 AND d.requested_by = $2 AND {READABLE}"
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(requester)
    .get_result(conn)
    .await
    .optional()
}

/// Newest first, at most `limit` per person: the exports about each of `users` that
/// `requester` asked for and may still read (one statement for all of them).
pub async fn readable_about(
    conn: &mut AsyncPgConnection,
    users: &[Uuid],
    requester: Uuid,
    limit: i64,
) -> QueryResult<Vec<ExportRow>> {
    diesel::sql_query(format!(
        "SELECT x.* FROM unnest($1::uuid[]) AS u(id) CROSS JOIN LATERAL (
            {SELECT} WHERE d.user_id = u.id AND d.requested_by = $2 AND {READABLE}
             ORDER BY d.created_at DESC, d.id DESC LIMIT $3) x"
    ))
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(users)
    .bind::<SqlUuid, _>(requester)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Marks a pending export built; `false` when it is gone or no longer pending.
pub async fn mark_ready(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    sealed: &Sealed,
    truncated: bool,
) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "UPDATE data_exports SET status = 'READY', plaintext_bytes = $2, object_bytes = $3,
                plaintext_sha256 = $4, object_sha256 = $5, truncated = $6, completed_at = now()
          WHERE id = $1 AND status = 'PENDING' AND path = $7",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<BigInt, _>(sealed.plaintext_bytes)
    .bind::<BigInt, _>(sealed.object_bytes)
    .bind::<Text, _>(&sealed.plaintext_sha256)
    .bind::<Text, _>(&sealed.object_sha256)
    .bind::<Bool, _>(truncated)
    .bind::<Text, _>(&sealed.path)
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Marks a pending export failed with `error` (which names no person).
pub async fn mark_failed(conn: &mut AsyncPgConnection, id: Uuid, error: &str) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE data_exports SET status = 'FAILED', error = left($2, 500), completed_at = now()
          WHERE id = $1 AND status = 'PENDING'",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(error)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The object paths of the exports about `user` and of those `user` asked for about others.
pub async fn paths_involving(conn: &mut AsyncPgConnection, user: Uuid) -> QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct P {
        #[diesel(sql_type = Text)]
        path: String,
    }
    let rows: Vec<P> =
        diesel::sql_query("SELECT path FROM data_exports WHERE user_id = $1 OR requested_by = $1")
            .bind::<SqlUuid, _>(user)
            .load(conn)
            .await?;
    Ok(rows.into_iter().map(|r| r.path).collect())
}

/// Deletes the exports about `user` and those `user` asked for about others.
pub async fn delete_involving(conn: &mut AsyncPgConnection, user: Uuid) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM data_exports WHERE user_id = $1 OR requested_by = $1")
        .bind::<SqlUuid, _>(user)
        .execute(conn)
        .await
}

/// The paths of the exports about `user` asked for within workspace `ws` (its owners').
pub async fn paths_about_in(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    ws: Uuid,
) -> QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct P {
        #[diesel(sql_type = Text)]
        path: String,
    }
    let rows: Vec<P> =
        diesel::sql_query("SELECT path FROM data_exports WHERE user_id = $1 AND workspace_id = $2")
            .bind::<SqlUuid, _>(user)
            .bind::<SqlUuid, _>(ws)
            .load(conn)
            .await?;
    Ok(rows.into_iter().map(|r| r.path).collect())
}

/// Deletes the exports about `user` asked for within workspace `ws`.
pub async fn delete_about_in(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    ws: Uuid,
) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM data_exports WHERE user_id = $1 AND workspace_id = $2")
        .bind::<SqlUuid, _>(user)
        .bind::<SqlUuid, _>(ws)
        .execute(conn)
        .await
}

/// The paths of up to `limit` exports that expired before `now` (any person's).
pub async fn expired(
    conn: &mut AsyncPgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<(Uuid, String)>> {
    #[derive(QueryableByName)]
    struct P {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Text)]
        path: String,
    }
    let rows: Vec<P> = diesel::sql_query(
        "SELECT id, path FROM data_exports WHERE expires_at < $1 ORDER BY expires_at LIMIT $2",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.path)).collect())
}

/// Deletes an export's row (its object is gone).
pub async fn delete(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM data_exports WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .execute(conn)
        .await
        .map(|_| ())
}

/// External id of a uuid column in SQL: `prefix_` and the hex of the id (as `ids` writes it).
fn ext(prefix: &str, column: &str) -> String {
    format!("'{prefix}_' || replace({column}::text, '-', '')")
}

/// The profile of `user` as a JSON object (text); with `subject`, the token subject too.
pub async fn profile_doc(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    subject: bool,
) -> QueryResult<String> {
    #[derive(QueryableByName)]
    struct D {
        #[diesel(sql_type = Text)]
        doc: String,
    }
    let d: D = diesel::sql_query(format!(
        "SELECT jsonb_build_object('id', {}, 'email', email, 'name', name,
                'emailVerified', email_verified, 'signedIn', subject IS NOT NULL,
                'subject', CASE WHEN $2 THEN subject END,
                'createdAt', created_at, 'updatedAt', updated_at)::text AS doc
           FROM users WHERE id = $1",
        ext("usr", "id")
    ))
    .bind::<SqlUuid, _>(user)
    .bind::<Bool, _>(subject)
    .get_result(conn)
    .await?;
    Ok(d.doc)
}

/// The memberships of `user` (of workspace `ws`, or all, deleted workspaces included) as a
/// JSON array (text), oldest first.
pub async fn memberships_doc(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    ws: Option<Uuid>,
) -> QueryResult<String> {
    #[derive(QueryableByName)]
    struct D {
        #[diesel(sql_type = Text)]
        doc: String,
    }
    let d: D = diesel::sql_query(format!(
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', {}, 'role', m.role,
                    'workspace', jsonb_build_object('id', {}, 'name', w.name,
                                                    'deleted', w.deleted_at IS NOT NULL),
                    'invitedBy', CASE WHEN m.invited_by IS NOT NULL THEN {} END,
                    'createdAt', m.created_at, 'updatedAt', m.updated_at)
                ORDER BY m.created_at, m.id), '[]')::text AS doc
           FROM members m JOIN workspaces w ON w.id = m.workspace_id
          WHERE m.user_id = $1 AND ($2::uuid IS NULL OR m.workspace_id = $2)",
        ext("mem", "m.id"),
        ext("ws", "w.id"),
        ext("usr", "m.invited_by")
    ))
    .bind::<SqlUuid, _>(user)
    .bind::<Nullable<SqlUuid>, _>(ws)
    .get_result(conn)
    .await?;
    Ok(d.doc)
}

/// A page of one section of an export: JSON objects (text) and where the next page starts.
pub struct DocPage {
    /// The objects.
    pub docs: Vec<String>,
    /// The key of the last one (`workspace_id`, `id`).
    pub last: Option<(Uuid, Uuid)>,
}

#[derive(QueryableByName)]
struct KeyedDoc {
    #[diesel(sql_type = SqlUuid)]
    workspace_id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    doc: String,
}

fn page_of(rows: Vec<KeyedDoc>) -> DocPage {
    let last = rows.last().map(|r| (r.workspace_id, r.id));
    DocPage {
        docs: rows.into_iter().map(|r| r.doc).collect(),
        last,
    }
}

/// Which of a person's events a page reads.
#[derive(Debug, Clone, Copy)]
pub enum Events {
    /// `audit_events` where they are the actor.
    Audit,
    /// `usage_events` where they are the actor.
    Usage,
}

/// Up to `limit` events of `kind` whose actor is `user` (in workspace `ws`, or all), in
/// primary-key order after `after`: every page goes on where the last stopped, so a whole
/// section reads each table once, with no index on the actor.
pub async fn events_page(
    conn: &mut AsyncPgConnection,
    kind: Events,
    user: Uuid,
    ws: Option<Uuid>,
    after: (Uuid, Uuid),
    limit: i64,
) -> QueryResult<DocPage> {
    let (table, fields) = match kind {
        Events::Audit => (
            "audit_events",
            format!(
                "'id', {}, 'workspace', {}, 'action', action, 'targetType', target_type,
                 'targetId', target_id, 'summary', summary, 'requestId', request_id,
                 'createdAt', created_at",
                ext("aud", "id"),
                ext("ws", "workspace_id")
            ),
        ),
        Events::Usage => (
            "usage_events",
            format!(
                "'workspace', {}, 'organization', {}, 'resource', resource,
                 'periodStart', period_start, 'delta', delta, 'requestId', request_id,
                 'createdAt', created_at",
                ext("ws", "workspace_id"),
                ext("org", "organization_id")
            ),
        ),
    };
    let rows: Vec<KeyedDoc> = diesel::sql_query(format!(
        "SELECT workspace_id, id, jsonb_build_object({fields})::text AS doc
           FROM {table}
          WHERE actor_id = $1 AND ($2::uuid IS NULL OR workspace_id = $2)
            AND (workspace_id, id) > ($3, $4)
          ORDER BY workspace_id, id LIMIT $5"
    ))
    .bind::<SqlUuid, _>(user)
    .bind::<Nullable<SqlUuid>, _>(ws)
    .bind::<SqlUuid, _>(after.0)
    .bind::<SqlUuid, _>(after.1)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(page_of(rows))
}

/// The notification recipient lists (of workspace `ws`, or all) that name `email`, as a JSON
/// array (text); `None` without the notifications tables.
pub async fn recipients_doc(
    conn: &mut AsyncPgConnection,
    email: &str,
    ws: Option<Uuid>,
) -> QueryResult<Option<String>> {
    if !super::erasure::table_exists(conn, "public.notification_recipients").await? {
        return Ok(None);
    }
    #[derive(QueryableByName)]
    struct D {
        #[diesel(sql_type = Text)]
        doc: String,
    }
    let d: D = diesel::sql_query(format!(
        "SELECT coalesce(jsonb_agg(jsonb_build_object('workspace', {}, 'category', category,
                    'address', $1, 'updatedAt', updated_at) ORDER BY workspace_id, category), '[]')::text AS doc
           FROM notification_recipients
          WHERE EXISTS (SELECT 1 FROM unnest(addresses) a WHERE lower(a) = lower($1))
            AND ($2::uuid IS NULL OR workspace_id = $2)",
        ext("ws", "workspace_id")
    ))
    .bind::<Text, _>(email)
    .bind::<Nullable<SqlUuid>, _>(ws)
    .get_result(conn)
    .await?;
    Ok(Some(d.doc))
}

/// The API keys `user` created or revoked (of workspace `ws` when given): their metadata,
/// never the hash, at most 1,000, as a JSON array (text).
pub async fn api_keys_doc(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    ws: Option<Uuid>,
) -> QueryResult<Option<String>> {
    #[derive(QueryableByName)]
    struct D {
        #[diesel(sql_type = Text)]
        doc: String,
    }
    let d: D = diesel::sql_query(
        "SELECT coalesce(jsonb_agg(x.doc), '[]')::text AS doc FROM (
            SELECT jsonb_build_object(
                     'id', 'key_' || replace(k.id::text, '-', ''),
                     'workspaceId', 'ws_' || replace(k.workspace_id::text, '-', ''),
                     'name', k.name, 'role', k.role, 'prefix', k.prefix,
                     'createdByYou', k.created_by = $1, 'revokedByYou', k.revoked_by = $1,
                     'createdAt', k.created_at, 'expiresAt', k.expires_at,
                     'revokedAt', k.revoked_at, 'lastUsedAt', k.last_used_at) AS doc
              FROM api_keys k
             WHERE (k.created_by = $1 OR k.revoked_by = $1)
               AND ($2::uuid IS NULL OR k.workspace_id = $2)
             ORDER BY k.created_at LIMIT 1000) x",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<Nullable<SqlUuid>, _>(ws)
    .get_result(conn)
    .await?;
    Ok(Some(d.doc))
}
