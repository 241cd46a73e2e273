//! Idempotency keys.

use std::sync::LazyLock;

use crate::db::cached::{BoxedSql as Boxed, CachedExt};
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

/// The key claim, as a statement (or a `WITH` part of one) whose binds are `$first` to
/// `$first + 4` (see [`bind_claim`]): inserts the key, or takes over an expired one, and
/// returns a row (`claimed`) when it claimed it. Without a key (a null `$first + 1`) it does
/// nothing. When another transaction holds the key uncommitted, it waits for that one.
pub fn claim_sql(first: usize) -> String {
    let [caller, key, operation, fingerprint, ttl] = std::array::from_fn(|i| first + i);
    format!(
        "INSERT INTO idempotency_keys (caller_id, key, operation, fingerprint, response, expires_at)
         SELECT ${caller}, ${key}, ${operation}, ${fingerprint}, NULL, now() + make_interval(secs => ${ttl})
          WHERE ${key}::text IS NOT NULL
         ON CONFLICT (caller_id, key) DO UPDATE
            SET operation = EXCLUDED.operation, fingerprint = EXCLUDED.fingerprint,
                response = NULL, rendered = NULL, rendered_at = NULL,
                created_at = now(), expires_at = EXCLUDED.expires_at
          WHERE idempotency_keys.expires_at < now()
         RETURNING true AS claimed"
    )
}

/// Binds the five values of [`claim_sql`] (all null without a claim).
pub fn bind_claim<'a>(q: Boxed<'a>, claim: Option<&'a KeyClaim>) -> Boxed<'a> {
    q.bind::<Nullable<SqlUuid>, _>(claim.map(|c| c.caller))
        .bind::<Nullable<Text>, _>(claim.map(|c| c.key.as_str()))
        .bind::<Nullable<Text>, _>(claim.map(|c| c.operation))
        .bind::<Nullable<Text>, _>(claim.map(|c| c.fingerprint.as_str()))
        .bind::<Nullable<BigInt>, _>(claim.map(|c| c.ttl_secs))
}

/// Storing the result under a claimed key, as a statement (or a `WITH` part of one) whose
/// binds are `$first` to `$first + 2` (see [`bind_store`]), done only when `condition` (SQL)
/// holds.
pub fn store_sql(first: usize, condition: &str) -> String {
    let [caller, key, response] = std::array::from_fn(|i| first + i);
    format!(
        "UPDATE idempotency_keys SET response = ${response}
          WHERE caller_id = ${caller} AND key = ${key} AND {condition}"
    )
}

/// Binds the three values of [`store_sql`]: caller, key and result (all null without a
/// key: nothing is stored).
pub fn bind_store<'a>(
    q: Boxed<'a>,
    completion: Option<(Uuid, &'a str, &'a serde_json::Value)>,
) -> Boxed<'a> {
    q.bind::<Nullable<SqlUuid>, _>(completion.map(|c| c.0))
        .bind::<Nullable<Text>, _>(completion.map(|c| c.1))
        .bind::<Nullable<Jsonb>, _>(completion.map(|c| c.2))
}

#[derive(QueryableByName)]
struct Claimed {
    #[allow(dead_code)]
    #[diesel(sql_type = diesel::sql_types::Bool)]
    claimed: bool,
}

/// Claims `claim` for this transaction (see [`claim_sql`]). Returns `true` when claimed
/// (new, or expired and reused).
pub async fn claim(conn: &mut AsyncPgConnection, claim: &KeyClaim) -> QueryResult<bool> {
    static SQL: LazyLock<String> = LazyLock::new(|| claim_sql(1));
    let rows: Vec<Claimed> = bind_claim(diesel::sql_query(SQL.as_str()).into_boxed(), Some(claim))
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

/// Stores the result of the claimed key (see [`store_sql`]).
pub async fn complete(
    conn: &mut AsyncPgConnection,
    caller: Uuid,
    key: &str,
    response: &serde_json::Value,
) -> QueryResult<()> {
    static SQL: LazyLock<String> = LazyLock::new(|| store_sql(1, "true"));
    bind_store(
        diesel::sql_query(SQL.as_str()).into_boxed(),
        Some((caller, key, response)),
    )
    .cached()
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
