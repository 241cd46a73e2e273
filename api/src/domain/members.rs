//! Members and roles. The role matrix (docs/features/identity-and-roles.md) is enforced here
//! and only here.

use diesel_async::AsyncPgConnection;
use serde_json::json;

use super::access::Owned;
use super::audit::{self, Change};
use super::governance::approvals::{self, ApprovalAction, ApprovalRow, Held, Outcome};
use super::invitations::InvitationConfig;
use super::mutation::{self, Effect};
use super::workspaces::require_role;
use super::{Actor, DomainError, DomainResult, Role, Services};
use crate::db::models::MemberRow;
use crate::db::repo::invitations::InvitationRow;
use crate::db::repo::{self, Page, members};
use crate::ids::{InvitationId, MemberId, UserId, WorkspaceId};

/// Members a workspace may have, pending invitations included.
pub const MAX_MEMBERS: i64 = 100;

/// The actor's role in `ws`, `None` when not a member (or the workspace is gone).
pub async fn viewer_role(
    services: &Services,
    actor: &Actor,
    ws: WorkspaceId,
) -> DomainResult<Option<Role>> {
    let mut conn = services.conn().await?;
    let role = members::role_of(&mut conn, ws.0, actor.user_id.0)
        .await?
        .and_then(|r| Role::parse(&r));
    drop(conn);
    if role.is_some() {
        actor.admit(ws.0).await?;
    }
    Ok(role)
}

/// Pages of members for several workspaces (the caller has checked membership).
pub async fn pages(
    services: &Services,
    ws_ids: &[uuid::Uuid],
    page: Page,
) -> DomainResult<Vec<MemberRow>> {
    let mut conn = services.conn().await?;
    Ok(members::pages_for_workspaces(&mut conn, ws_ids, page).await?)
}

/// A member the actor can see (a member of a workspace the actor belongs to).
pub async fn find_visible(
    services: &Services,
    actor: &Actor,
    id: MemberId,
) -> DomainResult<Option<MemberRow>> {
    let mut conn = services.conn().await?;
    let row = members::find_visible(&mut conn, id.0, actor.user_id.0).await?;
    drop(conn);
    if let Some(m) = &row {
        actor.admit(m.workspace_id).await?;
    }
    Ok(row)
}

/// Input of `add`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewMember {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// E-mail of the person to add.
    pub email: String,
    /// Role to give.
    pub role: Role,
}

/// Normalizes and checks an e-mail address (billing contacts, domain rules): trimmed, its
/// ASCII letters lower-cased and nothing else folded.
pub fn check_email(email: &str) -> DomainResult<String> {
    let e = email.trim().to_ascii_lowercase();
    let valid = e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        });
    if valid {
        Ok(e)
    } else {
        Err(DomainError::bad_input(
            "email",
            format!(
                "`{}` is not a valid e-mail address",
                super::excerpt(email.trim())
            ),
        ))
    }
}

/// `addMember`: invites a person by e-mail (`domain::invitations`); nobody becomes a member
/// without accepting. The answer is the invitation, the same whether the address has an
/// account or not. Inviting an owner is held for approval when the workspace requires it for
/// `PROMOTE_TO_OWNER`.
pub async fn add(
    services: &Services,
    actor: &Actor,
    input: NewMember,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Outcome<InvitationRow>>> {
    let email = super::invitations::normalize_email(&input.email)?;
    let (ws, role) = (input.workspace_id, input.role);
    let config = services.invitations.clone();
    mutation::run(
        services,
        actor,
        "addMember",
        key,
        &input,
        |c, _| -> Effect<'_, _> {
            Box::pin(add_effect(
                c,
                email.clone(),
                actor.clone(),
                ws,
                role,
                config.clone(),
            ))
        },
    )
    .await
}

/// The effect of `addMember`, in the mutation's transaction.
async fn add_effect(
    conn: &mut AsyncPgConnection,
    email: String,
    actor: Actor,
    ws: WorkspaceId,
    role: Role,
    config: InvitationConfig,
) -> DomainResult<Outcome<InvitationRow>> {
    let mine = require_role(conn, &actor, ws, Role::is_manager, "add members").await?;
    if role == Role::Owner && mine != Role::Owner {
        return Err(DomainError::Forbidden("only owners can add owners".into()));
    }
    // Serializes concurrent additions so that the cap holds.
    repo::workspaces::lock(conn, ws.0)
        .await?
        .ok_or(DomainError::NotFound("workspace"))?;
    super::governance::settings::check_member_email(conn, ws, &email).await?;
    let count =
        members::count(conn, ws.0).await? + repo::invitations::count_live(conn, ws.0).await?;
    if count >= MAX_MEMBERS {
        return Err(DomainError::LimitExceeded(format!(
            "a workspace has at most {MAX_MEMBERS} members (pending invitations included); it has {count}"
        )));
    }
    super::governance::quotas::check_members(conn, ws.0).await?;
    if role == Role::Owner {
        let input = NewMember {
            workspace_id: ws,
            email: email.clone(),
            role,
        };
        let held = Held {
            workspace: ws,
            action: ApprovalAction::PromoteToOwner,
            operation: "addMember",
            input: &input,
            target_type: "Email",
            target_id: email.clone(),
        };
        if let Some(request) = approvals::hold_if_required(conn, &actor, held).await? {
            return Ok(Outcome::Held(Box::new(request)));
        }
    }
    let invitation = super::invitations::invite(conn, &actor, ws, &email, role, &config).await?;
    Ok(Outcome::Done(invitation))
}

/// Executes an approved `addMember` or `updateMemberRole` (`governance::approvals`) as the
/// requester.
pub(crate) async fn execute_approved(
    conn: &mut AsyncPgConnection,
    services: &Services,
    request: &ApprovalRow,
    actor: &Actor,
) -> DomainResult<serde_json::Value> {
    let input = request.input.clone();
    if request.operation == "addMember" {
        let new: NewMember = serde_json::from_value(input).map_err(DomainError::internal)?;
        let config = services.invitations.clone();
        return match add_effect(
            conn,
            new.email,
            actor.clone(),
            new.workspace_id,
            new.role,
            config,
        )
        .await?
        {
            Outcome::Done(i) => Ok(json!({
                "invitationId": InvitationId(i.id).encode(),
                "email": i.email,
                "role": i.role,
            })),
            Outcome::Held(_) => approvals::held_again(),
        };
    }
    let change: RoleChange = serde_json::from_value(input).map_err(DomainError::internal)?;
    match update_role_effect(conn, actor.clone(), change.member_id, change.role).await? {
        (m, None) => Ok(json!({
            "memberId": MemberId(m.id).encode(),
            "userId": UserId(m.user_id).encode(),
            "role": m.role,
        })),
        (_, Some(_)) => approvals::held_again(),
    }
}

/// Loads a member and locks its workspace; a member of a workspace the actor does not
/// belong to is reported exactly like a missing one.
async fn lock_member(
    conn: &mut diesel_async::AsyncPgConnection,
    actor: &Actor,
    id: MemberId,
) -> DomainResult<(MemberRow, Role)> {
    let access = super::access::to(conn, actor, Owned::Member, id.0, "member").await?;
    let mine = access.role;
    repo::workspaces::lock(conn, access.workspace.0)
        .await?
        .ok_or(DomainError::NotFound("member"))?;
    // Re-read under the lock: it may have changed or gone meanwhile.
    let m = members::find(conn, id.0)
        .await?
        .ok_or(DomainError::NotFound("member"))?;
    Ok((m, mine))
}

async fn ensure_not_last_owner(
    conn: &mut diesel_async::AsyncPgConnection,
    m: &MemberRow,
    what: &str,
) -> DomainResult<()> {
    if m.role == Role::Owner.as_str() && members::count_owners(conn, m.workspace_id).await? <= 1 {
        return Err(DomainError::Conflict(format!(
            "the last owner of a workspace cannot be {what}; make another member an owner first"
        )));
    }
    Ok(())
}

/// Input of `update_role`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RoleChange {
    /// Member.
    pub member_id: MemberId,
    /// New role.
    pub role: Role,
}

/// Changes a member's role. Owners change anyone; admins move members between admin and
/// viewer; only owners make or unmake owners; the last owner cannot be demoted. A promotion
/// to owner is held for approval when the workspace requires it for `PROMOTE_TO_OWNER`
/// (the membership is returned unchanged with the request).
pub async fn update_role(
    services: &Services,
    actor: &Actor,
    input: RoleChange,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<(MemberRow, Option<ApprovalRow>)>> {
    let (id, role) = (input.member_id, input.role);
    mutation::run(
        services,
        actor,
        "updateMemberRole",
        key,
        &input,
        |c, _| -> Effect<'_, _> { Box::pin(update_role_effect(c, actor.clone(), id, role)) },
    )
    .await
}

/// The effect of `updateMemberRole`, in the mutation's transaction.
async fn update_role_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    id: MemberId,
    role: Role,
) -> DomainResult<(MemberRow, Option<ApprovalRow>)> {
    let (m, mine) = lock_member(conn, &actor, id).await?;
    let current = Role::parse(&m.role)
        .ok_or_else(|| DomainError::internal(anyhow::anyhow!("bad role in db")))?;
    if !mine.is_manager() {
        return Err(DomainError::Forbidden(format!(
            "your role {} may not change roles",
            mine.as_str()
        )));
    }
    if (current == Role::Owner || role == Role::Owner) && mine != Role::Owner {
        return Err(DomainError::Forbidden(
            "only owners can make or change owners".into(),
        ));
    }
    if current == role {
        return Ok((m, None));
    }
    if role == Role::Owner {
        let held = Held {
            workspace: WorkspaceId(m.workspace_id),
            action: ApprovalAction::PromoteToOwner,
            operation: "updateMemberRole",
            input: &RoleChange {
                member_id: id,
                role,
            },
            target_type: "Member",
            target_id: id.encode(),
        };
        if let Some(request) = approvals::hold_if_required(conn, &actor, held).await? {
            return Ok((m, Some(request)));
        }
    }
    if current == Role::Owner {
        ensure_not_last_owner(conn, &m, "demoted").await?;
    }
    let updated = members::update_role(conn, m.id, role.as_str()).await?;
    audit::record(conn, Change {
        workspace: WorkspaceId(m.workspace_id),
        action: "member.update_role",
        target_type: "Member",
        target_id: id.encode(),
        summary: json!({"userId": UserId(m.user_id).encode(), "before": current.as_str(), "after": role.as_str()}),
        actor: &actor,
    })
    .await?;
    if role == Role::Owner {
        let ws = WorkspaceId(m.workspace_id);
        let who = (id, UserId(m.user_id));
        super::notifications::owner_added(conn, ws, who, None, true, &actor).await?;
    }
    Ok((updated, None))
}

/// What `remove` reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Removed {
    /// The removed member.
    pub member_id: MemberId,
    /// Its workspace.
    pub workspace_id: WorkspaceId,
}

/// Removes a member. Anyone may leave; owners remove anyone; admins remove admins and
/// viewers; the last owner cannot be removed.
pub async fn remove(
    services: &Services,
    actor: &Actor,
    id: MemberId,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Removed>> {
    mutation::run(
        services,
        actor,
        "removeMember",
        key,
        &id,
        |conn, _| -> Effect<'_, Removed> { Box::pin(remove_effect(conn, actor.clone(), id)) },
    )
    .await
}

/// The effect of `removeMember`, in the mutation's transaction.
async fn remove_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    id: MemberId,
) -> DomainResult<Removed> {
    let (m, mine) = lock_member(conn, &actor, id).await?;
    let leaving = m.user_id == actor.user_id.0;
    if !leaving {
        if !mine.is_manager() {
            return Err(DomainError::Forbidden(format!(
                "your role {} may not remove members",
                mine.as_str()
            )));
        }
        if m.role == Role::Owner.as_str() && mine != Role::Owner {
            return Err(DomainError::Forbidden(
                "only owners can remove owners".into(),
            ));
        }
    }
    ensure_not_last_owner(conn, &m, "removed").await?;
    members::delete(conn, m.id).await?;
    audit::record(
        conn,
        Change {
            workspace: WorkspaceId(m.workspace_id),
            action: if leaving {
                "member.leave"
            } else {
                "member.remove"
            },
            target_type: "Member",
            target_id: id.encode(),
            summary: json!({"userId": UserId(m.user_id).encode(), "role": m.role}),
            actor: &actor,
        },
    )
    .await?;
    Ok(Removed {
        member_id: id,
        workspace_id: WorkspaceId(m.workspace_id),
    })
}
