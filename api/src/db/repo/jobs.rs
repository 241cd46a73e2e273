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
    #[derive(QueryableByName)]
    struct Enqueued {
        #[allow(dead_code)]
        #[diesel(sql_type = diesel::sql_types::Bool)]
        enqueued: bool,
    }
    let rows: Vec<Enqueued> = diesel::sql_query(
        "INSERT INTO apalis.jobs (id, job_type, job, max_attempts, idempotency_key)
         VALUES (apalis.generate_ulid(), $1, convert_to($2, 'UTF8'), $3, $4)
         ON CONFLICT (job_type, idempotency_key) DO NOTHING
         RETURNING true AS enqueued",
    )
    .bind::<Text, _>(queue)
    .bind::<Text, _>(payload.to_string())
    .bind::<Integer, _>(max_attempts)
    .bind::<Text, _>(key)
    .cached()
    .load(conn)
    .await?;
    Ok(!rows.is_empty())
}

/// Deletes up to `batch` finished jobs: done ones finished more than `done_secs` ago, failed
/// or killed ones more than `failed_secs` ago (apalis-postgres never deletes them); returns
/// how many.
pub async fn purge_finished(
    conn: &mut AsyncPgConnection,
    done_secs: i64,
    failed_secs: i64,
    batch: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM apalis.jobs WHERE id IN (
            SELECT id FROM apalis.jobs
             WHERE (status = 'Done' AND done_at < now() - make_interval(secs => $1))
                OR (status IN ('Failed', 'Killed')
                    AND coalesce(done_at, run_at) < now() - make_interval(secs => $2))
             LIMIT $3)",
    )
    .bind::<diesel::sql_types::BigInt, _>(done_secs)
    .bind::<diesel::sql_types::BigInt, _>(failed_secs)
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .cached()
    .execute(conn)
    .await
}
