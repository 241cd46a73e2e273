//! Consents: an append-only history of each person's decisions per purpose.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct ConsentRow {
    /// What the consent is for, e.g. `marketing.email`.
    #[diesel(sql_type = Text)]
    pub purpose: String,
    /// The version of the text the person agreed to (or refused).
    #[diesel(sql_type = Text)]
    pub version: String,
    /// Given (true) or refused / withdrawn (false).
    #[diesel(sql_type = Bool)]
    pub granted: bool,
    /// When it was recorded.
    #[diesel(sql_type = Timestamptz)]
    pub recorded_at: DateTime<Utc>,
    /// The request that recorded it.
    #[diesel(sql_type = Nullable<Text>)]
    pub request_id: Option<String>,
}

/// Appends a decision of `user`.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    purpose: &str,
    version: &str,
    granted: bool,
    request_id: &str,
) -> QueryResult<ConsentRow> {
    diesel::sql_query(
        "INSERT INTO consents (user_id, id, purpose, version, granted, request_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING purpose, version, granted, recorded_at, request_id",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<SqlUuid, _>(Uuid::now_v7())
    .bind::<Text, _>(purpose)
    .bind::<Text, _>(version)
    .bind::<Bool, _>(granted)
    .bind::<Text, _>(request_id)
    .get_result(conn)
    .await
}

/// The latest decision of `user` per purpose, by purpose.
pub async fn latest(conn: &mut AsyncPgConnection, user: Uuid) -> QueryResult<Vec<ConsentRow>> {
    diesel::sql_query(
        "SELECT DISTINCT ON (purpose) purpose, version, granted, recorded_at, request_id
           FROM consents WHERE user_id = $1
          ORDER BY purpose, id DESC",
    )
    .bind::<SqlUuid, _>(user)
    .load(conn)
    .await
}

/// The decisions of `user`, oldest first, at most `limit`.
pub async fn history(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    limit: i64,
) -> QueryResult<Vec<ConsentRow>> {
    diesel::sql_query(
        "SELECT purpose, version, granted, recorded_at, request_id
           FROM consents WHERE user_id = $1 ORDER BY id LIMIT $2",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)
    .await
}

/// Deletes the history of `user` (erasure); how many rows.
pub async fn delete_all(conn: &mut AsyncPgConnection, user: Uuid) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM consents WHERE user_id = $1")
        .bind::<SqlUuid, _>(user)
        .execute(conn)
        .await
}
