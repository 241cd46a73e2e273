//! Integration settings: where a workspace's notifications go (read: owners and admins;
//! change: owners). Secrets are write-only: a webhook endpoint's signing secret is returned
//! once, by `createWebhookEndpoint`, and the Slack URL only ever shown masked.

use async_graphql::{Context, ID, InputObject, MaybeUndefined, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::notifications::{NotificationCategory, NotificationEventType};
use super::replay::{self, Replayable};
use super::{error, rc};
use crate::domain::integrations as domain;
use crate::ids::{WebhookEndpointId, WorkspaceId};

/// A webhook endpoint: deliveries of the event types it subscribes to are POSTed to its URL,
/// signed with its secret (Standard Webhooks: `webhook-id`, `webhook-timestamp`,
/// `webhook-signature`).
pub struct WebhookEndpoint(pub domain::Endpoint);

#[Object]
impl WebhookEndpoint {
    /// Opaque id (`we_…`).
    async fn id(&self) -> ID {
        ID(self.0.id.encode())
    }

    /// Where deliveries are POSTed.
    async fn url(&self) -> &str {
        &self.0.url
    }

    /// The event types it receives; empty means every type.
    async fn event_types(&self) -> Vec<NotificationEventType> {
        self.0.event_types.iter().map(|t| (*t).into()).collect()
    }

    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// The e-mail recipients of one notification category.
#[derive(SimpleObject)]
pub struct EmailRecipients {
    /// The category.
    pub category: NotificationCategory,
    /// Addresses (lower-cased), at most 20.
    pub addresses: Vec<String>,
}

/// Where a workspace's notifications go. Never shows a secret.
pub struct IntegrationSettings(pub domain::Integrations);

#[Object]
impl IntegrationSettings {
    /// Webhook endpoints, oldest first (at most 10).
    async fn webhook_endpoints(&self) -> Vec<WebhookEndpoint> {
        self.0
            .endpoints
            .iter()
            .cloned()
            .map(WebhookEndpoint)
            .collect()
    }

    /// Whether a Slack incoming webhook is set (every notification goes there too).
    async fn slack_webhook_configured(&self) -> bool {
        self.0.slack_hint.is_some()
    }

    /// The Slack webhook URL, masked (scheme, host and its last four characters).
    async fn slack_webhook_url_masked(&self) -> Option<&str> {
        self.0.slack_hint.as_deref()
    }

    /// E-mail recipients of every category (empty lists included).
    async fn email_recipients(&self) -> Vec<EmailRecipients> {
        self.0
            .recipients
            .iter()
            .map(|(category, addresses)| EmailRecipients {
                category: (*category).into(),
                addresses: addresses.clone(),
            })
            .collect()
    }
}

/// The integration settings of a workspace (owners and admins; `FORBIDDEN` otherwise).
pub async fn integrations_of(ctx: &Context<'_>, ws: uuid::Uuid) -> Result<IntegrationSettings> {
    let rc = rc(ctx);
    let s = domain::read(&rc.services, &rc.actor, WorkspaceId(ws))
        .await
        .map_err(|e| rc.err(e))?;
    Ok(IntegrationSettings(s))
}

/// Input of `createWebhookEndpoint`.
#[derive(InputObject)]
pub struct CreateWebhookEndpointInput {
    /// Workspace.
    pub workspace_id: ID,
    /// `https://` URL of a public host, at most 2048 bytes.
    pub url: String,
    /// The event types it receives; empty (the default) means every type.
    #[graphql(default)]
    pub event_types: Vec<NotificationEventType>,
    /// Makes the mutation safe to retry (a repeat returns the same secret).
    pub idempotency_key: Option<String>,
}

/// Result of `createWebhookEndpoint`.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct CreateWebhookEndpointPayload {
    /// The new endpoint.
    pub webhook_endpoint: WebhookEndpoint,
    #[graphql(skip)]
    secret: Option<String>,
}

#[async_graphql::ComplexObject]
impl CreateWebhookEndpointPayload {
    /// Its signing secret (`whsec_…`): store it where your receiver verifies signatures. A
    /// repeat with the same idempotency key reads it again from its sealed copy (it is never
    /// kept in clear); null once the endpoint was deleted.
    async fn secret(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        if let Some(s) = &self.secret {
            return Ok(Some(s.clone()));
        }
        let rc = rc(ctx);
        let e = &self.webhook_endpoint.0;
        domain::endpoint_secret(&rc.services, e.workspace_id, e.id)
            .await
            .map_err(|err| rc.err(err))
    }
}

/// Input of `deleteWebhookEndpoint`.
#[derive(InputObject)]
pub struct DeleteWebhookEndpointInput {
    /// The endpoint.
    pub webhook_endpoint_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `deleteWebhookEndpoint`.
#[derive(SimpleObject)]
pub struct DeleteWebhookEndpointPayload {
    /// Id of the deleted endpoint.
    pub deleted_webhook_endpoint_id: ID,
}

/// The e-mail recipients of one category, as `updateIntegrationSettings` sets them.
#[derive(InputObject)]
pub struct EmailRecipientsInput {
    /// The category.
    pub category: NotificationCategory,
    /// Its addresses, at most 20 (an empty list removes them all).
    pub addresses: Vec<String>,
}

/// Input of `updateIntegrationSettings`: absent fields keep their value.
#[derive(InputObject)]
pub struct UpdateIntegrationSettingsInput {
    /// Workspace.
    pub workspace_id: ID,
    /// The Slack incoming-webhook URL (`https://`, at most 2048 bytes); null removes it (so
    /// does a variable left unset: leave the field out of the document to keep the URL).
    pub slack_webhook_url: MaybeUndefined<String>,
    /// Recipients of the categories listed (each at most once); others keep theirs.
    pub email_recipients: Option<Vec<EmailRecipientsInput>>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `updateIntegrationSettings`.
#[derive(SimpleObject)]
pub struct UpdateIntegrationSettingsPayload {
    /// The settings now.
    pub integrations: IntegrationSettings,
}

fn workspace_id(id: &ID) -> Result<WorkspaceId> {
    WorkspaceId::decode(id).ok_or_else(|| error::not_found("workspace"))
}

/// Integration mutations.
#[derive(Default)]
pub struct IntegrationMutation;

#[Object]
impl IntegrationMutation {
    /// Adds a webhook endpoint (owners; at most 10 per workspace) and returns its signing
    /// secret, this once.
    async fn create_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: CreateWebhookEndpointInput,
    ) -> Result<Replayable<CreateWebhookEndpointPayload>> {
        let new = domain::NewEndpoint {
            workspace_id: workspace_id(&input.workspace_id)?,
            url: input.url,
            event_types: input.event_types.into_iter().map(Into::into).collect(),
        };
        let out = replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::create_endpoint(s, a, new, k).await,
            |c| Some(c.endpoint.workspace_id),
            |c| CreateWebhookEndpointPayload {
                webhook_endpoint: WebhookEndpoint(c.endpoint),
                secret: c.secret,
            },
        )
        .await?;
        // The response holds the secret: its rendering is never stored.
        Ok(replay::never_stored(ctx, out, "createWebhookEndpoint").await)
    }

    /// Removes a webhook endpoint (owners). Its pending deliveries fail.
    async fn delete_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: DeleteWebhookEndpointInput,
    ) -> Result<Replayable<DeleteWebhookEndpointPayload>> {
        let id = WebhookEndpointId::decode(&input.webhook_endpoint_id)
            .ok_or_else(|| error::not_found("webhook endpoint"))?;
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::delete_endpoint(s, a, id, k).await,
            |_| None,
            |d| DeleteWebhookEndpointPayload {
                deleted_webhook_endpoint_id: ID(d.id.encode()),
            },
        )
        .await
    }

    /// Sets or removes the Slack webhook and replaces e-mail recipients per category
    /// (owners).
    async fn update_integration_settings(
        &self,
        ctx: &Context<'_>,
        input: UpdateIntegrationSettingsInput,
    ) -> Result<Replayable<UpdateIntegrationSettingsPayload>> {
        let ws = workspace_id(&input.workspace_id)?;
        let change = domain::SettingsChange {
            workspace_id: ws,
            slack_webhook_url: match input.slack_webhook_url {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(None),
                MaybeUndefined::Value(u) => Some(Some(u)),
            },
            email_recipients: input
                .email_recipients
                .unwrap_or_default()
                .into_iter()
                .map(|r| (r.category.into(), r.addresses))
                .collect(),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::update(s, a, change, k).await,
            move |_| Some(ws.0),
            |s| UpdateIntegrationSettingsPayload {
                integrations: IntegrationSettings(s),
            },
        )
        .await
    }
}
