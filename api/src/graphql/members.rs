//! Members and roles.

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};

use super::approvals::ApprovalRequest;
use super::invitations::Invitation;
use super::replay::{self, Replayable};
use super::users::User;
use super::workspaces::{Workspace, member_id};
use super::{error, rc};
use crate::db::models::MemberRow;
use crate::domain::governance::approvals::Outcome;
use crate::domain::{self, DomainError};
use crate::ids::{MemberId, WorkspaceId};

/// A role in a workspace. See the role matrix in docs/features/identity-and-roles.md.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Role {
    /// Everything, including billing, members and deleting the workspace.
    Owner,
    /// Manages organizations, adds and removes admins and viewers, reads settings and billing.
    Admin,
    /// Reads only.
    Viewer,
}

impl From<Role> for domain::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Owner => domain::Role::Owner,
            Role::Admin => domain::Role::Admin,
            Role::Viewer => domain::Role::Viewer,
        }
    }
}

impl From<domain::Role> for Role {
    fn from(r: domain::Role) -> Self {
        match r {
            domain::Role::Owner => Role::Owner,
            domain::Role::Admin => Role::Admin,
            domain::Role::Viewer => Role::Viewer,
        }
    }
}

/// A membership of a person in a workspace.
pub struct Member(pub MemberRow);

#[Object]
impl Member {
    /// Opaque id (`mem_…`).
    pub async fn id(&self) -> ID {
        ID(MemberId(self.0.id).encode())
    }

    /// Role in the workspace.
    async fn role(&self) -> Result<Role> {
        domain::Role::parse(&self.0.role)
            .map(Into::into)
            .ok_or_else(|| {
                error::to_graphql(DomainError::internal(anyhow::anyhow!("bad role in db")), "")
            })
    }

    /// The person.
    async fn user(&self, ctx: &Context<'_>) -> Result<User> {
        let rc = rc(ctx);
        let u = rc
            .loaders
            .users
            .load_one(self.0.user_id)
            .await
            .map_err(|e| rc.err(e))?;
        u.map(User).ok_or_else(|| {
            rc.err(DomainError::internal(anyhow::anyhow!(
                "member without user"
            )))
        })
    }

    /// The workspace.
    async fn workspace(&self, ctx: &Context<'_>) -> Result<Option<Workspace>> {
        super::workspaces::load_visible(ctx, WorkspaceId(self.0.workspace_id)).await
    }

    /// When the member was added.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

/// Input of `addMember`.
#[derive(InputObject)]
pub struct AddMemberInput {
    /// Workspace.
    pub workspace_id: ID,
    /// E-mail of the person to invite: they become a member only by accepting
    /// (`acceptInvitation`), signed in with this address verified.
    pub email: String,
    /// Role to give; only owners may give `OWNER`.
    pub role: Role,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `addMember`.
#[derive(SimpleObject)]
pub struct AddMemberPayload {
    /// The invitation sent (the same answer whether the address has an account or not);
    /// null while inviting an owner waits for approval.
    pub invitation: Option<Invitation>,
    /// The pending approval request, when the workspace requires approval for
    /// `PROMOTE_TO_OWNER` and an owner is invited: nobody was invited yet.
    pub approval_request: Option<ApprovalRequest>,
}

/// Input of `updateMemberRole`.
#[derive(InputObject)]
pub struct UpdateMemberRoleInput {
    /// Member.
    pub member_id: ID,
    /// New role.
    pub role: Role,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `updateMemberRole`.
#[derive(SimpleObject)]
pub struct UpdateMemberRolePayload {
    /// The changed membership (unchanged while a promotion to owner waits for approval).
    pub member: Member,
    /// The pending approval request, when the workspace requires approval for
    /// `PROMOTE_TO_OWNER`: the role did not change yet.
    pub approval_request: Option<ApprovalRequest>,
}

/// Input of `removeMember`.
#[derive(InputObject)]
pub struct RemoveMemberInput {
    /// Member to remove; your own membership to leave the workspace.
    pub member_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `removeMember`.
#[derive(SimpleObject)]
pub struct RemoveMemberPayload {
    /// Id of the removed membership.
    pub deleted_member_id: ID,
    /// Id of its workspace.
    pub workspace_id: ID,
}

/// Member mutations.
#[derive(Default)]
pub struct MemberMutation;

#[Object]
impl MemberMutation {
    /// Invites a person by e-mail (owners and admins; at most 100 members per workspace,
    /// pending invitations included). Nobody becomes a member without accepting.
    async fn add_member(
        &self,
        ctx: &Context<'_>,
        input: AddMemberInput,
    ) -> Result<Replayable<AddMemberPayload>> {
        let ws = WorkspaceId::decode(&input.workspace_id)
            .ok_or_else(|| error::not_found("workspace"))?;
        let new = domain::members::NewMember {
            workspace_id: ws,
            email: input.email,
            role: input.role.into(),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::members::add(s, a, new, k).await,
            |o| match o {
                Outcome::Done(m) => Some(m.workspace_id),
                Outcome::Held(r) => Some(r.workspace_id),
            },
            |o| match o {
                Outcome::Done(row) => AddMemberPayload {
                    invitation: Some(Invitation(row)),
                    approval_request: None,
                },
                Outcome::Held(r) => AddMemberPayload {
                    invitation: None,
                    approval_request: Some(ApprovalRequest(*r)),
                },
            },
        )
        .await
    }

    /// Changes a member's role. Only owners make or change owners; the last owner cannot
    /// be demoted.
    async fn update_member_role(
        &self,
        ctx: &Context<'_>,
        input: UpdateMemberRoleInput,
    ) -> Result<Replayable<UpdateMemberRolePayload>> {
        let change = domain::members::RoleChange {
            member_id: member_id(&input.member_id)?,
            role: input.role.into(),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::members::update_role(s, a, change, k).await,
            |(m, _)| Some(m.workspace_id),
            |(row, held)| UpdateMemberRolePayload {
                member: Member(row),
                approval_request: held.map(ApprovalRequest),
            },
        )
        .await
    }

    /// Removes a member, or leaves the workspace when it is your own membership. The last
    /// owner can be neither removed nor leave.
    async fn remove_member(
        &self,
        ctx: &Context<'_>,
        input: RemoveMemberInput,
    ) -> Result<Replayable<RemoveMemberPayload>> {
        let id = member_id(&input.member_id)?;
        // The workspace id is not in the input: shown only to who can still see it.
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::members::remove(s, a, id, k).await,
            |r| Some(r.workspace_id.0),
            |removed| RemoveMemberPayload {
                deleted_member_id: ID(removed.member_id.encode()),
                workspace_id: ID(removed.workspace_id.encode()),
            },
        )
        .await
    }
}
