//! API keys (service accounts): `createApiKey`, `revokeApiKey` and `Workspace.apiKeys`.
//! A key's secret is shown once, in the response of the request that created it; nothing
//! else ever shows it or its hash.

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::approvals::ApprovalRequest;
use super::members::Role;
use super::pagination;
use super::replay::{self, Replayable};
use super::users::User;
use super::{error, rc};
use crate::db::repo::api_keys::ApiKeyRow;
use crate::domain::governance::api_key_admin::{self as domain, KeyStatus};
use crate::domain::{self as d, DomainError};
use crate::ids::{ApiKeyId, WorkspaceId};

/// Where an API key stands.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ApiKeyStatus {
    /// It authenticates.
    Active,
    /// It waits for a second owner's or admin's approval and authenticates nothing yet.
    PendingApproval,
    /// Past its expiry.
    Expired,
    /// Revoked (or its approval request was rejected or expired).
    Revoked,
}

impl From<KeyStatus> for ApiKeyStatus {
    fn from(s: KeyStatus) -> Self {
        match s {
            KeyStatus::Active => ApiKeyStatus::Active,
            KeyStatus::PendingApproval => ApiKeyStatus::PendingApproval,
            KeyStatus::Expired => ApiKeyStatus::Expired,
            KeyStatus::Revoked => ApiKeyStatus::Revoked,
        }
    }
}

/// An API key: `Authorization: Bearer <key>` acts in its workspace, with its role, as its
/// own service account. Never shows the secret or its hash.
pub struct ApiKey(pub ApiKeyRow);

#[Object]
impl ApiKey {
    /// Opaque id (`key_…`).
    async fn id(&self) -> ID {
        ID(ApiKeyId(self.0.id).encode())
    }

    /// The key's first part (`wsk_` and 12 hex digits): names it in logs and lists.
    async fn prefix(&self) -> &str {
        &self.0.prefix
    }

    /// Display name.
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// What the key may do in its workspace.
    async fn role(&self) -> Result<Role> {
        d::Role::parse(&self.0.role).map(Into::into).ok_or_else(|| {
            error::to_graphql(
                DomainError::internal(anyhow::anyhow!("bad API key role in db")),
                "",
            )
        })
    }

    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// Who created it.
    async fn created_by(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let Some(id) = self.0.created_by else {
            return Ok(None);
        };
        let rc = rc(ctx);
        let u = rc.loaders.users.load_one(id).await.map_err(|e| rc.err(e))?;
        Ok(u.map(User))
    }

    /// When it stops working (null: never).
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at
    }

    /// Its last use (stored periodically, so up to a minute late).
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at
    }

    /// When it was revoked.
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }

    /// Where it stands now.
    async fn status(&self) -> ApiKeyStatus {
        domain::status(&self.0, Utc::now()).into()
    }
}

/// The API keys of a workspace, newest first (owners and admins; `FORBIDDEN` otherwise).
pub async fn api_keys_of(
    ctx: &Context<'_>,
    ws: uuid::Uuid,
    first: Option<i32>,
    after: Option<String>,
) -> Result<Connection<String, ApiKey>> {
    super::billing::may_manage(ctx, ws, "list API keys").await?;
    let rc = rc(ctx);
    let page = pagination::page(first, after.as_deref())?;
    let rows = domain::page(&rc.services, WorkspaceId(ws), page)
        .await
        .map_err(|e| rc.err(e))?;
    Ok(pagination::connection(rows, page, |r| r.id, ApiKey))
}

/// Input of `createApiKey`.
#[derive(InputObject)]
pub struct CreateApiKeyInput {
    /// Workspace.
    pub workspace_id: ID,
    /// Display name, 1–100 characters.
    pub name: String,
    /// What the key may do: at most your own role.
    pub role: Role,
    /// When it stops working (in the future; required when the workspace limits keys'
    /// lifetime, and then within it).
    pub expires_at: Option<DateTime<Utc>>,
    /// Makes the mutation safe to retry. A repeat returns the key without its secret.
    pub idempotency_key: Option<String>,
}

/// Result of `createApiKey`.
#[derive(SimpleObject)]
pub struct CreateApiKeyPayload {
    /// The new key.
    pub api_key: ApiKey,
    /// The whole key (`wsk_…`), shown this once: only its hash is stored, so it cannot be
    /// shown again. Null when the response is a replay of an earlier request with the same
    /// idempotency key (the secret was in that first response only).
    pub secret: Option<String>,
    /// When the workspace requires approval of new keys: the pending request. The key
    /// authenticates nothing until a second owner or admin approves it, and is revoked if
    /// the request is rejected or expires.
    pub approval_request: Option<ApprovalRequest>,
}

/// Input of `revokeApiKey`.
#[derive(InputObject)]
pub struct RevokeApiKeyInput {
    /// The key.
    pub api_key_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `revokeApiKey`.
#[derive(SimpleObject)]
pub struct RevokeApiKeyPayload {
    /// The key, revoked.
    pub api_key: ApiKey,
}

/// API key mutations.
#[derive(Default)]
pub struct ApiKeyMutation;

#[Object]
impl ApiKeyMutation {
    /// Creates an API key (owners and admins, with a role at most their own; not API keys)
    /// and returns its secret, this once.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        input: CreateApiKeyInput,
    ) -> Result<Replayable<CreateApiKeyPayload>> {
        let new = domain::NewApiKey {
            workspace_id: WorkspaceId::decode(&input.workspace_id)
                .ok_or_else(|| error::not_found("workspace"))?,
            name: input.name,
            role: input.role.into(),
            expires_at: input.expires_at,
        };
        let out = replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::create(s, a, new, k).await,
            |c| Some(c.api_key.workspace_id),
            |c| CreateApiKeyPayload {
                api_key: ApiKey(c.api_key),
                secret: c.secret,
                approval_request: c.approval_request.map(ApprovalRequest),
            },
        )
        .await?;
        // The response holds the secret: its rendering is never stored, so a repeat under
        // the same key resolves the payload afresh from the stored result (which lacks it).
        Ok(replay::never_stored(ctx, out, "createApiKey").await)
    }

    /// Revokes an API key (owners any; admins ADMIN and VIEWER keys; not API keys). It stops
    /// working at once. Revoking a revoked key returns it unchanged.
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        input: RevokeApiKeyInput,
    ) -> Result<Replayable<RevokeApiKeyPayload>> {
        let id = ApiKeyId::decode(&input.api_key_id).ok_or_else(|| error::not_found("API key"))?;
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::revoke(s, a, id, k).await,
            |k| Some(k.workspace_id),
            |k| RevokeApiKeyPayload { api_key: ApiKey(k) },
        )
        .await
    }
}
