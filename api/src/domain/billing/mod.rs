//! Billing: accounts (Stripe customers), payment methods, subscriptions that fund capacity
//! pools, invoices and cost analytics.
//!
//! Owners manage billing, admins read it, viewers see none of it. Every call that changes
//! something in Stripe goes through a recovery point (`intents`): the intent and its Stripe
//! idempotency key are stored before the call and completed with the answer after it, so a
//! retried mutation or a crash in between never creates a second customer or subscription.

pub mod accounts;
pub mod catalog;
pub mod intents;
pub mod invoices;
pub mod meters;
pub mod mirror;
pub mod payment_methods;
pub mod pools;
pub mod subscriptions;

use std::sync::Arc;

use super::workspaces::require_role;
use super::{Actor, BillingMode, DomainError, DomainResult, Role};
use crate::ids::WorkspaceId;
use crate::stripe::{StripeApi, StripeError};

/// Billing accounts a workspace may have in its mode.
pub fn max_accounts(mode: BillingMode) -> i64 {
    match mode {
        BillingMode::Single => 1,
        BillingMode::Assigned | BillingMode::Pooled => 10,
    }
}

/// Active subscriptions per account.
pub const MAX_SUBSCRIPTIONS: i64 = 3;
/// Payment methods per account.
pub const MAX_PAYMENT_METHODS: i64 = 5;
/// Trial length.
pub const TRIAL_DAYS: u32 = 14;
/// Currencies accounts may use (ISO 4217, lower case as Stripe writes them).
pub const CURRENCIES: [&str; 5] = ["usd", "eur", "gbp", "aud", "zar"];

/// Billing configuration read at start.
#[derive(Debug, Clone, Default)]
pub struct BillingConfig {
    /// `STRIPE_SECRET_KEY`; without it billing mutations are refused (`FAILED_PRECONDITION`).
    pub stripe_secret_key: Option<String>,
    /// `STRIPE_PUBLISHABLE_KEY`, handed to Stripe Elements with a setup intent.
    pub stripe_publishable_key: Option<String>,
    /// `STRIPE_API_BASE` (default Stripe's own).
    pub stripe_api_base: Option<String>,
    /// Plans and add-ons with their Stripe prices.
    pub catalog: catalog::Catalog,
    /// How long a billing request's recovery job waits before finishing a request that its
    /// mutation did not (`STRIPE_RECOVERY_DELAY_SECS`, default 60).
    pub recovery_delay: std::time::Duration,
}

/// What billing needs at run time.
#[derive(Clone, Default)]
pub struct Billing {
    /// The Stripe client, when a secret key is configured.
    pub stripe: Option<StripeApi>,
    /// Handed to Stripe Elements.
    pub publishable_key: Option<String>,
    /// The catalog.
    pub catalog: catalog::Catalog,
    /// See `BillingConfig::recovery_delay`.
    pub recovery_delay: std::time::Duration,
}

impl Billing {
    /// The run-time billing services of a configuration.
    pub fn new(config: &BillingConfig) -> Arc<Self> {
        Arc::new(Self {
            stripe: config
                .stripe_secret_key
                .as_deref()
                .map(|k| StripeApi::new(k, config.stripe_api_base.as_deref())),
            publishable_key: config.stripe_publishable_key.clone(),
            catalog: config.catalog.clone(),
            recovery_delay: config.recovery_delay,
        })
    }

    /// The Stripe client, or why billing mutations cannot run.
    pub fn stripe(&self) -> DomainResult<&StripeApi> {
        self.stripe.as_ref().ok_or_else(|| {
            DomainError::FailedPrecondition(
                "Stripe is not configured on this deployment (STRIPE_SECRET_KEY); billing changes are unavailable".into(),
            )
        })
    }
}

/// Maps a Stripe failure to what the client is told.
pub fn stripe_error(e: StripeError) -> DomainError {
    match e {
        StripeError::Refused {
            status,
            code,
            message,
            ..
        } => DomainError::PaymentProvider {
            message: format!("Stripe refused the request ({status}): {message}"),
            stripe_code: code,
            retryable: false,
        },
        StripeError::Unavailable(detail) => {
            tracing::warn!(error = %detail, "Stripe unavailable");
            DomainError::PaymentProvider {
                message: "Stripe could not be reached; retry with the same idempotencyKey".into(),
                stripe_code: None,
                retryable: true,
            }
        }
    }
}

/// Owners manage billing.
pub async fn require_owner(
    conn: &mut diesel_async::AsyncPgConnection,
    actor: &Actor,
    ws: WorkspaceId,
) -> DomainResult<Role> {
    require_role(conn, actor, ws, |r| r == Role::Owner, "manage billing").await
}

/// Owners and admins read billing; viewers are told it is forbidden.
pub async fn require_reader(
    conn: &mut diesel_async::AsyncPgConnection,
    actor: &Actor,
    ws: WorkspaceId,
) -> DomainResult<Role> {
    require_role(conn, actor, ws, Role::is_manager, "read billing").await
}

/// Normalizes a currency code (any case in, lower case out).
pub fn check_currency(c: &str) -> DomainResult<String> {
    let lower = c.trim().to_ascii_lowercase();
    if CURRENCIES.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(DomainError::bad_input(
            "currency",
            format!(
                "currency must be one of {} (ISO 4217)",
                CURRENCIES.join(", ")
            ),
        ))
    }
}

/// An optional text field: trimmed, `None` when empty, at most `max` characters, no
/// control characters.
pub fn optional_text(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> DomainResult<Option<String>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => super::check_name(field, v, max).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_in_any_case_come_out_lower_case() {
        assert_eq!(check_currency("USD").ok().as_deref(), Some("usd"));
        assert_eq!(check_currency(" zar ").ok().as_deref(), Some("zar"));
        assert!(check_currency("jpy").is_err());
        assert!(check_currency("").is_err());
        assert_eq!(max_accounts(BillingMode::Single), 1);
        assert_eq!(max_accounts(BillingMode::Pooled), 10);
    }
}
