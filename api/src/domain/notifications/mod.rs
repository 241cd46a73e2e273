//! Notifications: what happened that a workspace is told about, and its delivery to the
//! destinations of the workspace's integration settings (`domain::integrations`).
//!
//! An event is a row of `notifications` (the outbox) written by [`record`] in the
//! transaction of the change that causes it, with the job that fans it out, in one
//! statement: a rolled-back change notifies nobody, a committed one is never lost. Its
//! `dedupe_key` makes it happen once per what it is about (a quota threshold per window, a
//! Stripe event).
//!
//! Events (`type` on the wire, category for e-mail recipients):
//! | type | category | raised by |
//! |---|---|---|
//! | `quota.warning` (80 %), `quota.reached` (100 %) | `QUOTA_WARNINGS` | `recordUsage` crossing an organization's limit, a billing pool's capacity or a workspace quota ([`quota`]) |
//! | `security.owner_added` | `SECURITY_ALERTS` | `addMember` as owner, `updateMemberRole` to owner |
//! | `security.api_key_created`, `security.ip_refused` | `SECURITY_ALERTS` | hooks for the governance work ([`api_key_created`], [`ip_refused`]) |
//! | `billing.payment_failed`, `billing.trial_ending`, `billing.subscription_canceled` | `BILLING_NOTIFICATIONS` | Stripe's `invoice.payment_failed`, `customer.subscription.trial_will_end`, `customer.subscription.deleted` ([`stripe_event`]) |
//! | `approval.requested` | `APPROVAL_REQUESTS` | hook for approval workflows ([`approval_requested`]) |
//! | `member.invited` | (none) | `addMember`, `resendInvitation`: e-mailed to the invitee with the link that accepts it (`domain::invitations`), and sent to the webhook endpoints that subscribe to it by name; not to endpoints of every type, Slack or recipient lists |
//!
//! Delivery (`delivery`): the fan-out job creates one `notification_deliveries` row per
//! destination (every webhook endpoint subscribed to the type, the Slack webhook, each e-mail
//! recipient of the category) and a job per delivery on the `notifications` queue. Each
//! attempt is a row of `notification_attempts`; a failed attempt schedules the next after
//! [`RETRY_SCHEDULE`] until [`RETRY_WINDOW`] has passed, then the delivery is `FAILED`.

pub mod channels;
pub mod delivery;
pub mod quota;

use chrono::{DateTime, SecondsFormat, Utc};
use diesel_async::AsyncPgConnection;
use serde_json::{Value, json};
use uuid::Uuid;

pub use channels::{NotificationConfig, Notifier};
pub use delivery::enqueue_due;

use super::DomainResult;
use crate::ids::{MemberId, UserId, WorkspaceId};

/// Re-exported so that receivers (and the tests) verify signatures with the very crate
/// that signs them.
pub use standardwebhooks;

/// The queue of notification jobs (fan-out and delivery attempts).
pub const QUEUE: &str = crate::tasks::queue::NOTIFICATIONS;
/// Attempts of one notification job inside apalis (database errors only: a failed delivery
/// attempt is recorded and rescheduled by the job itself, which then succeeds).
pub const JOB_MAX_ATTEMPTS: i32 = 5;
/// Seconds between a delivery's failed attempt and the next: the n-th failure waits the
/// n-th entry (the last repeats), and never past [`RETRY_WINDOW`].
pub const RETRY_SCHEDULE: [i64; 7] = [30, 120, 600, 3_600, 10_800, 21_600, 43_200];
/// How long a delivery is retried before it is marked `FAILED`: its last attempt happens
/// at the end of the window.
pub const RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3_600);

/// The wait after the `attempt`-th failed attempt (1-based), in seconds.
pub fn backoff_secs(attempt: i32) -> i64 {
    let i = usize::try_from(attempt.max(1) - 1).unwrap_or(0);
    RETRY_SCHEDULE[i.min(RETRY_SCHEDULE.len() - 1)]
}

/// Who receives a notification by e-mail: the recipients of its category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Category {
    /// 80 % and 100 % of a limit, pool or workspace quota.
    QuotaWarnings,
    /// Owners added, API keys created, refused requests.
    SecurityAlerts,
    /// Payment failures, trials ending, cancellations.
    BillingNotifications,
    /// Actions waiting for a second person's approval.
    ApprovalRequests,
}

impl Category {
    /// Every category, in the order the API lists them.
    pub const ALL: [Category; 4] = [
        Category::QuotaWarnings,
        Category::SecurityAlerts,
        Category::BillingNotifications,
        Category::ApprovalRequests,
    ];

    /// Stored form (and GraphQL's).
    pub fn as_str(self) -> &'static str {
        match self {
            Category::QuotaWarnings => "QUOTA_WARNINGS",
            Category::SecurityAlerts => "SECURITY_ALERTS",
            Category::BillingNotifications => "BILLING_NOTIFICATIONS",
            Category::ApprovalRequests => "APPROVAL_REQUESTS",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EventType {
    /// 80 % of an organization's limit, a billing pool's capacity or a workspace quota in
    /// use.
    QuotaWarning,
    /// 100 % in use: allocations are refused until usage falls.
    QuotaReached,
    /// A member was added as owner, or promoted to owner.
    OwnerAdded,
    /// An API key was created.
    ApiKeyCreated,
    /// A request from outside the IP allow-list was refused.
    IpRefused,
    /// Stripe could not collect an invoice.
    PaymentFailed,
    /// A trial ends in three days.
    TrialEnding,
    /// A subscription was canceled.
    SubscriptionCanceled,
    /// An action waits for a second person's approval.
    ApprovalRequested,
    /// Someone was invited to join the workspace (also e-mailed to the invitee, with the
    /// link that accepts it: `domain::invitations`).
    MemberInvited,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 10] = [
        EventType::QuotaWarning,
        EventType::QuotaReached,
        EventType::OwnerAdded,
        EventType::ApiKeyCreated,
        EventType::IpRefused,
        EventType::PaymentFailed,
        EventType::TrialEnding,
        EventType::SubscriptionCanceled,
        EventType::ApprovalRequested,
        EventType::MemberInvited,
    ];

    /// The wire name: the `type` of webhook bodies, and the stored form.
    pub fn wire(self) -> &'static str {
        match self {
            EventType::QuotaWarning => "quota.warning",
            EventType::QuotaReached => "quota.reached",
            EventType::OwnerAdded => "security.owner_added",
            EventType::ApiKeyCreated => "security.api_key_created",
            EventType::IpRefused => "security.ip_refused",
            EventType::PaymentFailed => "billing.payment_failed",
            EventType::TrialEnding => "billing.trial_ending",
            EventType::SubscriptionCanceled => "billing.subscription_canceled",
            EventType::ApprovalRequested => "approval.requested",
            EventType::MemberInvited => "member.invited",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.wire() == s)
    }

    /// Its category.
    pub fn category(self) -> Category {
        match self {
            EventType::QuotaWarning | EventType::QuotaReached => Category::QuotaWarnings,
            EventType::OwnerAdded
            | EventType::ApiKeyCreated
            | EventType::IpRefused
            | EventType::MemberInvited => Category::SecurityAlerts,
            EventType::PaymentFailed | EventType::TrialEnding | EventType::SubscriptionCanceled => {
                Category::BillingNotifications
            }
            EventType::ApprovalRequested => Category::ApprovalRequests,
        }
    }

    /// A title for people (Slack, e-mail subjects).
    pub fn title(self) -> &'static str {
        match self {
            EventType::QuotaWarning => "Quota warning",
            EventType::QuotaReached => "Quota reached",
            EventType::OwnerAdded => "Security alert: owner added",
            EventType::ApiKeyCreated => "Security alert: API key created",
            EventType::IpRefused => "Security alert: request refused by the IP allow-list",
            EventType::PaymentFailed => "Billing: payment failed",
            EventType::TrialEnding => "Billing: trial ending",
            EventType::SubscriptionCanceled => "Billing: subscription canceled",
            EventType::ApprovalRequested => "Approval requested",
            EventType::MemberInvited => "Member invited",
        }
    }
}

/// Records that `kind` happened in workspace `ws` with `data`, in the caller's transaction,
/// once per `dedupe_key` (`None`: always), and enqueues its fan-out. One statement; `true`
/// when recorded now.
pub async fn record(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    kind: EventType,
    data: Value,
    dedupe_key: Option<&str>,
) -> DomainResult<bool> {
    let id = crate::ids::NotificationId::new();
    let key = dedupe_key.map_or_else(|| format!("once:{}", id.0), str::to_string);
    Ok(crate::db::repo::notifications::record(
        conn,
        id.0,
        ws,
        kind.wire(),
        kind.category().as_str(),
        data,
        &key,
        QUEUE,
        JOB_MAX_ATTEMPTS,
    )
    .await?)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Security alert: member `member` (user `user`, `email`; looked up when `None`) became an
/// owner of `ws`, added (`promoted` false) or promoted by `actor`. Called in the mutation's
/// transaction.
pub async fn owner_added(
    conn: &mut AsyncPgConnection,
    ws: WorkspaceId,
    (member, user): (MemberId, UserId),
    email: Option<&str>,
    promoted: bool,
    actor: &super::Actor,
) -> DomainResult<()> {
    let email = match email {
        Some(e) => Some(e.to_string()),
        None => crate::db::repo::users::find_many(conn, &[user.0])
            .await?
            .into_iter()
            .next()
            .map(|u| u.email),
    };
    let data = json!({
        "workspaceId": ws.encode(),
        "memberId": member.encode(),
        "userId": user.encode(),
        "email": email,
        "how": if promoted { "promoted" } else { "added" },
        "by": actor.user_id.encode(),
        "requestId": actor.request_id,
    });
    record(conn, ws.0, EventType::OwnerAdded, data, None).await?;
    Ok(())
}

/// Security alert hook (governance work): an API key was created. `key_id` is its external
/// id and `prefix` the part that identifies it in logs; never pass the secret.
pub async fn api_key_created(
    conn: &mut AsyncPgConnection,
    ws: WorkspaceId,
    key_id: &str,
    name: &str,
    prefix: &str,
    role: super::Role,
    actor: &super::Actor,
) -> DomainResult<()> {
    let data = json!({
        "workspaceId": ws.encode(),
        "apiKeyId": key_id,
        "name": name,
        "prefix": prefix,
        "role": role.as_str(),
        "by": actor.user_id.encode(),
    });
    record(
        conn,
        ws.0,
        EventType::ApiKeyCreated,
        data,
        Some(&format!("api_key_created:{key_id}")),
    )
    .await?;
    Ok(())
}

/// Security alert hook (governance work): a request to `ws` from `ip` was refused by the IP
/// allow-list at `at`. At most one alert per address and hour (the dedupe key), so an attack
/// costs one row per address and hour, not one per request; callers on the request path
/// should still skip the call for an address they reported within the hour.
pub async fn ip_refused(
    conn: &mut AsyncPgConnection,
    ws: WorkspaceId,
    ip: std::net::IpAddr,
    at: DateTime<Utc>,
) -> DomainResult<()> {
    let hour = at.format("%Y-%m-%dT%H").to_string();
    let data = json!({"workspaceId": ws.encode(), "ip": ip.to_string(), "at": rfc3339(at)});
    record(
        conn,
        ws.0,
        EventType::IpRefused,
        data,
        Some(&format!("ip_refused:{ip}:{hour}")),
    )
    .await?;
    Ok(())
}

/// Approval hook (approval workflows): request `request_id` for `action` waits for a second
/// owner's or admin's approval.
pub async fn approval_requested(
    conn: &mut AsyncPgConnection,
    ws: WorkspaceId,
    request_id: &str,
    action: &str,
    actor: &super::Actor,
) -> DomainResult<()> {
    let data = json!({
        "workspaceId": ws.encode(),
        "approvalRequestId": request_id,
        "action": action,
        "requestedBy": actor.user_id.encode(),
    });
    record(
        conn,
        ws.0,
        EventType::ApprovalRequested,
        data,
        Some(&format!("approval_requested:{request_id}")),
    )
    .await?;
    Ok(())
}

/// Billing notifications from Stripe events, in the transaction that applies event
/// `event_id` of type `kind` to the mirror: `invoice.payment_failed`,
/// `customer.subscription.trial_will_end` and `customer.subscription.deleted` of one of our
/// customers notify its workspace once per event. `object` is the event's object as Stripe
/// says it is now (read when the event is applied, not as the event carried it): an invoice
/// paid or voided since its payment failed, or a subscription no longer trialing, notifies
/// nobody. Other events cost nothing.
pub async fn stripe_event(
    conn: &mut AsyncPgConnection,
    kind: &str,
    event_id: &str,
    object: &Value,
) -> DomainResult<()> {
    let ty = match kind {
        "invoice.payment_failed" => EventType::PaymentFailed,
        "customer.subscription.trial_will_end" => EventType::TrialEnding,
        "customer.subscription.deleted" => EventType::SubscriptionCanceled,
        _ => return Ok(()),
    };
    let settled = match ty {
        EventType::PaymentFailed => {
            matches!(object["status"].as_str(), Some("paid" | "void"))
                || object["amount_remaining"].as_i64() == Some(0)
        }
        EventType::TrialEnding => object["status"].as_str() != Some("trialing"),
        _ => false,
    };
    if settled {
        tracing::debug!(
            kind,
            event = event_id,
            "no notification: the object moved on since"
        );
        return Ok(());
    }
    let Some(customer) = object["customer"].as_str() else {
        return Ok(());
    };
    let Some(account) = crate::db::repo::billing::account_by_customer(conn, customer).await? else {
        return Ok(());
    };
    let ws = WorkspaceId(account.workspace_id);
    let time = |v: &Value| {
        v.as_i64()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .map(rfc3339)
    };
    let mut data = json!({
        "workspaceId": ws.encode(),
        "billingAccountId": crate::ids::BillingAccountId(account.id).encode(),
        "stripeEventId": event_id,
    });
    let extra = match ty {
        EventType::PaymentFailed => json!({
            "invoiceId": object["id"],
            "number": object["number"],
            "amountDue": object["amount_due"],
            "currency": object["currency"],
            "attemptCount": object["attempt_count"],
            "hostedInvoiceUrl": object["hosted_invoice_url"],
            "nextPaymentAttempt": time(&object["next_payment_attempt"]),
        }),
        EventType::TrialEnding => json!({
            "subscriptionId": object["id"],
            "trialEnd": time(&object["trial_end"]),
        }),
        _ => json!({
            "subscriptionId": object["id"],
            "canceledAt": time(&object["canceled_at"]).or_else(|| time(&object["ended_at"])),
        }),
    };
    if let (Some(d), Value::Object(e)) = (data.as_object_mut(), extra) {
        d.extend(e);
    }
    record(
        conn,
        ws.0,
        ty,
        data,
        Some(&format!("stripe:{}", super::excerpt(event_id))),
    )
    .await?;
    Ok(())
}

/// A one-line summary of an event for people (Slack messages, e-mail bodies), from its data.
pub fn summary(kind: EventType, data: &Value) -> String {
    let s = |k: &str| data[k].as_str().map(super::excerpt).unwrap_or_default();
    let n = |k: &str| data[k].as_i64().unwrap_or_default();
    match kind {
        EventType::QuotaWarning | EventType::QuotaReached => {
            if data["scope"].as_str() == Some("workspace") {
                return format!(
                    "the workspace uses {} of its quota of {} {} ({} %)",
                    n("used"),
                    n("quota"),
                    s("resource"),
                    n("percent")
                );
            }
            let whose = match data["organizationId"].as_str() {
                Some(org) => format!("organization {} ({org})", s("organizationName")),
                None => format!("billing pool {}", s("pool")),
            };
            format!(
                "{whose} uses {} of {} {} ({} %)",
                n("used"),
                n("limit"),
                s("resource"),
                n("percent")
            )
        }
        EventType::OwnerAdded => format!(
            "{} was {} as an owner of the workspace",
            if data["email"].is_string() {
                s("email")
            } else {
                s("userId")
            },
            s("how")
        ),
        EventType::ApiKeyCreated => format!(
            "API key {} ({}) was created with role {}",
            s("name"),
            s("prefix"),
            s("role")
        ),
        EventType::IpRefused => format!(
            "a request from {} was refused by the IP allow-list",
            s("ip")
        ),
        EventType::PaymentFailed => format!(
            "payment of invoice {} failed ({} {})",
            s("invoiceId"),
            n("amountDue"),
            s("currency")
        ),
        EventType::TrialEnding => format!(
            "the trial of subscription {} ends at {}",
            s("subscriptionId"),
            s("trialEnd")
        ),
        EventType::SubscriptionCanceled => {
            format!("subscription {} was canceled", s("subscriptionId"))
        }
        EventType::ApprovalRequested => format!(
            "{} waits for approval (request {})",
            s("action"),
            s("approvalRequestId")
        ),
        EventType::MemberInvited => format!(
            "{} was invited to join as {} (invitation {})",
            s("email"),
            s("role"),
            s("invitationId")
        ),
    }
}

/// A delivery's error as shown to the workspace: one line of at most 300 characters.
pub(crate) fn one_line(message: &str) -> String {
    let mut out: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if message.chars().nth(300).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_and_categories_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.wire()), Some(t));
        }
        for c in Category::ALL {
            assert_eq!(Category::parse(c.as_str()), Some(c));
        }
        assert_eq!(EventType::parse("quota.unknown"), None);
    }

    #[test]
    fn retries_back_off_and_cover_a_day() {
        assert_eq!(backoff_secs(1), 30);
        assert_eq!(backoff_secs(2), 120);
        assert_eq!(backoff_secs(7), 43_200);
        assert_eq!(backoff_secs(50), 43_200);
        assert_eq!(backoff_secs(0), 30);
        // The waits alone pass the window: the clamp to its end makes the last attempt.
        let total: i64 = (1..=8).map(backoff_secs).sum();
        assert!(total >= RETRY_WINDOW.as_secs() as i64);
    }

    #[test]
    fn quota_summaries_name_whose_limit() {
        let ws = json!({"scope": "workspace", "resource": "users", "quota": 10, "limit": 10,
                        "used": 8, "percent": 80});
        assert_eq!(
            summary(EventType::QuotaWarning, &ws),
            "the workspace uses 8 of its quota of 10 users (80 %)"
        );
        let pool = json!({"pool": "ws_x", "resource": "users", "limit": 10, "used": 10,
                          "percent": 100});
        assert_eq!(
            summary(EventType::QuotaReached, &pool),
            "billing pool ws_x uses 10 of 10 users (100 %)"
        );
    }

    #[test]
    fn errors_are_one_bounded_line() {
        assert_eq!(one_line("a\nb\u{0}c"), "a b c");
        let long = "x".repeat(10_000);
        assert_eq!(one_line(&long).chars().count(), 301);
    }
}
