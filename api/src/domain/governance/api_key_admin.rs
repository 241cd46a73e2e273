//! Managing API keys (service accounts): `createApiKey`, `revokeApiKey`, the list of a
//! workspace's keys, and the activation of a key whose creation waited for approval.
//!
//! A key acts as its own service-account user (`users.service_account`, subject
//! `apikey|<key id>`, e-mail `<prefix>@api-keys.invalid`), a member of its workspace only,
//! with the role it was given: so a key reaches its workspace through the same membership
//! checks as a person, and nothing else. Service accounts never sign in with a token, never
//! appear in member lists or counts, and never count as an owner.
//!
//! The secret is shown once: the response of the request that created the key carries it,
//! and nothing stores it (the result kept under an idempotency key skips it, and the
//! response's rendering is not kept, so a replay shows the key with `secret: null`). Only
//! its SHA-256 is stored ([`super::api_keys`]).
//!
//! Rules: owners and admins create and revoke keys, with a role no higher than their own
//! (an admin neither creates nor revokes OWNER keys); API keys themselves may not. The
//! workspace's policy decides whether keys are allowed, their longest lifetime and how many
//! may be live (neither revoked nor expired). Revoking twice returns the key as it is,
//! without a second audit event.

use chrono::{DateTime, Duration, Utc};
use diesel_async::AsyncPgConnection;
use serde_json::json;
use uuid::Uuid;

use super::approvals::{self, ApprovalAction, ApprovalRow, Held};
use super::gate::{self, reason};
use crate::db::models::AuditEventRow;
use crate::db::repo::api_keys::{ApiKeyRow, NewKeyRow};
use crate::db::repo::governance::{self as settings_repo, SettingsRow};
use crate::db::repo::{self, Page};
use crate::domain::audit::{self, Change};
use crate::domain::mutation::{self, Effect};
use crate::domain::workspaces::require_role;
use crate::domain::{Actor, DomainError, DomainResult, Role, Services, check_name};
use crate::ids::{ApiKeyId, ApprovalRequestId, AuditEventId, UserId, WorkspaceId};

/// Longest key name, in characters.
pub const NAME_MAX: usize = 100;
/// The domain of service accounts' addresses (`.invalid` is reserved: nobody can receive
/// mail there, so nobody can verify such an address).
pub const SERVICE_EMAIL_DOMAIN: &str = "api-keys.invalid";
/// The subject prefix of service accounts; a token whose `sub` starts with it is refused.
pub const SERVICE_SUBJECT_PREFIX: &str = "apikey|";

/// Where a key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Authenticates.
    Active,
    /// Waits for a second person's approval: authenticates nothing yet.
    PendingApproval,
    /// Past its expiry.
    Expired,
    /// Revoked (or its approval was rejected or expired).
    Revoked,
}

/// The status of `key` at `now`.
pub fn status(key: &ApiKeyRow, now: DateTime<Utc>) -> KeyStatus {
    if key.revoked_at.is_some() {
        KeyStatus::Revoked
    } else if key.expires_at.is_some_and(|at| at <= now) {
        KeyStatus::Expired
    } else if key.pending_approval_id.is_some() {
        KeyStatus::PendingApproval
    } else {
        KeyStatus::Active
    }
}

fn rank(r: Role) -> u8 {
    match r {
        Role::Owner => 3,
        Role::Admin => 2,
        Role::Viewer => 1,
    }
}

/// Input of `create`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewApiKey {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Display name, 1–100 characters.
    pub name: String,
    /// The key's role (at most the creator's).
    pub role: Role,
    /// When it stops working (required when the policy limits keys' lifetime).
    pub expires_at: Option<DateTime<Utc>>,
}

/// What `createApiKey` returns.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Created {
    /// The key.
    pub api_key: ApiKeyRow,
    /// The whole key, in the response of the request that created it only: never
    /// serialized, so the result stored under an idempotency key lacks it and a replay
    /// has `None`.
    #[serde(skip)]
    pub secret: Option<String>,
    /// The approval request the key waits for, when the workspace requires one.
    pub approval_request: Option<ApprovalRow>,
}

/// What a held creation stores as the request's input (nothing secret).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeldInput {
    api_key_id: String,
    prefix: String,
    name: String,
    role: String,
    expires_at: Option<DateTime<Utc>>,
}

/// The checks of an expiry against the policy at `now`.
fn check_expiry(
    expires_at: Option<DateTime<Utc>>,
    settings: &SettingsRow,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    if let Some(at) = expires_at
        && at <= now
    {
        return Err(DomainError::bad_input(
            "expiresAt",
            "expiresAt must be in the future",
        ));
    }
    if let Some(days) = settings.api_key_max_lifetime_days {
        let Some(at) = expires_at else {
            return Err(DomainError::bad_input(
                "expiresAt",
                format!("this workspace limits API keys to {days} days: expiresAt is required"),
            ));
        };
        if at > now + Duration::days(i64::from(days)) {
            return Err(DomainError::bad_input(
                "expiresAt",
                format!("this workspace limits API keys to {days} days: expiresAt is too late"),
            ));
        }
    }
    Ok(())
}

/// `createApiKey`: creates a key (owners and admins; not API keys) and returns it with its
/// secret, this once. When the workspace puts `CREATE_API_KEY` under approval, the key is
/// created waiting for it (it authenticates nothing until approved) and the request is
/// returned too.
pub async fn create(
    services: &Services,
    actor: &Actor,
    input: NewApiKey,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Created>> {
    actor.gate.person_only("create API keys")?;
    let name = check_name("name", &input.name, NAME_MAX)?;
    let input = NewApiKey { name, ..input };
    let id = ApiKeyId::new();
    let user = Uuid::now_v7();
    let secret = super::api_keys::generate();
    mutation::run(
        services,
        actor,
        "createApiKey",
        key,
        &input,
        |c, _| -> Effect<'_, _> {
            Box::pin(create_effect(
                c,
                actor.clone(),
                input.clone(),
                (id, user),
                (
                    secret.secret.clone(),
                    secret.prefix.clone(),
                    secret.hash.clone(),
                ),
            ))
        },
    )
    .await
}

async fn create_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    input: NewApiKey,
    (id, user): (ApiKeyId, Uuid),
    (secret, prefix, hash): (String, String, Vec<u8>),
) -> DomainResult<Created> {
    let ws = input.workspace_id;
    let mine = require_role(conn, &actor, ws, Role::is_manager, "create API keys").await?;
    if rank(input.role) > rank(mine) {
        return Err(DomainError::Forbidden(format!(
            "your role {} may not create {} API keys",
            mine.as_str(),
            input.role.as_str()
        )));
    }
    // Serializes concurrent creations so that the maximum count holds.
    repo::workspaces::lock(conn, ws.0)
        .await?
        .ok_or(DomainError::NotFound("workspace"))?;
    let settings = settings_repo::settings(conn, ws.0)
        .await?
        .unwrap_or_else(|| SettingsRow::defaults(ws.0));
    if !settings.api_keys_allowed {
        return Err(gate::refused(
            reason::API_KEYS_DISABLED,
            "this workspace does not allow API keys",
        ));
    }
    check_expiry(input.expires_at, &settings, Utc::now())?;
    if let Some(max) = settings.api_key_max_count {
        let live = repo::api_keys::count_live(conn, ws.0).await?;
        if live >= i64::from(max) {
            return Err(DomainError::LimitExceeded(format!(
                "this workspace allows at most {max} live API keys; it has {live} (revoke one first)"
            )));
        }
    }
    let held = approvals::hold_if_required(
        conn,
        &actor,
        Held {
            workspace: ws,
            action: ApprovalAction::CreateApiKey,
            operation: "createApiKey",
            input: &HeldInput {
                api_key_id: id.encode(),
                prefix: prefix.clone(),
                name: input.name.clone(),
                role: input.role.as_str().to_string(),
                expires_at: input.expires_at,
            },
            target_type: "ApiKey",
            target_id: id.encode(),
        },
    )
    .await?;
    let email = format!("{prefix}@{SERVICE_EMAIL_DOMAIN}");
    repo::api_keys::insert_service_user(conn, user, id.0, &email, &input.name).await?;
    repo::members::insert(conn, ws.0, user, input.role.as_str(), Some(actor.user_id.0)).await?;
    let row = repo::api_keys::insert(
        conn,
        &NewKeyRow {
            id: id.0,
            workspace_id: ws.0,
            user_id: user,
            name: &input.name,
            role: input.role.as_str(),
            prefix: &prefix,
            secret_hash: &hash,
            created_by: actor.user_id.0,
            expires_at: input.expires_at,
            pending_approval_id: held.as_ref().map(|r| r.id),
        },
    )
    .await?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "api_key.create",
            target_type: "ApiKey",
            target_id: id.encode(),
            summary: json!({
                "name": input.name,
                "prefix": prefix,
                "role": input.role.as_str(),
                "expiresAt": input.expires_at,
                "serviceAccountId": UserId(user).encode(),
                "approvalRequestId": held.as_ref().map(|r| ApprovalRequestId(r.id).encode()),
            }),
            actor: &actor,
        },
    )
    .await?;
    crate::domain::notifications::api_key_created(
        conn,
        ws,
        &id.encode(),
        &input.name,
        &prefix,
        input.role,
        &actor,
    )
    .await?;
    Ok(Created {
        api_key: row,
        secret: Some(secret),
        approval_request: held,
    })
}

/// `revokeApiKey`: revokes a key (owners any; admins ADMIN and VIEWER keys; not API keys).
/// A key of a workspace the actor does not belong to is reported exactly like a missing
/// one. Revoking a revoked key returns it as it is (no second audit event).
pub async fn revoke(
    services: &Services,
    actor: &Actor,
    id: ApiKeyId,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<ApiKeyRow>> {
    actor.gate.person_only("revoke API keys")?;
    let done = mutation::run(
        services,
        actor,
        "revokeApiKey",
        key,
        &id,
        |c, _| -> Effect<'_, _> { Box::pin(revoke_effect(c, actor.clone(), id)) },
    )
    .await?;
    // This process stops accepting it at once; others within GOVERNANCE_CACHE_MS, and
    // meanwhile its membership is gone, so it reaches nothing.
    services.governance.keys.forget(&done.value.prefix);
    Ok(done)
}

async fn revoke_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    id: ApiKeyId,
) -> DomainResult<ApiKeyRow> {
    const MISSING: DomainError = DomainError::NotFound("API key");
    let access = crate::domain::access::to(
        conn,
        &actor,
        crate::domain::access::Owned::ApiKey,
        id.0,
        "API key",
    )
    .await?;
    let mine = access.require(Role::is_manager, "revoke API keys")?;
    let ws = access.workspace;
    let key = repo::api_keys::find_for_update(conn, id.0)
        .await?
        .ok_or(MISSING)?;
    let role = Role::parse(&key.role)
        .ok_or_else(|| DomainError::internal(anyhow::anyhow!("bad API key role in db")))?;
    if rank(role) > rank(mine) {
        return Err(DomainError::Forbidden(format!(
            "your role {} may not revoke {} API keys",
            mine.as_str(),
            role.as_str()
        )));
    }
    if key.revoked_at.is_some() {
        return Ok(key);
    }
    let row = repo::api_keys::revoke(conn, id.0, Some(actor.user_id.0)).await?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "api_key.revoke",
            target_type: "ApiKey",
            target_id: id.encode(),
            summary: json!({"name": row.name, "prefix": row.prefix, "role": row.role}),
            actor: &actor,
        },
    )
    .await?;
    Ok(row)
}

/// Keys of `ws`, newest first (the caller has checked that the actor manages it).
pub async fn page(
    services: &Services,
    ws: WorkspaceId,
    page: Page,
) -> DomainResult<Vec<ApiKeyRow>> {
    let mut conn = services.conn().await?;
    Ok(repo::api_keys::page(&mut conn, ws.0, page.after, page.limit).await?)
}

/// Executes an approved `createApiKey` (called by the approvals dispatcher in its
/// transaction): the key created waiting for `request` becomes active. Fails when the key
/// was revoked meanwhile, or its creator no longer may create such a key.
pub(crate) async fn execute_approved(
    conn: &mut AsyncPgConnection,
    services: &Services,
    request: &ApprovalRow,
    actor: &Actor,
) -> DomainResult<serde_json::Value> {
    let key = repo::api_keys::find_pending_for_update(conn, request.id)
        .await?
        .ok_or_else(|| {
            DomainError::Conflict("the API key of this request no longer exists".into())
        })?;
    if key.revoked_at.is_some() {
        return Err(DomainError::Conflict(
            "the API key of this request was revoked meanwhile".into(),
        ));
    }
    let ws = WorkspaceId(key.workspace_id);
    let role = Role::parse(&key.role)
        .ok_or_else(|| DomainError::internal(anyhow::anyhow!("bad API key role in db")))?;
    let mine = require_role(conn, actor, ws, Role::is_manager, "create API keys").await?;
    if rank(role) > rank(mine) {
        return Err(DomainError::Forbidden(format!(
            "the requester's role {} may no longer create {} API keys",
            mine.as_str(),
            role.as_str()
        )));
    }
    let row = repo::api_keys::activate(conn, key.id).await?;
    let id = ApiKeyId(row.id).encode();
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "api_key.activate",
            target_type: "ApiKey",
            target_id: id.clone(),
            summary: json!({
                "name": row.name,
                "prefix": row.prefix,
                "role": row.role,
                "approvalRequestId": ApprovalRequestId(request.id).encode(),
                "approvedBy": request.decided_by.map(|u| UserId(u).encode()),
            }),
            actor,
        },
    )
    .await?;
    // The pending state this process cached would refuse the key until it expires.
    services.governance.keys.forget(&row.prefix);
    Ok(json!({"apiKeyId": id, "prefix": row.prefix}))
}

/// Revokes the key that waited for `request` (rejected or expired; called by the approvals
/// module in its transaction). Audited as `api_key.revoke` by whoever decided (nobody, for
/// an expiry). Nothing to do when the key is gone or already revoked.
pub(crate) async fn abandon(
    conn: &mut AsyncPgConnection,
    request: &ApprovalRow,
) -> DomainResult<()> {
    let Some(key) = repo::api_keys::find_pending_for_update(conn, request.id).await? else {
        return Ok(());
    };
    if key.revoked_at.is_some() {
        return Ok(());
    }
    let row = repo::api_keys::revoke(conn, key.id, request.decided_by).await?;
    let event = AuditEventRow {
        workspace_id: row.workspace_id,
        id: AuditEventId::new().0,
        actor_id: request.decided_by,
        action: "api_key.revoke".into(),
        target_type: "ApiKey".into(),
        target_id: ApiKeyId(row.id).encode(),
        summary: json!({
            "name": row.name,
            "prefix": row.prefix,
            "role": row.role,
            "approvalRequestId": ApprovalRequestId(request.id).encode(),
            "reason": format!("its approval request was {}", request.status.to_lowercase()),
        }),
        request_id: None,
        created_at: Utc::now(),
    };
    crate::db::repo::audit::insert(conn, &event).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ApiKeyRow {
        ApiKeyRow {
            id: Uuid::now_v7(),
            workspace_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            name: "ci".into(),
            role: "VIEWER".into(),
            prefix: "wsk_0123456789ab".into(),
            created_by: None,
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            revoked_by: None,
            last_used_at: None,
            pending_approval_id: None,
        }
    }

    #[test]
    fn status_orders_revoked_expired_pending() {
        let now = Utc::now();
        let mut k = key();
        assert_eq!(status(&k, now), KeyStatus::Active);
        k.pending_approval_id = Some(Uuid::now_v7());
        assert_eq!(status(&k, now), KeyStatus::PendingApproval);
        k.expires_at = Some(now);
        assert_eq!(status(&k, now), KeyStatus::Expired);
        k.revoked_at = Some(now);
        assert_eq!(status(&k, now), KeyStatus::Revoked);
    }

    #[test]
    fn expiry_follows_the_policy() {
        let now = Utc::now();
        let mut s = SettingsRow::defaults(Uuid::now_v7());
        assert!(check_expiry(None, &s, now).is_ok());
        assert!(check_expiry(Some(now), &s, now).is_err());
        assert!(check_expiry(Some(now + Duration::days(9000)), &s, now).is_ok());
        s.api_key_max_lifetime_days = Some(30);
        assert!(check_expiry(None, &s, now).is_err());
        assert!(check_expiry(Some(now + Duration::days(30)), &s, now).is_ok());
        assert!(check_expiry(Some(now + Duration::days(31)), &s, now).is_err());
    }

    #[test]
    fn the_secret_is_never_serialized() {
        let c = Created {
            api_key: key(),
            secret: Some("wsk_0123456789ab_secret".into()),
            approval_request: None,
        };
        let text = serde_json::to_string(&c).expect("serializes");
        assert!(!text.contains("secret"), "{text}");
        let back: Created = serde_json::from_str(&text).expect("deserializes");
        assert!(back.secret.is_none());
    }
}
