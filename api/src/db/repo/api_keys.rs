//! API keys as their workspace manages them: creation (with the key's service-account user
//! and membership), lists, revocation, and activation after an approval. Authentication
//! reads keys through `governance::key_by_prefix`.
//!
//! No statement here ever returns `secret_hash`: a row read for display has no such field.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bytea, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// The columns of [`ApiKeyRow`] (everything but the hash), for `SELECT` and `RETURNING`.
macro_rules! columns {
    () => {
        "id, workspace_id, user_id, name, role, prefix, created_by, created_at, expires_at,
         revoked_at, revoked_by, last_used_at, pending_approval_id"
    };
}

/// An API key without its hash.
#[derive(Debug, Clone, PartialEq, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct ApiKeyRow {
    /// The key.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Its workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// Its service-account user.
    #[diesel(sql_type = SqlUuid)]
    pub user_id: Uuid,
    /// Display name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// `OWNER`, `ADMIN` or `VIEWER`.
    #[diesel(sql_type = Text)]
    pub role: String,
    /// `wsk_` and 12 hex digits: names the key in logs and lists.
    #[diesel(sql_type = Text)]
    pub prefix: String,
    /// Who created it.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub created_by: Option<Uuid>,
    /// When.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who revoked it (`None` with `revoked_at`: its approval was rejected or expired).
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub revoked_by: Option<Uuid>,
    /// Last authenticated use (stored with the API usage counters' flush).
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// The approval request it waits for (it authenticates nothing meanwhile).
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub pending_approval_id: Option<Uuid>,
}

/// Inserts the service-account user of key `key`: subject `apikey|<key>` (never `NULL`,
/// which would make it a pending invitation that a sign-in with its e-mail could claim),
/// an unverified `.invalid` address, and `service_account` set, so that provisioning never
/// signs a token in as it.
pub async fn insert_service_user(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    key: Uuid,
    email: &str,
    name: &str,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO users (id, subject, email, name, email_verified, service_account)
         VALUES ($1, 'apikey|' || $2::text, $3, $4, false, true)",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(key)
    .bind::<Text, _>(email)
    .bind::<Text, _>(name)
    .cached()
    .execute(conn)
    .await
    .map(|_| ())
}

/// What [`insert`] stores.
pub struct NewKeyRow<'a> {
    /// The key.
    pub id: Uuid,
    /// Its workspace.
    pub workspace_id: Uuid,
    /// Its service-account user.
    pub user_id: Uuid,
    /// Display name.
    pub name: &'a str,
    /// Stored role.
    pub role: &'a str,
    /// Identifying prefix.
    pub prefix: &'a str,
    /// SHA-256 of the whole key.
    pub secret_hash: &'a [u8],
    /// Creator.
    pub created_by: Uuid,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Approval request it waits for.
    pub pending_approval_id: Option<Uuid>,
}

/// Stores a key.
pub async fn insert(conn: &mut AsyncPgConnection, k: &NewKeyRow<'_>) -> QueryResult<ApiKeyRow> {
    diesel::sql_query(concat!(
        "INSERT INTO api_keys (id, workspace_id, user_id, name, role, prefix, secret_hash,
                               created_by, expires_at, pending_approval_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         RETURNING ",
        columns!()
    ))
    .bind::<SqlUuid, _>(k.id)
    .bind::<SqlUuid, _>(k.workspace_id)
    .bind::<SqlUuid, _>(k.user_id)
    .bind::<Text, _>(k.name)
    .bind::<Text, _>(k.role)
    .bind::<Text, _>(k.prefix)
    .bind::<Bytea, _>(k.secret_hash)
    .bind::<SqlUuid, _>(k.created_by)
    .bind::<Nullable<Timestamptz>, _>(k.expires_at)
    .bind::<Nullable<SqlUuid>, _>(k.pending_approval_id)
    .cached()
    .get_result(conn)
    .await
}

/// Keys of `ws` that still count against its maximum: not revoked, not expired (keys
/// waiting for approval count).
pub async fn count_live(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let r: N = diesel::sql_query(
        "SELECT count(*) AS n FROM api_keys
          WHERE workspace_id = $1 AND revoked_at IS NULL
            AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind::<SqlUuid, _>(ws)
    .cached()
    .get_result(conn)
    .await?;
    Ok(r.n)
}

/// Key `id` of a live workspace, locked for a change.
pub async fn find_for_update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<ApiKeyRow>> {
    diesel::sql_query(concat!(
        "SELECT ",
        columns!(),
        " FROM api_keys k
          WHERE k.id = $1
            AND EXISTS (SELECT 1 FROM workspaces w WHERE w.id = k.workspace_id AND w.deleted_at IS NULL)
          FOR UPDATE OF k"
    ))
    .bind::<SqlUuid, _>(id)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// The key created under approval request `request`, locked for a change.
pub async fn find_pending_for_update(
    conn: &mut AsyncPgConnection,
    request: Uuid,
) -> QueryResult<Option<ApiKeyRow>> {
    diesel::sql_query(concat!(
        "SELECT ",
        columns!(),
        " FROM api_keys WHERE pending_approval_id = $1 FOR UPDATE"
    ))
    .bind::<SqlUuid, _>(request)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// Revokes key `id` (by `by`; `None`: the system) and removes its service account's
/// membership, so that it reaches nothing even where the key is still cached.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    by: Option<Uuid>,
) -> QueryResult<ApiKeyRow> {
    let row: ApiKeyRow = diesel::sql_query(concat!(
        "UPDATE api_keys SET revoked_at = now(), revoked_by = $2
          WHERE id = $1
         RETURNING ",
        columns!()
    ))
    .bind::<SqlUuid, _>(id)
    .bind::<Nullable<SqlUuid>, _>(by)
    .cached()
    .get_result(conn)
    .await?;
    diesel::sql_query("DELETE FROM members WHERE workspace_id = $1 AND user_id = $2")
        .bind::<SqlUuid, _>(row.workspace_id)
        .bind::<SqlUuid, _>(row.user_id)
        .cached()
        .execute(conn)
        .await?;
    Ok(row)
}

/// Activates key `id` (its approval request was approved).
pub async fn activate(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<ApiKeyRow> {
    diesel::sql_query(concat!(
        "UPDATE api_keys SET pending_approval_id = NULL WHERE id = $1 RETURNING ",
        columns!()
    ))
    .bind::<SqlUuid, _>(id)
    .cached()
    .get_result(conn)
    .await
}

/// Keys of `ws`, newest first, after key `after` (of the same workspace).
pub async fn page(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<ApiKeyRow>> {
    diesel::sql_query(concat!(
        "SELECT ",
        columns!(),
        " FROM api_keys
          WHERE workspace_id = $1
            AND ($2::uuid IS NULL OR (created_at, id) < (SELECT created_at, id FROM api_keys
                                                          WHERE id = $2 AND workspace_id = $1))
          ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind::<SqlUuid, _>(ws)
    .bind::<Nullable<SqlUuid>, _>(after)
    .bind::<BigInt, _>(limit)
    .cached()
    .load(conn)
    .await
}

/// Whether `user` is the service account of an API key.
pub async fn is_service_account(conn: &mut AsyncPgConnection, user: Uuid) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct B {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        b: bool,
    }
    let r: Option<B> = diesel::sql_query("SELECT service_account AS b FROM users WHERE id = $1")
        .bind::<SqlUuid, _>(user)
        .cached()
        .get_result(conn)
        .await
        .optional()?;
    Ok(r.is_some_and(|r| r.b))
}
