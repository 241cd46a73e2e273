//! Our client of Stripe's API, over async-stripe, and readers of the Stripe objects that
//! webhook events carry.
//!
//! The rest of the code sees only the plain types of this module: async-stripe's types
//! (generated from Stripe's OpenAPI spec, renamed at every release) stay in here.
//!
//! Retries are ours, not async-stripe's: its `RequestStrategy::Retry` and
//! `ExponentialBackoff` draw a random idempotency key of their own, and
//! `RequestStrategy::Idempotent(key)` sends the key we give but tries once. So every
//! attempt is sent with `Idempotent(key)` (the caller's key, the same on every attempt:
//! Stripe then replays the first answer instead of acting twice) and this module loops.

use std::collections::HashMap;
use std::time::Duration;

use ::stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeRequest};
use serde::{Deserialize, Serialize};
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use stripe_billing::invoice::{CreatePreviewInvoice, RetrieveInvoice};
use stripe_billing::subscription::{
    CreateSubscription, CreateSubscriptionItems, RetrieveSubscription, UpdateSubscription,
    UpdateSubscriptionItems, UpdateSubscriptionProrationBehavior,
};
use stripe_core::customer::{
    CreateCustomer, DeleteCustomer, OptionalFieldsCustomerAddress, RetrieveCustomer,
    RetrieveCustomerReturned, UpdateCustomer, UpdateCustomerInvoiceSettings,
};
use stripe_core::setup_intent::{
    CreateSetupIntent, CreateSetupIntentAutomaticPaymentMethods,
    CreateSetupIntentAutomaticPaymentMethodsAllowRedirects, CreateSetupIntentUsage,
};
use stripe_payment::payment_method::{
    AttachPaymentMethod, DetachPaymentMethod, RetrievePaymentMethod,
};

/// Attempts of one call, the first included.
const ATTEMPTS: usize = 4;
/// Pause before the second, third and fourth attempt (each drawn from ½× to 1½× of it).
const BACKOFF: [Duration; ATTEMPTS - 1] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(800),
];
/// One attempt may take this long (connecting, sending, reading the whole answer).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole call, retries and pauses included, may take this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The API version async-stripe 1.0.0-rc.10 sends as `Stripe-Version` and whose object
/// shapes it reads; webhook endpoints must be created with it too.
pub const API_VERSION: &str = "2026-09-30.endive";

/// A call to Stripe that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Stripe refused the request (a 4xx other than 409/429): definitive, do not retry.
    #[error("Stripe refused the request (HTTP {status}{}): {message}", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Refused {
        /// HTTP status of Stripe's answer.
        status: u16,
        /// Stripe's error code (`resource_missing`, `card_declined`, ...), when it gave one.
        code: Option<String>,
        /// Stripe's explanation, meant for developers.
        message: String,
        /// The request parameter at fault, when Stripe named one.
        param: Option<String>,
    },
    /// Stripe could not be reached, or kept answering 409/429/5xx after our retries.
    #[error("Stripe is unavailable: {0}")]
    Unavailable(String),
}

/// A customer's details as we send them to Stripe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerFields {
    /// Full name or business name.
    pub name: String,
    /// Billing email address.
    pub email: String,
    /// Phone number. On update, `None` clears it.
    pub phone: Option<String>,
    /// Free text shown beside the customer in Stripe's dashboard. On update, `None` clears it.
    pub description: Option<String>,
    /// Billing address. On update, `None` leaves Stripe's as it is.
    pub address: Option<Address>,
    /// Metadata keys to set (Stripe merges them into the keys it has).
    pub metadata: Vec<(String, String)>,
}

/// A postal address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Street, PO box or company name.
    pub line1: Option<String>,
    /// Apartment, suite, unit or building.
    pub line2: Option<String>,
    /// City, district, suburb, town or village.
    pub city: Option<String>,
    /// State, county, province or region.
    pub state: Option<String>,
    /// ZIP or postal code.
    pub postal_code: Option<String>,
    /// Two-letter country code (ISO 3166-1 alpha-2).
    pub country: Option<String>,
}

/// A subscription to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewSubscription {
    /// The customer (`cus_…`).
    pub customer: String,
    /// Its items: price id (`price_…`) and quantity.
    pub items: Vec<(String, u64)>,
    /// Days of free trial before the first charge.
    pub trial_period_days: Option<u32>,
    /// The payment method (`pm_…`) to charge, when not the customer's default.
    pub default_payment_method: Option<String>,
    /// Metadata of the subscription.
    pub metadata: Vec<(String, String)>,
}

/// A change to a subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionChange {
    /// Items to add, change or remove.
    pub items: Vec<ItemChange>,
    /// How to bill the change within the current period (Stripe's default when `None`).
    pub proration_behavior: Option<Proration>,
    /// Cancel at the end of the period (`true`) or keep renewing (`false`).
    pub cancel_at_period_end: Option<bool>,
}

/// A change to one subscription item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemChange {
    /// The existing item (`si_…`); `None` adds an item.
    pub id: Option<String>,
    /// The price (`price_…`) the item should have.
    pub price: Option<String>,
    /// The quantity the item should have.
    pub quantity: Option<u64>,
    /// Remove the item.
    pub deleted: bool,
}

/// How Stripe bills a change in the middle of a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proration {
    /// Credit and charge the difference on the next invoice.
    CreateProrations,
    /// Bill nothing for the change.
    None,
    /// Prorate and invoice at once.
    AlwaysInvoice,
}

/// A Stripe customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// `cus_…`.
    pub id: String,
    /// Email address.
    pub email: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// The customer was deleted (then only `id` is known).
    pub deleted: bool,
    /// `invoice_settings.default_payment_method`: what subscriptions and invoices charge.
    pub default_payment_method: Option<String>,
    /// Creation time (Unix seconds; 0 for a deleted customer).
    pub created: i64,
}

/// A SetupIntent, which the browser confirms with Stripe.js to save a payment method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupIntent {
    /// `seti_…`.
    pub id: String,
    /// The secret Stripe.js needs; give it only to the customer's browser.
    pub client_secret: String,
}

/// A saved payment method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethod {
    /// `pm_…`.
    pub id: String,
    /// The customer it is attached to.
    pub customer: Option<String>,
    /// Stripe's `type`: `card`, `sepa_debit`, ...
    pub kind: String,
    /// Card brand (`visa`, `mastercard`, ...), for cards.
    pub brand: Option<String>,
    /// Last four digits, for cards.
    pub last4: Option<String>,
    /// Expiry month (1–12), for cards.
    pub exp_month: Option<i64>,
    /// Expiry year (four digits), for cards.
    pub exp_year: Option<i64>,
    /// Creation time (Unix seconds).
    pub created: i64,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// `sub_…`.
    pub id: String,
    /// The customer (`cus_…`).
    pub customer: String,
    /// Stripe's status, lower-case: `trialing`, `active`, `past_due`, `canceled`, ...
    pub status: String,
    /// Its items.
    pub items: Vec<SubscriptionItem>,
    /// It ends at the end of the current period.
    pub cancel_at_period_end: bool,
    /// When it was canceled (Unix seconds).
    pub canceled_at: Option<i64>,
    /// End of the trial (Unix seconds).
    pub trial_end: Option<i64>,
    /// Start of the current period: the earliest of the items' (Stripe keeps periods on
    /// the items since API version 2025-03-31.basil).
    pub current_period_start: Option<i64>,
    /// End of the current period: the latest of the items'.
    pub current_period_end: Option<i64>,
    /// Creation time (Unix seconds).
    pub created: i64,
    /// Metadata, sorted by key.
    pub metadata: Vec<(String, String)>,
}

/// One item of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionItem {
    /// `si_…`.
    pub id: String,
    /// The price (`price_…`).
    pub price: String,
    /// Quantity (0 when Stripe has none, as for metered prices).
    pub quantity: u64,
    /// Start of the item's current period (Unix seconds).
    pub current_period_start: i64,
    /// End of the item's current period (Unix seconds).
    pub current_period_end: i64,
}

/// An invoice, or the preview of the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// `in_…`; `None` for a preview.
    pub id: Option<String>,
    /// The customer (`cus_…`).
    pub customer: String,
    /// The subscription it bills (`parent.subscription_details.subscription`).
    pub subscription: Option<String>,
    /// `draft`, `open`, `paid`, `uncollectible` or `void`.
    pub status: Option<String>,
    /// Amount due, in the currency's smallest unit.
    pub amount_due: i64,
    /// Amount paid.
    pub amount_paid: i64,
    /// Amount still to pay.
    pub amount_remaining: i64,
    /// Total before discounts and taxes.
    pub subtotal: i64,
    /// Total after discounts and taxes.
    pub total: i64,
    /// Three-letter ISO currency code, lower-case.
    pub currency: String,
    /// The page where the customer can see and pay it.
    pub hosted_invoice_url: Option<String>,
    /// Its PDF.
    pub invoice_pdf: Option<String>,
    /// Its number, once finalized.
    pub number: Option<String>,
    /// Creation time (Unix seconds).
    pub created: i64,
    /// Start of the billed period (Unix seconds).
    pub period_start: i64,
    /// End of the billed period (Unix seconds).
    pub period_end: i64,
    /// Its lines (the first page Stripe includes, up to ten).
    pub lines: Vec<InvoiceLine>,
    /// Payment attempts so far.
    #[serde(default)]
    pub attempt_count: u64,
    /// When Stripe tries to collect again (Unix seconds), if it will.
    #[serde(default)]
    pub next_payment_attempt: Option<i64>,
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// `il_…`.
    pub id: String,
    /// What it bills.
    pub description: Option<String>,
    /// Amount, in the currency's smallest unit.
    pub amount: i64,
    /// Quantity.
    pub quantity: Option<u64>,
    /// The price (`price_…`) it bills, when it bills one.
    pub price: Option<String>,
}

/// Stripe's API, with our retry policy. Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct StripeApi {
    /// The client, or why none could be built (then every call fails with it).
    client: Result<Client, String>,
}

impl StripeApi {
    /// A client authenticating with `secret_key`. `api_base`: `None` for Stripe's
    /// (`https://api.stripe.com/`), or another server such as `http://127.0.0.1:PORT`
    /// for a fake.
    pub fn new(secret_key: &str, api_base: Option<&str>) -> Self {
        let mut builder = ClientBuilder::new(secret_key)
            .request_strategy(RequestStrategy::Once)
            .timeout(ATTEMPT_TIMEOUT);
        if let Some(base) = api_base {
            // async-stripe appends `v1/...` to the base as written.
            let base = if base.ends_with('/') {
                base.to_string()
            } else {
                format!("{base}/")
            };
            builder = builder.url(base);
        }
        // Only a key that is not a valid header value or a base that is not a URI fails
        // here. Calls then fail with the reason: never fall back to another server.
        let client = builder.build().map_err(|e| {
            tracing::error!(error = %e, "invalid Stripe client configuration");
            e.to_string()
        });
        Self { client }
    }

    /// Creates a customer.
    pub async fn create_customer(
        &self,
        idempotency_key: &str,
        c: &CustomerFields,
    ) -> Result<Customer, StripeError> {
        let mut req = CreateCustomer::new().name(&c.name).email(&c.email);
        if let Some(phone) = &c.phone {
            req = req.phone(phone);
        }
        if let Some(description) = &c.description {
            req = req.description(description);
        }
        if let Some(address) = &c.address {
            req = req.address(address_param(address));
        }
        if !c.metadata.is_empty() {
            req = req.metadata(map(&c.metadata));
        }
        let out = self.call(&req, Some(idempotency_key)).await?;
        Ok(customer_from(out))
    }

    /// Updates a customer to `c` (see the fields for what `None` means).
    pub async fn update_customer(
        &self,
        idempotency_key: &str,
        id: &str,
        c: &CustomerFields,
    ) -> Result<Customer, StripeError> {
        // An empty string is how Stripe's form encoding clears a field.
        let mut req = UpdateCustomer::new(id)
            .name(&c.name)
            .email(&c.email)
            .phone(c.phone.clone().unwrap_or_default())
            .description(c.description.clone().unwrap_or_default());
        if let Some(address) = &c.address {
            req = req.address(address_param(address));
        }
        if !c.metadata.is_empty() {
            req = req.metadata(map(&c.metadata));
        }
        let out = self.call(&req, Some(idempotency_key)).await?;
        Ok(customer_from(out))
    }

    /// Deletes a customer (Stripe also cancels its subscriptions at once).
    pub async fn delete_customer(
        &self,
        idempotency_key: &str,
        id: &str,
    ) -> Result<(), StripeError> {
        self.call(&DeleteCustomer::new(id), Some(idempotency_key))
            .await
            .map(|_| ())
    }

    /// Reads a customer; a deleted one comes back with `deleted: true`.
    pub async fn retrieve_customer(&self, id: &str) -> Result<Customer, StripeError> {
        let out = self.call(&RetrieveCustomer::new(id), None).await?;
        Ok(customer_from_returned(out))
    }

    /// Sets the payment method that the customer's subscriptions and invoices charge
    /// (`invoice_settings.default_payment_method`; it must be attached to the customer).
    pub async fn set_default_payment_method(
        &self,
        idempotency_key: &str,
        customer: &str,
        pm: &str,
    ) -> Result<Customer, StripeError> {
        let settings = UpdateCustomerInvoiceSettings {
            default_payment_method: Some(pm.to_string()),
            ..Default::default()
        };
        let req = UpdateCustomer::new(customer).invoice_settings(settings);
        let out = self.call(&req, Some(idempotency_key)).await?;
        Ok(customer_from(out))
    }

    /// Starts saving a payment method for later, off-session charges: the browser
    /// confirms the returned intent with Stripe.js.
    pub async fn create_setup_intent(
        &self,
        idempotency_key: &str,
        customer: &str,
    ) -> Result<SetupIntent, StripeError> {
        let mut automatic = CreateSetupIntentAutomaticPaymentMethods::new(true);
        // Saving happens in our page: no payment method that leaves it for a redirect.
        automatic.allow_redirects =
            Some(CreateSetupIntentAutomaticPaymentMethodsAllowRedirects::Never);
        let req = CreateSetupIntent::new()
            .customer(customer)
            .usage(CreateSetupIntentUsage::OffSession)
            .automatic_payment_methods(automatic);
        let out = self.call(&req, Some(idempotency_key)).await?;
        let id = out.id.as_str().to_string();
        let client_secret = out.client_secret.ok_or_else(|| {
            StripeError::Unavailable(format!(
                "Stripe returned SetupIntent {id} without a client_secret"
            ))
        })?;
        Ok(SetupIntent { id, client_secret })
    }

    /// Attaches a payment method (made by Stripe.js) to a customer.
    pub async fn attach_payment_method(
        &self,
        idempotency_key: &str,
        pm: &str,
        customer: &str,
    ) -> Result<PaymentMethod, StripeError> {
        let req = AttachPaymentMethod::new(pm).customer(customer);
        let out = self.call(&req, Some(idempotency_key)).await?;
        Ok(payment_method_from(out))
    }

    /// Detaches a payment method from its customer (it can no longer be used).
    pub async fn detach_payment_method(
        &self,
        idempotency_key: &str,
        pm: &str,
    ) -> Result<PaymentMethod, StripeError> {
        let out = self
            .call(&DetachPaymentMethod::new(pm), Some(idempotency_key))
            .await?;
        Ok(payment_method_from(out))
    }

    /// Reads a payment method.
    pub async fn retrieve_payment_method(&self, pm: &str) -> Result<PaymentMethod, StripeError> {
        let out = self.call(&RetrievePaymentMethod::new(pm), None).await?;
        Ok(payment_method_from(out))
    }

    /// Creates a subscription.
    pub async fn create_subscription(
        &self,
        idempotency_key: &str,
        s: &NewSubscription,
    ) -> Result<Subscription, StripeError> {
        let items: Vec<CreateSubscriptionItems> = s
            .items
            .iter()
            .map(|(price, quantity)| CreateSubscriptionItems {
                price: Some(price.clone()),
                quantity: Some(*quantity),
                ..Default::default()
            })
            .collect();
        let mut req = CreateSubscription::new().customer(&s.customer).items(items);
        if let Some(days) = s.trial_period_days {
            req = req.trial_period_days(days);
        }
        if let Some(pm) = &s.default_payment_method {
            req = req.default_payment_method(pm);
        }
        if !s.metadata.is_empty() {
            req = req.metadata(map(&s.metadata));
        }
        let out = self.call(&req, Some(idempotency_key)).await?;
        Ok(subscription_from(out))
    }

    /// Changes a subscription's items, or whether it cancels at the end of the period.
    pub async fn update_subscription(
        &self,
        idempotency_key: &str,
        id: &str,
        u: &SubscriptionChange,
    ) -> Result<Subscription, StripeError> {
        let mut req = UpdateSubscription::new(id);
        if !u.items.is_empty() {
            let items: Vec<UpdateSubscriptionItems> = u
                .items
                .iter()
                .map(|i| UpdateSubscriptionItems {
                    id: i.id.clone(),
                    price: i.price.clone(),
                    quantity: i.quantity,
                    deleted: i.deleted.then_some(true),
                    ..Default::default()
                })
                .collect();
            req = req.items(items);
        }
        if let Some(p) = u.proration_behavior {
            req = req.proration_behavior(match p {
                Proration::CreateProrations => {
                    UpdateSubscriptionProrationBehavior::CreateProrations
                }
                Proration::None => UpdateSubscriptionProrationBehavior::None,
                Proration::AlwaysInvoice => UpdateSubscriptionProrationBehavior::AlwaysInvoice,
            });
        }
        if let Some(cancel) = u.cancel_at_period_end {
            req = req.cancel_at_period_end(cancel);
        }
        let out = self.call(&req, Some(idempotency_key)).await?;
        Ok(subscription_from(out))
    }

    /// Reads a subscription.
    pub async fn retrieve_subscription(&self, id: &str) -> Result<Subscription, StripeError> {
        let out = self.call(&RetrieveSubscription::new(id), None).await?;
        Ok(subscription_from(out))
    }

    /// Reads an invoice.
    pub async fn retrieve_invoice(&self, id: &str) -> Result<Invoice, StripeError> {
        let out = self.call(&RetrieveInvoice::new(id), None).await?;
        invoice_from(out).map_err(StripeError::Unavailable)
    }

    /// The customer's next invoice as Stripe would draw it now
    /// (`POST /v1/invoices/create_preview`; it changes nothing, so it needs no key).
    pub async fn preview_invoice(&self, customer: &str) -> Result<Invoice, StripeError> {
        let req = CreatePreviewInvoice::new().customer(customer);
        let out = self.call(&req, None).await?;
        invoice_from(out).map_err(StripeError::Unavailable)
    }

    /// Reports usage to a billing meter. `identifier` makes the event unique for Stripe
    /// (for at least 24 hours); `timestamp` is when the usage happened (Unix seconds).
    pub async fn create_meter_event(
        &self,
        idempotency_key: &str,
        event_name: &str,
        customer: &str,
        value: i64,
        identifier: &str,
        timestamp: i64,
    ) -> Result<(), StripeError> {
        let payload = HashMap::from([
            ("stripe_customer_id".to_string(), customer.to_string()),
            ("value".to_string(), value.to_string()),
        ]);
        let req = CreateBillingMeterEvent::new(event_name, payload)
            .identifier(identifier)
            .timestamp(timestamp);
        self.call(&req, Some(idempotency_key)).await.map(|_| ())
    }

    /// Sends `req`, retrying what may succeed later with the same idempotency key.
    async fn call<R>(
        &self,
        req: &R,
        idempotency_key: Option<&str>,
    ) -> Result<R::Output, StripeError>
    where
        R: StripeRequest + Sync,
        R::Output: miniserde::Deserialize + Send,
    {
        let client = self
            .client
            .as_ref()
            .map_err(|e| StripeError::Unavailable(format!("Stripe client configuration: {e}")))?;
        let strategy = match idempotency_key {
            Some(key) => RequestStrategy::Idempotent(IdempotencyKey::new(key).map_err(|e| {
                StripeError::Refused {
                    status: 400,
                    code: Some("idempotency_key_invalid".into()),
                    message: e.to_string(),
                    param: None,
                }
            })?),
            None => RequestStrategy::Once,
        };
        let attempts = async {
            let mut last = String::new();
            for attempt in 0..ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(jittered(BACKOFF[attempt - 1])).await;
                }
                let sent = req
                    .customize()
                    .request_strategy(strategy.clone())
                    .timeout(ATTEMPT_TIMEOUT)
                    .send(client)
                    .await;
                match classify(sent) {
                    Verdict::Done(out) => return Ok(out),
                    Verdict::Fail(e) => return Err(e),
                    Verdict::Retry(why) => {
                        tracing::warn!(attempt = attempt + 1, of = ATTEMPTS, error = %why, "Stripe call failed");
                        last = why;
                    }
                }
            }
            Err(StripeError::Unavailable(format!(
                "{ATTEMPTS} attempts failed; last: {last}"
            )))
        };
        tokio::time::timeout(CALL_TIMEOUT, attempts)
            .await
            .unwrap_or_else(|_| {
                Err(StripeError::Unavailable(format!(
                    "no answer within {}s",
                    CALL_TIMEOUT.as_secs()
                )))
            })
    }
}

enum Verdict<T> {
    Done(T),
    Retry(String),
    Fail(StripeError),
}

/// What to do with the outcome of one attempt.
fn classify<T>(sent: Result<T, ::stripe::StripeError>) -> Verdict<T> {
    use ::stripe::StripeError as E;
    match sent {
        Ok(out) => Verdict::Done(out),
        Err(E::Stripe(err, status)) => {
            let code = err.code.as_ref().map(|c| c.as_str().to_string());
            let message = err.message.clone().unwrap_or_default();
            if status == 409 || status == 429 || status >= 500 {
                Verdict::Retry(format!(
                    "HTTP {status}{}: {message}",
                    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
                ))
            } else {
                Verdict::Fail(StripeError::Refused {
                    status,
                    code,
                    message,
                    param: err.param.clone(),
                })
            }
        }
        // async-stripe says this both when a success body does not parse (retrying
        // replays the same body: give up now) and when an error body is not Stripe's
        // JSON (a proxy's 502 page: worth retrying). Only the messages tell them apart.
        Err(E::JSONDeserialize(msg)) if msg.contains("Stripe error") => {
            Verdict::Retry(format!("unreadable error answer: {msg}"))
        }
        Err(E::JSONDeserialize(msg)) => Verdict::Fail(StripeError::Unavailable(format!(
            "Stripe's answer does not parse as the expected object: {msg}"
        ))),
        Err(E::ClientError(msg)) => Verdict::Retry(format!("network: {msg}")),
        Err(E::Timeout) => {
            Verdict::Retry(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()))
        }
        Err(E::ConfigError(msg)) => Verdict::Fail(StripeError::Unavailable(format!(
            "client configuration: {msg}"
        ))),
    }
}

/// `base` scaled by a random factor in [0.5, 1.5), so that clients that failed together
/// do not retry together.
fn jittered(base: Duration) -> Duration {
    let random = (uuid::Uuid::new_v4().as_u128() % 1_000) as f64 / 1_000.0;
    base.mul_f64(0.5 + random)
}

fn map(pairs: &[(String, String)]) -> HashMap<String, String> {
    pairs.iter().cloned().collect()
}

fn sorted(metadata: HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<_> = metadata.into_iter().collect();
    v.sort();
    v
}

fn address_param(a: &Address) -> OptionalFieldsCustomerAddress {
    OptionalFieldsCustomerAddress {
        city: a.city.clone(),
        country: a.country.clone(),
        line1: a.line1.clone(),
        line2: a.line2.clone(),
        postal_code: a.postal_code.clone(),
        state: a.state.clone(),
    }
}

/// Reads `value` (a Stripe object as JSON) into async-stripe's type for it, with
/// async-stripe's own deserializer, after checking its `object` field.
fn read<T: miniserde::Deserialize>(value: &serde_json::Value, object: &str) -> Result<T, String> {
    let found = value.get("object").and_then(|o| o.as_str());
    if found != Some(object) {
        return Err(format!(
            "expected a Stripe {object} object, found object {}",
            found.unwrap_or("(none)")
        ));
    }
    // miniserde's error says nothing of where: name the object at least.
    miniserde::json::from_str(&value.to_string()).map_err(|_| {
        format!(
            "Stripe {object} {} does not have the shape async-stripe reads (API version {API_VERSION})",
            value.get("id").and_then(|i| i.as_str()).unwrap_or("(no id)"),
        )
    })
}

impl Customer {
    /// Reads the customer of a webhook event (`data.object`).
    pub fn from_event_object(object: &serde_json::Value) -> Result<Self, String> {
        read::<RetrieveCustomerReturned>(object, "customer").map(customer_from_returned)
    }
}

impl PaymentMethod {
    /// Reads the payment method of a webhook event (`data.object`).
    pub fn from_event_object(object: &serde_json::Value) -> Result<Self, String> {
        read::<stripe_payment::PaymentMethod>(object, "payment_method").map(payment_method_from)
    }
}

impl Subscription {
    /// Reads the subscription of a webhook event (`data.object`).
    pub fn from_event_object(object: &serde_json::Value) -> Result<Self, String> {
        read::<stripe_billing::Subscription>(object, "subscription").map(subscription_from)
    }
}

impl Invoice {
    /// Reads the invoice of a webhook event (`data.object`).
    pub fn from_event_object(object: &serde_json::Value) -> Result<Self, String> {
        read::<stripe_billing::Invoice>(object, "invoice").and_then(invoice_from)
    }
}

fn customer_from(c: stripe_core::Customer) -> Customer {
    Customer {
        id: c.id.as_str().to_string(),
        email: c.email,
        name: c.name,
        deleted: false,
        default_payment_method: c
            .invoice_settings
            .and_then(|s| s.default_payment_method)
            .map(|pm| pm.id().as_str().to_string()),
        created: c.created,
    }
}

fn customer_from_returned(r: RetrieveCustomerReturned) -> Customer {
    match r {
        RetrieveCustomerReturned::Customer(c) => customer_from(c),
        RetrieveCustomerReturned::DeletedCustomer(d) => Customer {
            id: d.id.as_str().to_string(),
            email: None,
            name: None,
            deleted: true,
            default_payment_method: None,
            created: 0,
        },
    }
}

fn payment_method_from(pm: stripe_payment::PaymentMethod) -> PaymentMethod {
    let card = pm.card;
    PaymentMethod {
        id: pm.id.as_str().to_string(),
        customer: pm.customer.map(|c| c.id().as_str().to_string()),
        kind: pm.type_.as_str().to_string(),
        brand: card.as_ref().map(|c| c.brand.clone()),
        last4: card.as_ref().map(|c| c.last4.clone()),
        exp_month: card.as_ref().map(|c| c.exp_month),
        exp_year: card.as_ref().map(|c| c.exp_year),
        created: pm.created,
    }
}

fn subscription_from(s: stripe_billing::Subscription) -> Subscription {
    let items: Vec<SubscriptionItem> = s
        .items
        .data
        .into_iter()
        .map(|i| SubscriptionItem {
            id: i.id.as_str().to_string(),
            price: i.price.id.as_str().to_string(),
            quantity: i.quantity.unwrap_or(0),
            current_period_start: i.current_period_start,
            current_period_end: i.current_period_end,
        })
        .collect();
    Subscription {
        id: s.id.as_str().to_string(),
        customer: s.customer.id().as_str().to_string(),
        status: s.status.as_str().to_string(),
        current_period_start: items.iter().map(|i| i.current_period_start).min(),
        current_period_end: items.iter().map(|i| i.current_period_end).max(),
        items,
        cancel_at_period_end: s.cancel_at_period_end,
        canceled_at: s.canceled_at,
        trial_end: s.trial_end,
        created: s.created,
        metadata: sorted(s.metadata),
    }
}

fn invoice_from(i: stripe_billing::Invoice) -> Result<Invoice, String> {
    let id = i.id.map(|id| id.as_str().to_string());
    let customer = i
        .customer
        .map(|c| c.id().as_str().to_string())
        .ok_or_else(|| format!("Stripe invoice {id:?} has no customer"))?;
    // Since API version 2025-03-31.basil the subscription is under `parent`; the top-level
    // field is read too, for objects of older versions.
    let subscription = i
        .parent
        .and_then(|p| p.subscription_details)
        .map(|d| d.subscription.id().as_str().to_string())
        .or_else(|| i.subscription.map(|s| s.id().as_str().to_string()));
    Ok(Invoice {
        id,
        customer,
        subscription,
        status: i.status.map(|s| s.as_str().to_string()),
        amount_due: i.amount_due,
        amount_paid: i.amount_paid,
        amount_remaining: i.amount_remaining,
        subtotal: i.subtotal,
        total: i.total,
        currency: i.currency.to_string(),
        hosted_invoice_url: i.hosted_invoice_url,
        invoice_pdf: i.invoice_pdf,
        number: i.number,
        created: i.created,
        period_start: i.period_start,
        period_end: i.period_end,
        lines: i
            .lines
            .data
            .into_iter()
            .map(|l| InvoiceLine {
                id: l.id.as_str().to_string(),
                description: l.description,
                amount: l.amount,
                quantity: l.quantity,
                price: l
                    .pricing
                    .and_then(|p| p.price_details)
                    .map(|d| d.price.id().as_str().to_string()),
            })
            .collect(),
        attempt_count: i.attempt_count,
        next_payment_attempt: i.next_payment_attempt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects of Stripe's reference fixtures (shared/reference/stripe/fixtures3.json).
    fn fixture(name: &str) -> serde_json::Value {
        let all: serde_json::Value =
            serde_json::from_str(include_str!("stripe/fixtures.json")).expect("fixtures JSON");
        all[name].clone()
    }

    #[test]
    fn reads_a_customer() {
        let c = Customer::from_event_object(&fixture("customer")).expect("customer");
        assert_eq!(
            c,
            Customer {
                id: "cus_QXg1o8vcGmoR32".into(),
                email: None,
                name: None,
                deleted: false,
                default_payment_method: None,
                created: 1234567890,
            }
        );
        let mut named = fixture("customer");
        named["email"] = "ada@example.com".into();
        named["name"] = "Ada".into();
        named["invoice_settings"]["default_payment_method"] = "pm_123".into();
        let c = Customer::from_event_object(&named).expect("customer");
        assert_eq!(c.email.as_deref(), Some("ada@example.com"));
        assert_eq!(c.name.as_deref(), Some("Ada"));
        assert_eq!(c.default_payment_method.as_deref(), Some("pm_123"));
    }

    #[test]
    fn reads_a_deleted_customer() {
        let c = Customer::from_event_object(&fixture("deleted_customer")).expect("deleted");
        assert!(c.deleted);
        assert_eq!(c.id, "cus_QXg1o8vcGmoR32");
    }

    #[test]
    fn reads_a_payment_method() {
        let pm = PaymentMethod::from_event_object(&fixture("payment_method")).expect("pm");
        assert_eq!(
            pm,
            PaymentMethod {
                id: "pm_1Pgc75B7WZ01zgkWlHVgdEGJ".into(),
                customer: None,
                kind: "card".into(),
                brand: Some("visa".into()),
                last4: Some("4242".into()),
                exp_month: Some(8),
                exp_year: Some(2030),
                created: 1234567890,
            }
        );
    }

    #[test]
    fn reads_a_subscription_with_periods_on_its_items() {
        let mut object = fixture("subscription");
        object["metadata"] = serde_json::json!({"workspace": "ws_1", "a": "b"});
        let s = Subscription::from_event_object(&object).expect("subscription");
        assert_eq!(s.id, "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
        assert_eq!(s.customer, "cus_QXg1o8vcGmoR32");
        assert_eq!(s.status, "active");
        assert!(s.cancel_at_period_end);
        assert_eq!(s.canceled_at, Some(1234567890));
        assert_eq!(s.trial_end, Some(1234567890));
        assert_eq!(s.created, 1234567890);
        assert_eq!(
            s.items,
            vec![SubscriptionItem {
                id: "si_QXhVnC2h0Jczwc".into(),
                price: "price_1PgafmB7WZ01zgkW6dKueIc5".into(),
                quantity: 1,
                current_period_start: 1896570518,
                current_period_end: 976287773,
            }]
        );
        assert_eq!(s.current_period_start, Some(1896570518));
        assert_eq!(s.current_period_end, Some(976287773));
        assert_eq!(
            s.metadata,
            vec![
                ("a".into(), "b".into()),
                ("workspace".into(), "ws_1".into())
            ]
        );
    }

    #[test]
    fn reads_an_invoice_with_its_subscription_under_parent() {
        let i = Invoice::from_event_object(&fixture("invoice")).expect("invoice");
        assert_eq!(i.id.as_deref(), Some("in_1Pgc6tB7WZ01zgkWu9fdqL6I"));
        assert_eq!(i.customer, "cus_QXg1o8vcGmoR32");
        assert_eq!(i.subscription.as_deref(), Some("subscription"));
        assert_eq!(i.status.as_deref(), Some("draft"));
        assert_eq!(
            (
                i.amount_due,
                i.amount_paid,
                i.amount_remaining,
                i.subtotal,
                i.total
            ),
            (1000, 0, 1000, 1000, 1000)
        );
        assert_eq!(i.currency, "usd");
        assert_eq!(
            (i.created, i.period_start, i.period_end),
            (1234567890, 1234567890, 1234567890)
        );
        assert_eq!(
            i.lines,
            vec![InvoiceLine {
                id: "il_1Pgc6sB7WZ01zgkWFnxLrLCq".into(),
                description: Some("My First Invoice Item (created for API docs)".into()),
                amount: 1000,
                quantity: Some(1),
                price: None,
            }]
        );
    }

    #[test]
    fn reads_a_line_price_and_a_preview_without_id() {
        let mut object = fixture("invoice");
        object["id"] = serde_json::Value::Null;
        object["lines"]["data"][0]["pricing"] = serde_json::json!({
            "type": "price_details",
            "price_details": {"price": "price_123", "product": "prod_123"},
            "unit_amount_decimal": "1000"
        });
        let i = Invoice::from_event_object(&object).expect("invoice");
        assert_eq!(i.id, None);
        assert_eq!(i.lines[0].price.as_deref(), Some("price_123"));
    }

    #[test]
    fn refuses_other_objects_and_broken_shapes() {
        let e = Subscription::from_event_object(&fixture("invoice")).expect_err("not a sub");
        assert!(e.contains("expected a Stripe subscription"), "{e}");
        let mut broken = fixture("subscription");
        broken.as_object_mut().map(|o| o.remove("items"));
        let e = Subscription::from_event_object(&broken).expect_err("no items");
        assert!(e.contains("sub_1Pgc6rB7WZ01zgkWNy0Cn5nw"), "{e}");
    }

    #[test]
    fn results_round_trip_as_json() {
        let s = Subscription::from_event_object(&fixture("subscription")).expect("subscription");
        let json = serde_json::to_string(&s).expect("serialize");
        let back: Subscription = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);
    }

    /// Jobs and resolvers run on multi-threaded runtimes: the calls must be `Send`.
    #[test]
    fn calls_are_send() {
        fn send<T: Send>(_: T) {}
        let api = StripeApi::new("sk_test_x", Some("http://127.0.0.1:9"));
        let fields = CustomerFields::default();
        send(api.create_customer("k", &fields));
        send(api.update_subscription("k", "sub_1", &SubscriptionChange::default()));
        send(api.preview_invoice("cus_1"));
        send(api.create_meter_event("k", "e", "cus_1", 1, "i", 0));
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(200));
            assert!(
                d >= Duration::from_millis(100) && d < Duration::from_millis(300),
                "{d:?}"
            );
        }
    }
}
