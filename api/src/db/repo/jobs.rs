//! Jobs enqueued in the caller's transaction (apalis-postgres's `apalis.jobs` table).
//!
//! A job is a row of `apalis.jobs`: inserting it in the same diesel transaction as the change
//! that causes it makes the two commit or roll back together (`apalis.push_job()` is broken
//! in apalis-postgres 1.0.0; its `sink.sql` inserts the same columns). The payload is JSON
//! text stored as bytes, which the workers' `JsonCodec` decodes.

use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::cached::CachedExt;

/// Enqueues `payload` on `queue` unless a job with the same `key` is already on it; `true`
/// when enqueued now.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    queue: &str,
    payload: &serde_json::Value,
    key: &str,
    max_attempts: i32,
) -> QueryResult<bool> {
    enqueue_at(conn, queue, payload, key, max_attempts, 0).await
}

/// Like [`enqueue`], to run no sooner than `delay_secs` from now.
pub async fn enqueue_at(
    conn: &mut AsyncPgConnection,
    queue: &str,
    payload: &serde_json::Value,
    key: &str,
    max_attempts: i32,
    delay_secs: i64,
) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Enqueued {
        #[allow(dead_code)]
        #[diesel(sql_type = diesel::sql_types::Bool)]
        enqueued: bool,
    }
    let rows: Vec<Enqueued> = diesel::sql_query(
        "INSERT INTO apalis.jobs (id, job_type, job, max_attempts, idempotency_key, run_at)
         VALUES (apalis.generate_ulid(), $1, convert_to($2, 'UTF8'), $3, $4,
                 now() + make_interval(secs => $5))
         ON CONFLICT (job_type, idempotency_key) DO NOTHING
         RETURNING true AS enqueued",
    )
    .bind::<Text, _>(queue)
    .bind::<Text, _>(payload.to_string())
    .bind::<Integer, _>(max_attempts)
    .bind::<Text, _>(key)
    .bind::<diesel::sql_types::BigInt, _>(delay_secs)
    .cached()
    .load(conn)
    .await?;
    Ok(!rows.is_empty())
}

/// Counts a run of job `job_id` (an id of `apalis.jobs`: its handler started); returns its
/// runs so far, this one included. Outside a transaction the count commits at once, so a run
/// whose process dies is counted too.
pub async fn count_run(conn: &mut AsyncPgConnection, job_id: &str) -> QueryResult<i32> {
    #[derive(QueryableByName)]
    struct Runs {
        #[diesel(sql_type = Integer)]
        runs: i32,
    }
    let counted: Runs = diesel::sql_query(
        "INSERT INTO job_runs (job_id, runs) VALUES ($1, 1)
         ON CONFLICT (job_id) DO UPDATE SET runs = job_runs.runs + 1, last_run_at = now()
         RETURNING runs",
    )
    .bind::<Text, _>(job_id)
    .cached()
    .get_result(conn)
    .await?;
    Ok(counted.runs)
}

/// The error apalis last recorded for job `job_id` (`last_result`'s `Err`), if any.
pub async fn last_error(conn: &mut AsyncPgConnection, job_id: &str) -> QueryResult<Option<String>> {
    #[derive(QueryableByName)]
    struct LastError {
        #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
        error: Option<String>,
    }
    let rows: Vec<LastError> =
        diesel::sql_query("SELECT last_result->>'Err' AS error FROM apalis.jobs WHERE id = $1")
            .bind::<Text, _>(job_id)
            .cached()
            .load(conn)
            .await?;
    Ok(rows.into_iter().next().and_then(|r| r.error))
}

/// Deletes up to `batch` finished jobs: done ones finished more than `done_secs` ago, failed
/// or killed ones more than `failed_secs` ago (apalis-postgres never deletes them), with their
/// run counts (`job_runs`); returns how many jobs.
pub async fn purge_finished(
    conn: &mut AsyncPgConnection,
    done_secs: i64,
    failed_secs: i64,
    batch: i64,
) -> QueryResult<usize> {
    #[derive(QueryableByName)]
    struct Deleted {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let deleted: Deleted = diesel::sql_query(
        "WITH gone AS (
            DELETE FROM apalis.jobs WHERE id IN (
                SELECT id FROM apalis.jobs
                 WHERE (status = 'Done' AND done_at < now() - make_interval(secs => $1))
                    OR (status IN ('Failed', 'Killed')
                        AND coalesce(done_at, run_at) < now() - make_interval(secs => $2))
                 LIMIT $3)
            RETURNING id),
         runs AS (DELETE FROM job_runs WHERE job_id IN (SELECT id FROM gone))
         SELECT count(*) AS n FROM gone",
    )
    .bind::<diesel::sql_types::BigInt, _>(done_secs)
    .bind::<diesel::sql_types::BigInt, _>(failed_secs)
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .cached()
    .get_result(conn)
    .await?;
    Ok(usize::try_from(deleted.n).unwrap_or(0))
}

/// A job that ended `Failed` or `Killed`, with its last error.
#[derive(Debug, Clone, QueryableByName, serde::Serialize)]
pub struct FailedJob {
    /// The job's ULID.
    #[diesel(sql_type = Text)]
    pub id: String,
    /// Its queue.
    #[diesel(sql_type = Text)]
    pub queue: String,
    /// `Failed` or `Killed`.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// apalis's attempt count.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// Runs counted by `count_run`.
    #[diesel(sql_type = Integer)]
    pub runs: i32,
    /// When it ended.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    pub done_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Its last error.
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    pub error: Option<String>,
    /// Its payload.
    #[diesel(sql_type = Text)]
    pub payload: String,
}

/// Failed and killed jobs, newest first (of one queue, or all).
pub async fn failed(
    conn: &mut AsyncPgConnection,
    queue: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<FailedJob>> {
    diesel::sql_query(
        "SELECT j.id, j.job_type AS queue, j.status, j.attempts, coalesce(r.runs, 0) AS runs,
                j.done_at, coalesce(j.last_result->>'Err', j.last_result::text) AS error,
                convert_from(j.job, 'UTF8') AS payload
           FROM apalis.jobs j LEFT JOIN job_runs r ON r.job_id = j.id
          WHERE j.status IN ('Failed', 'Killed') AND ($1::text IS NULL OR j.job_type = $1)
          ORDER BY j.done_at DESC NULLS LAST, j.id DESC LIMIT $2",
    )
    .bind::<diesel::sql_types::Nullable<Text>, _>(queue)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await
}

/// Puts a failed or killed job back on its queue with fresh attempts and run count; `false`
/// when there is no such failed job.
pub async fn retry(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "WITH r AS (DELETE FROM job_runs WHERE job_id = $1)
         UPDATE apalis.jobs SET status = 'Pending', attempts = 0, run_at = now(), done_at = NULL,
                lock_at = NULL, lock_by = NULL, last_result = NULL
          WHERE id = $1 AND status IN ('Failed', 'Killed')",
    )
    .bind::<Text, _>(id)
    .execute(conn)
    .await?;
    Ok(n == 1)
}
