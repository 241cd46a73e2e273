//! Approval workflows: a sensitive mutation of a workspace that lists its action in
//! `approval_required_for` is not executed when asked; it is stored as a pending approval
//! request (its operation and validated input), and executed once when a different owner or
//! admin approves it.
//!
//! Each held mutation calls [`hold_if_required`] in its transaction, before acting (after its
//! role checks): `Some` means "held, return the request". The approved execution runs with a
//! system gate for the requester ([`crate::domain::Actor::system`]), which is never held again.
//!
//! Decisions ([`approve`], [`reject`]):
//! - who: owners and admins of the workspace, people only (API keys cannot decide); a request
//!   for an owner-level action ([`owners_only`]: promoting an owner, billing, an `OWNER` API
//!   key, security settings) is decided by owners only. The requester can never approve their
//!   own request; they can *withdraw* it with `rejectRequest` (audited as `approval.withdraw`);
//! - once: the request's row is locked (`FOR UPDATE`) in the decision's transaction; a request
//!   no longer pending is a `CONFLICT`; one past its expiry is marked `EXPIRED` then and
//!   answered `CONFLICT` ("expired");
//! - approval executes the held mutation through its module's `execute_approved` ([`dispatch`],
//!   by operation) in the same transaction, as the requester: its own audit event names the
//!   requester, `approval.approve` the approver. When the action can no longer be done (the
//!   organization is gone, the requester lost the role it needs...), the request is marked
//!   `FAILED` with the reason instead: a decision, not an error;
//! - Stripe is never called inside the transaction: an approved subscription change records
//!   its billing intent there (Stripe idempotency key derived from the request's id, so the
//!   call happens once whoever retries), and the call follows the commit through the intents'
//!   completion path ([`crate::domain::billing::intents::finish`]); a refusal by Stripe then
//!   marks the request `FAILED`. When Stripe cannot be reached, the intent's recovery job
//!   finishes it later.
//!
//! Expiry: a pending request past `expires_at` is `EXPIRED` as read; it is marked so in the
//! database by the first decision attempt, and by the periodic `approval-expiry` job
//! ([`expire_due`]), which also abandons what a request left waiting (an API key created
//! pending approval is revoked).

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::{Value, json};

use crate::db::DbPool;
use crate::db::repo::Page;
use crate::db::repo::approvals as repo;
use crate::db::repo::governance as settings_repo;
use crate::domain::access::{self, Owned};
use crate::domain::audit::{self, Change};
use crate::domain::governance::Caller;
use crate::domain::mutation::{self, Effect};
use crate::domain::{Actor, DomainError, DomainResult, Role, Services};
use crate::ids::{ApprovalRequestId, UserId, WorkspaceId};

/// The sensitive actions a workspace may put under approval (a fixed contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

impl ApprovalAction {
    /// Every action.
    pub const ALL: [ApprovalAction; 6] = [
        ApprovalAction::DeleteOrganization,
        ApprovalAction::ChangeSubscription,
        ApprovalAction::CancelSubscription,
        ApprovalAction::PromoteToOwner,
        ApprovalAction::CreateApiKey,
        ApprovalAction::ChangeSecuritySettings,
    ];

    /// Stored form (as in GraphQL).
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalAction::DeleteOrganization => "DELETE_ORGANIZATION",
            ApprovalAction::ChangeSubscription => "CHANGE_SUBSCRIPTION",
            ApprovalAction::CancelSubscription => "CANCEL_SUBSCRIPTION",
            ApprovalAction::PromoteToOwner => "PROMOTE_TO_OWNER",
            ApprovalAction::CreateApiKey => "CREATE_API_KEY",
            ApprovalAction::ChangeSecuritySettings => "CHANGE_SECURITY_SETTINGS",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

pub use crate::db::repo::approvals::ApprovalRow;

/// What a held mutation is about.
pub struct Held<'a, I: serde::Serialize> {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The action.
    pub action: ApprovalAction,
    /// The mutation's name.
    pub operation: &'static str,
    /// Its validated input (what the executor will read back).
    pub input: &'a I,
    /// Kind of the object it acts on (e.g. `Organization`).
    pub target_type: &'static str,
    /// External id of that object.
    pub target_id: String,
}

/// In the held mutation's transaction, before it acts: when `held.workspace` requires
/// approval for `held.action` and the actor is a person or an API key (not an approved
/// execution), stores a pending request (audited as `approval.request`, and notified) and
/// returns it; the mutation then returns it instead of acting.
pub async fn hold_if_required<I: serde::Serialize>(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    held: Held<'_, I>,
) -> DomainResult<Option<ApprovalRow>> {
    if matches!(actor.gate.caller(), Caller::System | Caller::Link) {
        return Ok(None);
    }
    let Some(settings) = settings_repo::settings(conn, held.workspace.0).await? else {
        return Ok(None);
    };
    let action = held.action.as_str();
    if !settings.approval_required_for.iter().any(|a| a == action) {
        return Ok(None);
    }
    let input = serde_json::to_value(held.input).map_err(DomainError::internal)?;
    let id = ApprovalRequestId::new();
    let row = repo::insert(
        conn,
        &repo::NewApproval {
            id: id.0,
            workspace_id: held.workspace.0,
            action,
            operation: held.operation,
            input: &input,
            target_type: held.target_type,
            target_id: &held.target_id,
            requested_by: actor.user_id.0,
            expiry_hours: settings.approval_expiry_hours,
        },
    )
    .await?;
    audit::record(
        conn,
        Change {
            workspace: held.workspace,
            action: "approval.request",
            target_type: "ApprovalRequest",
            target_id: id.encode(),
            summary: json!({
                "action": action,
                "operation": held.operation,
                "targetType": held.target_type,
                "targetId": held.target_id,
                "expiresAt": row.expires_at,
            }),
            actor,
        },
    )
    .await?;
    crate::domain::notifications::approval_requested(
        conn,
        held.workspace,
        &id.encode(),
        action,
        actor,
    )
    .await?;
    Ok(Some(row))
}

/// What a mutation that may be held did: acted, or stored a pending request instead.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Outcome<T> {
    /// It acted.
    Done(T),
    /// It was held for approval: nothing else changed.
    Held(Box<ApprovalRow>),
}

impl<T> Outcome<T> {
    /// The request that holds it, when held.
    pub fn held(&self) -> Option<&ApprovalRow> {
        match self {
            Outcome::Held(r) => Some(r.as_ref()),
            Outcome::Done(_) => None,
        }
    }
}

/// The result of an execution that came back held, which an approved execution (a system
/// actor) never is.
pub fn held_again<T>() -> DomainResult<T> {
    Err(DomainError::internal(anyhow::anyhow!(
        "an approved execution was held again"
    )))
}

/// Longest rejection reason.
pub const REASON_MAX: usize = 500;

/// What a decision's transaction came to (stored under the decision's idempotency key).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Decided {
    /// The request as decided.
    Row(ApprovalRow),
    /// The request had expired (now marked so): the decision is refused.
    Expired(ApprovalRow),
}

fn expired_error(row: &ApprovalRow) -> DomainError {
    DomainError::Conflict(format!(
        "approval request {} expired at {} without a decision",
        ApprovalRequestId(row.id),
        row.expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ))
}

/// Whether only owners may decide `row`: actions that only owners may take themselves
/// (promoting an owner, billing, settings, quotas and templates, an `OWNER` API key).
pub fn owners_only(row: &ApprovalRow) -> bool {
    match ApprovalAction::parse(&row.action) {
        Some(ApprovalAction::DeleteOrganization) => false,
        Some(ApprovalAction::CreateApiKey) => {
            row.input.get("role").and_then(|r| r.as_str()) == Some(Role::Owner.as_str())
        }
        _ => true,
    }
}

/// Loads and locks a request for a decision; a concurrent decision that holds it longer
/// than the lock timeout is reported as a conflict.
async fn locked(conn: &mut AsyncPgConnection, id: ApprovalRequestId) -> DomainResult<ApprovalRow> {
    match repo::lock(conn, id.0).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(DomainError::NotFound("approval request")),
        Err(e) if e.to_string().contains("lock timeout") => Err(DomainError::Conflict(format!(
            "another decision on approval request {id} is in progress; read it again"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// A request `actor` may decide, locked, and whether deciding it is its requester withdrawing
/// it. The request and the caller's right to it are read in one statement first: another
/// workspace's request costs what a missing one costs, and is never locked.
async fn decidable(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: ApprovalRequestId,
    approving: bool,
) -> DomainResult<(ApprovalRow, bool)> {
    let access = access::to(
        conn,
        actor,
        Owned::ApprovalRequest,
        id.0,
        "approval request",
    )
    .await?;
    let row = locked(conn, id).await?;
    let withdrawn = eligible(actor, access.role, &row, approving)?;
    Ok((row, withdrawn))
}

/// Checks that `actor`, of `role` in its workspace (`access::to`), may decide `row` (see the
/// module docs); `true` when it is the requester withdrawing their own request.
fn eligible(actor: &Actor, role: Role, row: &ApprovalRow, approving: bool) -> DomainResult<bool> {
    if row.requested_by == actor.user_id.0 {
        if approving {
            return Err(DomainError::Forbidden(
                "you asked for this action: a different owner or admin must approve it (you may withdraw it with rejectRequest)".into(),
            ));
        }
        return Ok(true);
    }
    actor.gate.person_only("approve or reject requests")?;
    if !role.is_manager() {
        return Err(DomainError::Forbidden(format!(
            "your role {} may not approve or reject requests",
            role.as_str()
        )));
    }
    if owners_only(row) && role != Role::Owner {
        return Err(DomainError::Forbidden(format!(
            "only owners can approve or reject a request to {}",
            row.action
        )));
    }
    Ok(false)
}

/// A locked request that is no longer pending: a conflict; one past its expiry: marked
/// `EXPIRED` (and abandoned) now.
async fn still_pending(
    conn: &mut AsyncPgConnection,
    row: ApprovalRow,
) -> DomainResult<Result<ApprovalRow, Decided>> {
    if row.status == "EXPIRED" {
        return Err(expired_error(&row));
    }
    if row.status != "PENDING" {
        return Err(DomainError::Conflict(format!(
            "approval request {} was already decided: {}",
            ApprovalRequestId(row.id),
            row.status
        )));
    }
    if row.expires_at <= Utc::now() {
        let row = repo::decide(conn, row.id, "EXPIRED", None, None, None).await?;
        abandon(conn, &row).await?;
        return Ok(Err(Decided::Expired(row)));
    }
    Ok(Ok(row))
}

/// Whether an executor's error means the action can no longer be done (the request is then
/// `FAILED`), rather than a failure of ours or of the database (the decision is retried).
fn cannot_be_done(e: &DomainError) -> bool {
    !matches!(
        e,
        DomainError::Internal(_)
            | DomainError::Unavailable(_)
            | DomainError::IdempotencyKeyInUse
            | DomainError::IdempotencyKeyReused
            | DomainError::RateLimited { .. }
    )
}

/// Runs the held mutation of `request` through its module's executor (by operation), in
/// `conn`'s transaction, as `actor` (the requester, with a system gate).
async fn dispatch(
    conn: &mut AsyncPgConnection,
    services: &Services,
    request: &ApprovalRow,
    actor: &Actor,
) -> DomainResult<serde_json::Value> {
    use crate::domain;
    match request.operation.as_str() {
        "deleteOrganization" => {
            domain::organizations::execute_approved(conn, services, request, actor).await
        }
        "addMember" | "updateMemberRole" => {
            domain::members::execute_approved(conn, services, request, actor).await
        }
        "updateSubscription" | "cancelSubscription" => {
            domain::billing::subscriptions::execute_approved(conn, services, request, actor).await
        }
        "createApiKey" => {
            super::api_key_admin::execute_approved(conn, services, request, actor).await
        }
        "updateWorkspacePolicy" | "updateSecuritySettings" => {
            super::settings::execute_approved(conn, services, request, actor).await
        }
        "updateQuotas" => super::quotas::execute_approved(conn, services, request, actor).await,
        "applyTemplate" => super::templates::execute_approved(conn, services, request, actor).await,
        other => Err(DomainError::internal(anyhow::anyhow!(
            "no executor for the held operation {other}"
        ))),
    }
}

/// What has to follow an approval's commit.
enum After {
    /// Nothing.
    Nothing,
    /// The workspace's settings changed: this process forgets its cached copy.
    Forget,
    /// A billing intent to complete (Stripe called with its key).
    Stripe(String),
}

fn after(row: &ApprovalRow) -> After {
    if row.status != "APPROVED" {
        return After::Nothing;
    }
    match row.operation.as_str() {
        "createApiKey"
        | "updateSecuritySettings"
        | "updateWorkspacePolicy"
        | "updateQuotas"
        | "applyTemplate" => After::Forget,
        "updateSubscription" | "cancelSubscription" => {
            After::Stripe(crate::domain::billing::intents::approval_key(row.id))
        }
        _ => After::Nothing,
    }
}

/// Input of [`approve`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Approval {
    /// The request.
    pub approval_request_id: ApprovalRequestId,
}

/// Approves a pending request and executes its action once (see the module docs); returns
/// the request as decided (`APPROVED`, or `FAILED` with the reason).
pub async fn approve(
    services: &Services,
    actor: &Actor,
    input: Approval,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<ApprovalRow>> {
    let id = input.approval_request_id;
    let done = mutation::run(
        services,
        actor,
        "approveRequest",
        key,
        &input,
        |c, _| -> Effect<'_, Decided> {
            Box::pin(approve_effect(c, services.clone(), actor.clone(), id))
        },
    )
    .await?;
    let row = match done.value {
        Decided::Expired(row) => return Err(expired_error(&row)),
        Decided::Row(row) => row,
    };
    let row = follow_up(services, row).await;
    Ok(mutation::Done {
        value: row,
        keyed: done.keyed,
    })
}

/// The effect of `approveRequest`, in the mutation's transaction.
async fn approve_effect(
    conn: &mut AsyncPgConnection,
    services: Services,
    actor: Actor,
    id: ApprovalRequestId,
) -> DomainResult<Decided> {
    let row = decidable(conn, &actor, id, true).await?.0;
    let row = match still_pending(conn, row).await? {
        Ok(row) => row,
        Err(decided) => return Ok(decided),
    };
    let requester = Actor::system(UserId(row.requested_by), actor.request_id.clone());
    // The executors see who approves.
    let approving = ApprovalRow {
        decided_by: Some(actor.user_id.0),
        ..row.clone()
    };
    // A savepoint: a failed execution leaves nothing behind but the FAILED mark.
    let executed = conn
        .transaction(async |c| dispatch(c, &services, &approving, &requester).await)
        .await;
    let (status, reason, result) = match executed {
        Ok(result) => ("APPROVED", None, Some(result)),
        Err(e) if cannot_be_done(&e) => ("FAILED", Some(e.to_string()), None),
        Err(e) => return Err(e),
    };
    let decided = repo::decide(
        conn,
        row.id,
        status,
        Some(actor.user_id.0),
        reason.as_deref(),
        result.as_ref(),
    )
    .await?;
    audit::record(
        conn,
        Change {
            workspace: WorkspaceId(row.workspace_id),
            action: "approval.approve",
            target_type: "ApprovalRequest",
            target_id: id.encode(),
            summary: decision_summary(
                &row,
                json!({ "status": status, "result": result, "reason": reason }),
            ),
            actor: &actor,
        },
    )
    .await?;
    Ok(Decided::Row(decided))
}

/// The audit summary of a decision on `row`: what was requested and by whom, with the
/// decision's own fields (`outcome`, an object).
fn decision_summary(row: &ApprovalRow, outcome: Value) -> Value {
    let mut summary = json!({
        "requestedBy": UserId(row.requested_by).encode(),
        "action": row.action,
        "operation": row.operation,
        "targetType": row.target_type,
        "targetId": row.target_id,
    });
    if let (Some(s), Value::Object(o)) = (summary.as_object_mut(), outcome) {
        s.extend(o);
    }
    summary
}

/// What follows an approval's commit (also on a replay: each step is idempotent). Failures
/// here are logged, not returned: the approval stands, and a billing intent left pending is
/// finished by its recovery job.
async fn follow_up(services: &Services, row: ApprovalRow) -> ApprovalRow {
    match after(&row) {
        After::Nothing => row,
        After::Forget => {
            services.governance.forget(row.workspace_id);
            row
        }
        After::Stripe(stripe_key) => {
            let finished = crate::domain::billing::intents::finish_key(services, &stripe_key).await;
            if let Err(e) = finished {
                tracing::warn!(approval = %ApprovalRequestId(row.id), error = %e, "an approved billing request stays pending (its recovery job finishes it)");
                return row;
            }
            match services.conn().await {
                Ok(mut conn) => match repo::find(&mut conn, row.id).await {
                    Ok(Some(fresh)) => fresh,
                    _ => row,
                },
                Err(_) => row,
            }
        }
    }
}

/// Input of [`reject`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejection {
    /// The request.
    pub approval_request_id: ApprovalRequestId,
    /// Why (at most 500 characters).
    pub reason: Option<String>,
}

/// Rejects a pending request (or withdraws it, when the caller asked for it): nothing is
/// executed, and what it left waiting is abandoned.
pub async fn reject(
    services: &Services,
    actor: &Actor,
    input: Rejection,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<ApprovalRow>> {
    let reason =
        crate::domain::billing::optional_text("reason", input.reason.as_deref(), REASON_MAX)?;
    let id = input.approval_request_id;
    let done = mutation::run(
        services,
        actor,
        "rejectRequest",
        key,
        &input,
        |c, _| -> Effect<'_, Decided> {
            Box::pin(reject_effect(c, actor.clone(), id, reason.clone()))
        },
    )
    .await?;
    match done.value {
        Decided::Expired(row) => Err(expired_error(&row)),
        Decided::Row(row) => Ok(mutation::Done {
            value: row,
            keyed: done.keyed,
        }),
    }
}

/// The effect of `rejectRequest`, in the mutation's transaction.
async fn reject_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    id: ApprovalRequestId,
    reason: Option<String>,
) -> DomainResult<Decided> {
    let (row, withdrawn) = decidable(conn, &actor, id, false).await?;
    let row = match still_pending(conn, row).await? {
        Ok(row) => row,
        Err(decided) => return Ok(decided),
    };
    let decided = repo::decide(
        conn,
        row.id,
        "REJECTED",
        Some(actor.user_id.0),
        reason.as_deref(),
        None,
    )
    .await?;
    abandon(conn, &decided).await?;
    audit::record(
        conn,
        Change {
            workspace: WorkspaceId(row.workspace_id),
            action: if withdrawn {
                "approval.withdraw"
            } else {
                "approval.reject"
            },
            target_type: "ApprovalRequest",
            target_id: id.encode(),
            summary: decision_summary(&row, json!({ "reason": reason })),
            actor: &actor,
        },
    )
    .await?;
    Ok(Decided::Row(decided))
}

/// Releases what a request that will never be executed (rejected, withdrawn, expired) left
/// waiting, in the decision's transaction.
async fn abandon(conn: &mut AsyncPgConnection, row: &ApprovalRow) -> DomainResult<()> {
    match row.operation.as_str() {
        "createApiKey" => super::api_key_admin::abandon(conn, row).await,
        _ => Ok(()),
    }
}

/// A request that `actor` may read (owners and admins of its workspace); `None` alike for
/// missing ones, other workspaces' and a viewer's.
pub async fn find_visible(
    services: &Services,
    actor: &Actor,
    id: ApprovalRequestId,
) -> DomainResult<Option<ApprovalRow>> {
    let mut conn = services.conn().await?;
    let row = repo::find_visible(&mut conn, id.0, actor.user_id.0).await?;
    drop(conn);
    if let Some(r) = &row {
        actor.admit(r.workspace_id).await?;
    }
    Ok(row)
}

/// A page of a workspace's requests, newest first, of one status or all (the caller checked
/// that the reader is an owner or admin).
pub async fn page(
    services: &Services,
    ws: WorkspaceId,
    status: Option<&str>,
    page: Page,
) -> DomainResult<Vec<ApprovalRow>> {
    let mut conn = services.conn().await?;
    Ok(repo::page(&mut conn, ws.0, status, page).await?)
}

/// Requests marked expired per transaction by [`expire_due`].
const EXPIRY_BATCH: i64 = 100;

/// The periodic `approval-expiry`: marks every pending request past its expiry `EXPIRED`
/// and abandons what it left waiting, a batch per transaction; returns how many.
pub async fn expire_due(pool: &DbPool) -> anyhow::Result<usize> {
    let mut conn = pool.get().await?;
    let mut total = 0;
    loop {
        let n = conn
            .transaction(async |c| {
                let rows = repo::expire_due(c, EXPIRY_BATCH).await?;
                for row in &rows {
                    abandon(c, row).await?;
                }
                Ok::<_, DomainError>(rows.len())
            })
            .await
            .map_err(|e| anyhow::anyhow!("expiring approval requests: {e}"))?;
        total += n;
        if (n as i64) < EXPIRY_BATCH {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(action: ApprovalAction, input: serde_json::Value) -> ApprovalRow {
        ApprovalRow {
            id: uuid::Uuid::now_v7(),
            workspace_id: uuid::Uuid::now_v7(),
            action: action.as_str().into(),
            operation: "op".into(),
            input,
            target_type: None,
            target_id: None,
            status: "PENDING".into(),
            requested_by: uuid::Uuid::now_v7(),
            decided_by: None,
            reason: None,
            result: None,
            created_at: Utc::now(),
            expires_at: Utc::now(),
            decided_at: None,
        }
    }

    #[test]
    fn owner_level_actions_are_decided_by_owners_only() {
        let empty = json!({});
        assert!(!owners_only(&row(
            ApprovalAction::DeleteOrganization,
            empty.clone()
        )));
        for a in [
            ApprovalAction::ChangeSubscription,
            ApprovalAction::CancelSubscription,
            ApprovalAction::PromoteToOwner,
            ApprovalAction::ChangeSecuritySettings,
        ] {
            assert!(owners_only(&row(a, empty.clone())), "{a:?}");
        }
        let key = |role: &str| row(ApprovalAction::CreateApiKey, json!({"role": role}));
        assert!(owners_only(&key("OWNER")));
        assert!(!owners_only(&key("ADMIN")));
        assert!(!owners_only(&key("VIEWER")));
        // An action this build does not know is treated as the strictest.
        let mut unknown = row(ApprovalAction::DeleteOrganization, empty);
        unknown.action = "SOMETHING_NEW".into();
        assert!(owners_only(&unknown));
    }

    #[test]
    fn only_our_own_failures_are_errors_of_a_decision() {
        assert!(cannot_be_done(&DomainError::NotFound("organization")));
        assert!(cannot_be_done(&DomainError::Conflict("gone".into())));
        assert!(cannot_be_done(&DomainError::Forbidden("role".into())));
        assert!(!cannot_be_done(&DomainError::internal(anyhow::anyhow!(
            "db"
        ))));
        assert!(!cannot_be_done(&DomainError::IdempotencyKeyInUse));
    }
}
