//! Approval workflows: the action enum, the `ApprovalRequest` type, and (later in this file)
//! `approveRequest`, `rejectRequest` and the queries.

use async_graphql::{Enum, ID, Object};
use chrono::{DateTime, Utc};

use crate::domain::governance::approvals::{self, ApprovalRow};
use crate::ids::ApprovalRequestId;

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
}
