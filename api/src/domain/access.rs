//! Access to an object named by id: whether it exists in a live workspace the caller belongs
//! to and the caller's role there, established in one statement (so another workspace's
//! object is exactly a missing one: same answer, same statements), then the workspace's
//! policies (the gate).

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use super::{Actor, DomainError, DomainResult, Role};
pub use crate::db::repo::access::Owned;
use crate::ids::WorkspaceId;

/// The caller's standing in the workspace of an object: a member with `role`, admitted by the
/// workspace's policies for this request.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// The object's workspace.
    pub workspace: WorkspaceId,
    /// The caller's role there.
    pub role: Role,
}

impl Access {
    /// The role, when `allowed` accepts it; `FORBIDDEN` naming `what` otherwise.
    pub fn require(&self, allowed: impl Fn(Role) -> bool, what: &str) -> DomainResult<Role> {
        if allowed(self.role) {
            Ok(self.role)
        } else {
            Err(DomainError::Forbidden(format!(
                "your role {} may not {what}",
                self.role.as_str()
            )))
        }
    }
}

/// The caller's access to object `id` of `kind`: `NOT_FOUND` (`missing` names it) alike when
/// it does not exist and when it is another workspace's; then the gate.
pub async fn to(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    kind: Owned,
    id: Uuid,
    missing: &'static str,
) -> DomainResult<Access> {
    let found = crate::db::repo::access::role_for(conn, kind, id, actor.user_id.0).await?;
    let Some((ws, role)) = found.and_then(|(w, r)| Role::parse(&r).map(|r| (w, r))) else {
        return Err(DomainError::NotFound(missing));
    };
    actor.admit(ws).await?;
    Ok(Access {
        workspace: WorkspaceId(ws),
        role,
    })
}
