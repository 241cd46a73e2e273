//! Usage-based pricing (net usage per hour: corrections within the hour count): metered resources with a per-unit price (`catalog::Meter`) are
//! reported to Stripe's billing meters, one meter event per workspace, paying account,
//! resource and closed hour.
//!
//! A report is first stored (`meter_reports`, unique per workspace, account, resource and
//! hour) and then sent with the row's id as the meter event's `identifier` and idempotency
//! key, and marked sent; a report whose sending failed is sent again by the next round with
//! the same identifier, so Stripe counts every hour once. Hours are reported once they
//! closed `SETTLE` ago (allocations committing across the hour's end are in by then).
//!
//! The account that pays an organization's metered usage: in ASSIGNED workspaces its root's
//! account; otherwise the workspace's oldest active account.

use chrono::{DateTime, Utc};

use super::Billing;
use crate::db::DbPool;
use crate::db::repo::meters as repo;

/// How long after an hour closes it is reported.
pub const SETTLE: chrono::Duration = chrono::Duration::minutes(5);
/// How far back unreported usage is looked for (Stripe takes meter events up to 35 days old).
pub const LOOKBACK: chrono::Duration = chrono::Duration::days(3);
/// Reports sent per round at the most.
const BATCH: i64 = 500;

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Reports stored for newly closed hours.
    pub stored: usize,
    /// Reports Stripe took.
    pub sent: usize,
    /// Reports that failed and wait for the next round.
    pub failed: usize,
}

/// One reporting round as of `now`: stores the reports of the hours closed by then and sends
/// every unsent one. Safe to run in several processes at once.
pub async fn report(pool: &DbPool, billing: &Billing, now: DateTime<Utc>) -> anyhow::Result<Round> {
    let meters = billing.catalog.meters();
    if meters.is_empty() {
        return Ok(Round::default());
    }
    let Some(api) = billing.stripe.as_ref() else {
        return Ok(Round::default());
    };
    let resources: Vec<&str> = meters.iter().map(|m| m.resource.as_str()).collect();
    let mut conn = pool.get().await?;
    let before = now - SETTLE;
    let stored =
        repo::store_closed_hours(&mut conn, &resources, before, LOOKBACK.num_seconds()).await?;
    let due = repo::due(&mut conn, BATCH).await?;
    // No connection is held while Stripe is called; the reports sent are marked at the end
    // (one that is sent again after a crash is deduplicated by Stripe on its identifier).
    drop(conn);
    let mut round = Round {
        stored,
        ..Round::default()
    };
    let mut sent: Vec<uuid::Uuid> = Vec::new();
    for d in due {
        let Some(meter) = meters.iter().find(|m| m.resource == d.resource) else {
            continue;
        };
        let identifier = format!("ws-meter-{}", d.id.simple());
        match api
            .create_meter_event(
                &identifier,
                &meter.event_name,
                &d.customer,
                d.value,
                &identifier,
                d.hour.timestamp(),
            )
            .await
        {
            Ok(()) => {
                sent.push(d.id);
                round.sent += 1;
            }
            Err(e) => {
                tracing::warn!(report = %d.id, resource = d.resource, error = %e, "a meter report failed; the next round sends it again");
                round.failed += 1;
            }
        }
    }
    if !sent.is_empty() {
        let mut conn = pool.get().await?;
        repo::mark_reported(&mut conn, &sent).await?;
    }
    Ok(round)
}
