//! Stripe events received by the webhook endpoint.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::cached::CachedExt;

#[derive(QueryableByName)]
struct Inserted {
    #[allow(dead_code)]
    #[diesel(sql_type = Bool)]
    inserted: bool,
}

/// Stores an event unless one with its id is already stored; `true` when stored now.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    id: &str,
    kind: &str,
    api_version: Option<&str>,
    livemode: bool,
    created: DateTime<Utc>,
    payload: &serde_json::Value,
) -> QueryResult<bool> {
    let rows: Vec<Inserted> = diesel::sql_query(
        "INSERT INTO stripe_events (id, type, api_version, livemode, created_at, payload)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO NOTHING
         RETURNING true AS inserted",
    )
    .bind::<Text, _>(id)
    .bind::<Text, _>(kind)
    .bind::<Nullable<Text>, _>(api_version)
    .bind::<Bool, _>(livemode)
    .bind::<Timestamptz, _>(created)
    .bind::<Jsonb, _>(payload)
    .cached()
    .load(conn)
    .await?;
    Ok(!rows.is_empty())
}

/// Marks an event processed (the first time only); `true` when this call marked it.
pub async fn mark_processed(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "UPDATE stripe_events SET processed_at = now() WHERE id = $1 AND processed_at IS NULL",
    )
    .bind::<Text, _>(id)
    .cached()
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// A stored event.
#[derive(Debug, Clone, QueryableByName)]
pub struct StoredEvent {
    /// `evt_…`.
    #[diesel(sql_type = Text)]
    pub id: String,
    /// Its type.
    #[diesel(sql_type = Text, column_name = "type")]
    pub kind: String,
    /// Stripe's `created`.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// The event as delivered.
    #[diesel(sql_type = Jsonb)]
    pub payload: serde_json::Value,
    /// When it was applied.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub processed_at: Option<DateTime<Utc>>,
}

/// An event by id.
pub async fn find(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<Option<StoredEvent>> {
    diesel::sql_query(
        "SELECT id, type, created_at, payload, processed_at FROM stripe_events WHERE id = $1",
    )
    .bind::<Text, _>(id)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// Locks an unprocessed event for its processing; `false` when it is processed already.
pub async fn lock_unprocessed(conn: &mut AsyncPgConnection, id: &str) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Locked {
        #[allow(dead_code)]
        #[diesel(sql_type = Text)]
        id: String,
    }
    let rows: Vec<Locked> = diesel::sql_query(
        "SELECT id FROM stripe_events WHERE id = $1 AND processed_at IS NULL FOR UPDATE",
    )
    .bind::<Text, _>(id)
    .cached()
    .load(conn)
    .await?;
    Ok(!rows.is_empty())
}

/// An event's next attempt after a failure that is not the event's fault (Stripe unreachable
/// or answering another object): counts the failure, keeps `error` (cut to 1,000
/// characters) and makes the attempt due after `min(2^failures, max_delay_secs)` seconds;
/// `(failures, delay in seconds)`, or `None` when the event is processed already.
pub async fn record_failure(
    conn: &mut AsyncPgConnection,
    id: &str,
    error: &str,
    max_delay_secs: i64,
) -> QueryResult<Option<(i32, i64)>> {
    #[derive(QueryableByName)]
    struct Failed {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        failures: i32,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        delay: i64,
    }
    let rows: Vec<Failed> = diesel::sql_query(
        "WITH d AS (
            SELECT e.id, e.failures + 1 AS failures,
                   least(power(2, least(e.failures + 1, 30))::bigint, greatest($3, 1)) AS delay
              FROM stripe_events e WHERE e.id = $1 AND e.processed_at IS NULL FOR UPDATE)
         UPDATE stripe_events e
            SET failures = d.failures, last_error = left($2, 1000),
                retry_at = now() + make_interval(secs => d.delay)
           FROM d WHERE e.id = d.id
         RETURNING d.failures, d.delay",
    )
    .bind::<Text, _>(id)
    .bind::<Text, _>(error)
    .bind::<diesel::sql_types::BigInt, _>(max_delay_secs)
    .cached()
    .load(conn)
    .await?;
    Ok(rows.into_iter().next().map(|r| (r.failures, r.delay)))
}

/// The job key of attempt `failures` of event `id` (the first attempt's key is the id).
pub fn attempt_key(id: &str, failures: i32) -> String {
    if failures == 0 {
        id.to_string()
    } else {
        format!("{id}#{failures}")
    }
}

/// Unprocessed events received between `horizon_secs` and `grace_secs` ago whose current
/// attempt has no job left to run it (it crashed its process past its run budget, its worker
/// lost it, or a retry was never enqueued), and that were not due again within `grace_secs`:
/// up to `limit` of them get their next attempt counted (as [`record_failure`] would, the
/// attempt due now); their ids and failure counts. Rows locked by another sweep are skipped.
pub async fn sweep(
    conn: &mut AsyncPgConnection,
    queue: &str,
    horizon_secs: i64,
    grace_secs: i64,
    max_delay_secs: i64,
    limit: i64,
) -> QueryResult<Vec<(String, i32)>> {
    #[derive(QueryableByName)]
    struct Swept {
        #[diesel(sql_type = Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        failures: i32,
    }
    let rows: Vec<Swept> = diesel::sql_query(
        "WITH due AS (
            SELECT e.id FROM stripe_events e
             WHERE e.processed_at IS NULL
               AND e.received_at > now() - make_interval(secs => $2)
               AND e.received_at < now() - make_interval(secs => $3)
               AND (e.retry_at IS NULL OR e.retry_at < now() - make_interval(secs => $3))
               AND NOT EXISTS (
                   SELECT 1 FROM apalis.jobs j
                    WHERE j.job_type = $1
                      AND j.idempotency_key = CASE WHEN e.failures = 0 THEN e.id
                                                   ELSE e.id || '#' || e.failures END
                      AND (j.status IN ('Pending', 'Queued', 'Running')
                           OR (j.status = 'Failed' AND j.attempts < j.max_attempts)))
             ORDER BY e.received_at
             LIMIT $5
             FOR UPDATE SKIP LOCKED)
         UPDATE stripe_events e
            SET failures = e.failures + 1,
                last_error = coalesce(e.last_error, 'its job ended without applying it'),
                retry_at = now() + make_interval(
                    secs => least(power(2, least(e.failures + 1, 30))::bigint, greatest($4, 1)))
           FROM due WHERE e.id = due.id
         RETURNING e.id, e.failures",
    )
    .bind::<Text, _>(queue)
    .bind::<diesel::sql_types::BigInt, _>(horizon_secs)
    .bind::<diesel::sql_types::BigInt, _>(grace_secs)
    .bind::<diesel::sql_types::BigInt, _>(max_delay_secs)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .cached()
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.failures)).collect())
}

/// Unprocessed events: how many, and how many of them were received more than `horizon_secs`
/// ago (no longer retried).
pub async fn unprocessed(
    conn: &mut AsyncPgConnection,
    horizon_secs: i64,
) -> QueryResult<(i64, i64)> {
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        abandoned: i64,
    }
    let c: Counts = diesel::sql_query(
        "SELECT count(*) AS n,
                count(*) FILTER (WHERE received_at <= now() - make_interval(secs => $1)) AS abandoned
           FROM stripe_events WHERE processed_at IS NULL",
    )
    .bind::<diesel::sql_types::BigInt, _>(horizon_secs)
    .cached()
    .get_result(conn)
    .await?;
    Ok((c.n, c.abandoned))
}

/// Claims the application of the state of Stripe object `object_id` read at `read_at`:
/// `true` (and the time kept) unless a state read later was applied already.
pub async fn claim_read(
    conn: &mut AsyncPgConnection,
    object_id: &str,
    read_at: DateTime<Utc>,
) -> QueryResult<bool> {
    let rows: Vec<Inserted> = diesel::sql_query(
        "INSERT INTO stripe_reads (object_id, read_at) VALUES ($1, $2)
         ON CONFLICT (object_id) DO UPDATE SET read_at = EXCLUDED.read_at
          WHERE stripe_reads.read_at <= EXCLUDED.read_at
         RETURNING true AS inserted",
    )
    .bind::<Text, _>(object_id)
    .bind::<Timestamptz, _>(read_at)
    .cached()
    .load(conn)
    .await?;
    Ok(!rows.is_empty())
}
