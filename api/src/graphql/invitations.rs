//! Invitations: `addMember` invites, the invitee accepts or declines (`domain::invitations`).

use async_graphql::connection::Connection;
use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::members::{Member, Role};
use super::pagination;
use super::replay::{self, Replayable};
use super::{error, rc};
use crate::db::repo::invitations::{InvitationRow, ReceivedRow};
use crate::domain as d;
use crate::domain::invitations::{self as domain, InvitationRef};
use crate::ids::{InvitationId, WorkspaceId};

fn role_of(s: &str) -> Result<Role> {
    d::Role::parse(s).map(Into::into).ok_or_else(|| {
        error::to_graphql(
            d::DomainError::internal(anyhow::anyhow!("bad role in db")),
            "",
        )
    })
}

/// An invitation to join a workspace, as the workspace's owners and admins see it.
pub struct Invitation(pub InvitationRow);

#[Object]
impl Invitation {
    /// Opaque id (`invt_…`).
    async fn id(&self) -> ID {
        ID(InvitationId(self.0.id).encode())
    }

    /// The address invited (ASCII letters lower-cased).
    async fn email(&self) -> &str {
        &self.0.email
    }

    /// The role the invitee gets by accepting.
    async fn role(&self) -> Result<Role> {
        role_of(&self.0.role)
    }

    /// E-mails sent so far (the first and each resend; at most 5).
    async fn sends(&self) -> i32 {
        self.0.sends
    }

    /// When the last e-mail was sent.
    async fn last_sent_at(&self) -> DateTime<Utc> {
        self.0.last_sent_at
    }

    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// Past this it can no longer be accepted (`INVITATION_TTL_DAYS` after the last e-mail).
    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.expires_at
    }
}

/// An invitation addressed to you: accept it (`acceptInvitation`) or decline it.
pub struct ReceivedInvitation(pub ReceivedRow);

#[Object]
impl ReceivedInvitation {
    /// Opaque id (`invt_…`).
    async fn id(&self) -> ID {
        ID(InvitationId(self.0.invitation.id).encode())
    }

    /// The workspace's id (readable once you are a member).
    async fn workspace_id(&self) -> ID {
        ID(WorkspaceId(self.0.invitation.workspace_id).encode())
    }

    /// The workspace's name.
    async fn workspace_name(&self) -> &str {
        &self.0.workspace_name
    }

    /// The role you get by accepting.
    async fn role(&self) -> Result<Role> {
        role_of(&self.0.invitation.role)
    }

    /// When it was sent.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.invitation.created_at
    }

    /// Past this it can no longer be accepted.
    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.invitation.expires_at
    }
}

/// The pending invitations of workspace `ws`, newest first (owners and admins).
pub async fn invitations_of(
    ctx: &Context<'_>,
    ws: uuid::Uuid,
    first: Option<i32>,
    after: Option<String>,
) -> Result<Connection<String, Invitation>> {
    super::billing::may_manage(ctx, ws, "list invitations").await?;
    let rc = rc(ctx);
    let page = pagination::page(first, after.as_deref())?;
    let rows = domain::page(&rc.services, WorkspaceId(ws), page)
        .await
        .map_err(|e| rc.err(e))?;
    Ok(pagination::connection(rows, page, |r| r.id, Invitation))
}

/// The caller's pending invitations (none while their e-mail is not verified).
pub async fn received(ctx: &Context<'_>) -> Result<Vec<ReceivedInvitation>> {
    let rc = rc(ctx);
    let rows = domain::received(&rc.services, &rc.actor)
        .await
        .map_err(|e| rc.err(e))?;
    Ok(rows.into_iter().map(ReceivedInvitation).collect())
}

/// Names the invitation an invitee answers: its id, or the token of the e-mail's link.
#[derive(InputObject)]
pub struct AnswerInvitationInput {
    /// The invitation (`viewer.invitations`); or give `token`.
    pub invitation_id: Option<ID>,
    /// The `invitation` parameter of the e-mail's link; or give `invitationId`.
    pub token: Option<String>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

impl AnswerInvitationInput {
    fn which(&self) -> Result<InvitationRef> {
        match (&self.invitation_id, &self.token) {
            (Some(id), None) => InvitationId::decode(id)
                .map(InvitationRef::Id)
                .ok_or_else(|| error::not_found("invitation")),
            (None, Some(t)) => Ok(InvitationRef::Token(t.clone())),
            _ => Err(error::bad_input(
                "invitationId",
                "give exactly one of invitationId and token",
            )),
        }
    }
}

/// Result of `acceptInvitation`.
#[derive(SimpleObject)]
pub struct AcceptInvitationPayload {
    /// Your new membership.
    pub member: Member,
}

/// Result of `declineInvitation` and `revokeInvitation`.
#[derive(SimpleObject)]
pub struct EndInvitationPayload {
    /// The invitation, now gone.
    pub invitation_id: ID,
}

/// Input of `revokeInvitation` and `resendInvitation`.
#[derive(InputObject)]
pub struct ManageInvitationInput {
    /// The invitation.
    pub invitation_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `resendInvitation`.
#[derive(SimpleObject)]
pub struct ResendInvitationPayload {
    /// The invitation, live again for `INVITATION_TTL_DAYS`.
    pub invitation: Invitation,
}

fn invitation_id(id: &ID) -> Result<InvitationId> {
    InvitationId::decode(id).ok_or_else(|| error::not_found("invitation"))
}

/// Invitation mutations.
#[derive(Default)]
pub struct InvitationMutation;

#[Object]
impl InvitationMutation {
    /// Accepts an invitation addressed to you: you join its workspace with its role. Your
    /// token's e-mail must be verified and equal to the invited address; the workspace's
    /// policies apply.
    async fn accept_invitation(
        &self,
        ctx: &Context<'_>,
        input: AnswerInvitationInput,
    ) -> Result<Replayable<AcceptInvitationPayload>> {
        let which = input.which()?;
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::accept(s, a, which, k).await,
            |m| Some(m.workspace_id),
            |m| AcceptInvitationPayload { member: Member(m) },
        )
        .await
    }

    /// Declines an invitation addressed to you (the workspace's audit log records it).
    async fn decline_invitation(
        &self,
        ctx: &Context<'_>,
        input: AnswerInvitationInput,
    ) -> Result<Replayable<EndInvitationPayload>> {
        let which = input.which()?;
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::decline(s, a, which, k).await,
            |_| None,
            |e| EndInvitationPayload {
                invitation_id: ID(e.invitation_id.encode()),
            },
        )
        .await
    }

    /// Revokes a pending invitation (owners and admins; owners for owner invitations).
    async fn revoke_invitation(
        &self,
        ctx: &Context<'_>,
        input: ManageInvitationInput,
    ) -> Result<Replayable<EndInvitationPayload>> {
        let id = invitation_id(&input.invitation_id)?;
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::revoke(s, a, id, k).await,
            |e| Some(e.workspace_id.0),
            |e| EndInvitationPayload {
                invitation_id: ID(e.invitation_id.encode()),
            },
        )
        .await
    }

    /// E-mails a pending invitation again and makes it live for `INVITATION_TTL_DAYS` from
    /// now (owners and admins; at most 5 e-mails per invitation, one a minute).
    async fn resend_invitation(
        &self,
        ctx: &Context<'_>,
        input: ManageInvitationInput,
    ) -> Result<Replayable<ResendInvitationPayload>> {
        let id = invitation_id(&input.invitation_id)?;
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::resend(s, a, id, k).await,
            |r| Some(r.workspace_id),
            |r| ResendInvitationPayload {
                invitation: Invitation(r),
            },
        )
        .await
    }
}
