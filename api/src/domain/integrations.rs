//! Integration settings of a workspace: where its notifications go (`notifications`).
//!
//! - Webhook endpoints (at most [`MAX_ENDPOINTS`]): a URL, the event types it subscribes to
//!   (none: all), and a signing secret in the Standard Webhooks format (`whsec_` and the
//!   base64 of 32 random bytes) that we generate and return once, when the endpoint is
//!   created. Secrets are write-only: sealed at rest (AES-256-GCM under a key derived from
//!   `ARCHIVE_MASTER_KEY`, the endpoint's id as associated data) and never shown again.
//! - One Slack incoming-webhook URL: a credential too, sealed the same way; only a masked
//!   form is shown.
//! - E-mail recipients per notification category (at most [`MAX_RECIPIENTS`] each).
//!
//! When the workspace policy turns external integrations off (`externalIntegrationsAllowed`),
//! endpoints, the Slack URL and recipients cannot be added or changed (`INTEGRATIONS_DISABLED`;
//! removing them stays possible), what is stored stays stored, and deliveries are skipped
//! (`notifications::delivery`).
//!
//! URLs must be `https://` to a public host; `INTEGRATIONS_ALLOW_HTTP_LOOPBACK=true`
//! (development) allows loopback hosts over http too (`channels::check_url`). Owners and
//! admins read the settings; owners change them, idempotently and audited.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde_json::json;
use uuid::Uuid;

use super::audit::{self, Change};
use super::mutation::{self, Effect};
use super::notifications::channels::{check_recipient, check_url};
use super::notifications::{Category, EventType};
use super::workspaces::require_role;
use super::{Actor, DomainError, DomainResult, Role, Services};
use crate::db::repo::integrations as repo;
use crate::ids::{WebhookEndpointId, WorkspaceId};
use crate::storage::Vault;

/// Webhook endpoints a workspace may have.
pub const MAX_ENDPOINTS: i64 = 10;
/// E-mail recipients of one category.
pub const MAX_RECIPIENTS: usize = 20;
/// Items of an input list looked at, at most (longer lists are refused before any work).
const MAX_LIST: usize = 100;

/// A webhook endpoint as readers see it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// Its id.
    pub id: WebhookEndpointId,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// Subscribed types (empty: all).
    pub event_types: Vec<EventType>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl From<repo::EndpointRow> for Endpoint {
    fn from(r: repo::EndpointRow) -> Self {
        Self {
            id: WebhookEndpointId(r.id),
            workspace_id: r.workspace_id,
            url: r.url,
            // A type this version does not know is left out rather than failing the read.
            event_types: r
                .event_types
                .iter()
                .filter_map(|t| EventType::parse(t))
                .collect(),
            created_at: r.created_at,
        }
    }
}

/// A workspace's integration settings, without secrets.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Integrations {
    /// Workspace.
    pub workspace_id: Uuid,
    /// Webhook endpoints, oldest first.
    pub endpoints: Vec<Endpoint>,
    /// The masked Slack webhook URL, when one is set.
    pub slack_hint: Option<String>,
    /// Recipients of every category, in [`Category::ALL`] order.
    pub recipients: Vec<(Category, Vec<String>)>,
}

/// The settings of `ws` (no access check).
pub async fn settings_of(conn: &mut AsyncPgConnection, ws: Uuid) -> DomainResult<Integrations> {
    let endpoints = repo::endpoints_of(conn, ws).await?;
    let slack = repo::slack(conn, ws).await?;
    let rows = repo::recipients_of(conn, ws).await?;
    let recipients = Category::ALL
        .into_iter()
        .map(|c| {
            let addresses = rows
                .iter()
                .find(|r| r.category == c.as_str())
                .map(|r| r.addresses.clone())
                .unwrap_or_default();
            (c, addresses)
        })
        .collect();
    Ok(Integrations {
        workspace_id: ws,
        endpoints: endpoints.into_iter().map(Endpoint::from).collect(),
        slack_hint: slack.map(|s| s.hint),
        recipients,
    })
}

/// The settings of a workspace the actor manages (owners and admins).
pub async fn read(
    services: &Services,
    actor: &Actor,
    ws: WorkspaceId,
) -> DomainResult<Integrations> {
    let mut conn = services.conn().await?;
    require_role(
        &mut conn,
        actor,
        ws,
        Role::is_manager,
        "read integration settings",
    )
    .await?;
    settings_of(&mut conn, ws.0).await
}

/// A new signing secret: `whsec_` and the base64 of 32 random bytes (Standard Webhooks).
pub fn new_secret() -> String {
    let bytes = Aes256Gcm::generate_key(OsRng);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn cipher(vault: &Vault) -> Aes256Gcm {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(
        vault.subkey("integration secrets v1"),
    ))
}

/// Seals `secret` for the row named by `aad`: nonce (12 bytes) ‖ ciphertext and tag.
pub fn seal(vault: &Vault, aad: &str, secret: &str) -> DomainResult<Vec<u8>> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let sealed = cipher(vault)
        .encrypt(
            &nonce,
            Payload {
                msg: secret.as_bytes(),
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| DomainError::internal(anyhow::anyhow!("sealing a secret failed")))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens what [`seal`] sealed for `aad`.
pub fn unseal(vault: &Vault, aad: &str, sealed: &[u8]) -> anyhow::Result<String> {
    if sealed.len() < 12 + 16 {
        anyhow::bail!("sealed secret of {aad} is truncated");
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce.try_into()?;
    let plain = cipher(vault)
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| {
            anyhow::anyhow!("the secret of {aad} does not open (another ARCHIVE_MASTER_KEY?)")
        })?;
    Ok(String::from_utf8(plain)?)
}

/// Associated data of an endpoint's secret.
pub fn endpoint_aad(id: Uuid) -> String {
    format!("webhook_endpoint:{id}")
}

/// Associated data of a workspace's Slack URL.
pub fn slack_aad(ws: Uuid) -> String {
    format!("slack:{ws}")
}

/// The masked form of a Slack URL: scheme, host, and the last four characters.
pub fn mask(url: &str) -> String {
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|h| format!("{}://{h}", u.scheme())))
        .unwrap_or_default();
    let tail: String = url
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{host}/…{tail}")
}

/// Input of `create_endpoint`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewEndpoint {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Where deliveries go.
    pub url: String,
    /// Subscribed types (empty: all).
    pub event_types: Vec<EventType>,
}

/// What `createWebhookEndpoint` returns: the endpoint and, this once, its secret. The secret
/// is never stored with the idempotency key's result (`serde(skip)`): a repeat reads it again
/// from the endpoint's sealed copy ([`endpoint_secret`]), so it stays sealed under the master
/// key everywhere it is kept.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CreatedEndpoint {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its signing secret (`None` in a stored result).
    #[serde(skip)]
    pub secret: Option<String>,
}

/// The signing secret of endpoint `id` of workspace `ws`, unsealed (a repeat of
/// `createWebhookEndpoint` shows it again); `None` once the endpoint is gone.
pub async fn endpoint_secret(
    services: &Services,
    ws: Uuid,
    id: WebhookEndpointId,
) -> DomainResult<Option<String>> {
    let mut conn = services.conn().await?;
    let Some(e) = repo::endpoint_secret(&mut conn, id.0)
        .await?
        .filter(|e| e.workspace_id == ws)
    else {
        return Ok(None);
    };
    unseal(&services.vault, &endpoint_aad(id.0), &e.secret_sealed)
        .map(Some)
        .map_err(DomainError::internal)
}

/// The distinct types of `types`, in first-seen order; refuses lists longer than any
/// subscription needs.
fn check_event_types(types: &[EventType]) -> DomainResult<Vec<EventType>> {
    if types.len() > MAX_LIST {
        return Err(DomainError::bad_input(
            "eventTypes",
            format!("eventTypes must list at most {MAX_LIST} types"),
        ));
    }
    let mut out: Vec<EventType> = Vec::with_capacity(types.len());
    for t in types {
        if !out.contains(t) {
            out.push(*t);
        }
    }
    Ok(out)
}

/// Creates a webhook endpoint (owners); the endpoint and its secret, shown this once.
pub async fn create_endpoint(
    services: &Services,
    actor: &Actor,
    input: NewEndpoint,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<CreatedEndpoint>> {
    let allow = services.notifier.config.allow_http_loopback;
    let url = check_url("url", &input.url, allow)?;
    let event_types = check_event_types(&input.event_types)?;
    let id = WebhookEndpointId::new();
    let secret = new_secret();
    let sealed = seal(&services.vault, &endpoint_aad(id.0), &secret)?;
    let ws = input.workspace_id;
    mutation::run(
        services,
        actor,
        "createWebhookEndpoint",
        key,
        &input,
        |c, _| -> Effect<'_, _> {
            Box::pin(create_endpoint_effect(
                c,
                actor.clone(),
                ws,
                id,
                url.clone(),
                event_types.clone(),
                (secret.clone(), sealed.clone()),
            ))
        },
    )
    .await
}

async fn create_endpoint_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    ws: WorkspaceId,
    id: WebhookEndpointId,
    url: String,
    event_types: Vec<EventType>,
    (secret, sealed): (String, Vec<u8>),
) -> DomainResult<CreatedEndpoint> {
    require_role(
        conn,
        &actor,
        ws,
        |r| r == Role::Owner,
        "manage integrations",
    )
    .await?;
    // Serializes concurrent creations so that the cap holds.
    crate::db::repo::workspaces::lock(conn, ws.0)
        .await?
        .ok_or(DomainError::NotFound("workspace"))?;
    super::governance::settings::require_integrations(conn, ws).await?;
    let count = repo::count_endpoints(conn, ws.0).await?;
    if count >= MAX_ENDPOINTS {
        return Err(DomainError::LimitExceeded(format!(
            "a workspace has at most {MAX_ENDPOINTS} webhook endpoints; it has {count}"
        )));
    }
    let wire: Vec<String> = event_types.iter().map(|t| t.wire().to_string()).collect();
    let row =
        repo::insert_endpoint(conn, id.0, ws.0, &url, &wire, &sealed, actor.user_id.0).await?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "integration.webhook_endpoint.create",
            target_type: "WebhookEndpoint",
            target_id: id.encode(),
            summary: json!({"url": url, "eventTypes": wire}),
            actor: &actor,
        },
    )
    .await?;
    Ok(CreatedEndpoint {
        endpoint: row.into(),
        secret: Some(secret),
    })
}

/// What `delete_endpoint` reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeletedEndpoint {
    /// The endpoint deleted.
    pub id: WebhookEndpointId,
}

/// Deletes a webhook endpoint (owners). An endpoint of a workspace the actor does not belong
/// to is reported exactly like a missing one. Its pending deliveries fail at their next
/// attempt.
pub async fn delete_endpoint(
    services: &Services,
    actor: &Actor,
    id: WebhookEndpointId,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<DeletedEndpoint>> {
    mutation::run(
        services,
        actor,
        "deleteWebhookEndpoint",
        key,
        &id,
        |c, _| -> Effect<'_, _> { Box::pin(delete_endpoint_effect(c, actor.clone(), id)) },
    )
    .await
}

async fn delete_endpoint_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    id: WebhookEndpointId,
) -> DomainResult<DeletedEndpoint> {
    const MISSING: DomainError = DomainError::NotFound("webhook endpoint");
    let access = super::access::to(
        conn,
        &actor,
        super::access::Owned::WebhookEndpoint,
        id.0,
        "webhook endpoint",
    )
    .await?;
    access.require(|r| r == Role::Owner, "manage integrations")?;
    let ws = access.workspace;
    let endpoint = repo::endpoint(conn, id.0).await?.ok_or(MISSING)?;
    if !repo::delete_endpoint(conn, ws.0, id.0).await? {
        return Err(MISSING);
    }
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "integration.webhook_endpoint.delete",
            target_type: "WebhookEndpoint",
            target_id: id.encode(),
            summary: json!({"url": endpoint.url}),
            actor: &actor,
        },
    )
    .await?;
    Ok(DeletedEndpoint { id })
}

/// Input of `update`: absent parts keep their value.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SettingsChange {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// `None`: keep; `Some(None)`: remove; `Some(Some(url))`: set.
    pub slack_webhook_url: Option<Option<String>>,
    /// Categories whose recipients are replaced (an empty list removes them); categories
    /// not listed keep theirs.
    pub email_recipients: Vec<(Category, Vec<String>)>,
}

/// Checks and normalizes one category's addresses: each one bare address as delivery parses
/// it ([`check_recipient`]: surrounding whitespace trimmed, domain lower-cased, local part as
/// typed; display names, angle brackets, lists refused), duplicates dropped (compared without
/// case, the first spelling kept), at most [`MAX_RECIPIENTS`].
fn check_addresses(category: Category, addresses: &[String]) -> DomainResult<Vec<String>> {
    let field = "emailRecipients";
    if addresses.len() > MAX_RECIPIENTS * 2 {
        return Err(DomainError::bad_input(
            field,
            format!(
                "a category has at most {MAX_RECIPIENTS} recipients ({} has {})",
                category.as_str(),
                addresses.len()
            ),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(addresses.len());
    for a in addresses {
        let e = check_recipient(field, a)?.to_string();
        if !out.iter().any(|o| o.to_lowercase() == e.to_lowercase()) {
            out.push(e);
        }
    }
    if out.len() > MAX_RECIPIENTS {
        return Err(DomainError::bad_input(
            field,
            format!(
                "a category has at most {MAX_RECIPIENTS} recipients ({} has {})",
                category.as_str(),
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// Changes the Slack webhook and e-mail recipients (owners), audited (without the Slack URL
/// or the addresses: only what changed).
pub async fn update(
    services: &Services,
    actor: &Actor,
    input: SettingsChange,
    key: Option<&mutation::Key>,
) -> DomainResult<mutation::Done<Integrations>> {
    let allow = services.notifier.config.allow_http_loopback;
    let slack = match &input.slack_webhook_url {
        Some(Some(u)) => Some(Some(check_url("slackWebhookUrl", u, allow)?)),
        Some(None) => Some(None),
        None => None,
    };
    if input.email_recipients.len() > Category::ALL.len() {
        return Err(DomainError::bad_input(
            "emailRecipients",
            "emailRecipients lists each category at most once",
        ));
    }
    let mut recipients: Vec<(Category, Vec<String>)> = Vec::new();
    for (category, addresses) in &input.email_recipients {
        if recipients.iter().any(|(c, _)| c == category) {
            return Err(DomainError::bad_input(
                "emailRecipients",
                format!("emailRecipients lists {} twice", category.as_str()),
            ));
        }
        recipients.push((*category, check_addresses(*category, addresses)?));
    }
    let ws = input.workspace_id;
    let sealed = match &slack {
        Some(Some(u)) => Some(Some((seal(&services.vault, &slack_aad(ws.0), u)?, mask(u)))),
        Some(None) => Some(None),
        None => None,
    };
    mutation::run(
        services,
        actor,
        "updateIntegrationSettings",
        key,
        &input,
        |c, _| -> Effect<'_, _> {
            Box::pin(update_effect(
                c,
                actor.clone(),
                ws,
                sealed.clone(),
                recipients.clone(),
            ))
        },
    )
    .await
}

async fn update_effect(
    conn: &mut AsyncPgConnection,
    actor: Actor,
    ws: WorkspaceId,
    slack: Option<Option<(Vec<u8>, String)>>,
    recipients: Vec<(Category, Vec<String>)>,
) -> DomainResult<Integrations> {
    require_role(
        conn,
        &actor,
        ws,
        |r| r == Role::Owner,
        "manage integrations",
    )
    .await?;
    crate::db::repo::workspaces::lock(conn, ws.0)
        .await?
        .ok_or(DomainError::NotFound("workspace"))?;
    // With external integrations off, destinations may be removed but not added or changed.
    let adds = matches!(slack, Some(Some(_))) || recipients.iter().any(|(_, a)| !a.is_empty());
    if adds {
        super::governance::settings::require_integrations(conn, ws).await?;
    }
    if let Some(s) = &slack {
        repo::set_slack(
            conn,
            ws.0,
            s.as_ref().map(|(v, h)| (v.as_slice(), h.as_str())),
        )
        .await?;
    }
    for (category, addresses) in &recipients {
        repo::set_recipients(conn, ws.0, category.as_str(), addresses).await?;
    }
    let summary = json!({
        "slackWebhook": match &slack {
            None => "unchanged",
            Some(None) => "removed",
            Some(Some(_)) => "set",
        },
        "emailRecipients": recipients
            .iter()
            .map(|(c, a)| (c.as_str().to_string(), json!(a.len())))
            .collect::<serde_json::Map<_, _>>(),
    });
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "integration.settings.update",
            target_type: "Workspace",
            target_id: ws.encode(),
            summary,
            actor: &actor,
        },
    )
    .await?;
    settings_of(conn, ws.0).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::excerpt;

    #[test]
    fn secrets_are_standard_webhooks_secrets_and_seal_per_row() {
        let s = new_secret();
        let key = s.strip_prefix("whsec_").expect("prefix");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("base64");
        assert_eq!(bytes.len(), 32);
        assert_ne!(new_secret(), s);
        assert!(standardwebhooks::Webhook::new(&s).is_ok());
        let vault = Vault::open("memory:///", &[], [7; 32]).expect("vault");
        let sealed = seal(&vault, "webhook_endpoint:a", &s).expect("seal");
        assert!(!sealed.windows(key.len()).any(|w| w == key.as_bytes()));
        assert_eq!(
            unseal(&vault, "webhook_endpoint:a", &sealed).expect("open"),
            s
        );
        assert!(unseal(&vault, "webhook_endpoint:b", &sealed).is_err());
        assert!(unseal(&vault, "webhook_endpoint:a", &sealed[..20]).is_err());
    }

    #[test]
    fn slack_urls_are_masked() {
        assert_eq!(
            mask("https://hooks.slack.com/services/T000/B000/XXXXabcd"),
            "https://hooks.slack.com/…abcd"
        );
    }

    #[test]
    fn recipients_are_normalized_deduplicated_and_capped() {
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("P{i}@Example.com"))
                .collect::<Vec<_>>()
        };
        let got = check_addresses(
            Category::QuotaWarnings,
            &["A@example.com".into(), "a@example.com".into()],
        )
        .expect("valid");
        assert_eq!(got, vec!["a@example.com".to_string()]);
        assert_eq!(
            check_addresses(Category::QuotaWarnings, &list(20))
                .expect("twenty")
                .len(),
            20
        );
        assert!(check_addresses(Category::QuotaWarnings, &list(21)).is_err());
        assert!(check_addresses(Category::QuotaWarnings, &list(5_000)).is_err());
        assert!(check_addresses(Category::QuotaWarnings, &["not an address".into()]).is_err());
    }

    fn one(address: &str) -> DomainResult<Vec<String>> {
        check_addresses(Category::SecurityAlerts, &[address.to_string()])
    }

    #[test]
    fn recipients_are_stored_as_the_bare_address_delivery_uses() {
        let got = one("Ops+alerts@Mail.Example.COM").expect("bare address");
        assert_eq!(got, vec!["ops+alerts@mail.example.com".to_string()]);
        // What delivery parses it into is what is stored, unchanged.
        let delivered = got[0].parse::<lettre::Address>().expect("lettre reads it");
        assert_eq!(delivered.to_string(), got[0]);
        assert_eq!(delivered.user(), "ops+alerts");
        assert_eq!(delivered.domain(), "mail.example.com");
        // Surrounding whitespace is trimmed, then the address is taken.
        assert_eq!(
            one(" a@b.example ").expect("trimmed"),
            vec!["a@b.example".to_string()]
        );
    }

    #[test]
    fn recipients_that_are_not_one_bare_address_are_refused() {
        for refused in [
            "\"x\"<attacker@evil.example>",
            "a,b@x.example",
            "Name <a@b.example>",
            "a@b.example, c@d.example",
            "\"a\"@b.example",
            "a b@x.example",
        ] {
            match one(refused) {
                Err(DomainError::BadInput { field, message }) => {
                    assert_eq!(field, "emailRecipients", "{refused}");
                    assert!(message.contains(&excerpt(refused.trim())), "{message}");
                }
                other => panic!("{refused}: {other:?}"),
            }
        }
        let long = format!("\"x\"<{}@evil.example>", "a".repeat(200));
        let Err(DomainError::BadInput { message, .. }) = one(&long) else {
            panic!("long input accepted");
        };
        assert!(!message.contains(&"a".repeat(41)), "{message}");
    }
}
