//! Integration settings: webhook endpoints, the Slack webhook, e-mail recipients.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bytea, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// A webhook endpoint (without its secret).
#[derive(Debug, Clone, QueryableByName)]
pub struct EndpointRow {
    /// Its id.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// Where deliveries go.
    #[diesel(sql_type = Text)]
    pub url: String,
    /// Wire names of the subscribed event types (empty: all).
    #[diesel(sql_type = Array<Text>)]
    pub event_types: Vec<String>,
    /// When it was created.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

/// An endpoint's URL and sealed secret, for a delivery.
#[derive(Debug, Clone, QueryableByName)]
pub struct EndpointSecret {
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// Where deliveries go.
    #[diesel(sql_type = Text)]
    pub url: String,
    /// The secret, sealed (`domain::integrations::seal`).
    #[diesel(sql_type = Bytea)]
    pub secret_sealed: Vec<u8>,
}

/// How many endpoints `ws` has.
pub async fn count_endpoints(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let n: N =
        diesel::sql_query("SELECT count(*) AS n FROM webhook_endpoints WHERE workspace_id = $1")
            .bind::<SqlUuid, _>(ws)
            .cached()
            .get_result(conn)
            .await?;
    Ok(n.n)
}

/// Inserts an endpoint; its row.
pub async fn insert_endpoint(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    ws: Uuid,
    url: &str,
    event_types: &[String],
    secret_sealed: &[u8],
    created_by: Uuid,
) -> QueryResult<EndpointRow> {
    diesel::sql_query(
        "INSERT INTO webhook_endpoints (id, workspace_id, url, event_types, secret_sealed, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, workspace_id, url, event_types, created_at",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(ws)
    .bind::<Text, _>(url)
    .bind::<Array<Text>, _>(event_types)
    .bind::<Bytea, _>(secret_sealed)
    .bind::<SqlUuid, _>(created_by)
    .cached()
    .get_result(conn)
    .await
}

/// The endpoints of `ws`, oldest first.
pub async fn endpoints_of(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<Vec<EndpointRow>> {
    diesel::sql_query(
        "SELECT id, workspace_id, url, event_types, created_at FROM webhook_endpoints
          WHERE workspace_id = $1 ORDER BY id",
    )
    .bind::<SqlUuid, _>(ws)
    .cached()
    .load(conn)
    .await
}

/// An endpoint by id.
pub async fn endpoint(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<EndpointRow>> {
    diesel::sql_query(
        "SELECT id, workspace_id, url, event_types, created_at FROM webhook_endpoints WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// An endpoint's URL and sealed secret.
pub async fn endpoint_secret(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<EndpointSecret>> {
    diesel::sql_query(
        "SELECT workspace_id, url, secret_sealed FROM webhook_endpoints WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// Deletes an endpoint of `ws`; whether it existed.
pub async fn delete_endpoint(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    id: Uuid,
) -> QueryResult<bool> {
    let n = diesel::sql_query("DELETE FROM webhook_endpoints WHERE workspace_id = $1 AND id = $2")
        .bind::<SqlUuid, _>(ws)
        .bind::<SqlUuid, _>(id)
        .cached()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// The Slack webhook of a workspace: sealed URL and masked form.
#[derive(Debug, Clone, QueryableByName)]
pub struct SlackRow {
    /// Sealed URL.
    #[diesel(sql_type = Bytea)]
    pub sealed: Vec<u8>,
    /// Masked form.
    #[diesel(sql_type = Text)]
    pub hint: String,
}

/// The Slack webhook of `ws`, if set.
pub async fn slack(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<Option<SlackRow>> {
    diesel::sql_query(
        "SELECT slack_url_sealed AS sealed, slack_url_hint AS hint FROM integration_settings
          WHERE workspace_id = $1 AND slack_url_sealed IS NOT NULL",
    )
    .bind::<SqlUuid, _>(ws)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// Sets (or with `None` clears) the Slack webhook of `ws`.
pub async fn set_slack(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    slack: Option<(&[u8], &str)>,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO integration_settings (workspace_id, slack_url_sealed, slack_url_hint)
         VALUES ($1, $2, $3)
         ON CONFLICT (workspace_id) DO UPDATE SET slack_url_sealed = EXCLUDED.slack_url_sealed,
                slack_url_hint = EXCLUDED.slack_url_hint, updated_at = now()",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Nullable<Bytea>, _>(slack.map(|s| s.0))
    .bind::<Nullable<Text>, _>(slack.map(|s| s.1))
    .cached()
    .execute(conn)
    .await?;
    Ok(())
}

/// The recipients of one category.
#[derive(Debug, Clone, QueryableByName)]
pub struct RecipientsRow {
    /// Stored category.
    #[diesel(sql_type = Text)]
    pub category: String,
    /// Addresses.
    #[diesel(sql_type = Array<Text>)]
    pub addresses: Vec<String>,
}

/// Every category's recipients of `ws` (categories without any left out).
pub async fn recipients_of(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
) -> QueryResult<Vec<RecipientsRow>> {
    diesel::sql_query(
        "SELECT category, addresses FROM notification_recipients WHERE workspace_id = $1",
    )
    .bind::<SqlUuid, _>(ws)
    .cached()
    .load(conn)
    .await
}

/// Replaces the recipients of one category (none: deleted).
pub async fn set_recipients(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    category: &str,
    addresses: &[String],
) -> QueryResult<()> {
    if addresses.is_empty() {
        diesel::sql_query(
            "DELETE FROM notification_recipients WHERE workspace_id = $1 AND category = $2",
        )
        .bind::<SqlUuid, _>(ws)
        .bind::<Text, _>(category)
        .cached()
        .execute(conn)
        .await?;
        return Ok(());
    }
    diesel::sql_query(
        "INSERT INTO notification_recipients (workspace_id, category, addresses) VALUES ($1, $2, $3)
         ON CONFLICT (workspace_id, category) DO UPDATE SET addresses = EXCLUDED.addresses,
                updated_at = now()",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Text, _>(category)
    .bind::<Array<Text>, _>(addresses)
    .cached()
    .execute(conn)
    .await?;
    Ok(())
}
