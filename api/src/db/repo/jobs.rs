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
