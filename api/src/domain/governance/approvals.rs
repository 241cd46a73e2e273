//! Approval workflows: a sensitive mutation of a workspace that lists its action in
//! `approval_required_for` is not executed when asked; it is stored as a pending approval
//! request (its operation and validated input), and executed once when a different owner or
//! admin approves it.
//!
//! Each held mutation calls [`hold_if_required`] in its transaction, before acting: `Some`
//! means "held, return the request". The approved execution runs with a system gate for the
//! requester ([`crate::domain::Actor::system`]), which is never held again.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use crate::db::repo::governance as settings_repo;
use crate::domain::audit::{self, Change};
use crate::domain::governance::Caller;
use crate::domain::{Actor, DomainError, DomainResult};
use crate::ids::{ApprovalRequestId, WorkspaceId};

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

/// A row of `approval_requests`.
#[derive(Debug, Clone, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct ApprovalRow {
    /// Primary key.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// `ApprovalAction` (stored form).
    #[diesel(sql_type = Text)]
    pub action: String,
    /// The held mutation's name (e.g. `deleteOrganization`).
    #[diesel(sql_type = Text)]
    pub operation: String,
    /// Its validated input, as the executor reads it.
    #[diesel(sql_type = Jsonb)]
    pub input: serde_json::Value,
    /// Kind of the object it acts on.
    #[diesel(sql_type = Nullable<Text>)]
    pub target_type: Option<String>,
    /// External id of the object it acts on.
    #[diesel(sql_type = Nullable<Text>)]
    pub target_id: Option<String>,
    /// `PENDING`, `APPROVED`, `REJECTED`, `EXPIRED` or `FAILED`.
    #[diesel(sql_type = Text)]
    pub status: String,
    /// Who asked.
    #[diesel(sql_type = SqlUuid)]
    pub requested_by: Uuid,
    /// Who approved or rejected.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub decided_by: Option<Uuid>,
    /// Why it was rejected, or why the execution failed.
    #[diesel(sql_type = Nullable<Text>)]
    pub reason: Option<String>,
    /// What the execution returned.
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub result: Option<serde_json::Value>,
    /// When it was asked.
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// When it expires if nobody decides.
    #[diesel(sql_type = Timestamptz)]
    pub expires_at: DateTime<Utc>,
    /// When it was decided.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub decided_at: Option<DateTime<Utc>>,
}

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
    let row: ApprovalRow = diesel::sql_query(
        "INSERT INTO approval_requests
                (id, workspace_id, action, operation, input, target_type, target_id,
                 requested_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(hours => $9))
         RETURNING *",
    )
    .bind::<SqlUuid, _>(id.0)
    .bind::<SqlUuid, _>(held.workspace.0)
    .bind::<Text, _>(action)
    .bind::<Text, _>(held.operation)
    .bind::<Jsonb, _>(&input)
    .bind::<Text, _>(held.target_type)
    .bind::<Text, _>(&held.target_id)
    .bind::<SqlUuid, _>(actor.user_id.0)
    .bind::<Integer, _>(settings.approval_expiry_hours)
    .get_result(conn)
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
