//! Workspace quotas: `Workspace.quotaStatus`, `WorkspaceSettings.quotas` (through
//! [`quotas_of`]) and `updateQuotas` (owners). The rules are in
//! `domain::governance::quotas`.

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::approvals::ApprovalRequest;
use super::governance::WorkspaceSettings;
use super::replay::{self, Replayable};
use super::{error, rc};
use crate::domain::governance::quotas as domain;
use crate::ids::WorkspaceId;

/// A workspace quota: the most the workspace as a whole may use of a resource. Keys: a
/// resource of the workspace (allocated resources count forever, metered ones per window
/// of their reset period), `members` (people, API keys' service accounts excluded) or
/// `api_requests_per_minute` (the rate limit, `SecuritySettings.rateLimitPerMinute`).
#[derive(SimpleObject)]
pub struct ResourceQuota {
    /// The key.
    pub resource: String,
    /// The quota.
    pub limit: i32,
}

impl From<domain::Quota> for ResourceQuota {
    fn from(q: domain::Quota) -> Self {
        Self {
            resource: q.resource,
            limit: clamp(q.limit),
        }
    }
}

/// Counts are at most `i32::MAX` (quotas are set through an `Int`).
fn clamp(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(if n < 0 { 0 } else { i32::MAX })
}

/// Where a quota's usage stands.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum QuotaState {
    /// Below 80 % of the quota.
    Ok,
    /// At least 80 % of the quota, still below it.
    Warning,
    /// At the quota or past it (a quota set below usage): further increases are refused.
    Exceeded,
}

impl From<domain::QuotaState> for QuotaState {
    fn from(s: domain::QuotaState) -> Self {
        match s {
            domain::QuotaState::Ok => QuotaState::Ok,
            domain::QuotaState::Warning => QuotaState::Warning,
            domain::QuotaState::Exceeded => QuotaState::Exceeded,
        }
    }
}

/// A quota with its usage now.
#[derive(SimpleObject)]
pub struct QuotaStatus {
    /// The quota's key.
    pub resource: String,
    /// Usage now: the workspace's total (in the current window, for metered resources);
    /// people for `members`; requests handed out in the current rate limit window for
    /// `api_requests_per_minute`.
    pub usage: i32,
    /// The quota.
    pub limit: i32,
    /// `usage` as a percentage of `limit` (two decimals; 0 when both are 0). For
    /// `api_requests_per_minute`, of the window's budget (the limit, with one-minute
    /// windows).
    pub percentage: f64,
    /// `EXCEEDED` when usage ≥ limit, `WARNING` when usage ≥ 80 % of limit, else `OK`.
    pub status: QuotaState,
    /// Start of the current window (metered resources, the rate limit); null for allocated
    /// resources and `members`.
    pub period_start: Option<DateTime<Utc>>,
}

/// Every quota of `ws`, sorted by key (the caller has checked access).
pub async fn quotas_of(ctx: &Context<'_>, ws: Uuid) -> Result<Vec<ResourceQuota>> {
    let rc = rc(ctx);
    let quotas = domain::list(&rc.services, ws)
        .await
        .map_err(|e| rc.err(e))?;
    Ok(quotas.into_iter().map(Into::into).collect())
}

/// `Workspace.quotaStatus`: owners and admins (`FORBIDDEN` for viewers, not found for
/// anyone else): the role check and one statement, whatever the number of quotas.
pub async fn status_of(ctx: &Context<'_>, ws: Uuid) -> Result<Vec<QuotaStatus>> {
    super::billing::may_manage(ctx, ws, "read quota status").await?;
    let rc = rc(ctx);
    let rows = domain::status(&rc.services, ws)
        .await
        .map_err(|e| rc.err(e))?;
    Ok(rows
        .into_iter()
        .map(|s| QuotaStatus {
            resource: s.resource,
            usage: clamp(s.usage),
            limit: clamp(s.limit),
            percentage: s.percentage,
            status: s.state.into(),
            period_start: s.period_start,
        })
        .collect())
}

/// One quota to set or remove.
#[derive(InputObject)]
pub struct QuotaInput {
    /// A resource key of the workspace, `members` or `api_requests_per_minute`.
    pub resource: String,
    /// The quota, 0 or more (`api_requests_per_minute`: 1–1000000); null removes it. May be
    /// below current usage: further increases are then refused.
    pub limit: Option<i32>,
}

/// Input of `updateQuotas`.
#[derive(InputObject)]
pub struct UpdateQuotasInput {
    /// Workspace.
    pub workspace_id: ID,
    /// The changes, 1–50, one per key; keys left out keep their quota.
    pub quotas: Vec<QuotaInput>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `updateQuotas`.
pub struct UpdateQuotasPayload {
    ws: Uuid,
    quotas: Vec<domain::Quota>,
    approval: Option<crate::domain::governance::approvals::ApprovalRow>,
}

#[Object]
impl UpdateQuotasPayload {
    /// The workspace's settings now (their `quotas` included; unchanged when the change was
    /// held for approval).
    async fn settings(&self, ctx: &Context<'_>) -> Result<Option<WorkspaceSettings>> {
        super::governance::settings_of(ctx, self.ws).await.map(Some)
    }

    /// Every quota of the workspace now, sorted by key.
    async fn quotas(&self) -> Vec<ResourceQuota> {
        self.quotas.iter().cloned().map(Into::into).collect()
    }

    /// The pending request when the change was held for a second person's approval (it
    /// changes `api_requests_per_minute`, a security setting, while the workspace lists
    /// `CHANGE_SECURITY_SETTINGS`); null when the change was made.
    async fn approval_request(&self) -> Option<ApprovalRequest> {
        self.approval.clone().map(ApprovalRequest)
    }
}

/// Quota mutations.
#[derive(Default)]
pub struct QuotaMutation;

#[Object]
impl QuotaMutation {
    /// Sets and removes workspace quotas (owners), idempotently and audited (`quota.update`,
    /// before and after per key). An unknown key or a negative limit is `BAD_USER_INPUT`.
    async fn update_quotas(
        &self,
        ctx: &Context<'_>,
        input: UpdateQuotasInput,
    ) -> Result<Replayable<UpdateQuotasPayload>> {
        let ws = WorkspaceId::decode(&input.workspace_id)
            .ok_or_else(|| error::not_found("workspace"))?;
        let change = domain::QuotasChange {
            workspace_id: ws,
            quotas: input
                .quotas
                .into_iter()
                .map(|q| domain::QuotaChange {
                    resource: q.resource,
                    limit: q.limit.map(i64::from),
                })
                .collect(),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::update(s, a, change, k).await,
            move |_| Some(ws.0),
            |u| UpdateQuotasPayload {
                ws: u.workspace_id.0,
                quotas: u.quotas,
                approval: u.approval,
            },
        )
        .await
    }
}
