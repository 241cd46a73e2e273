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
