//! Every job payload, typed: what one job of each queue asks for.
//!
//! A job is a row of `apalis.jobs` whose payload is JSON text (see `db::repo::jobs`). The
//! payloads are versioned (`"v": 1`): a row written by an earlier release must still run
//! after an upgrade, so [`Task::decode`] reads every version still in use, and a new
//! version is a new variant beside the old one, never a change to it. Producers build a
//! [`Task`] and write it with [`Task::payload`] (or [`Task::enqueue`]); the workers decode it
//! with [`Task::decode`] and hand it to one domain function (`jobs`). A payload that
//! decodes into no task (a version this release does not know, a damaged row) is logged and
//! dropped by the workers rather than retried forever.
//!
//! The notification queue's jobs are also written in bulk by SQL (`db::repo::notifications`,
//! one statement for a batch), in the same v1 shape as [`Task::payload`]; the tests of this
//! module hold both shapes together.

use chrono::{DateTime, SecondsFormat, Utc};
use diesel_async::AsyncPgConnection;
use serde_json::{Value, json};
use uuid::Uuid;

/// The queues (apalis `job_type`s), one per kind of work.
pub mod queue {
    /// Stripe events to apply to the billing mirror.
    pub const STRIPE_EVENTS: &str = "stripe-events";
    /// Billing requests to finish when their mutation did not.
    pub const BILLING_INTENTS: &str = "billing-intents";
    /// Ticks of the periodic jobs.
    pub const MAINTENANCE: &str = "maintenance";
    /// Analytics snapshots to compute.
    pub const ANALYTICS: &str = "analytics";
    /// Notifications to fan out and deliveries to attempt.
    pub const NOTIFICATIONS: &str = "notifications";
    /// Archives to restore.
    pub const ARCHIVES: &str = "archives";
    /// Data exports and erasures.
    pub const GDPR: &str = "gdpr";
}

/// One job's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// Apply stored Stripe event `event_id` (`domain::webhooks::process`).
    StripeEvent {
        /// `evt_…`.
        event_id: String,
    },
    /// Finish billing request `intent` if its mutation did not (`billing::intents::recover`).
    BillingRecovery {
        /// The `stripe_intents` row.
        intent: Uuid,
    },
    /// One tick of periodic job `schedule` (`jobs::maintenance`).
    Tick {
        /// The periodic job's name.
        schedule: String,
        /// The tick's scheduled time, RFC 3339.
        tick: String,
    },
    /// Compute the analytics snapshot of `workspace` for the month starting at
    /// `period_start` (`domain::analytics::run`).
    Analytics {
        /// The workspace.
        workspace: Uuid,
        /// The first instant of the month.
        period_start: DateTime<Utc>,
    },
    /// Create the deliveries of `notification` (`notifications::delivery::fan_out`).
    FanOut {
        /// The notification.
        notification: Uuid,
    },
    /// Attempt `delivery`, due at `due` (`notifications::delivery::deliver`).
    Deliver {
        /// The delivery.
        delivery: Uuid,
        /// When this attempt was due, as written (it names the attempt).
        due: String,
    },
    /// Verify `archive` and put its rows back (`domain::archives::run_restore`).
    ArchiveRestore {
        /// The archive.
        archive: Uuid,
    },
    /// Build data export `export` (`gdpr::export::run`).
    Export {
        /// The `data_exports` row.
        export: Uuid,
    },
    /// Erase person `user` everywhere (`gdpr::erase::run`).
    Erase {
        /// The person.
        user: Uuid,
    },
    /// Erase what person `user` left in `workspace` (`gdpr::erase::run_in_workspace`).
    EraseInWorkspace {
        /// The person.
        user: Uuid,
        /// The workspace they were removed from.
        workspace: Uuid,
    },
}

impl Task {
    /// The queue it runs on.
    pub fn queue(&self) -> &'static str {
        match self {
            Self::StripeEvent { .. } => queue::STRIPE_EVENTS,
            Self::BillingRecovery { .. } => queue::BILLING_INTENTS,
            Self::Tick { .. } => queue::MAINTENANCE,
            Self::Analytics { .. } => queue::ANALYTICS,
            Self::FanOut { .. } | Self::Deliver { .. } => queue::NOTIFICATIONS,
            Self::ArchiveRestore { .. } => queue::ARCHIVES,
            Self::Export { .. } | Self::Erase { .. } | Self::EraseInWorkspace { .. } => queue::GDPR,
        }
    }

    /// The payload as stored (the current version, `"v": 1`).
    pub fn payload(&self) -> Value {
        match self {
            Self::StripeEvent { event_id } => json!({"v": 1, "event_id": event_id}),
            Self::BillingRecovery { intent } => json!({"v": 1, "intent": intent}),
            Self::Tick { schedule, tick } => json!({"v": 1, "schedule": schedule, "tick": tick}),
            Self::Analytics {
                workspace,
                period_start,
            } => json!({
                "v": 1,
                "workspace": workspace,
                "periodStart": period_start.to_rfc3339_opts(SecondsFormat::Secs, true),
            }),
            Self::FanOut { notification } => {
                json!({"v": 1, "kind": "fanout", "notification": notification})
            }
            Self::Deliver { delivery, due } => {
                json!({"v": 1, "kind": "deliver", "delivery": delivery, "due": due})
            }
            Self::ArchiveRestore { archive } => json!({"v": 1, "archive": archive}),
            Self::Export { export } => json!({"v": 1, "op": "export", "export": export}),
            Self::Erase { user } => json!({"v": 1, "op": "erase", "user": user}),
            Self::EraseInWorkspace { user, workspace } => {
                json!({"v": 1, "op": "erase_in_workspace", "user": user, "workspace": workspace})
            }
        }
    }

    /// The task of a payload of `queue`, in any version this release reads; `None` for one
    /// it does not (dropped by the workers, with a warning).
    pub fn decode(queue: &str, payload: &Value) -> Option<Self> {
        if payload.get("v") != Some(&json!(1)) {
            return None;
        }
        let text = |k: &str| payload.get(k).and_then(Value::as_str);
        let uuid = |k: &str| text(k).and_then(|s| Uuid::parse_str(s).ok());
        match queue {
            queue::STRIPE_EVENTS => Some(Self::StripeEvent {
                event_id: text("event_id")?.to_string(),
            }),
            queue::BILLING_INTENTS => Some(Self::BillingRecovery {
                intent: uuid("intent")?,
            }),
            queue::MAINTENANCE => Some(Self::Tick {
                schedule: text("schedule")?.to_string(),
                tick: text("tick").unwrap_or_default().to_string(),
            }),
            queue::ANALYTICS => Some(Self::Analytics {
                workspace: uuid("workspace")?,
                period_start: DateTime::parse_from_rfc3339(text("periodStart")?)
                    .ok()?
                    .with_timezone(&Utc),
            }),
            queue::NOTIFICATIONS => match text("kind")? {
                "fanout" => Some(Self::FanOut {
                    notification: uuid("notification")?,
                }),
                "deliver" => Some(Self::Deliver {
                    delivery: uuid("delivery")?,
                    due: text("due")?.to_string(),
                }),
                _ => None,
            },
            queue::ARCHIVES => Some(Self::ArchiveRestore {
                archive: uuid("archive")?,
            }),
            queue::GDPR => match text("op")? {
                "export" => Some(Self::Export {
                    export: uuid("export")?,
                }),
                "erase" => Some(Self::Erase {
                    user: uuid("user")?,
                }),
                "erase_in_workspace" => Some(Self::EraseInWorkspace {
                    user: uuid("user")?,
                    workspace: uuid("workspace")?,
                }),
                _ => None,
            },
            _ => None,
        }
    }

    /// Enqueues the task in the caller's transaction under `key` (unique per queue: a second
    /// enqueue of the same key does nothing), due after `delay_secs`, given up after
    /// `max_attempts` attempts; `true` when enqueued now.
    pub async fn enqueue(
        &self,
        conn: &mut AsyncPgConnection,
        key: &str,
        max_attempts: i32,
        delay_secs: i64,
    ) -> diesel::QueryResult<bool> {
        crate::db::repo::jobs::enqueue_at(
            conn,
            self.queue(),
            &self.payload(),
            key,
            max_attempts,
            delay_secs,
        )
        .await
    }
}

/// A job that must not run again: its work can never succeed (a corrupt archive, say). The
/// workers record it as given up (apalis `Killed`) with this message instead of retrying.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GiveUp(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    /// Payloads exactly as releases before typed tasks wrote them (and as the notification
    /// queue's SQL still writes them): each must decode, and encode back the same.
    #[test]
    fn version_one_payloads_written_before_still_run() {
        let u = "0193a0b0-0000-7000-8000-000000000001";
        let w = "0193a0b0-0000-7000-8000-000000000002";
        let stored = [
            (queue::STRIPE_EVENTS, json!({"v": 1, "event_id": "evt_1"})),
            (queue::BILLING_INTENTS, json!({"v": 1, "intent": u})),
            (
                queue::MAINTENANCE,
                json!({"v": 1, "schedule": "meter-report", "tick": "2026-12-01T10:15:00Z"}),
            ),
            (
                queue::ANALYTICS,
                json!({"v": 1, "workspace": w, "periodStart": "2026-12-01T00:00:00Z"}),
            ),
            (
                queue::NOTIFICATIONS,
                json!({"v": 1, "kind": "fanout", "notification": u}),
            ),
            (
                queue::NOTIFICATIONS,
                json!({"v": 1, "kind": "deliver", "delivery": u, "due": "2026-12-01T10:15:00.123456+00:00"}),
            ),
            (queue::ARCHIVES, json!({"v": 1, "archive": u})),
            (queue::GDPR, json!({"v": 1, "op": "export", "export": u})),
            (queue::GDPR, json!({"v": 1, "op": "erase", "user": u})),
            (
                queue::GDPR,
                json!({"v": 1, "op": "erase_in_workspace", "user": u, "workspace": w}),
            ),
        ];
        for (q, payload) in stored {
            let task = Task::decode(q, &payload).unwrap_or_else(|| panic!("{q}: {payload}"));
            assert_eq!(task.queue(), q);
            assert_eq!(task.payload(), payload, "{q}");
        }
    }

    #[test]
    fn unknown_versions_and_damaged_payloads_decode_to_nothing() {
        for (q, payload) in [
            (queue::STRIPE_EVENTS, json!({"v": 2, "event_id": "evt_1"})),
            (queue::STRIPE_EVENTS, json!({"event_id": "evt_1"})),
            (queue::ANALYTICS, json!({"v": 1, "workspace": "nope"})),
            (
                queue::ANALYTICS,
                json!({"v": 1, "workspace": "0193a0b0-0000-7000-8000-000000000001", "periodStart": "soon"}),
            ),
            (queue::GDPR, json!({"v": 1, "op": "shred", "user": "x"})),
            (queue::NOTIFICATIONS, json!({"v": 1, "kind": "deliver"})),
            ("no-such-queue", json!({"v": 1})),
            (queue::ARCHIVES, json!([])),
        ] {
            assert_eq!(Task::decode(q, &payload), None, "{q}: {payload}");
        }
    }
}
