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
