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
use diesel_async::AsyncPgConnection;
use serde_json::json;
use uuid::Uuid;

use super::archives::{self, Category};
use super::audit::{self, Change};
use super::mutation::{self, Effect};
use super::workspaces::require_role;
use super::{Actor, DomainError, DomainResult, Role, Services};
use crate::db::DbPool;
use crate::db::repo::retention::{self as repo, Expired};
use crate::ids::WorkspaceId;
use crate::storage::Vault;

pub use crate::db::repo::retention::RetentionSettings;

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
    Ok(repo::find(conn, ws).await?.unwrap_or(DEFAULTS))
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
    repo::upsert(conn, ws, s).await?;
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
    let mut total = 0;
    loop {
        let page = repo::former_members(conn, ws, cutoff, FORMER_MEMBERS_PAGE).await?;
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
            repo::mark_scrubbed(conn, ws, f.id, f.removed_at).await?;
            total += 1;
        }
    }
}

/// Former members pseudonymized per statement that finds them.
const FORMER_MEMBERS_PAGE: i64 = 100;

/// Workspaces cleanup reads per statement.
const WORKSPACES_PAGE: i64 = 500;

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

/// Deletes `rows` past `cutoff`, a batch at a time, until a batch comes back short.
async fn drain(
    conn: &mut AsyncPgConnection,
    rows: Expired,
    cutoff: DateTime<Utc>,
    batch: i64,
    batches: &mut usize,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let n = repo::delete_expired(conn, rows, cutoff, batch).await?;
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
        let page = repo::workspaces_after(&mut conn, after, WORKSPACES_PAGE).await?;
        let Some(&last) = page.last() else { break };
        after = last;
        for ws in page {
            let s = settings_of(&mut conn, ws)
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
                    ws,
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
                forget_former_members(&mut conn, vault, ws, now - days(s.user_data_days)).await?;
            // Delivery logs: notifications whose deliveries all ended, with their deliveries and
            // attempts (by cascade).
            done.notifications += drain(
                &mut conn,
                Expired::DeliveryLogs(ws),
                now - chrono::Duration::days(DELIVERY_LOG_DAYS),
                batch,
                &mut done.batches,
            )
            .await?;
            // Analytics snapshots of months past the usage ledger's retention.
            done.analytics_snapshots += drain(
                &mut conn,
                Expired::AnalyticsSnapshots(ws),
                now - days(s.usage_events_days),
                batch,
                &mut done.batches,
            )
            .await?;
            // Past windows of metered resources (allocated ones have one window, at the epoch).
            done.usage_windows += drain(
                &mut conn,
                Expired::UsageWindows(ws),
                now - days(s.usage_events_days),
                batch,
                &mut done.batches,
            )
            .await?;
            // API request counters of days wholly before the cut-off.
            done.api_counters += drain(
                &mut conn,
                Expired::ApiCounters(ws),
                now - days(s.usage_events_days),
                batch,
                &mut done.batches,
            )
            .await?;
        }
    }
    done.stripe_events += drain(
        &mut conn,
        Expired::StripeEvents,
        now - chrono::Duration::days(stripe_event_days),
        batch,
        &mut done.batches,
    )
    .await?;
    // The read times of Stripe objects (`billing::mirror`) as old as the events kept: an event
    // delivered later than that is read again from Stripe anyway.
    done.stripe_reads += drain(
        &mut conn,
        Expired::StripeReads,
        now - chrono::Duration::days(stripe_event_days),
        batch,
        &mut done.batches,
    )
    .await?;
    // Workers gone for a day that no job names any more.
    done.workers += drain(
        &mut conn,
        Expired::Workers,
        now - chrono::Duration::days(1),
        batch,
        &mut done.batches,
    )
    .await?;
    // Rate limit windows (`governance::rate_limit`) are read only while current.
    done.rate_limit_windows += drain(
        &mut conn,
        Expired::RateLimitWindows,
        now - chrono::Duration::hours(1),
        batch,
        &mut done.batches,
    )
    .await?;
    Ok(done)
}
