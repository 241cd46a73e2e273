//! Invoices (mirrored from Stripe), the upcoming invoice (Stripe's preview) and the cost
//! summary of a workspace.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use uuid::Uuid;

use super::catalog::{self, Plan};
use super::stripe_error;
use crate::db::repo::billing::{self as repo, BillingAccountRow, InvoiceRow};
use crate::domain::{DomainError, DomainResult, Services};

/// Newest-first page of an account's invoices after a cursor (the caller checked the
/// reader).
pub async fn page(
    services: &Services,
    account: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> DomainResult<Vec<InvoiceRow>> {
    let mut conn = services.conn().await?;
    Ok(repo::invoice_page(&mut conn, account, after, limit).await?)
}

/// Stripe's preview of the account's next invoice (`None` when Stripe has nothing to
/// invoice, e.g. no subscription).
pub async fn upcoming(
    services: &Services,
    account: &BillingAccountRow,
) -> DomainResult<Option<crate::stripe::Invoice>> {
    let api = services.billing.stripe()?;
    let Some(customer) = account.stripe_customer_id.as_deref() else {
        return Ok(None);
    };
    match api.preview_invoice(customer).await {
        Ok(i) => Ok(Some(i)),
        Err(crate::stripe::StripeError::Refused {
            status: 400 | 404, ..
        }) => Ok(None),
        Err(e) => Err(stripe_error(e)),
    }
}

/// Which month a summary covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// The month in progress.
    CurrentMonth,
    /// The month before.
    PreviousMonth,
}

/// The start of the month of `t` and of the month after.
pub fn month_of(t: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = Utc
        .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(t);
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    let end = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().unwrap_or(t);
    (start, end)
}

/// Cost of one resource.
#[derive(Debug, Clone)]
pub struct ResourceCost {
    /// Resource key.
    pub resource: String,
    /// Capacity funded by live subscriptions (pooled resources).
    pub capacity: i64,
    /// Units used in the period (metered resources).
    pub used: i64,
    /// Monthly list price of its add-ons, in cents (pooled resources), or the price of its
    /// metered units so far (metered resources).
    pub monthly_cents: i64,
}

/// Cost of one account.
#[derive(Debug, Clone)]
pub struct AccountCost {
    /// The account.
    pub account: BillingAccountRow,
    /// Monthly list price of its funding subscriptions, in cents.
    pub monthly_cents: i64,
    /// Invoiced in the period (totals, in the account's currency's minor units).
    pub invoiced: i64,
    /// Paid in the period.
    pub paid: i64,
}

/// A workspace's billing summary for a month.
#[derive(Debug, Clone)]
pub struct Summary {
    /// First instant of the month.
    pub period_start: DateTime<Utc>,
    /// First instant of the next month.
    pub period_end: DateTime<Utc>,
    /// Fixed fees accrued so far in the period (list prices, prorated by time elapsed) plus
    /// the metered usage so far.
    pub current_cents: i64,
    /// Projected cost of the whole month: fixed fees in full plus the metered usage so far
    /// projected linearly to the month's end.
    pub projected_cents: i64,
    /// Metered usage so far, in cents.
    pub metered_cents: i64,
    /// Plans' base fees per month.
    pub base_fees_cents: i64,
    /// By resource.
    pub by_resource: Vec<ResourceCost>,
    /// By account.
    pub by_account: Vec<AccountCost>,
}

/// The billing summary of workspace `ws` (the caller checked the reader).
pub async fn summary(
    services: &Services,
    ws: Uuid,
    period: Period,
    now: DateTime<Utc>,
) -> DomainResult<Summary> {
    let (start, end) = match period {
        Period::CurrentMonth => month_of(now),
        Period::PreviousMonth => month_of(month_of(now).0 - chrono::Duration::days(1)),
    };
    let catalog = &services.billing.catalog;
    let mut conn = services.conn().await?;
    let accounts = repo::active_accounts(&mut conn, &[ws]).await?;
    let ids: Vec<Uuid> = accounts.iter().map(|a| a.id).collect();
    let subs = repo::subscriptions_of(&mut conn, &ids).await?;
    let funding: Vec<_> = subs
        .into_iter()
        .filter(|s| repo::FUNDING_STATUSES.contains(&s.status.as_str()))
        .collect();
    let sub_ids: Vec<Uuid> = funding.iter().map(|s| s.id).collect();
    let items = repo::subscription_items(&mut conn, &sub_ids).await?;
    let caps = repo::subscription_capacities(&mut conn, &sub_ids).await?;
    let invoices = repo::invoices_between(&mut conn, ws, start, end).await?;
    let mut base_fees = 0i64;
    let mut by_account = Vec::new();
    for a in accounts {
        let mut monthly = 0i64;
        for s in funding.iter().filter(|s| s.billing_account_id == a.id) {
            let priced: Vec<(String, i64)> = items
                .iter()
                .filter(|i| i.0 == s.id)
                .map(|i| (i.1.clone(), i.3))
                .collect();
            monthly += catalog.monthly_cents(&priced);
            for (price, q) in &priced {
                if let Some(catalog::PriceOf::Plan(p)) = catalog.price_of(price) {
                    base_fees += p.monthly_cents() * q;
                }
            }
            if Plan::parse(&s.plan).is_none() {
                return Err(DomainError::internal(anyhow::anyhow!("bad plan in db")));
            }
        }
        let mine = invoices.iter().filter(|i| i.billing_account_id == a.id);
        let (invoiced, paid) =
            mine.fold((0i64, 0i64), |(t, p), i| (t + i.total, p + i.amount_paid));
        by_account.push(AccountCost {
            account: a,
            monthly_cents: monthly,
            invoiced,
            paid,
        });
    }
    let mut by_resource: Vec<ResourceCost> = catalog::POOLED_RESOURCES
        .iter()
        .map(|r| {
            let capacity = caps.iter().filter(|c| c.1 == *r).map(|c| c.2).sum();
            let units: i64 = items
                .iter()
                .filter(|i| catalog.price_of(&i.1) == Some(catalog::PriceOf::Addon(r)))
                .map(|i| i.3)
                .sum();
            ResourceCost {
                resource: (*r).to_string(),
                capacity,
                used: 0,
                monthly_cents: units * catalog::addon_cents(r),
            }
        })
        .collect();
    // Metered resources: what was used so far, at the meter's list price.
    let meters = catalog.meters();
    let names: Vec<&str> = meters.iter().map(|m| m.resource.as_str()).collect();
    let units = if names.is_empty() {
        Vec::new()
    } else {
        repo::metered_units(&mut conn, ws, &names, start, now.min(end)).await?
    };
    let mut metered = 0i64;
    for m in meters {
        let used = units
            .iter()
            .find(|(r, _)| *r == m.resource)
            .map_or(0, |(_, u)| *u);
        let cents = m.cost_cents(used);
        metered = metered.saturating_add(cents);
        by_resource.push(ResourceCost {
            resource: m.resource.clone(),
            capacity: 0,
            used,
            monthly_cents: cents,
        });
    }
    let monthly: i64 = by_account.iter().map(|a| a.monthly_cents).sum();
    let span = (end - start).num_seconds().max(1);
    let elapsed = (now.min(end) - start).num_seconds().clamp(0, span);
    let fraction = |n: i64, num: i64, den: i64| {
        i64::try_from(i128::from(n) * i128::from(num) / i128::from(den.max(1))).unwrap_or(i64::MAX)
    };
    let current = fraction(monthly, elapsed, span).saturating_add(metered);
    // Metered usage so far, projected linearly over the month (nothing elapsed: as is).
    let metered_projection = if elapsed > 0 {
        fraction(metered, span, elapsed)
    } else {
        metered
    };
    Ok(Summary {
        period_start: start,
        period_end: end,
        current_cents: current,
        projected_cents: monthly.saturating_add(metered_projection),
        metered_cents: metered,
        base_fees_cents: base_fees,
        by_resource,
        by_account,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_start_on_the_first_and_wrap_the_year() {
        let t = Utc
            .with_ymd_and_hms(2026, 12, 15, 10, 0, 0)
            .single()
            .expect("valid");
        let (s, e) = month_of(t);
        assert_eq!(
            s,
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
                .single()
                .expect("valid")
        );
        assert_eq!(
            e,
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
                .single()
                .expect("valid")
        );
    }
}
