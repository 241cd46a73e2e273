//! Analytics of a workspace: monthly snapshots computed by a background job
//! (`generateAnalytics`, and hourly for the current month), read with `Workspace.analytics`.
//! Owners and admins only.

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::jobs::Job;
use super::members::Role;
use super::replay::{self, Replayable};
use super::{error, rc};
use crate::domain::downloads::{self, Download, LinkSettings};
use crate::domain::{self, analytics as dom};
use crate::ids::WorkspaceId;

/// Which month analytics cover (months are UTC calendar months).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug, Default)]
pub enum AnalyticsPeriod {
    /// The month in progress.
    #[default]
    CurrentMonth,
    /// The month before.
    PreviousMonth,
}

impl From<AnalyticsPeriod> for dom::Period {
    fn from(p: AnalyticsPeriod) -> Self {
        match p {
            AnalyticsPeriod::CurrentMonth => dom::Period::CurrentMonth,
            AnalyticsPeriod::PreviousMonth => dom::Period::PreviousMonth,
        }
    }
}

/// A workspace's analytics for one month, as its latest snapshot computed them.
pub struct Analytics(pub dom::Stored);

/// Members and activity in the month.
#[derive(SimpleObject)]
pub struct AnalyticsUsers {
    /// Members at the end of the month (those still members, pending invitations included).
    pub total: i64,
    /// Distinct users who acted in the month: those who made a change (audit events) or
    /// recorded usage.
    pub active: i64,
    /// Members who joined in the month.
    pub new_members: i64,
    /// Members by role (every role, zeros included).
    pub by_role: Vec<AnalyticsRoleCount>,
}

/// Members of one role.
#[derive(SimpleObject)]
pub struct AnalyticsRoleCount {
    /// The role.
    pub role: Role,
    /// Members with it.
    pub count: i64,
}

/// Usage of one resource on one UTC day.
#[derive(SimpleObject)]
pub struct AnalyticsUsageDay {
    /// Resource key.
    pub resource: String,
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Sum of the usage recorded that day (allocations minus releases).
    pub total: i64,
    /// Usage records that day.
    pub events: i64,
}

/// API requests of one operation on one UTC day.
#[derive(SimpleObject)]
pub struct AnalyticsApiUsageDay {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The operation's name; for unnamed operations their root fields (sorted,
    /// comma-separated); `(other)` past 200 distinct operations a day, `(invalid)` when no
    /// operation could be chosen (a syntax error, an unknown operation name). At most 100
    /// characters.
    pub operation: String,
    /// Requests.
    pub requests: i64,
    /// Requests answered with errors.
    pub errors: i64,
}

/// The workspace's background jobs enqueued in the month (analytics jobs left out).
#[derive(SimpleObject)]
pub struct AnalyticsJobs {
    /// Jobs enqueued.
    pub total: i64,
    /// Done.
    pub succeeded: i64,
    /// Failed for good.
    pub failed: i64,
    /// Waiting or running.
    pub pending: i64,
    /// Share of the finished jobs that succeeded (0–1); null while none has finished.
    pub success_rate: Option<f64>,
    /// Share of the finished jobs that failed (0–1); null while none has finished.
    pub failure_rate: Option<f64>,
}

/// Cost of the month, in cents (see `Workspace.billingSummary`).
#[derive(SimpleObject)]
pub struct AnalyticsCost {
    /// Fixed fees accrued until the snapshot (or the month's end) plus metered usage.
    pub current_cents: i64,
    /// Projected cost of the whole month.
    pub projected_cents: i64,
    /// Metered usage so far.
    pub metered_cents: i64,
    /// Plans' base fees per month.
    pub base_fees_cents: i64,
}

#[Object]
impl Analytics {
    /// First instant of the month.
    async fn period_start(&self) -> DateTime<Utc> {
        self.0.snapshot.period_start
    }

    /// First instant of the next month.
    async fn period_end(&self) -> DateTime<Utc> {
        self.0.snapshot.period_end
    }

    /// Members and activity.
    async fn users(&self) -> AnalyticsUsers {
        let u = &self.0.snapshot.users;
        AnalyticsUsers {
            total: u.total,
            active: u.active,
            new_members: u.new_members,
            by_role: u
                .by_role
                .iter()
                .map(|r| AnalyticsRoleCount {
                    role: r.role.into(),
                    count: r.count,
                })
                .collect(),
        }
    }

    /// Usage per resource per UTC day, by resource then day (days without usage left out).
    async fn usage(&self) -> Vec<AnalyticsUsageDay> {
        self.0
            .snapshot
            .usage
            .iter()
            .map(|u| AnalyticsUsageDay {
                resource: u.resource.clone(),
                day: u.day.to_string(),
                total: u.total,
                events: u.events,
            })
            .collect()
    }

    /// API requests and errors per UTC day and operation, by day then operation (days
    /// without requests left out). A request counts for the workspaces its arguments name
    /// (by workspace, organization, member or billing account id) that the caller belongs
    /// to; the counters are stored every few seconds, so the latest requests may be missing.
    async fn api_usage(&self) -> Vec<AnalyticsApiUsageDay> {
        self.0
            .snapshot
            .api_usage
            .iter()
            .map(|a| AnalyticsApiUsageDay {
                day: a.day.to_string(),
                operation: a.operation.clone(),
                requests: a.requests,
                errors: a.errors,
            })
            .collect()
    }

    /// Jobs by outcome, and their success and failure rates.
    async fn jobs(&self) -> AnalyticsJobs {
        let j = &self.0.snapshot.jobs;
        AnalyticsJobs {
            total: j.total,
            succeeded: j.succeeded,
            failed: j.failed,
            pending: j.pending,
            success_rate: j.success_rate,
            failure_rate: j.failure_rate,
        }
    }

    /// Cost of the month.
    async fn cost(&self) -> AnalyticsCost {
        let c = &self.0.snapshot.cost;
        AnalyticsCost {
            current_cents: c.current_cents,
            projected_cents: c.projected_cents,
            metered_cents: c.metered_cents,
            base_fees_cents: c.base_fees_cents,
        }
    }

    /// When the snapshot was computed.
    async fn generated_at(&self) -> DateTime<Utc> {
        self.0.generated_at
    }
}

/// `Workspace.analytics`: the latest snapshot of `period` (owners and admins, `FORBIDDEN`
/// otherwise); null until one was generated.
pub async fn analytics_of(
    ctx: &Context<'_>,
    ws: uuid::Uuid,
    period: AnalyticsPeriod,
) -> Result<Option<Analytics>> {
    super::billing::may_manage(ctx, ws, "read analytics").await?;
    let rc = rc(ctx);
    let stored = dom::latest(&rc.services, WorkspaceId(ws), period.into())
        .await
        .map_err(|e| rc.err(e))?;
    Ok(stored.map(Analytics))
}

/// File format of an analytics export.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum AnalyticsExportFormat {
    /// One CSV table with a row per number: columns `section,day,key,metric,value`
    /// (`section` is the field's path in `Workspace.analytics`, e.g. `users.byRole` or
    /// `apiUsage`; `key` the role, resource or operation; `metric` the field's name).
    Csv,
    /// The snapshot as `Workspace.analytics` returns it with every field selected.
    Json,
}

impl From<AnalyticsExportFormat> for dom::ExportFormat {
    fn from(f: AnalyticsExportFormat) -> Self {
        match f {
            AnalyticsExportFormat::Csv => dom::ExportFormat::Csv,
            AnalyticsExportFormat::Json => dom::ExportFormat::Json,
        }
    }
}

/// A download link to an analytics export.
#[derive(SimpleObject)]
pub struct AnalyticsExport {
    /// Where to download the file with a plain `GET` (no `Authorization` header: the link
    /// is the credential, so keep it private). A path on this API's origin
    /// (`/downloads/…`). It works only for its requester, while they are an owner or admin
    /// of the workspace, until `expiresAt`.
    pub url: String,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
}

/// `Workspace.analyticsExport`: a link to the latest snapshot of `period` as a file (owners
/// and admins, `FORBIDDEN` otherwise); null until a snapshot was generated.
pub async fn export_of(
    ctx: &Context<'_>,
    ws: uuid::Uuid,
    period: AnalyticsPeriod,
    format: AnalyticsExportFormat,
) -> Result<Option<AnalyticsExport>> {
    super::billing::may_manage(ctx, ws, "export analytics").await?;
    let rc = rc(ctx);
    let Some(stored) = dom::latest(&rc.services, WorkspaceId(ws), period.into())
        .await
        .map_err(|e| rc.err(e))?
    else {
        return Ok(None);
    };
    let ttl = ctx
        .data_opt::<LinkSettings>()
        .map_or(downloads::DEFAULT_TTL, |s| s.ttl);
    let download = Download::AnalyticsExport {
        workspace: ws,
        user: rc.actor.user_id.0,
        period_start: stored.snapshot.period_start,
        format: format.into(),
    };
    let (url, expires_at) = downloads::link(&rc.services.vault, &download, ttl, Utc::now());
    Ok(Some(AnalyticsExport { url, expires_at }))
}

/// Input of `generateAnalytics`.
#[derive(InputObject)]
pub struct GenerateAnalyticsInput {
    /// Workspace.
    pub workspace_id: ID,
    /// The month to compute.
    #[graphql(default)]
    pub period: AnalyticsPeriod,
    /// Makes the mutation safe to retry: a repeat returns the same job. Without one,
    /// requests for a workspace and month within five minutes share one job.
    pub idempotency_key: Option<String>,
}

/// Result of `generateAnalytics`.
#[derive(SimpleObject)]
pub struct GenerateAnalyticsPayload {
    /// The job computing the snapshot; `Workspace.analytics` shows it once the job succeeded.
    pub job: Job,
}

/// Analytics mutations.
#[derive(Default)]
pub struct AnalyticsMutation;

#[Object]
impl AnalyticsMutation {
    /// Computes a workspace's analytics for a month in the background (owners and admins).
    async fn generate_analytics(
        &self,
        ctx: &Context<'_>,
        input: GenerateAnalyticsInput,
    ) -> Result<Replayable<GenerateAnalyticsPayload>> {
        let ws = WorkspaceId::decode(&input.workspace_id)
            .ok_or_else(|| error::not_found("workspace"))?;
        let period = input.period.into();
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::analytics::generate(s, a, ws, period, k).await,
            |j| j.workspace_id,
            |j| GenerateAnalyticsPayload { job: Job(j) },
        )
        .await
    }
}
