//! Notifications and their deliveries (owners and admins; see `domain::notifications`).

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, ID, Json, Object, Result};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::pagination;
use super::rc;
use crate::db::repo::notifications::{AttemptRow, DeliveryRow};
use crate::domain::notifications as domain;
use crate::ids::{NotificationDeliveryId, NotificationId, WorkspaceId};

/// What happened (`type` in webhook bodies: the wire name in parentheses).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "crate::domain::notifications::EventType")]
pub enum NotificationEventType {
    /// 80 % of an organization's limit or a billing pool's capacity in use
    /// (`quota.warning`).
    QuotaWarning,
    /// 100 % in use: further allocations are refused (`quota.reached`).
    QuotaReached,
    /// A member was added as owner or promoted to owner (`security.owner_added`).
    OwnerAdded,
    /// An API key was created (`security.api_key_created`).
    ApiKeyCreated,
    /// A request from outside the IP allow-list was refused (`security.ip_refused`).
    IpRefused,
    /// Stripe could not collect an invoice (`billing.payment_failed`).
    PaymentFailed,
    /// A trial ends in three days (`billing.trial_ending`).
    TrialEnding,
    /// A subscription was canceled (`billing.subscription_canceled`).
    SubscriptionCanceled,
    /// An action waits for a second person's approval (`approval.requested`).
    ApprovalRequested,
    /// Someone was invited to join the workspace (`member.invited`): e-mailed to the
    /// invitee with the link that accepts it, and sent to the webhook endpoints that list
    /// this type (not to those of every type, Slack or recipient lists).
    MemberInvited,
}

/// Who receives a notification by e-mail: the recipients of its category.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "crate::domain::notifications::Category")]
pub enum NotificationCategory {
    /// `QUOTA_WARNING` and `QUOTA_REACHED`.
    QuotaWarnings,
    /// `OWNER_ADDED`, `API_KEY_CREATED`, `IP_REFUSED`.
    SecurityAlerts,
    /// `PAYMENT_FAILED`, `TRIAL_ENDING`, `SUBSCRIPTION_CANCELED`.
    BillingNotifications,
    /// `APPROVAL_REQUESTED`.
    ApprovalRequests,
}

/// Where a delivery goes.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum NotificationChannel {
    /// A webhook endpoint (signed, Standard Webhooks).
    Webhook,
    /// The Slack incoming webhook.
    Slack,
    /// An e-mail recipient.
    Email,
}

/// Where a delivery is.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum NotificationDeliveryStatus {
    /// Waiting for its next attempt (retried with backoff for 24 hours).
    Pending,
    /// The destination accepted it.
    Delivered,
    /// Every attempt failed for 24 hours, or the destination was removed.
    Failed,
    /// Not sent: the workspace's policy turned external integrations off before its attempt
    /// (`lastError` says so).
    Skipped,
}

impl NotificationDeliveryStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Delivered => "DELIVERED",
            Self::Failed => "FAILED",
            Self::Skipped => "SKIPPED",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "DELIVERED" => Self::Delivered,
            "FAILED" => Self::Failed,
            "SKIPPED" => Self::Skipped,
            _ => Self::Pending,
        }
    }
}

/// Something that happened that the workspace is told about.
pub struct NotificationEvent(DeliveryRow);

#[Object]
impl NotificationEvent {
    /// Opaque id (`ntf_…`).
    async fn id(&self) -> ID {
        ID(NotificationId(self.0.notification_id).encode())
    }

    /// What happened; null for a type this version does not know.
    #[graphql(name = "type")]
    async fn kind(&self) -> Option<NotificationEventType> {
        domain::EventType::parse(&self.0.r#type).map(Into::into)
    }

    /// The wire name of the type, as webhook bodies carry it (e.g. `quota.warning`).
    async fn wire_type(&self) -> &str {
        &self.0.r#type
    }

    /// Its category.
    async fn category(&self) -> Option<NotificationCategory> {
        domain::Category::parse(&self.0.category).map(Into::into)
    }

    /// The event's data, as webhook bodies carry it.
    async fn data(&self) -> Json<serde_json::Value> {
        Json(self.0.data.clone())
    }

    /// When it happened.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.notified_at
    }
}

/// One attempt of a delivery.
pub struct NotificationAttempt(AttemptRow);

#[Object]
impl NotificationAttempt {
    /// 1 for the first attempt, 2 for the first retry, …
    async fn number(&self) -> i32 {
        self.0.number
    }

    /// When it started.
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.started_at
    }

    /// When it ended; null when its worker stopped in the middle (the attempt is made again).
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }

    /// How long it took, in milliseconds.
    async fn duration_ms(&self) -> Option<i32> {
        self.0.duration_ms
    }

    /// The HTTP status (webhooks, Slack) or SMTP reply code (e-mail), when there was an
    /// answer.
    async fn status_code(&self) -> Option<i32> {
        self.0.status_code
    }

    /// What went wrong.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }

    /// Whether the destination accepted it.
    async fn succeeded(&self) -> bool {
        self.0.succeeded
    }
}

/// A notification's delivery to one destination, with its attempts.
pub struct NotificationDelivery {
    row: DeliveryRow,
    attempts: Vec<AttemptRow>,
}

#[Object]
impl NotificationDelivery {
    /// Opaque id (`ndl_…`; also the `webhook-id` of a webhook's every attempt).
    async fn id(&self) -> ID {
        ID(NotificationDeliveryId(self.row.id).encode())
    }

    /// What is delivered.
    async fn event(&self) -> NotificationEvent {
        NotificationEvent(self.row.clone())
    }

    /// Where it goes.
    async fn channel(&self) -> NotificationChannel {
        match self.row.channel.as_str() {
            "SLACK" => NotificationChannel::Slack,
            "EMAIL" => NotificationChannel::Email,
            _ => NotificationChannel::Webhook,
        }
    }

    /// The endpoint's URL, the masked Slack URL, or the e-mail address.
    async fn destination(&self) -> &str {
        &self.row.destination
    }

    /// Where it is.
    async fn status(&self) -> NotificationDeliveryStatus {
        NotificationDeliveryStatus::parse(&self.row.status)
    }

    /// Attempts so far.
    async fn attempts(&self) -> i32 {
        self.row.attempts
    }

    /// The last attempt's error, while it failed.
    async fn last_error(&self) -> Option<&str> {
        self.row.last_error.as_deref()
    }

    /// When it was last attempted.
    async fn last_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.row.last_attempt_at
    }

    /// When the next attempt is due (null once delivered or failed).
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.row.next_attempt_at
    }

    /// When the destination accepted it.
    async fn delivered_at(&self) -> Option<DateTime<Utc>> {
        self.row.delivered_at
    }

    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }

    /// Every attempt, oldest first: status code or error, duration.
    async fn attempt_log(&self) -> Vec<NotificationAttempt> {
        self.attempts
            .iter()
            .cloned()
            .map(NotificationAttempt)
            .collect()
    }
}

/// Newest-first page of a workspace's notification deliveries (owners and admins;
/// `FORBIDDEN` otherwise), each with its attempts: two statements per page.
pub async fn deliveries_of(
    ctx: &Context<'_>,
    ws: Uuid,
    first: Option<i32>,
    after: Option<String>,
    status: Option<NotificationDeliveryStatus>,
) -> Result<Connection<String, NotificationDelivery>> {
    super::billing::may_manage(ctx, ws, "read notification deliveries").await?;
    let rc = rc(ctx);
    let page = pagination::page(first, after.as_deref())?;
    let (rows, attempts) = domain::delivery::page(
        &rc.services,
        WorkspaceId(ws),
        status.map(NotificationDeliveryStatus::as_str),
        page,
    )
    .await
    .map_err(|e| rc.err(e))?;
    Ok(pagination::connection(
        rows,
        page,
        |d| d.id,
        |row| NotificationDelivery {
            attempts: attempts
                .iter()
                .filter(|a| a.delivery_id == row.id)
                .cloned()
                .collect(),
            row,
        },
    ))
}
