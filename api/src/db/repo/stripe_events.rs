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
