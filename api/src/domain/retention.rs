//! Retention: how long each kind of data is kept, and the job that deletes what is past it.
//!
//! Per workspace (`RetentionSettings`, days; owners change them):
//! | category | tables | default |
//! |---|---|---|
//! | audit logs | `audit_events` | 7 years |
//! | usage events | `usage_events` (the ledger; counters keep current totals), past windows of `usage_counters`, and the API request counters `api_request_counters` (by day) | 2 years |
//! | execution logs | none yet: a declared requirement for workflow execution logs | 1 year |
//! | workflow data | none yet: a declared requirement | 7 years |
//! | user data | removed members' personal data: their e-mail and name in the workspace's rows, replaced with their pseudonym (`removed_member_scrubs` records it) | 7 years |
//!
//! Also per workspace: notification delivery logs (`notifications`, `notification_deliveries`,
//! `notification_attempts`) [`DELIVERY_LOG_DAYS`] after they ended; analytics snapshots of
//! months past the usage ledger's retention.
//!
//! For the service as a whole (configuration): finished jobs (`JOB_RETENTION_HOURS`,
//! `JOB_FAILED_RETENTION_HOURS`), processed Stripe events (`STRIPE_EVENT_RETENTION_DAYS`),
//! `apalis.workers` rows of workers gone for a day (after the jobs that name them: a job's
//! `lock_by` references its worker), completed billing requests (30 days).
//!
//! With `archive_before_delete`, audit events and the ledger are archived to object storage
//! before they go (`archives`).
//!
//! The cleanup deletes oldest first, in batches of at most `batch` rows per statement, so it
//! never holds many row locks for long; it runs daily (`SCHEDULE_RETENTION`) and catches up by
//! itself.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use super::archives::{self, Category};
use super::audit::{self, Change};
use super::mutation::{self, Effect};
use super::workspaces::require_role;
use super::{Actor, DomainError, DomainResult, Role, Services};
use crate::db::DbPool;
use crate::ids::WorkspaceId;
use crate::storage::Vault;

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
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub archive_before_delete: bool,
}

/// The seed's defaults: 7 years of audit logs, workflow data and user data, 1 year of
/// execution logs; 2 years of the usage ledger.
pub const DEFAULTS: RetentionSettings = RetentionSettings {
    audit_logs_days: 2555,
    usage_events_days: 730,
    execution_logs_days: 365,
    workflow_data_days: 2555,
    user_data_days: 2555,
    archive_before_delete: false,
};

/// Allowed days per category: (field, least, most).
const BOUNDS: [(&str, i32, i32); 5] = [
    ("auditLogsDays", 30, 3650),
    ("usageEventsDays", 30, 3650),
    ("executionLogsDays", 1, 3650),
    ("workflowDataDays", 1, 3650),
    ("userDataDays", 1, 3650),
];

/// A workspace's settings (the defaults without a row).
pub async fn settings_of(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
) -> DomainResult<RetentionSettings> {
    let row: Option<RetentionSettings> = diesel::sql_query(
        "SELECT audit_logs_days, usage_events_days, execution_logs_days, workflow_data_days,
                user_data_days, archive_before_delete
           FROM retention_settings WHERE workspace_id = $1",
    )
    .bind::<SqlUuid, _>(ws)
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.unwrap_or(DEFAULTS))
}

/// Checks days of audit events against `auditLogsDays`' bounds, for input `field` (e.g. the
/// policy's `auditRetentionDays`, which is this setting).
pub(crate) fn check_audit_logs_days(field: &'static str, days: i32) -> DomainResult<()> {
    let (_, least, most) = BOUNDS[0];
    if (least..=most).contains(&days) {
        Ok(())
    } else {
        Err(DomainError::bad_input(
            field,
            format!("{field} must be between {least} and {most} days"),
        ))
    }
}

/// Sets how long `ws` keeps its audit events (other categories keep theirs), in the caller's
/// transaction, which holds the workspace's lock (as `update` does).
pub(crate) async fn set_audit_logs_days(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    days: i32,
) -> DomainResult<()> {
    check_audit_logs_days("auditLogsDays", days)?;
    let s = settings_of(conn, ws).await?;
    store(
        conn,
        ws,
        &RetentionSettings {
            audit_logs_days: days,
            ..s
        },
    )
    .await
}

/// The settings of a workspace the actor manages (owners and admins).
pub async fn read(
    services: &Services,
    actor: &Actor,
    ws: WorkspaceId,
) -> DomainResult<RetentionSettings> {
    let mut conn = services.conn().await?;
    require_role(
        &mut conn,
        actor,
        ws,
        Role::is_manager,
        "read retention settings",
    )
    .await?;
    settings_of(&mut conn, ws.0).await
}

/// Input of `update`: absent categories keep their value.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RetentionChange {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Days per category, in the order of `BOUNDS`.
    pub days: [Option<i32>; 5],
    /// Whether cleanup archives before it deletes.
    pub archive_before_delete: Option<bool>,
}

/// Changes a workspace's retention (owners), audited with the values before and after.
pub async fn update(
    services: &Services,
    actor: &Actor,
    input: RetentionChange,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<RetentionSettings>> {
    for ((field, least, most), days) in BOUNDS.iter().zip(input.days) {
        if let Some(d) = days
            && !(*least..=*most).contains(&d)
        {
            return Err(DomainError::bad_input(
                field,
                format!("{field} must be between {least} and {most} days"),
            ));
        }
    }
    mutation::run(
        services,
        actor,
        "updateRetentionSettings",
        key,
        &input,
        |c, _| -> Effect<'_, _> { Box::pin(update_effect(c, input.clone(), actor.clone())) },
    )
    .await
}

async fn update_effect(
    conn: &mut AsyncPgConnection,
    input: RetentionChange,
    actor: Actor,
) -> DomainResult<RetentionSettings> {
    let ws = input.workspace_id;
    require_role(
        conn,
        &actor,
        ws,
        |r| r == Role::Owner,
        "change retention settings",
    )
    .await?;
    crate::db::repo::workspaces::lock(conn, ws.0)
        .await?
        .ok_or(DomainError::NotFound("workspace"))?;
    let before = settings_of(conn, ws.0).await?;
    let [a, u, e, w, d] = input.days;
    let after = RetentionSettings {
        audit_logs_days: a.unwrap_or(before.audit_logs_days),
        usage_events_days: u.unwrap_or(before.usage_events_days),
        execution_logs_days: e.unwrap_or(before.execution_logs_days),
        workflow_data_days: w.unwrap_or(before.workflow_data_days),
        user_data_days: d.unwrap_or(before.user_data_days),
        archive_before_delete: input
            .archive_before_delete
            .unwrap_or(before.archive_before_delete),
    };
    store(conn, ws.0, &after).await?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "retention.update",
            target_type: "Workspace",
            target_id: ws.encode(),
            summary: json!({"before": before, "after": after}),
            actor: &actor,
        },
    )
    .await?;
    Ok(after)
}

/// Checks every category of `s` against its bounds (`BAD_USER_INPUT` naming the field).
pub fn check(s: &RetentionSettings) -> DomainResult<()> {
    let days = [
        s.audit_logs_days,
        s.usage_events_days,
        s.execution_logs_days,
        s.workflow_data_days,
        s.user_data_days,
    ];
    for ((field, least, most), d) in BOUNDS.iter().zip(days) {
        if !(*least..=*most).contains(&d) {
            return Err(DomainError::bad_input(
                field,
                format!("{field} must be between {least} and {most} days"),
            ));
        }
    }
    Ok(())
}

/// Stores `s` as the retention settings of `ws` (inserted or replaced), in the caller's
/// transaction.
pub(crate) async fn store(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    s: &RetentionSettings,
) -> DomainResult<()> {
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
    .bind::<diesel::sql_types::Bool, _>(s.archive_before_delete)
    .execute(conn)
    .await?;
    Ok(())
}

/// Former members of `ws` removed (or gone) before `cutoff`, not members again and not
/// erased, whose data `ws` holds has not been pseudonymized since their last removal: their
/// e-mail and name in `ws`'s rows are replaced with their pseudonym
/// (`gdpr::erase::forget_in_workspace`); how many.
async fn forget_former_members(
    conn: &mut AsyncPgConnection,
    vault: &Vault,
    ws: Uuid,
    cutoff: DateTime<Utc>,
) -> anyhow::Result<usize> {
    #[derive(QueryableByName)]
    struct Former {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = diesel::sql_types::Text)]
        email: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        name: Option<String>,
        #[diesel(sql_type = Timestamptz)]
        removed_at: DateTime<Utc>,
    }
    let mut total = 0;
    loop {
        let page: Vec<Former> = diesel::sql_query(
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
             ORDER BY u.id LIMIT 100",
        )
        .bind::<SqlUuid, _>(ws)
        .bind::<Timestamptz, _>(cutoff)
        .load(conn)
        .await?;
        if page.is_empty() {
            return Ok(total);
        }
        for f in page {
            super::gdpr::erase::forget_in_workspace(
                conn,
                vault,
                ws,
                f.id,
                &f.email,
                f.name.as_deref(),
            )
            .await?;
            diesel::sql_query(
                "INSERT INTO removed_member_scrubs (workspace_id, user_id, removed_at) VALUES ($1, $2, $3)
                 ON CONFLICT (workspace_id, user_id) DO UPDATE SET removed_at = EXCLUDED.removed_at,
                        scrubbed_at = now()",
            )
            .bind::<SqlUuid, _>(ws)
            .bind::<SqlUuid, _>(f.id)
            .bind::<Timestamptz, _>(f.removed_at)
            .execute(conn)
            .await?;
            total += 1;
        }
    }
}

/// Days a notification's delivery log (deliveries and attempts) is kept once every delivery
/// ended.
pub const DELIVERY_LOG_DAYS: i64 = 90;

/// What one cleanup deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleanup {
    /// Audit events.
    pub audit_events: usize,
    /// Usage ledger entries.
    pub usage_events: usize,
    /// Counters of past windows.
    pub usage_windows: usize,
    /// API request counters (days).
    pub api_counters: usize,
    /// Processed Stripe events.
    pub stripe_events: usize,
    /// Read times of Stripe objects as old as the events deleted.
    pub stripe_reads: usize,
    /// `apalis.workers` rows.
    pub workers: usize,
    /// Rate limit windows that ended an hour ago or more.
    pub rate_limit_windows: usize,
    /// Notifications (with their deliveries and attempts).
    pub notifications: usize,
    /// Analytics snapshots.
    pub analytics_snapshots: usize,
    /// Former members pseudonymized in a workspace's rows.
    pub former_members: usize,
    /// Archives written.
    pub archives: usize,
    /// Statements run (each deletes at most a batch).
    pub batches: usize,
    /// The longest transaction that deleted audit events or ledger entries, in microseconds.
    pub longest_lock_us: u64,
}

/// Deletes, a batch at a time, the rows matched by `sql` (a `DELETE … WHERE ctid IN (SELECT
/// ctid … LIMIT $3)` over workspace `$1` and cut-off `$2`) until a batch comes back short.
async fn drain(
    conn: &mut AsyncPgConnection,
    sql: &str,
    ws: Uuid,
    cutoff: DateTime<Utc>,
    batch: i64,
    batches: &mut usize,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let n = diesel::sql_query(sql)
            .bind::<SqlUuid, _>(ws)
            .bind::<Timestamptz, _>(cutoff)
            .bind::<BigInt, _>(batch)
            .execute(conn)
            .await?;
        *batches += 1;
        total += n;
        if (n as i64) < batch {
            return Ok(total);
        }
    }
}

/// One cleanup as of `now` (tests pass their own clock): every workspace's data past its
/// retention (archived first where the workspace asks for it, see `archives`), then the
/// service's, oldest first, at most `batch` rows per statement.
pub async fn cleanup(
    pool: &DbPool,
    vault: &Vault,
    now: DateTime<Utc>,
    stripe_event_days: i64,
    batch: i64,
) -> anyhow::Result<Cleanup> {
    let mut conn = pool.get().await?;
    let mut done = Cleanup::default();
    let mut after = Uuid::nil();
    loop {
        #[derive(QueryableByName)]
        struct Ws {
            #[diesel(sql_type = SqlUuid)]
            id: Uuid,
        }
        let page: Vec<Ws> =
            diesel::sql_query("SELECT id FROM workspaces WHERE id > $1 ORDER BY id LIMIT 500")
                .bind::<SqlUuid, _>(after)
                .load(&mut conn)
                .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for ws in page {
            let s = settings_of(&mut conn, ws.id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let days = |d: i32| chrono::Duration::days(i64::from(d));
            for (category, kept) in [
                (Category::AuditEvents, s.audit_logs_days),
                (Category::UsageEvents, s.usage_events_days),
            ] {
                let r = archives::retire(
                    &mut conn,
                    vault,
                    ws.id,
                    category,
                    now - days(kept),
                    now,
                    batch,
                    s.archive_before_delete,
                )
                .await?;
                match category {
                    Category::AuditEvents => done.audit_events += r.rows,
                    Category::UsageEvents => done.usage_events += r.rows,
                }
                done.archives += r.archives;
                done.batches += r.batches;
                done.longest_lock_us = done.longest_lock_us.max(r.longest_lock_us);
            }
            // Removed members' personal data, `userDataDays` after their removal.
            done.former_members +=
                forget_former_members(&mut conn, vault, ws.id, now - days(s.user_data_days))
                    .await?;
            // Delivery logs: notifications whose deliveries all ended, with their deliveries and
            // attempts (by cascade).
            done.notifications += drain(
                &mut conn,
                "DELETE FROM notifications WHERE ctid IN (
                    SELECT n.ctid FROM notifications n WHERE n.workspace_id = $1 AND n.created_at < $2
                       AND NOT EXISTS (SELECT 1 FROM notification_deliveries d
                                        WHERE d.notification_id = n.id AND d.status = 'PENDING')
                     ORDER BY n.created_at LIMIT $3)",
                ws.id,
                now - chrono::Duration::days(DELIVERY_LOG_DAYS),
                batch,
                &mut done.batches,
            )
            .await?;
            // Analytics snapshots of months past the usage ledger's retention.
            done.analytics_snapshots += drain(
                &mut conn,
                "DELETE FROM analytics_snapshots WHERE ctid IN (
                    SELECT ctid FROM analytics_snapshots WHERE workspace_id = $1 AND period_start < $2
                     LIMIT $3)",
                ws.id,
                now - days(s.usage_events_days),
                batch,
                &mut done.batches,
            )
            .await?;
            // Past windows of metered resources (allocated ones have one window, at the epoch).
            done.usage_windows += drain(
                &mut conn,
                "DELETE FROM usage_counters WHERE ctid IN (
                    SELECT ctid FROM usage_counters WHERE workspace_id = $1
                       AND period_start > 'epoch' AND period_start < $2
                     LIMIT $3)",
                ws.id,
                now - days(s.usage_events_days),
                batch,
                &mut done.batches,
            )
            .await?;
            // API request counters of days wholly before the cut-off.
            done.api_counters += drain(
                &mut conn,
                "DELETE FROM api_request_counters WHERE ctid IN (
                    SELECT ctid FROM api_request_counters WHERE workspace_id = $1
                       AND day < ($2 AT TIME ZONE 'UTC')::date
                     ORDER BY day LIMIT $3)",
                ws.id,
                now - days(s.usage_events_days),
                batch,
                &mut done.batches,
            )
            .await?;
        }
    }
    done.stripe_events += drain(
        &mut conn,
        "DELETE FROM stripe_events WHERE ctid IN (
            SELECT ctid FROM stripe_events WHERE $1::uuid IS NOT NULL AND processed_at IS NOT NULL
               AND received_at < $2 LIMIT $3)",
        Uuid::nil(),
        now - chrono::Duration::days(stripe_event_days),
        batch,
        &mut done.batches,
    )
    .await?;
    // The read times of Stripe objects (`billing::mirror`) as old as the events kept: an event
    // delivered later than that is read again from Stripe anyway.
    done.stripe_reads += drain(
        &mut conn,
        "DELETE FROM stripe_reads WHERE ctid IN (
            SELECT ctid FROM stripe_reads WHERE $1::uuid IS NOT NULL AND read_at < $2 LIMIT $3)",
        Uuid::nil(),
        now - chrono::Duration::days(stripe_event_days),
        batch,
        &mut done.batches,
    )
    .await?;
    // Workers gone for a day that no job names any more.
    done.workers += drain(
        &mut conn,
        "DELETE FROM apalis.workers w WHERE w.ctid IN (
            SELECT x.ctid FROM apalis.workers x
             WHERE $1::uuid IS NOT NULL AND x.last_seen < $2
               AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = x.id)
             LIMIT $3)",
        Uuid::nil(),
        now - chrono::Duration::days(1),
        batch,
        &mut done.batches,
    )
    .await?;
    // Rate limit windows (`governance::rate_limit`) are read only while current.
    done.rate_limit_windows += drain(
        &mut conn,
        "DELETE FROM rate_limit_windows WHERE ctid IN (
            SELECT ctid FROM rate_limit_windows
             WHERE $1::uuid IS NOT NULL AND window_start < $2 LIMIT $3)",
        Uuid::nil(),
        now - chrono::Duration::hours(1),
        batch,
        &mut done.batches,
    )
    .await?;
    Ok(done)
}
