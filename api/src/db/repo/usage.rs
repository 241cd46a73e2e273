//! Usage counters, caps and the usage ledger. The allocation path is two statements under
//! row locks taken in one global order (organization id), so concurrent allocations on
//! overlapping paths queue instead of deadlocking.

use crate::db::cached::CachedExt;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::models::AuditEventRow;

/// A counter row on an allocation path, read under its row lock.
#[derive(Debug, Clone, QueryableByName)]
pub struct LockedCounter {
    /// Organization.
    #[diesel(sql_type = SqlUuid)]
    pub organization_id: Uuid,
    /// Its own usage.
    #[diesel(sql_type = BigInt)]
    pub direct: i64,
    /// Its subtree's usage.
    #[diesel(sql_type = BigInt)]
    pub subtree: i64,
    /// Its cap.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub limit: Option<i64>,
}

/// Locks (creating them if needed) the counters of `orgs` for one resource and window, in
/// organization-id order, and returns their current values. New rows take the cap from
/// `organization_limits`.
pub async fn lock_counters(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    orgs: &[Uuid],
    resource: &str,
    period: DateTime<Utc>,
) -> QueryResult<Vec<LockedCounter>> {
    diesel::sql_query(
        "INSERT INTO usage_counters AS c (organization_id, resource, period_start, workspace_id, \"limit\")
         SELECT p.id, $2, $3, $4,
                (SELECT l.\"limit\" FROM organization_limits l WHERE l.organization_id = p.id AND l.resource = $2)
           FROM unnest($1::uuid[]) AS p(id) ORDER BY p.id
         ON CONFLICT (organization_id, resource, period_start) DO UPDATE SET direct = c.direct
         RETURNING c.organization_id, c.direct, c.subtree, c.\"limit\"",
    )
    .bind::<Array<SqlUuid>, _>(orgs)
    .bind::<Text, _>(resource)
    .bind::<Timestamptz, _>(period)
    .bind::<SqlUuid, _>(ws)
    .cached()
    .load(conn)
    .await
}

/// One recorded change of usage, for `check_and_apply`.
pub struct Application<'a> {
    /// Workspace.
    pub workspace_id: Uuid,
    /// The organization whose direct usage changes.
    pub organization_id: Uuid,
    /// It and all its ancestors.
    pub path: &'a [Uuid],
    /// Resource key.
    pub resource: &'a str,
    /// Window.
    pub period: DateTime<Utc>,
    /// Change (positive allocates, negative releases).
    pub delta: i64,
    /// Ledger entry id.
    pub event_id: Uuid,
    /// The audit event of the mutation.
    pub audit: &'a AuditEventRow,
    /// Caller, idempotency key and result to store with the change, if a key was given.
    pub completion: Option<(Uuid, &'a str, &'a serde_json::Value)>,
}

/// A counter changed by `check_and_apply`, with its values after the change (what quota
/// warnings compare with the cap, at no extra statement).
#[derive(Debug, Clone, QueryableByName)]
pub struct Applied {
    /// Organization.
    #[diesel(sql_type = SqlUuid)]
    pub organization_id: Uuid,
    /// Its subtree's usage after the change.
    #[diesel(sql_type = BigInt)]
    pub subtree: i64,
    /// Its cap.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub limit: Option<i64>,
}

/// (PostgreSQL checks a proposed row's constraints before it finds the conflict, so rows
/// proposed only because they exist carry harmless values; the update does the work.)
///
/// Checks and applies a change in one statement: every counter of the path is locked in
/// organization-id order (created if missing, taking its cap from `organization_limits`)
/// and changed only if, for an allocation, its cap leaves room, and for a release, the
/// organization's own usage stays non-negative. The ledger entry, the audit event and the
/// result under the idempotency key are written only when every counter changed. Returns the counters
/// that changed: fewer than the path means the change was refused (roll back).
pub async fn check_and_apply(
    conn: &mut AsyncPgConnection,
    a: &Application<'_>,
) -> QueryResult<Vec<Applied>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH applied AS (
                INSERT INTO usage_counters AS c (organization_id, resource, period_start, workspace_id, direct, subtree, \"limit\")
                SELECT p.id, $4, $6, $1, CASE WHEN p.id = $2 THEN GREATEST($5, 0) ELSE 0 END, GREATEST($5, 0), l.\"limit\"
                  FROM unnest($3::uuid[]) AS p(id)
                  LEFT JOIN organization_limits l ON l.organization_id = p.id AND l.resource = $4
                  LEFT JOIN usage_counters e ON e.organization_id = p.id AND e.resource = $4 AND e.period_start = $6
                 WHERE e.organization_id IS NOT NULL OR ($5 > 0 AND (l.\"limit\" IS NULL OR $5 <= l.\"limit\"))
                 ORDER BY p.id
                ON CONFLICT (organization_id, resource, period_start) DO UPDATE
                   SET subtree = c.subtree + $5,
                       direct = c.direct + CASE WHEN c.organization_id = $2 THEN $5 ELSE 0 END
                 WHERE ($5 < 0 OR ((c.\"limit\" IS NULL OR c.subtree + $5 <= c.\"limit\") AND c.subtree + $5 <= 2147483647))
                   AND (c.organization_id <> $2 OR c.direct + $5 >= 0)
                   AND c.subtree + $5 >= c.direct + CASE WHEN c.organization_id = $2 THEN $5 ELSE 0 END
                RETURNING c.organization_id, c.subtree, c.\"limit\"
             ), complete AS (
                SELECT count(*) = cardinality($3::uuid[]) AS ok FROM applied
             ), ev AS (
                INSERT INTO usage_events (workspace_id, id, organization_id, resource, period_start, delta, actor_id, request_id)
                SELECT $1, $7, $2, $4, $6, $5, $8, $9 FROM complete WHERE ok
             ), au AS ({audit}), idem AS ({store})
             SELECT organization_id, subtree, \"limit\" FROM applied",
            audit = super::audit::insert_sql(10, "(SELECT ok FROM complete)"),
            store = super::idempotency::store_sql(18, "(SELECT ok FROM complete)"),
        )
    });
    let q = diesel::sql_query(SQL.as_str())
        .into_boxed()
        .bind::<SqlUuid, _>(a.workspace_id)
        .bind::<SqlUuid, _>(a.organization_id)
        .bind::<Array<SqlUuid>, _>(a.path)
        .bind::<Text, _>(a.resource)
        .bind::<BigInt, _>(a.delta)
        .bind::<Timestamptz, _>(a.period)
        .bind::<SqlUuid, _>(a.event_id)
        .bind::<Nullable<SqlUuid>, _>(a.audit.actor_id)
        .bind::<Nullable<Text>, _>(a.audit.request_id.as_deref());
    let q = super::audit::bind_event(q, a.audit);
    super::idempotency::bind_store(q, a.completion)
        .cached()
        .load(conn)
        .await
}

/// The counter of one organization (after a refused change: the values that refused it).
pub async fn counter(
    conn: &mut AsyncPgConnection,
    org: Uuid,
    resource: &str,
    period: DateTime<Utc>,
) -> QueryResult<Option<LockedCounter>> {
    diesel::sql_query(
        "SELECT organization_id, direct, subtree, \"limit\" FROM usage_counters
          WHERE organization_id = $1 AND resource = $2 AND period_start = $3",
    )
    .bind::<SqlUuid, _>(org)
    .bind::<Text, _>(resource)
    .bind::<Timestamptz, _>(period)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// Adds `delta` to the subtree counters of `orgs` (used by moves; counters must be locked).
pub async fn adjust_subtree(
    conn: &mut AsyncPgConnection,
    orgs: &[Uuid],
    resource: &str,
    period: DateTime<Utc>,
    delta: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE usage_counters SET subtree = subtree + $4
          WHERE organization_id = ANY($1) AND resource = $2 AND period_start = $3",
    )
    .bind::<Array<SqlUuid>, _>(orgs)
    .bind::<Text, _>(resource)
    .bind::<Timestamptz, _>(period)
    .bind::<BigInt, _>(delta)
    .cached()
    .execute(conn)
    .await
}

/// Sets or clears an organization's cap: on its counter of the given window (which must be
/// locked) and in `organization_limits` (which later windows copy).
pub async fn set_limit(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    org: Uuid,
    resource: &str,
    period: DateTime<Utc>,
    limit: Option<i64>,
) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE usage_counters SET \"limit\" = $4 WHERE organization_id = $1 AND resource = $2 AND period_start = $3",
    )
    .bind::<SqlUuid, _>(org)
    .bind::<Text, _>(resource)
    .bind::<Timestamptz, _>(period)
    .bind::<Nullable<BigInt>, _>(limit)
    .cached()
    .execute(conn)
    .await?;
    match limit {
        Some(l) => diesel::sql_query(
            "INSERT INTO organization_limits (organization_id, resource, workspace_id, \"limit\") VALUES ($1, $2, $3, $4)
             ON CONFLICT (organization_id, resource) DO UPDATE SET \"limit\" = EXCLUDED.\"limit\", updated_at = now()",
        )
        .bind::<SqlUuid, _>(org)
        .bind::<Text, _>(resource)
        .bind::<SqlUuid, _>(ws)
        .bind::<BigInt, _>(l)
        .cached()
        .execute(conn)
        .await
        .map(|_| ()),
        None => diesel::sql_query("DELETE FROM organization_limits WHERE organization_id = $1 AND resource = $2")
            .bind::<SqlUuid, _>(org)
            .bind::<Text, _>(resource)
            .cached()
            .execute(conn)
            .await
            .map(|_| ()),
    }
}

crate::positional_row! {
    /// Current usage and caps of organizations: one row per (organization, resource) that
    /// has a counter in one of `periods` or a cap (see `current`).
    #[derive(Debug, Clone)]
    pub struct UsageRow {
        /// Workspace.
        workspace_id: Uuid = SqlUuid,
        /// Organization.
        organization_id: Uuid = SqlUuid,
        /// Resource key.
        resource: String = Text,
        /// Window of the counter, if there is one.
        period_start: Option<DateTime<Utc>> = Nullable<Timestamptz>,
        /// Own usage.
        direct: i64 = BigInt,
        /// Subtree usage.
        subtree: i64 = BigInt,
        /// Cap.
        limit: Option<i64> = Nullable<BigInt>,
    }
}

/// The current window of each resource: (workspace, resource key, window start).
pub type Windows = [(Uuid, String, DateTime<Utc>)];

fn unzip(windows: &Windows) -> (Vec<Uuid>, Vec<&str>, Vec<DateTime<Utc>>) {
    let ws = windows.iter().map(|w| w.0).collect();
    let keys = windows.iter().map(|w| w.1.as_str()).collect();
    let periods = windows.iter().map(|w| w.2).collect();
    (ws, keys, periods)
}

/// Counters of `orgs` in any of `periods` and their caps, in one statement: a counter row
/// per (organization, resource, window) and a cap row (with a null window) per
/// (organization, resource) that has one. Both halves are primary-key lookups by
/// organization; which window is current for each resource is decided by the caller.
pub async fn current(
    conn: &AsyncPgConnection,
    orgs: &[Uuid],
    periods: &[DateTime<Utc>],
) -> QueryResult<Vec<UsageRow>> {
    // The branches name their columns; the outer list, by name, is the decoder's order.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM (
                SELECT workspace_id, organization_id, resource, period_start, direct, subtree,
                       NULL::int8 AS \"limit\"
                  FROM usage_counters WHERE organization_id = ANY($1) AND period_start = ANY($2)
                UNION ALL
                SELECT workspace_id, organization_id, resource, NULL, 0, 0, \"limit\"
                  FROM organization_limits WHERE organization_id = ANY($1)
             ) u",
            UsageRow::select_list()
        )
    });
    diesel::sql_query(SQL.as_str())
        .bind::<Array<SqlUuid>, _>(orgs)
        .bind::<Array<Timestamptz>, _>(periods)
        .cached()
        .load(&mut { conn })
        .await
}

/// A past or current window of one organization's usage.
#[derive(Debug, Clone, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct WindowRow {
    /// Window start.
    #[diesel(sql_type = Timestamptz)]
    pub period_start: DateTime<Utc>,
    /// Own usage.
    #[diesel(sql_type = BigInt)]
    pub direct: i64,
    /// Subtree usage.
    #[diesel(sql_type = BigInt)]
    pub subtree: i64,
}

/// A window of one of several histories asked for at once (`windows_many`).
#[derive(Debug, Clone, QueryableByName)]
pub struct KeyedWindowRow {
    /// Position of the (organization, resource, limit) it answers, from 0.
    #[diesel(sql_type = BigInt)]
    pub key: i64,
    /// The window.
    #[diesel(embed)]
    pub window: WindowRow,
}

/// The newest `limit` windows of several (organization, resource, limit) histories in one
/// statement: one index range scan each, newest first within each.
pub async fn windows_many(
    conn: &mut AsyncPgConnection,
    orgs: &[Uuid],
    resources: &[&str],
    limits: &[i64],
) -> QueryResult<Vec<KeyedWindowRow>> {
    diesel::sql_query(
        "SELECT k.n - 1 AS key, c.period_start, c.direct, c.subtree
           FROM unnest($1::uuid[], $2::text[], $3::bigint[]) WITH ORDINALITY AS k(org, resource, lim, n)
          CROSS JOIN LATERAL (
                SELECT period_start, direct, subtree FROM usage_counters
                 WHERE organization_id = k.org AND resource = k.resource
                 ORDER BY period_start DESC LIMIT k.lim
          ) c
          ORDER BY k.n, c.period_start DESC",
    )
    .bind::<Array<SqlUuid>, _>(orgs)
    .bind::<Array<Text>, _>(resources)
    .bind::<Array<BigInt>, _>(limits)
    .cached()
    .load(conn)
    .await
}

/// Whether any current counter of `org` is non-zero.
pub async fn has_usage(
    conn: &mut AsyncPgConnection,
    org: Uuid,
    windows: &Windows,
) -> QueryResult<bool> {
    let (ws, keys, periods) = unzip(windows);
    #[derive(QueryableByName)]
    struct B {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        b: bool,
    }
    let r: B = diesel::sql_query(
        "SELECT EXISTS (
            SELECT 1 FROM usage_counters c
              JOIN unnest($2::uuid[], $3::text[], $4::timestamptz[]) AS w(ws, res, p)
                ON c.workspace_id = w.ws AND c.resource = w.res AND c.period_start = w.p
             WHERE c.organization_id = $1 AND c.subtree > 0) AS b",
    )
    .bind::<SqlUuid, _>(org)
    .bind::<Array<SqlUuid>, _>(ws)
    .bind::<Array<Text>, _>(keys)
    .bind::<Array<Timestamptz>, _>(periods)
    .cached()
    .get_result(conn)
    .await?;
    Ok(r.b)
}
