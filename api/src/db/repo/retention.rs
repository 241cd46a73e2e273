//! Retention settings (`retention_settings`) and the statements of retention cleanup (see
//! `domain::retention`): the pages it walks and the batches it deletes.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// A workspace's retention settings, in days.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, QueryableByName, serde::Serialize, serde::Deserialize,
)]
pub struct RetentionSettings {
    /// Audit events.
    #[diesel(sql_type = Integer)]
    pub audit_logs_days: i32,
    /// The usage ledger.
    #[diesel(sql_type = Integer)]
    pub usage_events_days: i32,
    /// Execution logs (declared).
    #[diesel(sql_type = Integer)]
    pub execution_logs_days: i32,
    /// Workflow data (declared).
    #[diesel(sql_type = Integer)]
    pub workflow_data_days: i32,
    /// Removed members' personal data.
    #[diesel(sql_type = Integer)]
    pub user_data_days: i32,
    /// Whether cleanup archives audit events and the usage ledger before deleting them.
    #[diesel(sql_type = Bool)]
    pub archive_before_delete: bool,
}

/// The stored settings of `ws` (`None` without a row).
pub async fn find(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
) -> QueryResult<Option<RetentionSettings>> {
    diesel::sql_query(
        "SELECT audit_logs_days, usage_events_days, execution_logs_days, workflow_data_days,
                user_data_days, archive_before_delete
           FROM retention_settings WHERE workspace_id = $1",
    )
    .bind::<SqlUuid, _>(ws)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// Stores `s` as the retention settings of `ws` (inserted or replaced).
pub async fn upsert(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    s: &RetentionSettings,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO retention_settings (workspace_id, audit_logs_days, usage_events_days,
                 execution_logs_days, workflow_data_days, user_data_days, archive_before_delete)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (workspace_id) DO UPDATE SET
                 audit_logs_days = EXCLUDED.audit_logs_days, usage_events_days = EXCLUDED.usage_events_days,
                 execution_logs_days = EXCLUDED.execution_logs_days,
                 workflow_data_days = EXCLUDED.workflow_data_days,
                 user_data_days = EXCLUDED.user_data_days,
                 archive_before_delete = EXCLUDED.archive_before_delete, updated_at = now()",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Integer, _>(s.audit_logs_days)
    .bind::<Integer, _>(s.usage_events_days)
    .bind::<Integer, _>(s.execution_logs_days)
    .bind::<Integer, _>(s.workflow_data_days)
    .bind::<Integer, _>(s.user_data_days)
    .bind::<Bool, _>(s.archive_before_delete)
    .cached()
    .execute(conn)
    .await?;
    Ok(())
}

/// The ids of up to `limit` workspaces after `after` (deleted ones included), in id order.
pub async fn workspaces_after(
    conn: &mut AsyncPgConnection,
    after: Uuid,
    limit: i64,
) -> QueryResult<Vec<Uuid>> {
    #[derive(QueryableByName)]
    struct Ws {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    let page: Vec<Ws> =
        diesel::sql_query("SELECT id FROM workspaces WHERE id > $1 ORDER BY id LIMIT $2")
            .bind::<SqlUuid, _>(after)
            .bind::<BigInt, _>(limit)
            .cached()
            .load(conn)
            .await?;
    Ok(page.into_iter().map(|w| w.id).collect())
}

/// A former member of a workspace whose data there waits to be pseudonymized.
#[derive(Debug, Clone, QueryableByName)]
pub struct FormerMember {
    /// The user.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Their e-mail.
    #[diesel(sql_type = Text)]
    pub email: String,
    /// Their name.
    #[diesel(sql_type = Nullable<Text>)]
    pub name: Option<String>,
    /// Their last removal (or leaving) from the workspace.
    #[diesel(sql_type = Timestamptz)]
    pub removed_at: DateTime<Utc>,
}

/// Up to `limit` former members of `ws` (by the audit trail's `member.remove` and
/// `member.leave`) removed before `cutoff`, not members again and not erased, whose data in
/// `ws` has not been pseudonymized since their last removal; in user id order.
pub async fn former_members(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<FormerMember>> {
    diesel::sql_query(
        "SELECT u.id, u.email, u.name, r.removed_at FROM (
            SELECT substr(e.summary->>'userId', 5)::uuid AS user_id, max(e.created_at) AS removed_at
              FROM audit_events e
             WHERE e.workspace_id = $1 AND e.action IN ('member.remove', 'member.leave')
               AND e.summary->>'userId' ~ '^usr_[0-9a-f]{32}$'
             GROUP BY 1) r
          JOIN users u ON u.id = r.user_id
         WHERE r.removed_at < $2
           AND NOT EXISTS (SELECT 1 FROM members m WHERE m.workspace_id = $1 AND m.user_id = r.user_id)
           AND NOT EXISTS (SELECT 1 FROM user_erasures x WHERE x.user_id = r.user_id)
           AND NOT EXISTS (SELECT 1 FROM removed_member_scrubs s
                            WHERE s.workspace_id = $1 AND s.user_id = r.user_id
                              AND s.removed_at >= r.removed_at)
         ORDER BY u.id LIMIT $3",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Timestamptz, _>(cutoff)
    .bind::<BigInt, _>(limit)
    .cached()
    .load(conn)
    .await
}

/// Records that the data of former member `user` in `ws`, removed at `removed_at`, was
/// pseudonymized now.
pub async fn mark_scrubbed(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    user: Uuid,
    removed_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO removed_member_scrubs (workspace_id, user_id, removed_at) VALUES ($1, $2, $3)
         ON CONFLICT (workspace_id, user_id) DO UPDATE SET removed_at = EXCLUDED.removed_at,
                scrubbed_at = now()",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<SqlUuid, _>(user)
    .bind::<Timestamptz, _>(removed_at)
    .cached()
    .execute(conn)
    .await?;
    Ok(())
}

/// Rows cleanup deletes a batch at a time, each kind by one statement of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Notifications of a workspace created before the cut-off whose deliveries all ended,
    /// oldest first (their deliveries and attempts go by cascade).
    DeliveryLogs(Uuid),
    /// Analytics snapshots of a workspace for periods that started before the cut-off.
    AnalyticsSnapshots(Uuid),
    /// Usage counters of a workspace's past windows that started before the cut-off (not
    /// the allocated resources' single window, at the epoch).
    UsageWindows(Uuid),
    /// API request counters of a workspace of days wholly before the cut-off, oldest first.
    ApiCounters(Uuid),
    /// Processed Stripe events received before the cut-off.
    StripeEvents,
    /// Read times of Stripe objects read before the cut-off.
    StripeReads,
    /// `apalis.workers` rows last seen before the cut-off that no job names (a job's
    /// `lock_by` references its worker).
    Workers,
    /// Rate limit windows that started before the cut-off.
    RateLimitWindows,
}

/// Deletes at most `limit` rows of `rows` past `cutoff`; how many.
pub async fn delete_expired(
    conn: &mut AsyncPgConnection,
    rows: Expired,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> QueryResult<usize> {
    let (sql, ws) = match rows {
        // Per workspace: `$1` the workspace, `$2` the cut-off, `$3` the batch.
        Expired::DeliveryLogs(ws) => (
            "DELETE FROM notifications WHERE ctid IN (
                SELECT n.ctid FROM notifications n WHERE n.workspace_id = $1 AND n.created_at < $2
                   AND NOT EXISTS (SELECT 1 FROM notification_deliveries d
                                    WHERE d.notification_id = n.id AND d.status = 'PENDING')
                 ORDER BY n.created_at LIMIT $3)",
            Some(ws),
        ),
        Expired::AnalyticsSnapshots(ws) => (
            "DELETE FROM analytics_snapshots WHERE ctid IN (
                SELECT ctid FROM analytics_snapshots WHERE workspace_id = $1 AND period_start < $2
                 LIMIT $3)",
            Some(ws),
        ),
        Expired::UsageWindows(ws) => (
            "DELETE FROM usage_counters WHERE ctid IN (
                SELECT ctid FROM usage_counters WHERE workspace_id = $1
                   AND period_start > 'epoch' AND period_start < $2
                 LIMIT $3)",
            Some(ws),
        ),
        Expired::ApiCounters(ws) => (
            "DELETE FROM api_request_counters WHERE ctid IN (
                SELECT ctid FROM api_request_counters WHERE workspace_id = $1
                   AND day < ($2 AT TIME ZONE 'UTC')::date
                 ORDER BY day LIMIT $3)",
            Some(ws),
        ),
        // Service-wide: `$1` the cut-off, `$2` the batch.
        Expired::StripeEvents => (
            "DELETE FROM stripe_events WHERE ctid IN (
                SELECT ctid FROM stripe_events WHERE processed_at IS NOT NULL
                   AND received_at < $1 LIMIT $2)",
            None,
        ),
        Expired::StripeReads => (
            "DELETE FROM stripe_reads WHERE ctid IN (
                SELECT ctid FROM stripe_reads WHERE read_at < $1 LIMIT $2)",
            None,
        ),
        Expired::Workers => (
            "DELETE FROM apalis.workers w WHERE w.ctid IN (
                SELECT x.ctid FROM apalis.workers x
                 WHERE x.last_seen < $1
                   AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = x.id)
                 LIMIT $2)",
            None,
        ),
        Expired::RateLimitWindows => (
            "DELETE FROM rate_limit_windows WHERE ctid IN (
                SELECT ctid FROM rate_limit_windows WHERE window_start < $1 LIMIT $2)",
            None,
        ),
    };
    match ws {
        Some(ws) => {
            diesel::sql_query(sql)
                .bind::<SqlUuid, _>(ws)
                .bind::<Timestamptz, _>(cutoff)
                .bind::<BigInt, _>(limit)
                .cached()
                .execute(conn)
                .await
        }
        None => {
            diesel::sql_query(sql)
                .bind::<Timestamptz, _>(cutoff)
                .bind::<BigInt, _>(limit)
                .cached()
                .execute(conn)
                .await
        }
    }
}
