//! Privacy (GDPR): consents ([`consents`]), data exports ([`export`]) and erasure
//! ([`erase`]). docs/features/privacy.md says what each covers and keeps.
//!
//! Who may ask about a person ([`scope_of`]): the person themself, for everything; or an
//! owner of a workspace the person belongs to, for what relates to that workspace. Anyone
//! else is told what a missing id tells (`NOT_FOUND`). Exports and erasures run as jobs of
//! the `gdpr` queue; a job asked for by the person themself belongs to no workspace and is
//! read by them alone (`Query.job`), one asked for by an owner belongs to the workspace.

pub mod consents;
pub mod erase;
pub mod export;

use diesel_async::AsyncPgConnection;
use hmac::Mac as _;
use uuid::Uuid;

use super::{Actor, DomainError, DomainResult, Role};
use crate::db::repo::erasure::{self, Membership};
use crate::db::repo::workspace_jobs::{self, JobRow};
use crate::ids::{UserId, WorkspaceId};
use crate::storage::Vault;

/// The queue of export and erasure jobs.
pub const QUEUE: &str = crate::tasks::queue::GDPR;
/// Attempts of a job of the queue.
pub const MAX_ATTEMPTS: i32 = 5;

/// HMAC-SHA256 of `data` under the master key's subkey for `purpose`, hex.
fn keyed_hex(vault: &Vault, purpose: &str, data: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&vault.subkey(purpose))
        .expect("any key size");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// The pseudonym that replaces an erased person wherever they were named:
/// `erased_` and 16 hex digits of a keyed hash of their id, the same in every row (so counts
/// by person still add up), and not reversible without the master key.
pub fn pseudonym(vault: &Vault, user: Uuid) -> String {
    format!(
        "erased_{}",
        &keyed_hex(vault, "pseudonyms", user.as_bytes())[..16]
    )
}

/// The subject an erased person's row holds instead of their token's `sub`: a keyed hash of
/// it, so that a sign-in with that `sub` is recognized (and refused) without the `sub`
/// itself being kept.
pub fn closed_subject(vault: &Vault, subject: &str) -> String {
    format!(
        "erased:{}",
        keyed_hex(vault, "erased-subjects", subject.as_bytes())
    )
}

/// What a request about a person covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (the person's own request).
    Everything,
    /// What relates to one workspace (an owner's request, or the person's own narrowed one).
    Workspace(Uuid),
}

impl Scope {
    /// The workspace, for a narrowed scope.
    pub fn workspace(self) -> Option<Uuid> {
        match self {
            Scope::Everything => None,
            Scope::Workspace(w) => Some(w),
        }
    }
}

/// What `actor` may ask about `target` (see the module docs); `workspace` narrows it (and
/// picks the workspace when an owner shares several with the person). `what` names the
/// action in refusals.
pub async fn scope_of(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    target: UserId,
    workspace: Option<WorkspaceId>,
    what: &str,
) -> DomainResult<Scope> {
    let theirs = erasure::live_memberships(conn, target.0).await?;
    if target == actor.user_id {
        let scope = match workspace {
            None => Scope::Everything,
            Some(w) if theirs.iter().any(|m| m.workspace_id == w.0) => Scope::Workspace(w.0),
            Some(_) => return Err(DomainError::NotFound("workspace")),
        };
        admit_scope(conn, actor, scope.workspace(), target.0).await?;
        return Ok(scope);
    }
    let mine = erasure::live_memberships(conn, actor.user_id.0).await?;
    let shared: Vec<&Membership> = mine
        .iter()
        .filter(|m| theirs.iter().any(|t| t.workspace_id == m.workspace_id))
        .filter(|m| workspace.is_none_or(|w| w.0 == m.workspace_id))
        .collect();
    if shared.is_empty() {
        // Someone who shares no workspace with the caller, exactly like a missing id.
        return Err(DomainError::NotFound("user"));
    }
    let owned: Vec<Uuid> = shared
        .iter()
        .filter(|m| Role::parse(&m.role) == Some(Role::Owner))
        .map(|m| m.workspace_id)
        .collect();
    match owned.as_slice() {
        [] => Err(DomainError::Forbidden(format!(
            "only the person themself, or an owner of a workspace they belong to, may {what}"
        ))),
        [w] => {
            actor.admit(*w).await?;
            Ok(Scope::Workspace(*w))
        }
        _ => Err(DomainError::bad_input(
            "workspaceId",
            "this person belongs to several of your workspaces: name one with workspaceId",
        )),
    }
}

/// The workspaces' policies (the gate) on a privacy operation about `person`: the policies of
/// the scope's workspace, or, for the person's own request about everything, those of every
/// live workspace they belong to (each holds part of what it covers).
pub(crate) async fn admit_scope(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    workspace: Option<Uuid>,
    person: Uuid,
) -> DomainResult<()> {
    match workspace {
        Some(w) => actor.admit(w).await,
        None => {
            for m in erasure::live_memberships(conn, person).await? {
                actor.admit(m.workspace_id).await?;
            }
            Ok(())
        }
    }
}

/// Enqueues a job of the queue in the caller's transaction: of the scope's workspace, or of
/// no workspace and read by `actor`; the job (the one already enqueued under `key`, if any).
/// With a `limit`, the scope's jobs of `kind` queued or running count against it: one more
/// is refused with `RATE_LIMITED` (erasures have none: one per person and workspace anyway).
async fn enqueue(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    scope: Scope,
    kind: &str,
    payload: &serde_json::Value,
    key: &str,
    limit: Option<i64>,
) -> DomainResult<(JobRow, bool)> {
    let who = actor.user_id.0;
    let (id, fresh) = match (scope, limit) {
        (scope, Some(limit)) => {
            use workspace_jobs::Enqueued;
            let ws = match scope {
                Scope::Workspace(ws) => Some(ws),
                Scope::Everything => None,
            };
            match workspace_jobs::enqueue_limited(
                conn,
                ws,
                who,
                kind,
                QUEUE,
                payload,
                key,
                MAX_ATTEMPTS,
                limit,
            )
            .await?
            {
                Enqueued::New(id) => (Some(id), true),
                Enqueued::Existing(id) | Enqueued::Coalesced(id) => (Some(id), false),
                Enqueued::Full(n) => return Err(crate::domain::jobs::too_many(kind, n)),
            }
        }
        (Scope::Workspace(ws), None) => workspace_jobs::enqueue(
            conn,
            ws,
            kind,
            Some(who),
            QUEUE,
            payload,
            key,
            MAX_ATTEMPTS,
            0,
        )
        .await
        .map(|id| (id, true))?,
        (Scope::Everything, None) => {
            workspace_jobs::enqueue_personal(conn, who, kind, QUEUE, payload, key, MAX_ATTEMPTS)
                .await
                .map(|id| (id, true))?
        }
    };
    let (id, fresh) = match id {
        Some(id) => (id, fresh),
        None => (
            crate::db::repo::analytics::job_by_key(conn, QUEUE, key)
                .await?
                .ok_or_else(|| DomainError::internal(anyhow::anyhow!("{kind} job vanished")))?,
            false,
        ),
    };
    let job = workspace_jobs::find(conn, &id)
        .await?
        .ok_or_else(|| DomainError::internal(anyhow::anyhow!("{kind} job {id} vanished")))?;
    Ok((job, fresh))
}

/// The payload of an export job.
fn export_payload(export: Uuid) -> serde_json::Value {
    crate::tasks::Task::Export { export }.payload()
}

/// The payload of an erasure job.
fn erase_payload(user: Uuid) -> serde_json::Value {
    crate::tasks::Task::Erase { user }.payload()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::open("memory:///", &[], [7; 32]).expect("vault")
    }

    #[test]
    fn pseudonyms_are_stable_keyed_and_shaped() {
        let (v, u) = (vault(), Uuid::now_v7());
        let p = pseudonym(&v, u);
        assert_eq!(p, pseudonym(&v, u));
        assert_ne!(p, pseudonym(&v, Uuid::now_v7()));
        assert_ne!(
            p,
            pseudonym(&Vault::open("memory:///", &[], [8; 32]).expect("vault"), u)
        );
        assert!(p.starts_with("erased_") && p.len() == 23);
        assert!(p[7..].bytes().all(|b| b.is_ascii_hexdigit()));
        let s = closed_subject(&v, "auth0|someone");
        assert!(s.starts_with("erased:") && !s.contains("someone"));
        assert_eq!(s, closed_subject(&v, "auth0|someone"));
    }
}
