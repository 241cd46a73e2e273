//! Meter reports (`meter_reports`): usage of metered resources per workspace, paying
//! account, resource and closed hour, stored before it is sent to Stripe's billing meters
//! (see `domain::billing::meters`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;

/// A report waiting to be sent.
#[derive(Debug, Clone, QueryableByName)]
pub struct DueReport {
    /// Its id (the meter event's identifier and idempotency key).
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// The metered resource.
    #[diesel(sql_type = Text)]
    pub resource: String,
    /// The hour it covers.
    #[diesel(sql_type = Timestamptz)]
    pub hour: DateTime<Utc>,
    /// Net usage in that hour.
    #[diesel(sql_type = BigInt)]
    pub value: i64,
    /// The paying account's Stripe customer.
    #[diesel(sql_type = Text)]
    pub customer: String,
}

/// Stores a report for every workspace, paying account, resource of `resources` and hour
/// closed by `before` whose net usage (the ledger since `lookback_secs` before `before`) is
/// positive, unless stored already. The paying account: in ASSIGNED workspaces the account of
/// the organization's root; otherwise the workspace's oldest active account. How many stored.
pub async fn store_closed_hours(
    conn: &mut AsyncPgConnection,
    resources: &[&str],
    before: DateTime<Utc>,
    lookback_secs: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
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
    .bind::<Array<Text>, _>(resources)
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(lookback_secs)
    .cached()
    .execute(conn)
    .await
}

/// The oldest `limit` reports not sent yet whose account has a Stripe customer.
pub async fn due(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<DueReport>> {
    diesel::sql_query(
        "SELECT m.id, m.resource, m.hour, m.value, b.stripe_customer_id AS customer
           FROM meter_reports m JOIN billing_accounts b ON b.id = m.billing_account_id
          WHERE m.reported_at IS NULL AND b.stripe_customer_id IS NOT NULL
          ORDER BY m.created_at LIMIT $1",
    )
    .bind::<BigInt, _>(limit)
    .cached()
    .load(conn)
    .await
}

/// Marks reports `ids` sent.
pub async fn mark_reported(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<()> {
    diesel::sql_query("UPDATE meter_reports SET reported_at = now() WHERE id = ANY($1)")
        .bind::<Array<SqlUuid>, _>(ids)
        .cached()
        .execute(conn)
        .await?;
    Ok(())
}
