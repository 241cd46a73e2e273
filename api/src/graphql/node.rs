//! The Relay `Node` interface: refetch any object by its opaque id.

use async_graphql::{Context, ID, Interface, Object, Result};

use super::audit::AuditEvent;
use super::members::Member;
use super::organizations::{Organization, load_organization};
use super::rc;
use super::shape::Typed;
use super::users::User;
use super::workspaces::{Workspace, load_visible};
use crate::ids::{AuditEventId, MemberId, OrganizationId, UserId, WorkspaceId};

/// An object with a globally unique, opaque id.
#[derive(Interface)]
#[graphql(field(name = "id", ty = "ID", desc = "Opaque id; its prefix names the type."))]
pub enum Node {
    /// A workspace.
    Workspace(Workspace),
    /// A membership.
    Member(Member),
    /// A user.
    User(User),
    /// An organization.
    Organization(Organization),
    /// An audit event (owners and admins of its workspace).
    AuditEvent(AuditEvent),
}

/// The `node` query.
#[derive(Default)]
pub struct NodeQuery;

#[Object]
impl NodeQuery {
    /// Any object the caller may see, by id; null when missing or not visible (the two cost
    /// the same statements). Users are visible as themselves only (others appear through
    /// `Member.user`); audit events to owners and admins of their workspace.
    async fn node(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Typed<Node>>> {
        Ok(find(ctx, id).await?.map(Typed))
    }
}

async fn find(ctx: &Context<'_>, id: ID) -> Result<Option<Node>> {
    let rc = rc(ctx);
    if let Some(ws) = WorkspaceId::decode(&id) {
        return Ok(load_visible(ctx, ws).await?.map(Node::Workspace));
    }
    if let Some(m) = MemberId::decode(&id) {
        let row = crate::domain::members::find_visible(&rc.services, &rc.actor, m)
            .await
            .map_err(|e| rc.err(e))?;
        return Ok(row.map(|r| Node::Member(Member(r))));
    }
    if let Some(o) = OrganizationId::decode(&id) {
        return Ok(load_organization(ctx, o).await?.map(Node::Organization));
    }
    if let Some(e) = AuditEventId::decode(&id) {
        let row = crate::domain::audit::find_visible(&rc.services, &rc.actor, e)
            .await
            .map_err(|e| rc.err(e))?;
        return Ok(row.map(|r| Node::AuditEvent(AuditEvent(r))));
    }
    if let Some(u) = UserId::decode(&id) {
        if u != rc.actor.user_id {
            return Ok(None);
        }
        let row = rc
            .loaders
            .users
            .load_one(u.0)
            .await
            .map_err(|e| rc.err(e))?;
        return Ok(row.map(|r| Node::User(User(r))));
    }
    Ok(None)
}
