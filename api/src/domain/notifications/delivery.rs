//! Delivery of notifications: the jobs of the `notifications` queue and the periodic sweep.
//!
//! - `fanout` (one per notification, enqueued with it): creates a delivery per destination
//!   configured now (webhook endpoints subscribed to the type, the Slack webhook, each e-mail
//!   recipient of the category) and enqueues each one's first attempt, in one statement;
//!   running it again creates nothing new.
//! - `deliver` (one per attempt, keyed by the delivery and its due time): claims the attempt
//!   (`repo::claim`: only while the delivery is still due at that time, so a duplicate or
//!   stale job does nothing), makes it outside any transaction, then records it with its
//!   effect (`repo::finish`): delivered, failed for good, or the next attempt scheduled after
//!   [`super::RETRY_SCHEDULE`] with its job enqueued for that time. A failed attempt is an
//!   outcome, not a job error: apalis retries only database errors.
//!   Before it claims, the job ends the delivery as `SKIPPED` ([`SKIPPED_REASON`]) when the
//!   workspace's policy turns external integrations off: nothing is sent while it is off,
//!   and the log says why.
//! - the periodic `notification-retry` ([`retry_periodic`], every minute) enqueues the job
//!   of any due attempt that has none (its worker died while attempting: the claim's lease
//!   ran out), idempotently and with `FOR UPDATE SKIP LOCKED`, so any number of workers may
//!   run it.
//!
//! Webhooks are signed in the Standard Webhooks format with the `standardwebhooks` crate:
//! `webhook-id` (the delivery's id, the same on every attempt, for receivers to drop
//! duplicates), `webhook-timestamp` (seconds) and `webhook-signature`
//! (`v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the endpoint's
//! secret); the body is `{"type", "timestamp", "data"}`.

use std::time::Instant;

use chrono::SecondsFormat;
use serde_json::json;
use uuid::Uuid;

use super::channels::{Outcome, elapsed_ms};
use super::{Category, EventType, JOB_MAX_ATTEMPTS, QUEUE, RETRY_WINDOW, backoff_secs, summary};
use crate::db::DbPool;
use crate::db::repo::integrations as settings;
use crate::db::repo::notifications as repo;
use crate::domain::Services;
use crate::domain::integrations::{endpoint_aad, slack_aad, unseal};
use crate::ids::{NotificationDeliveryId, NotificationId, WebhookEndpointId, WorkspaceId};

/// How long a claimed attempt holds its delivery: past it, a dead worker's attempt is made
/// again (far above the longest attempt, `channels::SMTP_TIMEOUT` × 3).
pub const LEASE_SECS: i64 = 120;
/// Why a delivery is `SKIPPED`: the workspace's policy turned external integrations off
/// (`externalIntegrationsAllowed`) before its attempt. Nothing is sent while it is off; the
/// delivery stays in the log with this reason, and the endpoints stay stored.
pub const SKIPPED_REASON: &str = "not sent: the workspace's policy turns external integrations off (externalIntegrationsAllowed)";
/// The target of an invitation's e-mail to its invitee: this and the invitation's id.
pub const INVITEE_TARGET: &str = "invitation:";
/// Deliveries whose due jobs one sweep enqueues, at most.
pub const SWEEP_BATCH: i64 = 1_000;

/// Creates the deliveries of notification `id` and enqueues their first attempts.
pub async fn fan_out(pool: &DbPool, id: Uuid) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let Some(n) = repo::find(&mut conn, id).await? else {
        tracing::warn!(notification = %id, "fan-out of a notification that is gone; dropped");
        return Ok(());
    };
    if !n.live {
        tracing::info!(workspace.id = %n.workspace_id, "notification of a deleted workspace; not delivered");
        return Ok(());
    }
    let kind = EventType::parse(&n.r#type);
    let category = Category::parse(&n.category);
    let mut targets = Vec::new();
    // An invitation goes to its invitee, and to the endpoints that subscribe to it by name
    // (not those of every type, nor Slack or the recipient lists: it is not an alert).
    let invitation = kind == Some(EventType::MemberInvited);
    for e in settings::endpoints_of(&mut conn, n.workspace_id).await? {
        let every = e.event_types.is_empty() && !invitation;
        if every || e.event_types.contains(&n.r#type) {
            targets.push(repo::Target {
                id: Uuid::now_v7(),
                channel: "WEBHOOK",
                target: e.id.to_string(),
                destination: e.url,
                endpoint_id: Some(e.id),
            });
        }
    }
    if let Some(slack) = settings::slack(&mut conn, n.workspace_id)
        .await?
        .filter(|_| !invitation)
    {
        targets.push(repo::Target {
            id: Uuid::now_v7(),
            channel: "SLACK",
            target: "slack".into(),
            destination: slack.hint,
            endpoint_id: None,
        });
    }
    if invitation
        && let (Some(invitation), Some(email)) =
            (n.data["invitationId"].as_str(), n.data["email"].as_str())
    {
        // The invitee is told, at the address invited (read again when the e-mail goes).
        targets.push(repo::Target {
            id: Uuid::now_v7(),
            channel: "EMAIL",
            target: format!("{INVITEE_TARGET}{invitation}"),
            destination: email.to_string(),
            endpoint_id: None,
        });
    }
    if let Some(category) = category.filter(|_| !invitation) {
        let recipients = settings::recipients_of(&mut conn, n.workspace_id).await?;
        for r in recipients
            .iter()
            .filter(|r| r.category == category.as_str())
        {
            for address in &r.addresses {
                targets.push(repo::Target {
                    id: Uuid::now_v7(),
                    channel: "EMAIL",
                    target: address.clone(),
                    destination: address.clone(),
                    endpoint_id: None,
                });
            }
        }
    }
    let window = i64::try_from(RETRY_WINDOW.as_secs()).unwrap_or(i64::MAX);
    let created = repo::fan_out(
        &mut conn,
        n.workspace_id,
        n.id,
        &targets,
        window,
        QUEUE,
        JOB_MAX_ATTEMPTS,
    )
    .await?;
    tracing::debug!(
        notification = %NotificationId(n.id),
        kind = ?kind,
        created,
        "notification fanned out"
    );
    Ok(())
}

/// Makes the attempt of delivery `id` due at `due`, if it still is.
pub async fn deliver(ctx: &Services, id: Uuid, due: &str) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    let mut conn = pool.get().await?;
    if repo::skip_if_integrations_off(&mut conn, id, due, SKIPPED_REASON).await? {
        tracing::info!(delivery = %NotificationDeliveryId(id), "external integrations are off in the workspace's policy; delivery skipped");
        return Ok(());
    }
    let Some(c) = repo::claim(&mut conn, id, due, LEASE_SECS).await? else {
        tracing::debug!(delivery = %id, due, "delivery no longer due at that time; nothing to do");
        return Ok(());
    };
    // Connections are for the statements, not for waiting on receivers.
    drop(conn);
    let started = Instant::now();
    let outcome = attempt(ctx, &c).await?;
    let duration_ms = elapsed_ms(started);
    let (status_code, error, permanent) = match &outcome {
        Outcome::Delivered { status } => (*status, None, false),
        Outcome::Failed {
            status,
            error,
            permanent,
        } => (*status, Some(error.as_str()), *permanent),
    };
    let finished = repo::Finished {
        duration_ms,
        status_code,
        error,
        permanent,
        backoff_secs: backoff_secs(c.attempt),
    };
    let after = repo::finish(
        &mut *pool.get().await?,
        c.id,
        c.attempt,
        &finished,
        QUEUE,
        JOB_MAX_ATTEMPTS,
    )
    .await?;
    let delivery = NotificationDeliveryId(c.id);
    match after {
        Some(a) if a.status == "FAILED" => tracing::warn!(
            %delivery, workspace.id = %c.workspace_id, channel = c.channel, attempt = c.attempt,
            error = error.unwrap_or_default(), "notification delivery failed for good"
        ),
        Some(a) => tracing::debug!(
            %delivery, channel = c.channel, attempt = c.attempt, status = a.status,
            next = ?a.next_attempt_at, status_code, duration_ms, "notification delivery attempt"
        ),
        None => tracing::info!(
            %delivery, attempt = c.attempt,
            "attempt finished after its lease ran out; only the attempt was recorded"
        ),
    }
    Ok(())
}

/// Makes one attempt on the delivery's channel. Destinations are read now: one removed
/// since the notification fails for good.
async fn attempt(ctx: &Services, c: &repo::Claimed) -> anyhow::Result<Outcome> {
    let pool = &ctx.pool;
    let notifier = &ctx.notifier;
    let kind = EventType::parse(&c.r#type);
    let title = kind.map_or("Notification", EventType::title);
    let text = kind.map_or_else(|| c.r#type.clone(), |k| summary(k, &c.data));
    Ok(match c.channel.as_str() {
        "WEBHOOK" => {
            let endpoint = match c.endpoint_id {
                Some(e) => settings::endpoint_secret(&mut *pool.get().await?, e).await?,
                None => None,
            };
            let Some(endpoint) = endpoint.filter(|e| e.workspace_id == c.workspace_id) else {
                return Ok(Outcome::permanent("the webhook endpoint was deleted"));
            };
            let endpoint_id = c.endpoint_id.unwrap_or_default();
            let secret = unseal(
                &ctx.vault,
                &endpoint_aad(endpoint_id),
                &endpoint.secret_sealed,
            )?;
            let body = serde_json::to_vec(&json!({
                "type": c.r#type,
                "timestamp": c.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                "data": c.data,
            }))?;
            let msg_id = NotificationDeliveryId(c.id).encode();
            let now = chrono::Utc::now().timestamp();
            let signature = standardwebhooks::Webhook::new(&secret)
                .and_then(|w| w.sign(&msg_id, now, &body))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "signing for endpoint {}: {e}",
                        WebhookEndpointId(endpoint_id)
                    )
                })?;
            let headers = [
                (standardwebhooks::HEADER_WEBHOOK_ID, msg_id),
                (standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, now.to_string()),
                (standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature),
            ];
            notifier.post_json(&endpoint.url, &headers, body).await
        }
        "SLACK" => {
            let slack = settings::slack(&mut *pool.get().await?, c.workspace_id).await?;
            let Some(slack) = slack else {
                return Ok(Outcome::permanent("the Slack webhook was removed"));
            };
            let url = unseal(&ctx.vault, &slack_aad(c.workspace_id), &slack.sealed)?;
            // Slack reads `<…>` as links and mentions: the text is escaped as it asks.
            let message = format!("*{title}* ({}): {text}", c.workspace_name)
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            let body = serde_json::to_vec(&json!({ "text": message }))?;
            notifier.post_json(&url, &[], body).await
        }
        "EMAIL" if c.target.starts_with(INVITEE_TARGET) => {
            let id = crate::ids::InvitationId::decode(&c.target[INVITEE_TARGET.len()..]);
            let live = match id {
                Some(id) => {
                    crate::db::repo::invitations::live(&mut *pool.get().await?, id.0).await?
                }
                None => None,
            };
            let Some(live) = live else {
                return Ok(Outcome::permanent(
                    "the invitation was accepted, declined, revoked or expired",
                ));
            };
            let (subject, body) =
                crate::domain::invitations::email_text(&ctx.invitations, &ctx.vault, &live);
            notifier
                .send_email(&live.invitation.email, &subject, body)
                .await
        }
        "EMAIL" => {
            let still = settings::recipients_of(&mut *pool.get().await?, c.workspace_id)
                .await?
                .into_iter()
                .any(|r| r.category == c.category && r.addresses.contains(&c.target));
            if !still {
                return Ok(Outcome::permanent("the recipient was removed"));
            }
            let subject = format!("[{}] {title}", c.workspace_name);
            let body = format!(
                "{title}\n\nWorkspace: {} ({})\nWhen: {}\n\n{text}.\n\nDetails:\n{}\n",
                c.workspace_name,
                WorkspaceId(c.workspace_id),
                c.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                serde_json::to_string_pretty(&c.data).unwrap_or_default(),
            );
            notifier.send_email(&c.target, &subject, body).await
        }
        other => Outcome::permanent(format!("unknown channel {other}")),
    })
}

/// Enqueues the jobs of due attempts that have none (see the module docs) and fails the
/// deliveries whose window ended an hour ago without their last attempt; how many jobs.
pub async fn enqueue_due(pool: &DbPool) -> anyhow::Result<i64> {
    let mut conn = pool.get().await?;
    let mut total = 0;
    loop {
        let n = repo::enqueue_due(&mut conn, SWEEP_BATCH, QUEUE, JOB_MAX_ATTEMPTS).await?;
        total += n;
        if n < SWEEP_BATCH {
            break;
        }
    }
    let failed = repo::fail_overdue(&mut conn, 3_600).await?;
    if failed > 0 {
        tracing::warn!(
            failed,
            "notification deliveries failed: their retry window ended without their last attempt"
        );
    }
    Ok(total)
}

/// The periodic job `notification-retry` as `jobs::maintenance::PERIODIC` runs it.
pub async fn retry_periodic(pool: &DbPool) -> anyhow::Result<()> {
    let n = enqueue_due(pool).await?;
    if n > 0 {
        tracing::info!(enqueued = n, "enqueued due notification deliveries");
    }
    Ok(())
}

/// A page of the deliveries of `ws` (of one status, or all), newest first, and the attempts
/// of those shown; the caller checked the reader.
pub async fn page(
    services: &crate::domain::Services,
    ws: WorkspaceId,
    status: Option<&str>,
    page: crate::db::repo::Page,
) -> crate::domain::DomainResult<(Vec<repo::DeliveryRow>, Vec<repo::AttemptRow>)> {
    let mut conn = services.conn().await?;
    // Deliveries and their attempts from one snapshot: an attempt finishing between the two
    // reads would otherwise show finished under a delivery that does not say so yet.
    let read = conn
        .build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |conn| {
            let rows = repo::page(conn, ws.0, status, page.after, page.limit).await?;
            let shown: Vec<Uuid> = rows.iter().take(page.size()).map(|r| r.id).collect();
            let attempts = if shown.is_empty() {
                Vec::new()
            } else {
                repo::attempts_of(conn, &shown).await?
            };
            Ok::<_, diesel::result::Error>((rows, attempts))
        })
        .await?;
    Ok(read)
}
