//! Workspace settings (policy and security), the rate limit windows, and API key lookups.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Bytea, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// A row of `workspace_settings`.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct SettingsRow {
    /// The workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// Tokens must carry `mfa` in `amr`.
    #[diesel(sql_type = Bool)]
    pub mfa_required: bool,
    /// Tokens authenticated longer ago are refused.
    #[diesel(sql_type = Nullable<Integer>)]
    pub session_timeout_minutes: Option<i32>,
    /// `addMember` accepts only these domains (empty: any).
    #[diesel(sql_type = Array<Text>)]
    pub allowed_email_domains: Vec<String>,
    /// `addMember` refuses these domains.
    #[diesel(sql_type = Array<Text>)]
    pub blocked_email_domains: Vec<String>,
    /// API keys may be created and used.
    #[diesel(sql_type = Bool)]
    pub api_keys_allowed: bool,
    /// Longest lifetime of a new API key.
    #[diesel(sql_type = Nullable<Integer>)]
    pub api_key_max_lifetime_days: Option<i32>,
    /// Most live API keys.
    #[diesel(sql_type = Nullable<Integer>)]
    pub api_key_max_count: Option<i32>,
    /// Webhook, Slack and e-mail integrations may be created and used.
    #[diesel(sql_type = Bool)]
    pub external_integrations_allowed: bool,
    /// Uploads accepted (MIME types or `.ext`; empty: any).
    #[diesel(sql_type = Array<Text>)]
    pub allowed_upload_types: Vec<String>,
    /// Uploads refused (MIME types or `.ext`).
    #[diesel(sql_type = Array<Text>)]
    pub blocked_upload_types: Vec<String>,
    /// `ApprovalAction`s (stored form) that need a second person's approval.
    #[diesel(sql_type = Array<Text>)]
    pub approval_required_for: Vec<String>,
    /// Hours a pending approval request lives.
    #[diesel(sql_type = Integer)]
    pub approval_expiry_hours: i32,
    /// Reads of billing data are audited too.
    #[diesel(sql_type = Bool)]
    pub audit_billing_reads: bool,
    /// CIDRs requests must come from (empty: any).
    #[diesel(sql_type = Array<Text>)]
    pub ip_allow_list: Vec<String>,
    /// Requests must have arrived over TLS.
    #[diesel(sql_type = Bool)]
    pub require_tls: bool,
    /// Requests per minute per workspace (people) and per API key.
    #[diesel(sql_type = Nullable<Integer>)]
    pub rate_limit_per_minute: Option<i32>,
    /// Requests per minute per API key, when it differs.
    #[diesel(sql_type = Nullable<Integer>)]
    pub api_key_rate_limit_per_minute: Option<i32>,
    /// Declared: the data must be encrypted at rest (the database's and storage's duty).
    #[diesel(sql_type = Bool)]
    pub encryption_at_rest_required: bool,
    /// Declared: clients must come through the organization's VPN.
    #[diesel(sql_type = Bool)]
    pub vpn_required: bool,
    /// Last change.
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

impl SettingsRow {
    /// The defaults (what a workspace without a row has).
    pub fn defaults(ws: Uuid) -> Self {
        Self {
            workspace_id: ws,
            mfa_required: false,
            session_timeout_minutes: None,
            allowed_email_domains: Vec::new(),
            blocked_email_domains: Vec::new(),
            api_keys_allowed: true,
            api_key_max_lifetime_days: None,
            api_key_max_count: None,
            external_integrations_allowed: true,
            allowed_upload_types: Vec::new(),
            blocked_upload_types: Vec::new(),
            approval_required_for: Vec::new(),
            approval_expiry_hours: 72,
            audit_billing_reads: false,
            ip_allow_list: Vec::new(),
            require_tls: false,
            rate_limit_per_minute: None,
            api_key_rate_limit_per_minute: None,
            encryption_at_rest_required: false,
            vpn_required: false,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }
}

/// The settings of `ws` (`None`: all defaults).
pub async fn settings(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<Option<SettingsRow>> {
    diesel::sql_query("SELECT * FROM workspace_settings WHERE workspace_id = $1")
        .bind::<SqlUuid, _>(ws)
        .cached()
        .get_result(conn)
        .await
        .optional()
}

/// The settings of `ws` locked for a change (`None`: all defaults, no row to lock yet).
pub async fn settings_for_update(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
) -> QueryResult<Option<SettingsRow>> {
    diesel::sql_query("SELECT * FROM workspace_settings WHERE workspace_id = $1 FOR UPDATE")
        .bind::<SqlUuid, _>(ws)
        .get_result(conn)
        .await
        .optional()
}

/// Stores `row` (inserted or replaced); `updated_at` becomes now.
pub async fn save_settings(conn: &mut AsyncPgConnection, row: &SettingsRow) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO workspace_settings (workspace_id, mfa_required, session_timeout_minutes,
                allowed_email_domains, blocked_email_domains, api_keys_allowed,
                api_key_max_lifetime_days, api_key_max_count, external_integrations_allowed,
                allowed_upload_types, blocked_upload_types, approval_required_for,
                approval_expiry_hours, audit_billing_reads, ip_allow_list, require_tls,
                rate_limit_per_minute, api_key_rate_limit_per_minute,
                encryption_at_rest_required, vpn_required, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18, $19, $20, now())
         ON CONFLICT (workspace_id) DO UPDATE SET
                mfa_required = excluded.mfa_required,
                session_timeout_minutes = excluded.session_timeout_minutes,
                allowed_email_domains = excluded.allowed_email_domains,
                blocked_email_domains = excluded.blocked_email_domains,
                api_keys_allowed = excluded.api_keys_allowed,
                api_key_max_lifetime_days = excluded.api_key_max_lifetime_days,
                api_key_max_count = excluded.api_key_max_count,
                external_integrations_allowed = excluded.external_integrations_allowed,
                allowed_upload_types = excluded.allowed_upload_types,
                blocked_upload_types = excluded.blocked_upload_types,
                approval_required_for = excluded.approval_required_for,
                approval_expiry_hours = excluded.approval_expiry_hours,
                audit_billing_reads = excluded.audit_billing_reads,
                ip_allow_list = excluded.ip_allow_list,
                require_tls = excluded.require_tls,
                rate_limit_per_minute = excluded.rate_limit_per_minute,
                api_key_rate_limit_per_minute = excluded.api_key_rate_limit_per_minute,
                encryption_at_rest_required = excluded.encryption_at_rest_required,
                vpn_required = excluded.vpn_required,
                updated_at = now()",
    )
    .bind::<SqlUuid, _>(row.workspace_id)
    .bind::<Bool, _>(row.mfa_required)
    .bind::<Nullable<Integer>, _>(row.session_timeout_minutes)
    .bind::<Array<Text>, _>(&row.allowed_email_domains)
    .bind::<Array<Text>, _>(&row.blocked_email_domains)
    .bind::<Bool, _>(row.api_keys_allowed)
    .bind::<Nullable<Integer>, _>(row.api_key_max_lifetime_days)
    .bind::<Nullable<Integer>, _>(row.api_key_max_count)
    .bind::<Bool, _>(row.external_integrations_allowed)
    .bind::<Array<Text>, _>(&row.allowed_upload_types)
    .bind::<Array<Text>, _>(&row.blocked_upload_types)
    .bind::<Array<Text>, _>(&row.approval_required_for)
    .bind::<Integer, _>(row.approval_expiry_hours)
    .bind::<Bool, _>(row.audit_billing_reads)
    .bind::<Array<Text>, _>(&row.ip_allow_list)
    .bind::<Bool, _>(row.require_tls)
    .bind::<Nullable<Integer>, _>(row.rate_limit_per_minute)
    .bind::<Nullable<Integer>, _>(row.api_key_rate_limit_per_minute)
    .bind::<Bool, _>(row.encryption_at_rest_required)
    .bind::<Bool, _>(row.vpn_required)
    .execute(conn)
    .await
    .map(|_| ())
}

/// What a lease took from a rate limit window.
#[derive(QueryableByName)]
pub struct Lease {
    /// Requests granted by this lease (0: the window's budget is spent).
    #[diesel(sql_type = BigInt)]
    pub granted: i64,
}

/// Takes up to `want` requests of `budget` from `scope`'s window starting at `start`, in one
/// statement. The grant is computed from the locked row, so concurrent leases never hand out
/// more than the budget.
pub async fn lease(
    conn: &mut AsyncPgConnection,
    scope: Uuid,
    start: DateTime<Utc>,
    want: i64,
    budget: i64,
) -> QueryResult<i64> {
    let lease: Option<Lease> = diesel::sql_query(
        "INSERT INTO rate_limit_windows AS w (scope, window_start, used, granted)
         VALUES ($1, $2, LEAST($3, $4), LEAST($3, $4))
         ON CONFLICT (scope, window_start) DO UPDATE
            SET granted = LEAST($3, $4 - w.used), used = LEAST(w.used + $3, $4)
          WHERE w.used < $4
         RETURNING w.granted",
    )
    .bind::<SqlUuid, _>(scope)
    .bind::<Timestamptz, _>(start)
    .bind::<BigInt, _>(want)
    .bind::<BigInt, _>(budget)
    .cached()
    .get_result(conn)
    .await
    .optional()?;
    Ok(lease.map_or(0, |l| l.granted))
}

/// An API key as authentication reads it.
#[derive(Debug, Clone, QueryableByName)]
pub struct KeyAuth {
    /// The key.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Its workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// Its service-account user.
    #[diesel(sql_type = SqlUuid)]
    pub user_id: Uuid,
    /// SHA-256 of the whole key.
    #[diesel(sql_type = Bytea)]
    pub secret_hash: Vec<u8>,
    /// Expiry.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// The approval request the key waits for (it authenticates nothing meanwhile).
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub pending_approval_id: Option<Uuid>,
}

/// The key with `prefix`, if its workspace is live.
pub async fn key_by_prefix(
    conn: &mut AsyncPgConnection,
    prefix: &str,
) -> QueryResult<Option<KeyAuth>> {
    diesel::sql_query(
        "SELECT k.id, k.workspace_id, k.user_id, k.secret_hash, k.expires_at, k.revoked_at,
                k.pending_approval_id
           FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id AND w.deleted_at IS NULL
          WHERE k.prefix = $1",
    )
    .bind::<Text, _>(prefix)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// Stores the last use of keys (the latest time wins).
pub async fn touch_keys(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    at: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE api_keys SET last_used_at = $2
          WHERE id = ANY($1) AND (last_used_at IS NULL OR last_used_at < $2)",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(ids)
    .bind::<Timestamptz, _>(at)
    .execute(conn)
    .await
}
