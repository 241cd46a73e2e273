//! Billing: accounts, payment methods, subscriptions, invoices and the cost summary.
//! Owners manage billing, admins read it, viewers see none of it (`FORBIDDEN`).

use async_graphql::connection::Connection;
use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::organizations::Organization;
use super::pagination::{self, complexity};
use super::replay::{self, Replayable};
use super::{error, rc};
use crate::db::repo::billing::{BillingAccountRow, InvoiceRow, PaymentMethodRow, SubscriptionRow};
use crate::domain::billing::{self as domain, catalog, intents};
use crate::domain::{self as dom, DomainError};
use crate::ids::{
    BillingAccountId, InvoiceId, OrganizationId, PaymentMethodId, SubscriptionId, WorkspaceId,
};

/// A subscription's state, as Stripe names it.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum SubscriptionStatus {
    /// In its free trial.
    Trialing,
    /// Paid up.
    Active,
    /// The latest invoice is unpaid; Stripe is retrying. Capacity is kept.
    PastDue,
    /// Canceled; no capacity.
    Canceled,
    /// Retries exhausted; no capacity until paid.
    Unpaid,
    /// The first payment has not succeeded yet; no capacity.
    Incomplete,
    /// The first payment failed for good; no capacity.
    IncompleteExpired,
    /// Paused; no capacity.
    Paused,
}

impl SubscriptionStatus {
    fn parse(s: &str) -> Self {
        match s {
            "TRIALING" => Self::Trialing,
            "ACTIVE" => Self::Active,
            "PAST_DUE" => Self::PastDue,
            "CANCELED" => Self::Canceled,
            "UNPAID" => Self::Unpaid,
            "INCOMPLETE_EXPIRED" => Self::IncompleteExpired,
            "PAUSED" => Self::Paused,
            // PENDING rows are never shown; INCOMPLETE and anything unknown read as incomplete.
            _ => Self::Incomplete,
        }
    }
}

/// A plan of the catalog (see docs/features/billing.md for what each grants).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Plan {
    /// $29.99 a month: 5 users, 1 location.
    Starter,
    /// $199.99 a month: 50 users, 10 locations, 1 SSO connection.
    Enterprise,
    /// Negotiated: its own price, if any, and add-ons.
    Custom,
}

impl From<Plan> for catalog::Plan {
    fn from(p: Plan) -> Self {
        match p {
            Plan::Starter => catalog::Plan::Starter,
            Plan::Enterprise => catalog::Plan::Enterprise,
            Plan::Custom => catalog::Plan::Custom,
        }
    }
}

impl Plan {
    fn parse(s: &str) -> Self {
        match catalog::Plan::parse(s) {
            Some(catalog::Plan::Starter) => Plan::Starter,
            Some(catalog::Plan::Enterprise) => Plan::Enterprise,
            _ => Plan::Custom,
        }
    }
}

/// A postal address.
#[derive(SimpleObject, InputObject, Clone, Debug, Default)]
#[graphql(input_name = "BillingAddressInput")]
pub struct BillingAddress {
    /// Line 1.
    pub line1: Option<String>,
    /// Line 2.
    pub line2: Option<String>,
    /// City.
    pub city: Option<String>,
    /// State or province.
    pub state: Option<String>,
    /// Postal code.
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<String>,
}

impl From<BillingAddress> for intents::Address {
    fn from(a: BillingAddress) -> Self {
        intents::Address {
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            state: a.state,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

/// Whether the caller may read `ws`'s billing (owners and admins); when the workspace audits
/// billing reads, the read is audited (once per request).
pub async fn may_read(ctx: &Context<'_>, ws: Uuid) -> Result<()> {
    may_manage(ctx, ws, "read billing").await?;
    super::governance::audit_billing_read(ctx, ws).await
}

/// Whether the caller is an owner or admin of `ws` (`FORBIDDEN` for a viewer, `NOT_FOUND`
/// for anyone else); `what` names what a viewer may not do.
pub async fn may_manage(ctx: &Context<'_>, ws: Uuid, what: &str) -> Result<()> {
    let rc = rc(ctx);
    let access = rc
        .loaders
        .access
        .load_one(ws)
        .await
        .map_err(|e| rc.err(e))?;
    if access.is_some() {
        rc.actor.admit(ws).await.map_err(|e| rc.err(e))?;
    }
    match access {
        None => Err(rc.err(DomainError::NotFound("workspace"))),
        Some((_, role)) if role.is_manager() => Ok(()),
        Some(_) => Err(rc.err(DomainError::Forbidden(format!(
            "only owners and admins can {what}"
        )))),
    }
}

/// The active billing accounts of a workspace, oldest first (owners and admins).
pub async fn accounts_of(ctx: &Context<'_>, ws: Uuid) -> Result<Vec<BillingAccount>> {
    may_read(ctx, ws).await?;
    let rc = rc(ctx);
    let rows = domain::accounts::active_of(&rc.services, &[ws])
        .await
        .map_err(|e| rc.err(e))?;
    Ok(rows.into_iter().map(BillingAccount).collect())
}

/// A billing account: a Stripe customer of the workspace.
pub struct BillingAccount(pub BillingAccountRow);

crate::object! {
    #[Object(name = "BillingAccount")]
    /// A billing account: a Stripe customer of the workspace.
    impl BillingAccount {
        row: BillingAccountRow;
        fields {
            /// Opaque id (`ba_…`).
            id: BillingAccountId = BillingAccountId(row.id),
            /// The Stripe customer (`cus_…`).
            stripe_customer_id: &str = row.stripe_customer_id.as_deref().unwrap_or_default(),
            /// Name, 1–100 characters.
            name: &str = &row.name,
            /// Billing e-mail, up to 150 characters.
            email: &str = &row.email,
            /// ISO 4217 code in lower case (as Stripe writes it); fixed at creation.
            currency: &str = &row.currency,
            /// Phone, up to 50 characters.
            phone: Option<&str> = row.phone.as_deref(),
            /// Description, up to 200 characters.
            description: Option<&str> = row.description.as_deref(),
            /// When it was created.
            created_at: DateTime<Utc> = row.created_at,
            /// When it last changed.
            updated_at: DateTime<Utc> = row.updated_at,
        }
        resolvers {
    /// Postal address.
    async fn address(&self) -> Option<BillingAddress> {
        let a: intents::Address = serde_json::from_value(self.0.address.clone()?).ok()?;
        Some(BillingAddress {
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            state: a.state,
            postal_code: a.postal_code,
            country: a.country,
        })
    }

    /// The workspace.
    async fn workspace(&self, ctx: &Context<'_>) -> Result<Option<super::workspaces::Workspace>> {
        super::workspaces::load_visible(ctx, WorkspaceId(self.0.workspace_id)).await
    }

    /// Subscriptions, oldest first (canceled ones included).
    async fn subscriptions(&self, ctx: &Context<'_>) -> Result<Vec<Subscription>> {
        let rc = rc(ctx);
        let subs = rc
            .loaders
            .subscriptions
            .load_one(self.0.id)
            .await
            .map_err(|e| rc.err(e))?;
        Ok(subs
            .unwrap_or_default()
            .into_iter()
            .map(|(s, caps)| {
                let quantities = caps
                    .into_iter()
                    .map(|(resource, quantity)| ResourceQuantity { resource, quantity })
                    .collect();
                Subscription(s, Some(quantities))
            })
            .collect())
    }

    /// Payment methods, oldest first (at most five).
    async fn payment_methods(&self, ctx: &Context<'_>) -> Result<Vec<PaymentMethod>> {
        let rc = rc(ctx);
        let rows = rc
            .loaders
            .payment_methods
            .load_one(self.0.id)
            .await
            .map_err(|e| rc.err(e))?;
        let default = self.0.default_payment_method.as_deref();
        Ok(rows
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let is_default = default == Some(r.stripe_payment_method_id.as_str());
                PaymentMethod(r, is_default)
            })
            .collect())
    }

    /// Invoices, newest first (at most 100 per page).
    #[graphql(complexity = "complexity(first, child_complexity)")]
    async fn invoices(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<std::sync::Arc<Connection<String, Invoice>>> {
        let rc = rc(ctx);
        let page = pagination::page(first, after.as_deref())?;
        // One read per account and page in an operation, whatever its aliases.
        rc.once(format!("invoices:{}:{page:?}", self.0.id), async {
            let rows = domain::invoices::page(&rc.services, self.0.id, page.after, page.limit)
                .await
                .map_err(|e| rc.err(e))?;
            Ok(pagination::connection(rows, page, |i| i.id, Invoice))
        })
        .await
    }

    /// Stripe's preview of the next invoice (`null` when there is nothing to invoice).
    async fn upcoming_invoice(&self, ctx: &Context<'_>) -> Result<Option<UpcomingInvoice>> {
        let rc = rc(ctx);
        let inv = domain::invoices::upcoming(&rc.services, &self.0)
            .await
            .map_err(|e| rc.err(e))?;
        Ok(inv.map(UpcomingInvoice))
    }
        }
    }
}

/// What a subscription grants of one resource.
#[derive(SimpleObject, Clone, Debug)]
pub struct ResourceQuantity {
    /// Resource key (`users`, `locations`, `sso_connections`).
    pub resource: String,
    /// Units.
    pub quantity: i64,
}

/// A subscription of a billing account: a plan and add-ons that fund the account's pool,
/// with its capacities when they were loaded with it.
pub struct Subscription(pub SubscriptionRow, pub Option<Vec<ResourceQuantity>>);

crate::object! {
    #[Object(name = "Subscription")]
    /// A subscription of a billing account: a plan and add-ons that fund the account's pool.
    impl Subscription {
        row: SubscriptionRow;
        fields {
            /// Opaque id (`subs_…`).
            id: SubscriptionId = SubscriptionId(row.id),
            /// The Stripe subscription (`sub_…`).
            stripe_subscription_id: &str = row.stripe_subscription_id.as_deref().unwrap_or_default(),
            /// Status, as Stripe reports it.
            status: SubscriptionStatus = SubscriptionStatus::parse(&row.status),
            /// Plan.
            plan: Plan = Plan::parse(&row.plan),
            /// End of the current period (a decrease or a cancellation takes effect then).
            current_period_end: Option<DateTime<Utc>> = row.current_period_end,
            /// Start of the current period.
            current_period_start: Option<DateTime<Utc>> = row.current_period_start,
            /// Cancels at the end of the current period.
            cancel_at_period_end: bool = row.cancel_at_period_end,
            /// End of the free trial.
            trial_end: Option<DateTime<Utc>> = row.trial_end,
            /// When it was created.
            created_at: DateTime<Utc> = row.created_at,
        }
        resolvers {
    /// Capacity granted per resource (plan grants plus add-ons). A decrease shows here
    /// once Stripe starts the next period.
    async fn quantities(&self, ctx: &Context<'_>) -> Result<Vec<ResourceQuantity>> {
        if let Some(q) = &self.1 {
            return Ok(q.clone());
        }
        let rc = rc(ctx);
        let caps = domain::subscriptions::capacities(&rc.services, &[self.0.id])
            .await
            .map_err(|e| rc.err(e))?;
        Ok(caps
            .into_iter()
            .map(|c| ResourceQuantity {
                resource: c.1,
                quantity: c.2,
            })
            .collect())
    }

    /// Metadata pairs.
    async fn metadata(&self) -> Vec<MetadataEntry> {
        self.0
            .metadata
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| MetadataEntry {
                        key: k.clone(),
                        value: v.as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
        }
    }
}

/// A metadata pair.
#[derive(SimpleObject, InputObject, Clone, Debug)]
#[graphql(input_name = "MetadataEntryInput")]
pub struct MetadataEntry {
    /// Key (1–40 characters).
    pub key: String,
    /// Value (up to 500 characters).
    pub value: String,
}

/// A payment method of a billing account.
pub struct PaymentMethod(pub PaymentMethodRow, pub bool);

crate::object! {
    #[Object(name = "PaymentMethod")]
    /// A payment method of a billing account.
    impl PaymentMethod {
        row: PaymentMethodRow;
        fields {
            /// Opaque id (`pmt_…`).
            id: PaymentMethodId = PaymentMethodId(row.id),
            /// The Stripe payment method (`pm_…`).
            stripe_payment_method_id: &str = &row.stripe_payment_method_id,
            /// Stripe's type (`card` …).
            kind: &str = &row.kind,
            /// Card brand.
            brand: Option<&str> = row.brand.as_deref(),
            /// Last four digits.
            last4: Option<&str> = row.last4.as_deref(),
            /// Expiry month.
            exp_month: Option<i32> = row.exp_month,
            /// Expiry year.
            exp_year: Option<i32> = row.exp_year,
        }
        resolvers {
    /// Whether invoices are charged to it.
    async fn is_default(&self) -> bool {
        self.1
    }
        }
    }
}

/// An invoice line.
#[derive(SimpleObject, Clone, Debug)]
pub struct InvoiceLine {
    /// Stripe's line id.
    pub id: String,
    /// What it is for, e.g. "10 × Users".
    pub description: Option<String>,
    /// Amount in minor units.
    pub amount: i64,
    /// Quantity.
    pub quantity: Option<i64>,
    /// Stripe price.
    pub price_id: Option<String>,
}

fn lines(v: &[crate::stripe::InvoiceLine]) -> Vec<InvoiceLine> {
    v.iter()
        .map(|l| InvoiceLine {
            id: l.id.clone(),
            description: l.description.clone(),
            amount: l.amount,
            quantity: l.quantity.and_then(|q| i64::try_from(q).ok()),
            price_id: l.price.clone(),
        })
        .collect()
}

/// An invoice, mirrored from Stripe.
pub struct Invoice(pub InvoiceRow);

crate::object! {
    #[Object(name = "Invoice")]
    /// An invoice, mirrored from Stripe. Amounts are in the currency's minor units.
    impl Invoice {
        row: InvoiceRow;
        fields {
            /// Opaque id (`inv_…`).
            id: InvoiceId = InvoiceId(row.id),
            /// The Stripe invoice (`in_…`).
            stripe_invoice_id: &str = &row.stripe_invoice_id,
            /// Stripe's status: `draft`, `open`, `paid`, `uncollectible` or `void`.
            status: Option<&str> = row.status.as_deref(),
            /// Invoice number.
            number: Option<&str> = row.number.as_deref(),
            /// Amount due.
            amount_due: i64 = row.amount_due,
            /// Amount paid.
            amount_paid: i64 = row.amount_paid,
            /// Amount remaining.
            amount_remaining: i64 = row.amount_remaining,
            /// Subtotal.
            subtotal: i64 = row.subtotal,
            /// Total.
            total: i64 = row.total,
            /// ISO 4217 code, lower case.
            currency: &str = &row.currency,
            /// Stripe's hosted invoice page.
            hosted_invoice_url: Option<&str> = row.hosted_invoice_url.as_deref(),
            /// PDF.
            invoice_pdf: Option<&str> = row.invoice_pdf.as_deref(),
            /// When Stripe created it.
            created_at: DateTime<Utc> = row.stripe_created,
            /// Start of the period it bills.
            period_start: Option<DateTime<Utc>> = row.period_start,
            /// End of the period it bills.
            period_end: Option<DateTime<Utc>> = row.period_end,
        }
        resolvers {
    /// Lines.
    async fn lines(&self) -> Vec<InvoiceLine> {
        let v: Vec<crate::stripe::InvoiceLine> =
            serde_json::from_value(self.0.lines.clone()).unwrap_or_default();
        lines(&v)
    }
        }
    }
}

/// Stripe's preview of an account's next invoice.
pub struct UpcomingInvoice(pub crate::stripe::Invoice);

#[Object]
impl UpcomingInvoice {
    /// Amount due, minor units.
    async fn amount_due(&self) -> i64 {
        self.0.amount_due
    }
    /// Subtotal.
    async fn subtotal(&self) -> i64 {
        self.0.subtotal
    }
    /// Total.
    async fn total(&self) -> i64 {
        self.0.total
    }
    /// ISO 4217 code, lower case.
    async fn currency(&self) -> String {
        self.0.currency.to_ascii_lowercase()
    }
    /// Start of the period it will bill.
    async fn period_start(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.0.period_start, 0)
    }
    /// End of the period it will bill.
    async fn period_end(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.0.period_end, 0)
    }
    /// Lines.
    async fn lines(&self) -> Vec<InvoiceLine> {
        lines(&self.0.lines)
    }
}

/// Which month a billing summary covers.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum BillingPeriod {
    /// The month in progress.
    CurrentMonth,
    /// The month before.
    PreviousMonth,
}

/// Cost of a resource.
#[derive(SimpleObject)]
pub struct ResourceCost {
    /// Resource key.
    pub resource: String,
    /// Capacity funded by live subscriptions (pooled resources).
    pub capacity: i64,
    /// Units used in the period (metered resources with a price).
    pub used: i64,
    /// Monthly list price of its add-ons (pooled resources), or the list price of the
    /// metered units used so far beyond those included (metered resources), in cents.
    pub monthly_cents: i64,
}

/// Cost of a billing account.
#[derive(SimpleObject)]
pub struct AccountCost {
    /// The account.
    pub billing_account: BillingAccount,
    /// Monthly list price of its live subscriptions, in cents.
    pub monthly_cents: i64,
    /// Invoiced in the period (minor units of the account's currency).
    pub invoiced: i64,
    /// Paid in the period.
    pub paid: i64,
}

/// A workspace's costs for a month.
#[derive(SimpleObject)]
pub struct BillingSummary {
    /// First instant of the month.
    pub period_start: DateTime<Utc>,
    /// First instant of the next month.
    pub period_end: DateTime<Utc>,
    /// Fees accrued so far (list prices, prorated by the time elapsed), in cents.
    pub current_period_cents: i64,
    /// Projected cost of the whole month (linear projection), in cents.
    pub projected_cents: i64,
    /// The plans' base fees per month, in cents.
    pub base_fees_cents: i64,
    /// Metered usage so far in the period, in cents.
    pub metered_cents: i64,
    /// By resource.
    pub by_resource: Vec<ResourceCost>,
    /// By billing account.
    pub by_billing_account: Vec<AccountCost>,
}

/// The billing summary of a workspace (owners and admins).
pub async fn summary_of(
    ctx: &Context<'_>,
    ws: Uuid,
    period: BillingPeriod,
) -> Result<BillingSummary> {
    may_read(ctx, ws).await?;
    let rc = rc(ctx);
    let p = match period {
        BillingPeriod::CurrentMonth => domain::invoices::Period::CurrentMonth,
        BillingPeriod::PreviousMonth => domain::invoices::Period::PreviousMonth,
    };
    let s = domain::invoices::summary(&rc.services, ws, p, Utc::now())
        .await
        .map_err(|e| rc.err(e))?;
    Ok(BillingSummary {
        period_start: s.period_start,
        period_end: s.period_end,
        current_period_cents: s.current_cents,
        projected_cents: s.projected_cents,
        base_fees_cents: s.base_fees_cents,
        metered_cents: s.metered_cents,
        by_resource: s
            .by_resource
            .into_iter()
            .map(|r| ResourceCost {
                resource: r.resource,
                capacity: r.capacity,
                used: r.used,
                monthly_cents: r.monthly_cents,
            })
            .collect(),
        by_billing_account: s
            .by_account
            .into_iter()
            .map(|a| AccountCost {
                billing_account: BillingAccount(a.account),
                monthly_cents: a.monthly_cents,
                invoiced: a.invoiced,
                paid: a.paid,
            })
            .collect(),
    })
}

fn account_id(id: &ID) -> Result<BillingAccountId> {
    BillingAccountId::decode(id).ok_or_else(|| error::not_found("billing account"))
}

fn subscription_id(id: &ID) -> Result<SubscriptionId> {
    SubscriptionId::decode(id).ok_or_else(|| error::not_found("subscription"))
}

fn payment_method_id(id: &ID) -> Result<PaymentMethodId> {
    PaymentMethodId::decode(id).ok_or_else(|| error::not_found("payment method"))
}

/// Input of `createBillingAccount`.
#[derive(InputObject)]
pub struct CreateBillingAccountInput {
    /// Workspace.
    pub workspace_id: ID,
    /// Name (1–100 characters).
    pub name: String,
    /// Billing e-mail (up to 150 characters).
    pub email: String,
    /// ISO 4217 code in any case: usd, eur, gbp, aud or zar (default usd). Fixed after creation.
    pub currency: Option<String>,
    /// Phone (up to 50 characters).
    pub phone: Option<String>,
    /// Description (up to 200 characters).
    pub description: Option<String>,
    /// Postal address.
    pub address: Option<BillingAddress>,
    /// Makes the mutation safe to retry: a retry never creates a second Stripe customer.
    pub idempotency_key: Option<String>,
}

/// Result of `createBillingAccount` and `updateBillingAccount`.
#[derive(SimpleObject)]
#[graphql(name = "CreateBillingAccountPayload")]
pub struct BillingAccountPayload {
    /// The account.
    pub billing_account: BillingAccount,
}

/// Result of `updateBillingAccount`.
#[derive(SimpleObject)]
pub struct UpdateBillingAccountPayload {
    /// The account.
    pub billing_account: BillingAccount,
}

/// Input of `updateBillingAccount`: absent fields keep their value.
#[derive(InputObject)]
pub struct UpdateBillingAccountInput {
    /// Account.
    pub billing_account_id: ID,
    /// Name.
    pub name: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// Phone (empty clears it).
    pub phone: Option<String>,
    /// Description (empty clears it).
    pub description: Option<String>,
    /// Address (replaces it).
    pub address: Option<BillingAddress>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Input of `deleteBillingAccount`.
#[derive(InputObject)]
pub struct DeleteBillingAccountInput {
    /// Account.
    pub billing_account_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `deleteBillingAccount`.
#[derive(SimpleObject)]
pub struct DeleteBillingAccountPayload {
    /// Id of the deleted account.
    pub deleted_billing_account_id: ID,
}

/// Input of `assignBillingAccount`.
#[derive(InputObject)]
pub struct AssignBillingAccountInput {
    /// A root organization.
    pub organization_id: ID,
    /// The account its tree draws from.
    pub billing_account_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of `assignBillingAccount`.
#[derive(SimpleObject)]
pub struct AssignBillingAccountPayload {
    /// The root organization.
    pub organization: Organization,
    /// Its account.
    pub billing_account_id: ID,
}

/// Input of `createSetupIntent`.
#[derive(InputObject)]
pub struct CreateSetupIntentInput {
    /// Account.
    pub billing_account_id: ID,
    /// A repeat with the same key gets the same SetupIntent.
    pub idempotency_key: Option<String>,
}

/// What Stripe Elements needs to collect a payment method.
#[derive(SimpleObject)]
pub struct CreateSetupIntentPayload {
    /// `seti_…`.
    pub setup_intent_id: String,
    /// The client secret for Stripe.js.
    pub client_secret: String,
    /// The deployment's publishable key.
    pub publishable_key: Option<String>,
}

/// Input of `attachPaymentMethod`.
#[derive(InputObject)]
pub struct AttachPaymentMethodInput {
    /// Account.
    pub billing_account_id: ID,
    /// Stripe payment method (`pm_…`).
    pub payment_method_id: String,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Result of payment method mutations.
#[derive(SimpleObject)]
pub struct PaymentMethodsPayload {
    /// The account, with its payment methods.
    pub billing_account: BillingAccount,
}

/// Input of `setDefaultPaymentMethod` and `detachPaymentMethod`.
#[derive(InputObject)]
pub struct PaymentMethodInput {
    /// Payment method (`pmt_…`).
    pub payment_method_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// A quantity of an add-on.
#[derive(InputObject)]
pub struct ResourceQuantityInput {
    /// `users`, `locations` or `sso_connections`.
    pub resource: String,
    /// Units.
    pub quantity: i32,
}

/// Input of `createSubscription`.
#[derive(InputObject)]
pub struct CreateSubscriptionInput {
    /// Account.
    pub billing_account_id: ID,
    /// Plan.
    pub plan: Plan,
    /// Add-on units per resource.
    #[graphql(default)]
    pub quantities: Vec<ResourceQuantityInput>,
    /// Metadata (at most 10 pairs).
    #[graphql(default)]
    pub metadata: Vec<MetadataEntry>,
    /// Makes the mutation safe to retry: a retry never creates a second subscription.
    pub idempotency_key: Option<String>,
}

/// Result of subscription mutations.
#[derive(SimpleObject)]
#[graphql(name = "CreateSubscriptionPayload")]
pub struct SubscriptionPayload {
    /// The subscription.
    pub subscription: Subscription,
}

/// Result of `updateSubscription`.
#[derive(SimpleObject)]
pub struct UpdateSubscriptionPayload {
    /// The subscription (unchanged while the change waits for approval).
    pub subscription: Subscription,
    /// The pending approval request, when the workspace requires approval for
    /// `CHANGE_SUBSCRIPTION`: nothing changed yet.
    pub approval_request: Option<super::approvals::ApprovalRequest>,
}

/// Result of `cancelSubscription`.
#[derive(SimpleObject)]
pub struct CancelSubscriptionPayload {
    /// The subscription (`cancelAtPeriodEnd` true; unchanged while the cancellation waits
    /// for approval).
    pub subscription: Subscription,
    /// The pending approval request, when the workspace requires approval for
    /// `CANCEL_SUBSCRIPTION`: nothing changed yet.
    pub approval_request: Option<super::approvals::ApprovalRequest>,
}

/// Input of `updateSubscription`.
#[derive(InputObject)]
pub struct UpdateSubscriptionInput {
    /// Subscription.
    pub subscription_id: ID,
    /// New add-on units of the resources listed (0 removes the add-on). Raise or lower in
    /// one request, not both.
    pub quantities: Vec<ResourceQuantityInput>,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

/// Input of `cancelSubscription`.
#[derive(InputObject)]
pub struct CancelSubscriptionInput {
    /// Subscription.
    pub subscription_id: ID,
    /// Makes the mutation safe to retry.
    pub idempotency_key: Option<String>,
}

fn quantities(q: Vec<ResourceQuantityInput>) -> Vec<domain::subscriptions::Quantity> {
    q.into_iter()
        .map(|q| domain::subscriptions::Quantity {
            resource: q.resource,
            quantity: i64::from(q.quantity),
        })
        .collect()
}

/// Billing mutations (owners).
#[derive(Default)]
pub struct BillingMutation;

#[Object]
impl BillingMutation {
    /// Creates a billing account and its Stripe customer. SINGLE workspaces have exactly
    /// one account; ASSIGNED and POOLED up to ten.
    async fn create_billing_account(
        &self,
        ctx: &Context<'_>,
        input: CreateBillingAccountInput,
    ) -> Result<Replayable<BillingAccountPayload>> {
        let ws = WorkspaceId::decode(&input.workspace_id)
            .ok_or_else(|| error::not_found("workspace"))?;
        let new = domain::accounts::NewAccount {
            workspace_id: ws,
            name: input.name,
            email: input.email,
            currency: input.currency,
            phone: input.phone,
            description: input.description,
            address: input.address.map(Into::into),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::accounts::create(s, a, new, k).await,
            |r| Some(r.workspace_id),
            |r| BillingAccountPayload {
                billing_account: BillingAccount(r),
            },
        )
        .await
    }

    /// Changes a billing account and mirrors it to its Stripe customer. The currency
    /// cannot change.
    async fn update_billing_account(
        &self,
        ctx: &Context<'_>,
        input: UpdateBillingAccountInput,
    ) -> Result<Replayable<UpdateBillingAccountPayload>> {
        let change = domain::accounts::AccountChange {
            billing_account_id: account_id(&input.billing_account_id)?,
            name: input.name,
            email: input.email,
            phone: input.phone,
            description: input.description,
            address: input.address.map(Into::into),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::accounts::update(s, a, change, k).await,
            |r| Some(r.workspace_id),
            |r| UpdateBillingAccountPayload {
                billing_account: BillingAccount(r),
            },
        )
        .await
    }

    /// Deletes a billing account and its Stripe customer; refused while it has active
    /// subscriptions or assigned organizations.
    async fn delete_billing_account(
        &self,
        ctx: &Context<'_>,
        input: DeleteBillingAccountInput,
    ) -> Result<Replayable<DeleteBillingAccountPayload>> {
        let id = account_id(&input.billing_account_id)?;
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::accounts::delete(s, a, id, k).await,
            |_| None,
            |r| DeleteBillingAccountPayload {
                deleted_billing_account_id: ID(BillingAccountId(r.id).encode()),
            },
        )
        .await
    }

    /// Assigns a root organization the billing account its tree draws from (ASSIGNED
    /// workspaces). Switching moves the tree's usage to the new account's pool and is
    /// refused when it does not fit.
    async fn assign_billing_account(
        &self,
        ctx: &Context<'_>,
        input: AssignBillingAccountInput,
    ) -> Result<Replayable<AssignBillingAccountPayload>> {
        let a = dom::billing::accounts::Assignment {
            organization_id: OrganizationId::decode(&input.organization_id)
                .ok_or_else(|| error::not_found("organization"))?,
            billing_account_id: account_id(&input.billing_account_id)?,
        };
        let account = ID(a.billing_account_id.encode());
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, actor, k| domain::accounts::assign(s, actor, a, k).await,
            |o| Some(o.workspace_id),
            |o| AssignBillingAccountPayload {
                organization: Organization::new(o),
                billing_account_id: account,
            },
        )
        .await
    }

    /// Creates a Stripe SetupIntent to collect a payment method with Stripe Elements;
    /// refused when the account has five payment methods.
    async fn create_setup_intent(
        &self,
        ctx: &Context<'_>,
        input: CreateSetupIntentInput,
    ) -> Result<CreateSetupIntentPayload> {
        let rc = rc(ctx);
        let id = account_id(&input.billing_account_id)?;
        let key = input.idempotency_key.map(|k| dom::mutation::Key {
            key: k,
            selection: String::new(),
        });
        let si =
            domain::payment_methods::create_setup_intent(&rc.services, &rc.actor, id, key.as_ref())
                .await
                .map_err(|e| rc.err(e))?;
        Ok(CreateSetupIntentPayload {
            setup_intent_id: si.id,
            client_secret: si.client_secret,
            publishable_key: si.publishable_key,
        })
    }

    /// Attaches a Stripe payment method to the account (at most five); the first becomes
    /// the default.
    async fn attach_payment_method(
        &self,
        ctx: &Context<'_>,
        input: AttachPaymentMethodInput,
    ) -> Result<Replayable<PaymentMethodsPayload>> {
        let attach = domain::payment_methods::Attach {
            billing_account_id: account_id(&input.billing_account_id)?,
            payment_method_id: input.payment_method_id,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::payment_methods::attach(s, a, attach, k).await,
            |r| Some(r.0.workspace_id),
            |r| PaymentMethodsPayload {
                billing_account: BillingAccount(r.0),
            },
        )
        .await
    }

    /// Makes a payment method its account's default.
    async fn set_default_payment_method(
        &self,
        ctx: &Context<'_>,
        input: PaymentMethodInput,
    ) -> Result<Replayable<PaymentMethodsPayload>> {
        let m = domain::payment_methods::MethodRef {
            payment_method_id: payment_method_id(&input.payment_method_id)?,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::payment_methods::set_default(s, a, m, k).await,
            |r| Some(r.0.workspace_id),
            |r| PaymentMethodsPayload {
                billing_account: BillingAccount(r.0),
            },
        )
        .await
    }

    /// Detaches a payment method; refused for the only one, and for the default while
    /// subscriptions are active.
    async fn detach_payment_method(
        &self,
        ctx: &Context<'_>,
        input: PaymentMethodInput,
    ) -> Result<Replayable<PaymentMethodsPayload>> {
        let m = domain::payment_methods::MethodRef {
            payment_method_id: payment_method_id(&input.payment_method_id)?,
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::payment_methods::detach(s, a, m, k).await,
            |r| Some(r.0.workspace_id),
            |r| PaymentMethodsPayload {
                billing_account: BillingAccount(r.0),
            },
        )
        .await
    }

    /// Subscribes an account to a plan with add-ons (at most three active per account).
    /// The workspace's first subscription, with a single account, is a 14-day trial that
    /// needs no payment method; otherwise the default payment method is charged.
    async fn create_subscription(
        &self,
        ctx: &Context<'_>,
        input: CreateSubscriptionInput,
    ) -> Result<Replayable<SubscriptionPayload>> {
        let new = domain::subscriptions::NewSubscription {
            billing_account_id: account_id(&input.billing_account_id)?,
            plan: input.plan.into(),
            quantities: quantities(input.quantities),
            metadata: input
                .metadata
                .into_iter()
                .map(|m| (m.key, m.value))
                .collect(),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::subscriptions::create(s, a, new, k).await,
            |r| Some(r.workspace_id),
            |r| SubscriptionPayload {
                subscription: Subscription(r, None),
            },
        )
        .await
    }

    /// Changes add-on quantities: increases take effect at once (prorated), decreases at
    /// the next period and never below current usage.
    async fn update_subscription(
        &self,
        ctx: &Context<'_>,
        input: UpdateSubscriptionInput,
    ) -> Result<Replayable<UpdateSubscriptionPayload>> {
        let change = domain::subscriptions::SubscriptionUpdate {
            subscription_id: subscription_id(&input.subscription_id)?,
            quantities: quantities(input.quantities),
        };
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::subscriptions::update(s, a, change, k).await,
            |r| Some(r.row.workspace_id),
            |r| UpdateSubscriptionPayload {
                subscription: Subscription(r.row, None),
                approval_request: r.held.map(super::approvals::ApprovalRequest),
            },
        )
        .await
    }

    /// Cancels a subscription at the end of its period; refused when the remaining
    /// capacity would fall below current usage.
    async fn cancel_subscription(
        &self,
        ctx: &Context<'_>,
        input: CancelSubscriptionInput,
    ) -> Result<Replayable<CancelSubscriptionPayload>> {
        let id = subscription_id(&input.subscription_id)?;
        replay::mutate(
            ctx,
            input.idempotency_key,
            async move |s, a, k| domain::subscriptions::cancel(s, a, id, k).await,
            |r| Some(r.row.workspace_id),
            |r| CancelSubscriptionPayload {
                subscription: Subscription(r.row, None),
                approval_request: r.held.map(super::approvals::ApprovalRequest),
            },
        )
        .await
    }
}
