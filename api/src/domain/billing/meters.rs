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
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Billing;
use crate::db::DbPool;

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

#[derive(QueryableByName)]
struct Due {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    resource: String,
    #[diesel(sql_type = Timestamptz)]
    hour: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    value: i64,
    #[diesel(sql_type = Text)]
    customer: String,
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
    let stored = diesel::sql_query(
        "INSERT INTO meter_reports (id, workspace_id, billing_account_id, resource, hour, value)
         SELECT gen_random_uuid(), e.workspace_id, a.account, e.resource,
                date_trunc('hour', e.created_at) AS hour, sum(e.delta)
           FROM usage_events e
           JOIN organizations o ON o.id = e.organization_id
           JOIN organizations r ON r.id = coalesce(o.ancestors[1], o.id)
           JOIN workspaces w ON w.id = e.workspace_id
           CROSS JOIN LATERAL (
                SELECT CASE WHEN w.billing_mode = 'ASSIGNED' THEN r.billing_account_id
                            ELSE (SELECT b.id FROM billing_accounts b
                                   WHERE b.workspace_id = w.id AND b.state = 'ACTIVE'
                                   ORDER BY b.created_at, b.id LIMIT 1) END AS account
           ) a
          WHERE e.resource = ANY($1)
            AND e.created_at >= $2 - make_interval(secs => $3)
            AND date_trunc('hour', e.created_at) < date_trunc('hour', $2)
            AND date_trunc('hour', e.created_at) + interval '1 hour' <= $2
            AND a.account IS NOT NULL
          GROUP BY e.workspace_id, a.account, e.resource, date_trunc('hour', e.created_at)
         HAVING sum(e.delta) > 0
         ON CONFLICT (workspace_id, billing_account_id, resource, hour) DO NOTHING",
    )
    .bind::<Array<Text>, _>(&resources)
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(LOOKBACK.num_seconds())
    .execute(&mut conn)
    .await?;
    let due: Vec<Due> = diesel::sql_query(
        "SELECT m.id, m.resource, m.hour, m.value, b.stripe_customer_id AS customer
           FROM meter_reports m JOIN billing_accounts b ON b.id = m.billing_account_id
          WHERE m.reported_at IS NULL AND b.stripe_customer_id IS NOT NULL
          ORDER BY m.created_at LIMIT $1",
    )
    .bind::<BigInt, _>(BATCH)
    .load(&mut conn)
    .await?;
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
        diesel::sql_query("UPDATE meter_reports SET reported_at = now() WHERE id = ANY($1)")
            .bind::<Array<SqlUuid>, _>(&sent)
            .execute(&mut conn)
            .await?;
    }
    Ok(round)
}
