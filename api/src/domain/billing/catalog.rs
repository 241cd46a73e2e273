//! The catalog: plans and per-unit add-ons, each mapped to a Stripe price of the deployment
//! (`STRIPE_PRICE_*`), and the capacity each grants in the limit engine.
//!
//! | Plan | Monthly fee | Grants |
//! |---|---|---|
//! | `STARTER` | $29.99 | 5 users, 1 location |
//! | `ENTERPRISE` | $199.99 | 50 users, 10 locations, 1 SSO connection |
//! | `CUSTOM` | the deployment's `STRIPE_PRICE_CUSTOM` price (none: add-ons only) | nothing by itself |
//!
//! Add-ons (every plan): one unit of `users` ($8.00), `locations` ($15.00) or
//! `sso_connections` ($50.00) per quantity. The amounts are the catalog's list prices, used
//! for projections; invoices come from Stripe.

use serde::{Deserialize, Serialize};

/// The resources whose capacity subscriptions fund (the built-in allocated resources).
pub const POOLED_RESOURCES: [&str; 3] = ["users", "locations", "sso_connections"];

/// Whether allocations of `resource` draw from the billing pools.
pub fn is_pooled(resource: &str) -> bool {
    POOLED_RESOURCES.contains(&resource)
}

/// A plan of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Plan {
    /// $29.99 a month: 5 users and 1 location.
    Starter,
    /// $199.99 a month: 50 users, 10 locations and 1 SSO connection.
    Enterprise,
    /// A negotiated plan: its own price (optional) and add-ons.
    Custom,
}

impl Plan {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Starter => "STARTER",
            Plan::Enterprise => "ENTERPRISE",
            Plan::Custom => "CUSTOM",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "STARTER" => Some(Plan::Starter),
            "ENTERPRISE" => Some(Plan::Enterprise),
            "CUSTOM" => Some(Plan::Custom),
            _ => None,
        }
    }

    /// What one subscription to the plan grants by itself.
    pub fn grants(self) -> &'static [(&'static str, i64)] {
        match self {
            Plan::Starter => &[("users", 5), ("locations", 1)],
            Plan::Enterprise => &[("users", 50), ("locations", 10), ("sso_connections", 1)],
            Plan::Custom => &[],
        }
    }

    /// The plan's monthly fee in cents (list price; `CUSTOM` is priced by its Stripe price).
    pub fn monthly_cents(self) -> i64 {
        match self {
            Plan::Starter => 2_999,
            Plan::Enterprise => 19_999,
            Plan::Custom => 0,
        }
    }
}

/// The monthly list price of one add-on unit of `resource`, in cents.
pub fn addon_cents(resource: &str) -> i64 {
    match resource {
        "users" => 800,
        "locations" => 1_500,
        "sso_connections" => 5_000,
        _ => 0,
    }
}

/// The Stripe price ids of the deployment.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    /// `STRIPE_PRICE_STARTER`.
    pub starter: Option<String>,
    /// `STRIPE_PRICE_ENTERPRISE`.
    pub enterprise: Option<String>,
    /// `STRIPE_PRICE_CUSTOM` (optional: a custom subscription may be add-ons only).
    pub custom: Option<String>,
    /// `STRIPE_PRICE_USERS`.
    pub users: Option<String>,
    /// `STRIPE_PRICE_LOCATIONS`.
    pub locations: Option<String>,
    /// `STRIPE_PRICE_SSO_CONNECTIONS`.
    pub sso_connections: Option<String>,
}

/// What a Stripe price of the catalog is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceOf {
    /// A plan's base price.
    Plan(Plan),
    /// A per-unit add-on of a resource.
    Addon(&'static str),
}

/// A metered resource with a per-unit price, reported to a Stripe billing meter
/// (`BILLING_METERS`: `resource=event_name:cents/units[:included]`, comma-separated; e.g.
/// `executions=workflow_executions:10/1000:5000` is 10 cents per 1,000 executions beyond
/// 5,000 a month).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    /// The workspace resource key (a METERED resource the workspace defines).
    pub resource: String,
    /// The Stripe meter's `event_name`.
    pub event_name: String,
    /// Price in cents of `per` units (list price, for projections; Stripe's meter price bills).
    pub cents: i64,
    /// Units the price is for.
    pub per: i64,
    /// Units a month included before the price applies.
    pub included: i64,
}

impl Meter {
    /// Parses one `BILLING_METERS` entry.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{entry}` is not resource=event_name:cents/units[:included] (e.g. executions=workflow_executions:10/1000:5000)"
            )
        };
        let (resource, rest) = entry.split_once('=').ok_or_else(bad)?;
        let mut parts = rest.split(':');
        let event_name = parts.next().filter(|e| !e.is_empty()).ok_or_else(bad)?;
        let (cents, per) = parts
            .next()
            .and_then(|p| p.split_once('/'))
            .ok_or_else(bad)?;
        let number = |s: &str| s.trim().parse::<i64>().ok().filter(|n| *n >= 0);
        let meter = Meter {
            resource: resource.trim().to_string(),
            event_name: event_name.trim().to_string(),
            cents: number(cents).ok_or_else(bad)?,
            per: number(per).filter(|n| *n > 0).ok_or_else(bad)?,
            included: match parts.next() {
                Some(i) => number(i).ok_or_else(bad)?,
                None => 0,
            },
        };
        if parts.next().is_some()
            || crate::domain::usage::check_resource_key(&meter.resource).is_err()
        {
            return Err(bad());
        }
        Ok(meter)
    }

    /// The list price in cents of `units` in a month (beyond the included ones).
    pub fn cost_cents(&self, units: i64) -> i64 {
        let billable = (units - self.included).max(0);
        i64::try_from(i128::from(billable) * i128::from(self.cents) / i128::from(self.per))
            .unwrap_or(i64::MAX)
    }
}

/// The catalog of the deployment.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    prices: Prices,
    meters: Vec<Meter>,
}

impl Catalog {
    /// The catalog over the configured prices.
    pub fn new(prices: Prices) -> Self {
        Self {
            prices,
            meters: Vec::new(),
        }
    }

    /// The catalog with metered prices.
    pub fn with_meters(mut self, meters: Vec<Meter>) -> Self {
        self.meters = meters;
        self
    }

    /// The metered prices.
    pub fn meters(&self) -> &[Meter] {
        &self.meters
    }

    /// The Stripe price of a plan, with the variable that configures it.
    pub fn plan_price(&self, plan: Plan) -> (Option<&str>, &'static str) {
        match plan {
            Plan::Starter => (self.prices.starter.as_deref(), "STRIPE_PRICE_STARTER"),
            Plan::Enterprise => (self.prices.enterprise.as_deref(), "STRIPE_PRICE_ENTERPRISE"),
            Plan::Custom => (self.prices.custom.as_deref(), "STRIPE_PRICE_CUSTOM"),
        }
    }

    /// The Stripe price of an add-on, with the variable that configures it.
    pub fn addon_price(&self, resource: &str) -> Option<(Option<&str>, &'static str)> {
        match resource {
            "users" => Some((self.prices.users.as_deref(), "STRIPE_PRICE_USERS")),
            "locations" => Some((self.prices.locations.as_deref(), "STRIPE_PRICE_LOCATIONS")),
            "sso_connections" => Some((
                self.prices.sso_connections.as_deref(),
                "STRIPE_PRICE_SSO_CONNECTIONS",
            )),
            _ => None,
        }
    }

    /// What a Stripe price id is in this catalog (`None`: not ours).
    pub fn price_of(&self, price: &str) -> Option<PriceOf> {
        for plan in [Plan::Starter, Plan::Enterprise, Plan::Custom] {
            if self.plan_price(plan).0 == Some(price) {
                return Some(PriceOf::Plan(plan));
            }
        }
        POOLED_RESOURCES
            .into_iter()
            .find(|r| self.addon_price(r).and_then(|p| p.0) == Some(price))
            .map(PriceOf::Addon)
    }

    /// The capacity per pooled resource of a subscription whose Stripe items are
    /// `(price, quantity)`; prices not in the catalog grant nothing.
    pub fn capacities(&self, items: &[(String, i64)]) -> Vec<(&'static str, i64)> {
        let mut out: Vec<(&'static str, i64)> = POOLED_RESOURCES.iter().map(|r| (*r, 0)).collect();
        for (price, quantity) in items {
            match self.price_of(price) {
                Some(PriceOf::Plan(plan)) => {
                    for (resource, n) in plan.grants() {
                        if let Some(slot) = out.iter_mut().find(|(r, _)| r == resource) {
                            slot.1 = slot.1.saturating_add(n.saturating_mul(*quantity));
                        }
                    }
                }
                Some(PriceOf::Addon(resource)) => {
                    if let Some(slot) = out.iter_mut().find(|(r, _)| *r == resource) {
                        slot.1 = slot.1.saturating_add(*quantity);
                    }
                }
                None => {}
            }
        }
        out
    }

    /// The monthly list price in cents of a subscription's items (projections).
    pub fn monthly_cents(&self, items: &[(String, i64)]) -> i64 {
        items
            .iter()
            .map(|(price, q)| match self.price_of(price) {
                Some(PriceOf::Plan(plan)) => plan.monthly_cents().saturating_mul(*q),
                Some(PriceOf::Addon(r)) => addon_cents(r).saturating_mul(*q),
                None => 0,
            })
            .fold(0i64, i64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::new(Prices {
            starter: Some("price_starter".into()),
            enterprise: Some("price_ent".into()),
            custom: None,
            users: Some("price_users".into()),
            locations: Some("price_loc".into()),
            sso_connections: Some("price_sso".into()),
        })
    }

    #[test]
    fn meters_parse_and_price_overage() {
        let m = Meter::parse("executions=workflow_executions:10/1000:5000").expect("valid");
        assert_eq!(
            (
                m.resource.as_str(),
                m.event_name.as_str(),
                m.cents,
                m.per,
                m.included
            ),
            ("executions", "workflow_executions", 10, 1000, 5000)
        );
        assert_eq!(m.cost_cents(4_000), 0);
        assert_eq!(m.cost_cents(7_000), 20);
        let g = Meter::parse("storage_gb=storage:25/1").expect("valid");
        assert_eq!((g.included, g.cost_cents(3)), (0, 75));
        for bad in [
            "",
            "x",
            "x=",
            "x=e",
            "x=e:10",
            "x=e:10/0",
            "x=e:-1/1",
            "X=e:1/1",
            "x=e:1/1:2:3",
            "x=e:1/1:z",
        ] {
            assert!(Meter::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn capacities_add_plan_grants_and_addons() {
        let c = catalog();
        let caps = c.capacities(&[
            ("price_starter".into(), 1),
            ("price_users".into(), 7),
            ("price_other".into(), 100),
        ]);
        assert_eq!(
            caps,
            vec![("users", 12), ("locations", 1), ("sso_connections", 0)]
        );
        let caps = c.capacities(&[("price_ent".into(), 2), ("price_sso".into(), 1)]);
        assert_eq!(
            caps,
            vec![("users", 100), ("locations", 20), ("sso_connections", 3)]
        );
        assert_eq!(
            c.monthly_cents(&[("price_starter".into(), 1), ("price_users".into(), 2)]),
            2_999 + 1_600
        );
        assert_eq!(c.price_of("price_loc"), Some(PriceOf::Addon("locations")));
        assert_eq!(c.price_of("nope"), None);
    }
}
