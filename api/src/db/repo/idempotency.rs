//! Idempotency keys.

use crate::db::cached::CachedExt;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// An idempotency key to claim in an effect's first statement.
#[derive(Debug, Clone)]
pub struct KeyClaim {
    /// Caller.
    pub caller: uuid::Uuid,
    /// Key.
    pub key: String,
    /// Operation name.
    pub operation: &'static str,
    /// Fingerprint of operation and input.
    pub fingerprint: String,
    /// Lifetime in seconds.
    pub ttl_secs: i64,
}

/// What a key already holds.
#[derive(Debug, QueryableByName)]
pub struct StoredKey {
    /// Operation name.
    #[diesel(sql_type = Text)]
    pub operation: String,
    /// Fingerprint of operation and input.
    #[diesel(sql_type = Text)]
    pub fingerprint: String,
    /// Stored result (always set once the first request committed).
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub response: Option<serde_json::Value>,
    /// The first response's rendering of the mutation field (JSON text).
    #[diesel(sql_type = Nullable<Text>)]
    pub rendered: Option<String>,
    /// When the rendering was settled (stored, or found unfit to store).
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub rendered_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(QueryableByName)]
struct Claimed {
    #[allow(dead_code)]
    #[diesel(sql_type = SqlUuid)]
    caller_id: Uuid,
}

/// Claims `key` for this transaction. Returns `true` when claimed (new, or expired and
/// reused). When another transaction holds the key uncommitted, this waits for it.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    caller: Uuid,
    key: &str,
    operation: &str,
    fingerprint: &str,
    ttl_secs: i64,
) -> QueryResult<bool> {
    let rows: Vec<Claimed> = diesel::sql_query(
        "INSERT INTO idempotency_keys (caller_id, key, operation, fingerprint, response, expires_at)
         VALUES ($1, $2, $3, $4, NULL, now() + make_interval(secs => $5))
         ON CONFLICT (caller_id, key) DO UPDATE
            SET operation = EXCLUDED.operation, fingerprint = EXCLUDED.fingerprint,
                response = NULL, rendered = NULL, rendered_at = NULL,
                   created_at = now(), expires_at = EXCLUDED.expires_at
          WHERE idempotency_keys.expires_at < now()
         RETURNING caller_id",
    )
    .bind::<SqlUuid, _>(caller)
    .bind::<Text, _>(key)
    .bind::<Text, _>(operation)
    .bind::<Text, _>(fingerprint)
    .bind::<BigInt, _>(ttl_secs)
    .cached()
    .load(conn)
    .await?;
    Ok(!rows.is_empty())
}

/// Reads what `key` holds.
pub async fn find(
    conn: &mut AsyncPgConnection,
    caller: Uuid,
    key: &str,
) -> QueryResult<Option<StoredKey>> {
    diesel::sql_query("SELECT operation, fingerprint, response, rendered, rendered_at FROM idempotency_keys WHERE caller_id = $1 AND key = $2")
        .bind::<SqlUuid, _>(caller)
        .bind::<Text, _>(key)
        .cached()
        .get_result(conn)
        .await
        .optional()
}

/// Stores the result of the claimed key.
pub async fn complete(
    conn: &mut AsyncPgConnection,
    caller: Uuid,
    key: &str,
    response: &serde_json::Value,
) -> QueryResult<()> {
    use crate::db::schema::idempotency_keys::dsl as k;
    diesel::update(
        k::idempotency_keys
            .filter(k::caller_id.eq(caller))
            .filter(k::key.eq(key)),
    )
    .set(k::response.eq(Some(response)))
    .execute(conn)
    .await
    .map(|_| ())
}

/// Settles the rendering of a completed key: the first response's JSON text, or `None`
/// when it is not to be replayed as is. Only the first settlement counts. Committed
/// without waiting for the WAL flush.
pub async fn settle_rendering(
    conn: &mut AsyncPgConnection,
    caller: Uuid,
    key: &str,
    rendered: Option<&str>,
) -> QueryResult<()> {
    // A rendering lost in a crash only sends a repeat down the fresh-read path, so its
    // commit need not wait for the WAL flush (`synchronous_commit` off for this statement's
    // own transaction only).
    diesel::sql_query(
        "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
         UPDATE idempotency_keys SET rendered = $3, rendered_at = now()
           FROM relaxed
          WHERE caller_id = $1 AND key = $2 AND rendered_at IS NULL AND response IS NOT NULL",
    )
    .bind::<SqlUuid, _>(caller)
    .bind::<Text, _>(key)
    .bind::<Nullable<Text>, _>(rendered)
    .cached()
    .execute(conn)
    .await
    .map(|_| ())
}

/// Deletes expired keys; returns how many.
pub async fn purge_expired(conn: &mut AsyncPgConnection) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM idempotency_keys WHERE expires_at < now()")
        .cached()
        .execute(conn)
        .await
}
