//! Approval workflows: the action enum, the `ApprovalRequest` type, `approveRequest`,
//! `rejectRequest`, `Workspace.approvalRequests` and `Query.approvalRequest` (the rules are
//! in `domain::governance::approvals`).

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, ID, InputObject, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::pagination;
use super::replay::{self, Replayable};
use super::users::User;
use super::{error, rc};
use crate::domain::governance::approvals::{self, ApprovalRow};
use crate::ids::{ApprovalRequestId, WorkspaceId};

/// A sensitive action a workspace may put under a second person's approval.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ApprovalAction {
    /// `deleteOrganization`.
    DeleteOrganization,
    /// A subscription's plan or quantity changes.
    ChangeSubscription,
    /// A subscription is canceled.
    CancelSubscription,
    /// A member becomes an owner (`updateMemberRole` to OWNER, `addMember` as OWNER).
    PromoteToOwner,
    /// `createApiKey`.
    CreateApiKey,
    /// `updateSecuritySettings`.
    ChangeSecuritySettings,
}

impl From<ApprovalAction> for approvals::ApprovalAction {
    fn from(a: ApprovalAction) -> Self {
        use approvals::ApprovalAction as A;
        match a {
            ApprovalAction::DeleteOrganization => A::DeleteOrganization,
            ApprovalAction::ChangeSubscription => A::ChangeSubscription,
            ApprovalAction::CancelSubscription => A::CancelSubscription,
            ApprovalAction::PromoteToOwner => A::PromoteToOwner,
            ApprovalAction::CreateApiKey => A::CreateApiKey,
            ApprovalAction::ChangeSecuritySettings => A::ChangeSecuritySettings,
        }
    }
}

impl From<approvals::ApprovalAction> for ApprovalAction {
    fn from(a: approvals::ApprovalAction) -> Self {
        use approvals::ApprovalAction as A;
        match a {
            A::DeleteOrganization => ApprovalAction::DeleteOrganization,
            A::ChangeSubscription => ApprovalAction::ChangeSubscription,
            A::CancelSubscription => ApprovalAction::CancelSubscription,
            A::PromoteToOwner => ApprovalAction::PromoteToOwner,
            A::CreateApiKey => ApprovalAction::CreateApiKey,
            A::ChangeSecuritySettings => ApprovalAction::ChangeSecuritySettings,
        }
    }
}

/// Where an approval request stands.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ApprovalStatus {
    /// Waiting for a second owner or admin.
    Pending,
    /// Approved and executed.
    Approved,
    /// Rejected.
    Rejected,
    /// Nobody decided in time.
    Expired,
    /// Approved, but the action could no longer be executed (`reason` says why).
    Failed,
}

impl ApprovalStatus {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
            Self::Expired => "EXPIRED",
            Self::Failed => "FAILED",
        }
    }

    /// The status of a stored row (a pending one past its expiry is `EXPIRED`).
    pub fn of(row: &ApprovalRow, now: DateTime<Utc>) -> Self {
        match row.status.as_str() {
            "APPROVED" => Self::Approved,
            "REJECTED" => Self::Rejected,
            "EXPIRED" => Self::Expired,
            "FAILED" => Self::Failed,
            _ if row.expires_at <= now => Self::Expired,
            _ => Self::Pending,
        }
    }
}

/// A sensitive mutation held for a second owner's or admin's approval.
pub struct ApprovalRequest(pub ApprovalRow);

#[Object]
impl ApprovalRequest {
    /// Opaque id (`apr_…`).
    async fn id(&self) -> ID {
        ID(ApprovalRequestId(self.0.id).encode())
    }

    /// Where it stands.
    async fn status(&self) -> ApprovalStatus {
        ApprovalStatus::of(&self.0, Utc::now())
    }

    /// The action held.
    async fn action(&self) -> Option<ApprovalAction> {
        approvals::ApprovalAction::parse(&self.0.action).map(Into::into)
    }

    /// The held mutation's name.
    async fn operation(&self) -> &str {
        &self.0.operation
    }

    /// Kind of the object it acts on.
    async fn target_type(&self) -> Option<&str> {
        self.0.target_type.as_deref()
    }

    /// External id of the object it acts on.
    async fn target_id(&self) -> Option<&str> {
        self.0.target_id.as_deref()
    }

    /// When it was asked.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// When it expires if nobody decides.
    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.expires_at
    }

    /// When it was decided.
    async fn decided_at(&self) -> Option<DateTime<Utc>> {
        self.0.decided_at
    }

    /// Why it was rejected, or why its execution failed.
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }

    /// What the approved execution did (e.g. `{"deletedOrganizationId": "org_…"}`).
    async fn result(&self) -> Option<Json<serde_json::Value>> {
        self.0.result.clone().map(Json)
    }

    /// Who asked.
    async fn requested_by(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        user(ctx, Some(self.0.requested_by)).await
    }

    /// Who approved, rejected or withdrew it (null while pending, and for an expiry).
    async fn decided_by(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        user(ctx, self.0.decided_by).await
    }
}

async fn user(ctx: &Context<'_>, id: Option<Uuid>) -> Result<Option<User>> {
    let Some(id) = id else { return Ok(None) };
    let rc = rc(ctx);
    let u = rc.loaders.users.load_one(id).await.map_err(|e| rc.err(e))?;
    Ok(u.map(User))
}

/// `Workspace.approvalRequests`: owners and admins.
pub async fn requests_of(
    ctx: &Context<'_>,
    ws: Uuid,
    first: Option<i32>,
    after: Option<String>,
    status: Option<ApprovalStatus>,
) -> Result<Connection<String, ApprovalRequest>> {
    super::billing::may_manage(ctx, ws, "read approval requests").await?;
    let rc = rc(ctx);
    let page = pagination::page(first, after.as_deref())?;
    let rows = approvals::page(
        &rc.services,
        WorkspaceId(ws),
        status.map(ApprovalStatus::as_str),
        page,
    )
    .await
    .map_err(|e| rc.err(e))?;
    Ok(pagination::connection(
        rows,
        page,
        |r| r.id,
        ApprovalRequest,
    ))
}

fn request_id(id: &ID) -> Result<ApprovalRequestId> {
    ApprovalRequestId::decode(id).ok_or_else(|| error::not_found("approval request"))
}

/// Approval queries.
#[derive(Default)]
pub struct ApprovalQuery;

#[Object]
impl ApprovalQuery {
    /// An approval request of a workspace where the caller is an owner or admin; null when
    /// it does not exist or the caller may not read it (indistinguishable).
    async fn approval_request(&self, ctx: &Context<'_>, id: ID) -> Result<Option<ApprovalRequest>> {
        let Some(id) = ApprovalRequestId::decode(&id) else {
            return Ok(None);
        };
        let rc = rc(ctx);
        let row = approvals::find_visible(&rc.services, &rc.actor, id)
            .await
            .map_err(|e| rc.err(e))?;
        Ok(row.map(ApprovalRequest))
    }
}

/// Input of `approveRequest`.
#[derive(InputObject)]
pub struct ApproveRequestInput {
    /// The pending request (`apr_…`).
    pub approval_request_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `approveRequest`.
#[derive(SimpleObject)]
pub struct ApproveRequestPayload {
    /// The request: `APPROVED` (its action executed, see `result`) or `FAILED` (the action
    /// could no longer be done, see `reason`).
    pub approval_request: ApprovalRequest,
}

/// Input of `rejectRequest`.
#[derive(InputObject)]
pub struct RejectRequestInput {
    /// The pending request (`apr_…`).
    pub approval_request_id: ID,
    /// Why (at most 500 characters).
    pub reason: Option<String>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `rejectRequest`.
#[derive(SimpleObject)]
pub struct RejectRequestPayload {
    /// The request, `REJECTED`.
    pub approval_request: ApprovalRequest,
}

/// Approval mutations.
#[derive(Default)]
pub struct ApprovalMutation;

#[Object]
impl ApprovalMutation {
    /// Approves a pending request and executes its action once, as the requester (both
    /// people are in the audit log). Owners and admins of its workspace other than the
    /// requester, people only; owner-level actions (promoting an owner, billing, settings,
    /// an `OWNER` API key) need an owner. `CONFLICT` when it was already decided or has
    /// expired.
    async fn approve_request(
        &self,
        ctx: &Context<'_>,
        input: ApproveRequestInput,
    ) -> Result<Replayable<ApproveRequestPayload>> {
        let approval = approvals::Approval {
            approval_request_id: request_id(&input.approval_request_id)?,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| approvals::approve(s, a, approval, k).await,
            |r| Some(r.workspace_id),
            |r| ApproveRequestPayload {
                approval_request: ApprovalRequest(r),
            },
        )
        .await
    }

    /// Rejects a pending request: nothing is executed. The same people as `approveRequest`
    /// decide; the requester may also reject their own request, which withdraws it
    /// (audited as `approval.withdraw`). `CONFLICT` when it was already decided or has
    /// expired.
    async fn reject_request(
        &self,
        ctx: &Context<'_>,
        input: RejectRequestInput,
    ) -> Result<Replayable<RejectRequestPayload>> {
        let rejection = approvals::Rejection {
            approval_request_id: request_id(&input.approval_request_id)?,
            reason: input.reason,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| approvals::reject(s, a, rejection, k).await,
            |r| Some(r.workspace_id),
            |r| RejectRequestPayload {
                approval_request: ApprovalRequest(r),
            },
        )
        .await
    }
}
