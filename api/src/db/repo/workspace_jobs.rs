//! Jobs that belong to a workspace: `workspace_jobs` rows beside apalis's `apalis.jobs`. A
//! person's own data export or erasure belongs to no workspace: its row has no workspace and
//! is read by whoever requested it.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// What one job of a workspace is to its readers.
#[derive(Debug, Clone, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct JobRow {
    /// apalis's id (a ULID).
    #[diesel(sql_type = Text)]
    pub id: String,
    /// Workspace; `None` for a person's own job (see `requested_by`).
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub workspace_id: Option<Uuid>,
    /// Who asked for it, when someone did.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    #[serde(default)]
    pub requested_by: Option<Uuid>,
    /// What it does, e.g. `billing.request`.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// `PENDING`, `RUNNING`, `SUCCEEDED` or `FAILED` (see [`STATUS_SQL`]).
    #[diesel(sql_type = Text)]
    pub status: String,
    /// Attempts so far.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// Its last error, while it has one.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    /// When it was enqueued.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// When it is (or was last) due.
    #[diesel(sql_type = Timestamptz)]
    pub run_at: DateTime<Utc>,
    /// When a worker last took it.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// apalis's state of a job as one of ours: a `Failed` job with attempts left is fetched
/// again, so it is still pending; `Killed` (our run limit) and `Failed` without attempts
/// left are failed for good.
pub const STATUS_SQL: &str = "CASE WHEN j.status = 'Running' THEN 'RUNNING'
                                   WHEN j.status = 'Done' THEN 'SUCCEEDED'
                                   WHEN j.status = 'Killed' THEN 'FAILED'
                                   WHEN j.status = 'Failed' AND j.attempts >= j.max_attempts THEN 'FAILED'
                                   ELSE 'PENDING' END";

fn select_sql(filter: &str) -> String {
    format!(
        "SELECT j.id, w.workspace_id, w.requested_by, w.kind, {STATUS_SQL} AS status, j.attempts,
                CASE WHEN j.status IN ('Failed', 'Killed') THEN coalesce(j.last_result->>'Err', j.last_result::text) END AS last_error,
                w.created_at, j.run_at, j.lock_at AS started_at, j.done_at AS finished_at
           FROM workspace_jobs w JOIN apalis.jobs j ON j.id = w.job_id
          WHERE {filter}"
    )
}

/// Enqueues a job of workspace `ws` (in the caller's transaction), unless the queue holds one
/// with `key` already; the new job's id.
#[allow(clippy::too_many_arguments)]
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    kind: &str,
    requested_by: Option<Uuid>,
    queue: &str,
    payload: &serde_json::Value,
    key: &str,
    max_attempts: i32,
    delay_secs: i64,
) -> QueryResult<Option<String>> {
    enqueue_owned(
        conn,
        Some(ws),
        kind,
        requested_by,
        queue,
        payload,
        key,
        max_attempts,
        delay_secs,
    )
    .await
}

/// Enqueues a job of no workspace that `requested_by` alone reads (a person's own data
/// export or erasure), unless the queue holds one with `key` already; the new job's id.
pub async fn enqueue_personal(
    conn: &mut AsyncPgConnection,
    requested_by: Uuid,
    kind: &str,
    queue: &str,
    payload: &serde_json::Value,
    key: &str,
    max_attempts: i32,
) -> QueryResult<Option<String>> {
    enqueue_owned(
        conn,
        None,
        kind,
        Some(requested_by),
        queue,
        payload,
        key,
        max_attempts,
        0,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn enqueue_owned(
    conn: &mut AsyncPgConnection,
    ws: Option<Uuid>,
    kind: &str,
    requested_by: Option<Uuid>,
    queue: &str,
    payload: &serde_json::Value,
    key: &str,
    max_attempts: i32,
    delay_secs: i64,
) -> QueryResult<Option<String>> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = Text)]
        job_id: String,
    }
    let rows: Vec<Id> = diesel::sql_query(
        "WITH j AS (
            INSERT INTO apalis.jobs (id, job_type, job, max_attempts, idempotency_key, run_at)
            VALUES (apalis.generate_ulid(), $1, convert_to($2, 'UTF8'), $3, $4,
                    now() + make_interval(secs => $5))
            ON CONFLICT (job_type, idempotency_key) DO NOTHING
            RETURNING id)
         INSERT INTO workspace_jobs (job_id, workspace_id, kind, requested_by)
         SELECT id, $6, $7, $8 FROM j RETURNING job_id",
    )
    .bind::<Text, _>(queue)
    .bind::<Text, _>(payload.to_string())
    .bind::<Integer, _>(max_attempts)
    .bind::<Text, _>(key)
    .bind::<BigInt, _>(delay_secs)
    .bind::<Nullable<SqlUuid>, _>(ws)
    .bind::<Text, _>(kind)
    .bind::<Nullable<SqlUuid>, _>(requested_by)
    .cached()
    .load(conn)
    .await?;
    Ok(rows.into_iter().next().map(|r| r.job_id))
}

/// A job by id, with its workspace.
pub async fn find(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<Option<JobRow>> {
    diesel::sql_query(select_sql("j.id = $1"))
        .bind::<Text, _>(id)
        .get_result(conn)
        .await
        .optional()
}

/// Newest first: the jobs of `ws` (of one status, or all) after the job `after`.
pub async fn page(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    status: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<JobRow>> {
    diesel::sql_query(format!(
        "{} ORDER BY j.id DESC LIMIT $4",
        select_sql(&format!(
            "w.workspace_id = $1 AND ($2::text IS NULL OR {STATUS_SQL} = $2)
             AND ($3::text IS NULL OR w.job_id < $3)"
        ))
    ))
    .bind::<SqlUuid, _>(ws)
    .bind::<Nullable<Text>, _>(status)
    .bind::<Nullable<Text>, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// What [`enqueue_limited`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job, this id.
    New(String),
    /// The queue holds a job under the key already: this one.
    Existing(String),
    /// At the limit, a job of the same owner and kind with the same payload (the same work)
    /// is queued or running: this one.
    Coalesced(String),
    /// The owner has this many jobs of the kind queued or running: at the limit.
    Full(i64),
}

/// Enqueues a job of workspace `ws` (or, without one, of the person `requested_by`) in the
/// caller's transaction, within a limit: unless the queue holds one under `key` already, a
/// new job while the owner has fewer than `limit` jobs of `kind` queued or running; at the
/// limit, the one of them with the same payload (the same work) if any, else a refusal. The
/// owner's enqueues of one kind take turns (a transaction lock), so that concurrent requests
/// never exceed the limit.
#[allow(clippy::too_many_arguments)]
pub async fn enqueue_limited(
    conn: &mut AsyncPgConnection,
    ws: Option<Uuid>,
    requested_by: Uuid,
    kind: &str,
    queue: &str,
    payload: &serde_json::Value,
    key: &str,
    max_attempts: i32,
    limit: i64,
) -> QueryResult<Enqueued> {
    #[derive(QueryableByName)]
    struct Live {
        #[diesel(sql_type = BigInt)]
        live: i64,
        #[diesel(sql_type = Nullable<Text>)]
        existing: Option<String>,
        #[diesel(sql_type = Nullable<Text>)]
        same: Option<String>,
    }
    let owner = ws.unwrap_or(requested_by);
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<Text, _>(format!("workspace_jobs:{owner}:{kind}"))
        .cached()
        .execute(conn)
        .await?;
    let live: Live = diesel::sql_query(
        "WITH mine AS (
            SELECT j.id, j.job FROM workspace_jobs w JOIN apalis.jobs j ON j.id = w.job_id
             WHERE w.kind = $3 AND j.job_type = $4
               AND CASE WHEN $1::uuid IS NULL THEN w.workspace_id IS NULL AND w.requested_by = $2
                        ELSE w.workspace_id = $1 END
               AND (j.status IN ('Pending', 'Queued', 'Running')
                    OR (j.status = 'Failed' AND j.attempts < j.max_attempts)))
         SELECT (SELECT count(*) FROM mine) AS live,
                (SELECT j.id FROM apalis.jobs j
                  WHERE j.job_type = $4 AND j.idempotency_key = $5) AS existing,
                (SELECT m.id FROM mine m WHERE convert_from(m.job, 'UTF8')::jsonb = $6::jsonb
                  ORDER BY m.id DESC LIMIT 1) AS same",
    )
    .bind::<Nullable<SqlUuid>, _>(ws)
    .bind::<SqlUuid, _>(requested_by)
    .bind::<Text, _>(kind)
    .bind::<Text, _>(queue)
    .bind::<Text, _>(key)
    .bind::<diesel::sql_types::Jsonb, _>(payload)
    .cached()
    .get_result(conn)
    .await?;
    if let Some(id) = live.existing {
        return Ok(Enqueued::Existing(id));
    }
    if live.live >= limit {
        return Ok(match live.same {
            Some(id) => Enqueued::Coalesced(id),
            None => Enqueued::Full(live.live),
        });
    }
    match enqueue_owned(
        conn,
        ws,
        kind,
        Some(requested_by),
        queue,
        payload,
        key,
        max_attempts,
        0,
    )
    .await?
    {
        Some(id) => Ok(Enqueued::New(id)),
        None => Err(diesel::result::Error::NotFound),
    }
}
