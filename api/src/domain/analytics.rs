//! Analytics of a workspace: monthly snapshots of its members, usage, jobs and cost,
//! computed by a job of the `analytics` queue and read back as stored.
//!
//! `generateAnalytics` enqueues one job (kind [`JOB_KIND`]) in the transaction of its
//! mutation; the hourly periodic job `analytics` ([`refresh`]) enqueues the same job for
//! every live workspace whose current month's snapshot is missing, older than its latest
//! audit or usage event (member changes are audited), or older than [`STALE_AFTER`]. The
//! job ([`job`]) computes the snapshot with aggregate statements (the database counts; no
//! event is loaded) and upserts it into `analytics_snapshots`, keeping the newer of two
//! racing runs, so it is idempotent and safe on several workers.
//!
//! Job idempotency keys: `analytics:{workspace}:{YYYY-MM}:{bucket}` with the start of the
//! [`BUCKET_SECS`] time bucket of the request (requests of one workspace and month within a
//! bucket share one job, whether from clients or the schedule), or
//! `analytics:{workspace}:{YYYY-MM}:key:{caller}:{client key}` when the client sent an
//! idempotency key.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Change};
use super::billing::invoices::{self, month_of};
use super::mutation::{self, Effect};
use super::workspaces::require_role;
use super::{Actor, DomainError, DomainResult, Role, Services};
use crate::db::DbPool;
use crate::db::repo::analytics as repo;
use crate::db::repo::workspace_jobs::{self, JobRow};
use crate::ids::{JobId, WorkspaceId};

pub use super::billing::invoices::Period;

/// The queue of analytics jobs.
pub const QUEUE: &str = crate::tasks::queue::ANALYTICS;
/// The kind of an analytics job (`Workspace.jobs`).
pub const JOB_KIND: &str = "analytics.generate";
/// Attempts of an analytics job.
pub const MAX_ATTEMPTS: i32 = 5;
/// Requests of one workspace and month within this many seconds share one job.
pub const BUCKET_SECS: i64 = 300;
/// Workspaces looked at (and jobs enqueued) per transaction of the periodic refresh.
pub const REFRESH_BATCH: i64 = 500;
/// A snapshot older than this is refreshed even when nothing was audited or used since.
pub const STALE_AFTER: Duration = Duration::from_secs(86_400);
/// Version of the stored snapshot (`data.v`).
pub const SNAPSHOT_VERSION: u32 = 1;

/// The first instant of the month `period` names at `now`, and of the month after.
pub fn bounds(period: Period, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    match period {
        Period::CurrentMonth => month_of(now),
        Period::PreviousMonth => month_of(month_of(now).0 - chrono::Duration::days(1)),
    }
}

/// A workspace's analytics for one month, as stored in `analytics_snapshots.data`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    pub v: u32,
    /// First instant of the month.
    pub period_start: DateTime<Utc>,
    /// First instant of the next month.
    pub period_end: DateTime<Utc>,
    /// Members and activity.
    pub users: Users,
    /// Usage per resource per UTC day, by resource then day.
    pub usage: Vec<UsageDay>,
    /// API requests per UTC day and operation, by day then operation (the gateway's
    /// counters, `domain::api_usage`).
    pub api_usage: Vec<ApiUsageDay>,
    /// The workspace's jobs enqueued in the month.
    pub jobs: Jobs,
    /// Cost of the month (`billing::invoices::summary`).
    pub cost: Cost,
}

/// Members and activity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Users {
    /// Members at the end of the month (those still members; pending invitations included).
    pub total: i64,
    /// Distinct users who acted in the month: actors of audit events or usage events.
    pub active: i64,
    /// Members who joined in the month.
    pub new_members: i64,
    /// Members by role: owners, admins, viewers (zeros included).
    pub by_role: Vec<RoleCount>,
}

/// Members of one role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoleCount {
    /// The role.
    pub role: Role,
    /// Members with it.
    pub count: i64,
}

/// Usage of one resource on one day.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageDay {
    /// Resource key.
    pub resource: String,
    /// The UTC day.
    pub day: NaiveDate,
    /// Sum of the recorded deltas.
    pub total: i64,
    /// Usage events recorded.
    pub events: i64,
}

/// API requests of one operation on one day.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiUsageDay {
    /// The UTC day.
    pub day: NaiveDate,
    /// GraphQL operation name, or root fields (`domain::api_usage`).
    pub operation: String,
    /// Requests.
    pub requests: i64,
    /// Requests that returned errors.
    pub errors: i64,
}

/// Jobs by outcome (the analytics jobs themselves left out: they would drown the rest).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Jobs {
    /// Jobs enqueued in the month.
    pub total: i64,
    /// Done.
    pub succeeded: i64,
    /// Failed for good.
    pub failed: i64,
    /// Waiting or running.
    pub pending: i64,
    /// Succeeded / (succeeded + failed); `None` while none has finished.
    pub success_rate: Option<f64>,
    /// Failed / (succeeded + failed); `None` while none has finished.
    pub failure_rate: Option<f64>,
}

/// Cost of the month, in cents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cost {
    /// Fixed fees accrued until the snapshot (or the month's end) plus metered usage.
    pub current_cents: i64,
    /// Projection for the whole month.
    pub projected_cents: i64,
    /// Metered usage so far.
    pub metered_cents: i64,
    /// Plans' base fees per month.
    pub base_fees_cents: i64,
}

/// A stored snapshot.
#[derive(Debug, Clone)]
pub struct Stored {
    /// When its computation started.
    pub generated_at: DateTime<Utc>,
    /// The snapshot.
    pub snapshot: Snapshot,
}

fn month_label(start: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", start.year(), start.month())
}

/// The job key of a request at `now` without a client key.
fn bucket_key(ws: Uuid, start: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let t = now.timestamp();
    let bucket = DateTime::from_timestamp(t - t.rem_euclid(BUCKET_SECS), 0).unwrap_or(now);
    format!(
        "analytics:{ws}:{}:{}",
        month_label(start),
        bucket.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

fn payload(ws: Uuid, start: DateTime<Utc>) -> serde_json::Value {
    crate::tasks::Task::Analytics {
        workspace: ws,
        period_start: start,
    }
    .payload()
}

/// Enqueues the analytics job of `ws` for the month starting at `start` under `key`, in
/// the caller's transaction; the job (the one already enqueued under `key`, if any). A
/// person's request counts against the workspace's limit of analytics jobs queued or running
/// (`limit`): past it, a request for a month whose job is queued or running is that job,
/// another is refused with `RATE_LIMITED`.
async fn enqueue(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    start: DateTime<Utc>,
    requested: Option<(Uuid, i64)>,
    key: &str,
) -> DomainResult<JobRow> {
    let id = match requested {
        Some((who, limit)) => {
            use workspace_jobs::Enqueued;
            match workspace_jobs::enqueue_limited(
                conn,
                Some(ws),
                who,
                JOB_KIND,
                QUEUE,
                &payload(ws, start),
                key,
                MAX_ATTEMPTS,
                limit,
            )
            .await?
            {
                Enqueued::New(id) | Enqueued::Existing(id) | Enqueued::Coalesced(id) => Some(id),
                Enqueued::Full(n) => return Err(super::jobs::too_many("analytics", n)),
            }
        }
        None => {
            workspace_jobs::enqueue(
                conn,
                ws,
                JOB_KIND,
                None,
                QUEUE,
                &payload(ws, start),
                key,
                MAX_ATTEMPTS,
                0,
            )
            .await?
        }
    };
    let id = match id {
        Some(id) => id,
        None => repo::job_by_key(conn, QUEUE, key).await?.ok_or_else(|| {
            DomainError::internal(anyhow::anyhow!("analytics job {key} vanished"))
        })?,
    };
    workspace_jobs::find(conn, &id)
        .await?
        .ok_or_else(|| DomainError::internal(anyhow::anyhow!("analytics job {id} vanished")))
}

/// `generateAnalytics`: enqueues the job that computes the snapshot of `ws` for `period`
/// (owners and admins); the job.
pub async fn generate(
    services: &Services,
    actor: &Actor,
    ws: WorkspaceId,
    period: Period,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<JobRow>> {
    let now = Utc::now();
    let (start, _) = bounds(period, now);
    let job_key = match key {
        Some(k) => format!(
            "analytics:{}:{}:key:{}:{}",
            ws.0,
            month_label(start),
            actor.user_id.0,
            k.key
        ),
        None => bucket_key(ws.0, start, now),
    };
    let input = json!({"workspaceId": ws.encode(), "period": month_label(start)});
    mutation::run(
        services,
        actor,
        "generateAnalytics",
        key,
        &input,
        |c, _| -> Effect<'_, _> {
            Box::pin(generate_effect(
                c,
                actor.clone(),
                ws,
                start,
                job_key.clone(),
                services.job_limit,
            ))
        },
    )
    .await
}

async fn generate_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    ws: WorkspaceId,
    start: DateTime<Utc>,
    key: String,
    limit: i64,
) -> DomainResult<JobRow> {
    require_role(conn, &actor, ws, Role::is_manager, "generate analytics").await?;
    let job = enqueue(conn, ws.0, start, Some((actor.user_id.0, limit)), &key).await?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "analytics.generate",
            target_type: "Job",
            target_id: JobId(job.id.clone()).encode(),
            summary: json!({"period": month_label(start)}),
            actor: &actor,
        },
    )
    .await?;
    Ok(job)
}

/// The stored snapshot of `ws` for `period` (the caller checked the reader); `None` until
/// one was generated.
pub async fn latest(
    services: &Services,
    ws: WorkspaceId,
    period: Period,
) -> DomainResult<Option<Stored>> {
    let (start, _) = bounds(period, Utc::now());
    let mut conn = services.conn().await?;
    repo::find(&mut conn, ws.0, start)
        .await?
        .map(stored)
        .transpose()
}

fn stored(row: repo::SnapshotRow) -> DomainResult<Stored> {
    let snapshot = serde_json::from_value(row.data).map_err(DomainError::internal)?;
    Ok(Stored {
        generated_at: row.generated_at,
        snapshot,
    })
}

/// The file format of an analytics export (`Workspace.analyticsExport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One CSV table, one number per row (see [`to_csv`]).
    Csv,
    /// The snapshot as `Workspace.analytics` shows it (see [`to_json`]).
    Json,
}

impl ExportFormat {
    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
        }
    }

    /// The media type of the file.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Json => "application/json",
        }
    }
}

/// An export ready to send.
#[derive(Debug, Clone)]
pub struct Export {
    /// File name to save it under (ASCII letters, digits, `-`, `_`, `.`).
    pub filename: String,
    /// Its media type.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: Vec<u8>,
}

/// The stored snapshot of `ws` for the month starting at `period_start`, as a file, for an
/// owner or admin (checked now: a download link re-checks at download time); `NotFound`
/// for anybody else or while no snapshot exists, `Forbidden` for viewers.
pub async fn export(
    services: &Services,
    actor: &Actor,
    ws: WorkspaceId,
    period_start: DateTime<Utc>,
    format: ExportFormat,
) -> DomainResult<Export> {
    let mut conn = services.conn().await?;
    require_role(&mut conn, actor, ws, Role::is_manager, "export analytics").await?;
    let row = repo::find(&mut conn, ws.0, period_start)
        .await?
        .ok_or(DomainError::NotFound("analytics snapshot"))?;
    drop(conn);
    let s = stored(row)?;
    let body = match format {
        ExportFormat::Csv => to_csv(&s).into_bytes(),
        ExportFormat::Json => {
            serde_json::to_vec_pretty(&to_json(&s)).map_err(DomainError::internal)?
        }
    };
    Ok(Export {
        filename: format!(
            "analytics-{}-{}.{}",
            ws.encode(),
            month_label(period_start),
            format.extension()
        ),
        content_type: format.content_type(),
        body,
    })
}

/// The snapshot as `Workspace.analytics` answers it with every field selected (same names,
/// same values; a test compares the two).
pub fn to_json(s: &Stored) -> serde_json::Value {
    let a = &s.snapshot;
    json!({
        "periodStart": a.period_start.to_rfc3339(),
        "periodEnd": a.period_end.to_rfc3339(),
        "users": {
            "total": a.users.total,
            "active": a.users.active,
            "newMembers": a.users.new_members,
            "byRole": a.users.by_role.iter()
                .map(|r| json!({"role": r.role.as_str(), "count": r.count}))
                .collect::<Vec<_>>(),
        },
        "usage": a.usage.iter()
            .map(|u| json!({"resource": u.resource, "day": u.day.to_string(), "total": u.total, "events": u.events}))
            .collect::<Vec<_>>(),
        "apiUsage": a.api_usage.iter()
            .map(|u| json!({"day": u.day.to_string(), "operation": u.operation, "requests": u.requests, "errors": u.errors}))
            .collect::<Vec<_>>(),
        "jobs": {
            "total": a.jobs.total,
            "succeeded": a.jobs.succeeded,
            "failed": a.jobs.failed,
            "pending": a.jobs.pending,
            "successRate": a.jobs.success_rate,
            "failureRate": a.jobs.failure_rate,
        },
        "cost": {
            "currentCents": a.cost.current_cents,
            "projectedCents": a.cost.projected_cents,
            "meteredCents": a.cost.metered_cents,
            "baseFeesCents": a.cost.base_fees_cents,
        },
        "generatedAt": s.generated_at.to_rfc3339(),
    })
}

/// The header of [`to_csv`].
pub const CSV_HEADER: &str = "section,day,key,metric,value";

/// The snapshot as one CSV table (RFC 4180, CRLF line ends), one number per row under
/// [`CSV_HEADER`]: `section` is the path of the field in `Workspace.analytics` (`period`,
/// `users`, `users.byRole`, `usage`, `apiUsage`, `jobs`, `cost`), `day` the UTC day
/// (`YYYY-MM-DD`) of per-day rows, `key` the role, resource or operation of the row,
/// `metric` the field's name, `value` the number (or the instant of `period` rows; empty
/// for a null rate). Rows come in the order of the JSON export.
pub fn to_csv(s: &Stored) -> String {
    let a = &s.snapshot;
    let mut out = String::with_capacity(256 + 64 * (a.usage.len() + a.api_usage.len()) * 2);
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    let mut row = |section: &str, day: Option<NaiveDate>, key: &str, metric: &str, value: &str| {
        let day = day.map(|d| d.to_string()).unwrap_or_default();
        for (i, cell) in [section, &day, key, metric].into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            csv_text(&mut out, cell);
        }
        out.push(',');
        csv_cell(&mut out, value);
        out.push_str("\r\n");
    };
    let instant = |t: DateTime<Utc>| t.to_rfc3339();
    row("period", None, "", "start", &instant(a.period_start));
    row("period", None, "", "end", &instant(a.period_end));
    row("period", None, "", "generatedAt", &instant(s.generated_at));
    row("users", None, "", "total", &a.users.total.to_string());
    row("users", None, "", "active", &a.users.active.to_string());
    row(
        "users",
        None,
        "",
        "newMembers",
        &a.users.new_members.to_string(),
    );
    for r in &a.users.by_role {
        row(
            "users.byRole",
            None,
            r.role.as_str(),
            "count",
            &r.count.to_string(),
        );
    }
    for u in &a.usage {
        row(
            "usage",
            Some(u.day),
            &u.resource,
            "total",
            &u.total.to_string(),
        );
        row(
            "usage",
            Some(u.day),
            &u.resource,
            "events",
            &u.events.to_string(),
        );
    }
    for u in &a.api_usage {
        row(
            "apiUsage",
            Some(u.day),
            &u.operation,
            "requests",
            &u.requests.to_string(),
        );
        row(
            "apiUsage",
            Some(u.day),
            &u.operation,
            "errors",
            &u.errors.to_string(),
        );
    }
    let j = &a.jobs;
    for (metric, n) in [
        ("total", j.total),
        ("succeeded", j.succeeded),
        ("failed", j.failed),
        ("pending", j.pending),
    ] {
        row("jobs", None, "", metric, &n.to_string());
    }
    let rate = |r: Option<f64>| r.map(|r| r.to_string()).unwrap_or_default();
    row("jobs", None, "", "successRate", &rate(j.success_rate));
    row("jobs", None, "", "failureRate", &rate(j.failure_rate));
    let c = &a.cost;
    for (metric, n) in [
        ("currentCents", c.current_cents),
        ("projectedCents", c.projected_cents),
        ("meteredCents", c.metered_cents),
        ("baseFeesCents", c.base_fees_cents),
    ] {
        row("cost", None, "", metric, &n.to_string());
    }
    out
}

/// A CSV cell, quoted when it holds a separator, a quote or a line break.
fn csv_cell(out: &mut String, cell: &str) {
    if cell.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&cell.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(cell);
    }
}

/// A text cell: like [`csv_cell`], and one that a spreadsheet would read as a formula
/// (`=`, `+`, `-`, `@`, tab, carriage return first) is prefixed with `'`.
fn csv_text(out: &mut String, cell: &str) {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        csv_cell(out, &format!("'{cell}"));
    } else {
        csv_cell(out, cell);
    }
}

/// Computes the snapshot of `ws` for the month `[start, end)` as of `now`.
pub async fn compute(
    services: &Services,
    ws: Uuid,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
) -> DomainResult<Snapshot> {
    let mut conn = services.conn().await?;
    let roles = repo::members_by_role(&mut conn, ws, start, end).await?;
    let active = repo::active_users(&mut conn, ws, start, end).await?;
    let usage = repo::usage_per_day(&mut conn, ws, start, end).await?;
    let jobs = repo::job_counts(&mut conn, ws, start, end, JOB_KIND).await?;
    let api =
        crate::db::repo::api_usage::per_day(&mut conn, ws, start.date_naive(), end.date_naive())
            .await?;
    drop(conn);
    // The summary of the month as of `now`, or of its last second once it is over.
    let at = now.min(end - chrono::Duration::seconds(1));
    let cost = invoices::summary(services, ws, Period::CurrentMonth, at).await?;
    let by_role = [Role::Owner, Role::Admin, Role::Viewer]
        .into_iter()
        .map(|role| RoleCount {
            role,
            count: roles
                .iter()
                .filter(|r| r.role == role.as_str())
                .map(|r| r.members)
                .sum(),
        })
        .collect();
    let finished = jobs.succeeded + jobs.failed;
    let rate = |n: i64| (finished > 0).then(|| n as f64 / finished as f64);
    Ok(Snapshot {
        v: SNAPSHOT_VERSION,
        period_start: start,
        period_end: end,
        users: Users {
            total: roles.iter().map(|r| r.members).sum(),
            active,
            new_members: roles.iter().map(|r| r.new_members).sum(),
            by_role,
        },
        usage: usage
            .into_iter()
            .map(|u| UsageDay {
                resource: u.resource,
                day: u.day,
                total: u.total,
                events: u.events,
            })
            .collect(),
        api_usage: api
            .into_iter()
            .map(|a| ApiUsageDay {
                day: a.day,
                operation: a.operation,
                requests: a.requests,
                errors: a.errors,
            })
            .collect(),
        jobs: Jobs {
            total: jobs.total,
            succeeded: jobs.succeeded,
            failed: jobs.failed,
            pending: jobs.pending,
            success_rate: rate(jobs.succeeded),
            failure_rate: rate(jobs.failed),
        },
        cost: Cost {
            current_cents: cost.current_cents,
            projected_cents: cost.projected_cents,
            metered_cents: cost.metered_cents,
            base_fees_cents: cost.base_fees_cents,
        },
    })
}

/// Does one analytics job: computes and stores the snapshot of `ws` for the month starting at
/// `start`. A workspace deleted since is logged and dropped.
pub async fn run(services: &Services, ws: Uuid, start: DateTime<Utc>) -> anyhow::Result<()> {
    let pool = &services.pool;
    let (start, end) = month_of(start);
    if !repo::is_live(&mut *pool.get().await?, ws).await? {
        tracing::info!(workspace.id = %ws, "analytics job of a deleted workspace; dropped");
        return Ok(());
    }
    let now = Utc::now();
    let snapshot = compute(services, ws, start, end, now)
        .await
        .map_err(|e| anyhow::anyhow!("computing analytics of {ws}: {e:?}"))?;
    let data = serde_json::to_value(&snapshot)?;
    repo::upsert(&mut *pool.get().await?, ws, start, now, &data).await?;
    Ok(())
}

/// The periodic job `analytics`: enqueues the analytics job of the current month for every
/// live workspace whose snapshot is missing or stale, [`REFRESH_BATCH`] workspaces per
/// transaction; how many jobs it enqueued.
pub async fn refresh(pool: &DbPool) -> anyhow::Result<usize> {
    let now = Utc::now();
    let (start, _) = month_of(now);
    let stale_before = now - chrono::Duration::from_std(STALE_AFTER)?;
    let mut conn = pool.get().await?;
    let mut after = None;
    let mut enqueued = 0;
    loop {
        let batch =
            repo::needing_refresh(&mut conn, after, REFRESH_BATCH, start, stale_before).await?;
        let Some(last) = batch.last().copied() else {
            return Ok(enqueued);
        };
        enqueued += conn
            .transaction(async |c| {
                for ws in &batch {
                    enqueue(c, *ws, start, None, &bucket_key(*ws, start, now)).await?;
                }
                Ok::<_, DomainError>(batch.len())
            })
            .await
            .map_err(|e| anyhow::anyhow!("enqueuing analytics jobs: {e:?}"))?;
        if (batch.len() as i64) < REFRESH_BATCH {
            return Ok(enqueued);
        }
        after = Some(last);
    }
}

/// The periodic job `analytics` as `jobs::maintenance::PERIODIC` runs it.
pub async fn refresh_periodic(pool: &DbPool) -> anyhow::Result<()> {
    let n = refresh(pool).await?;
    if n > 0 {
        tracing::info!(enqueued = n, "enqueued analytics refreshes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn requests_within_a_bucket_share_a_key() {
        let ws = Uuid::nil();
        let t = |m, s| {
            Utc.with_ymd_and_hms(2026, 11, 30, 10, m, s)
                .single()
                .expect("valid")
        };
        let (start, _) = month_of(t(0, 0));
        assert_eq!(
            bucket_key(ws, start, t(0, 1)),
            bucket_key(ws, start, t(4, 59))
        );
        assert_ne!(
            bucket_key(ws, start, t(4, 59)),
            bucket_key(ws, start, t(5, 0))
        );
        assert!(bucket_key(ws, start, t(7, 0)).ends_with(":2026-11:2026-11-30T10:05:00Z"));
    }

    #[test]
    fn the_previous_month_wraps_the_year() {
        let jan = Utc
            .with_ymd_and_hms(2027, 1, 3, 0, 0, 0)
            .single()
            .expect("valid");
        let (s, e) = bounds(Period::PreviousMonth, jan);
        assert_eq!(month_label(s), "2026-12");
        assert_eq!(month_label(e), "2027-01");
    }

    fn sample() -> Stored {
        let t = |d, h| {
            Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0)
                .single()
                .expect("valid")
        };
        let day = NaiveDate::from_ymd_opt(2026, 11, 3).expect("date");
        Stored {
            generated_at: t(30, 10),
            snapshot: Snapshot {
                v: SNAPSHOT_VERSION,
                period_start: t(1, 0),
                period_end: Utc
                    .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
                    .single()
                    .expect("valid"),
                users: Users {
                    total: 2,
                    active: 1,
                    new_members: 2,
                    by_role: vec![RoleCount {
                        role: Role::Owner,
                        count: 2,
                    }],
                },
                usage: vec![UsageDay {
                    resource: "=cmd".into(),
                    day,
                    total: -3,
                    events: 2,
                }],
                api_usage: vec![ApiUsageDay {
                    day,
                    operation: "viewer,workspace".into(),
                    requests: 5,
                    errors: 1,
                }],
                jobs: Jobs {
                    total: 0,
                    succeeded: 0,
                    failed: 0,
                    pending: 0,
                    success_rate: None,
                    failure_rate: None,
                },
                cost: Cost {
                    current_cents: 1,
                    projected_cents: 2,
                    metered_cents: 3,
                    base_fees_cents: 4,
                },
            },
        }
    }

    #[test]
    fn the_csv_export_has_one_number_per_row_and_quotes_what_needs_it() {
        let csv = to_csv(&sample());
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1], "period,,,start,2026-11-01T00:00:00+00:00");
        assert!(lines.contains(&"users.byRole,,OWNER,count,2"));
        // A cell a spreadsheet would run as a formula is defused; numbers stay numbers.
        assert!(lines.contains(&"usage,2026-11-03,'=cmd,total,-3"));
        assert!(lines.contains(&"apiUsage,2026-11-03,\"viewer,workspace\",errors,1"));
        assert!(lines.contains(&"jobs,,,successRate,"));
        assert_eq!(lines.last(), Some(&""));
        // 3 period + 3 users + 1 role + 2 usage + 2 api + 6 jobs + 4 cost, header, last.
        assert_eq!(lines.len(), 23);
    }

    #[test]
    fn the_json_export_uses_the_graphql_names() {
        let j = to_json(&sample());
        assert_eq!(j["users"]["byRole"][0]["role"], "OWNER");
        assert_eq!(j["apiUsage"][0]["operation"], "viewer,workspace");
        assert_eq!(j["jobs"]["successRate"], serde_json::Value::Null);
        assert_eq!(j["generatedAt"], "2026-11-30T10:00:00+00:00");
    }
}
