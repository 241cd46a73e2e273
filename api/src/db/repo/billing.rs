//! Billing accounts, payment methods, subscriptions, invoices, capacity pools and the
//! recovery points of calls to Stripe.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::cached::CachedExt;
use crate::db::schema::{billing_accounts, payment_methods, stripe_intents, subscriptions};

/// A row of `billing_accounts`.
#[derive(
    Debug, Clone, Queryable, QueryableByName, Selectable, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = billing_accounts)]
pub struct BillingAccountRow {
    /// Primary key.
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// `PENDING`, `ACTIVE` or `DELETED`.
    pub state: String,
    /// The Stripe customer (`None` while `PENDING`).
    pub stripe_customer_id: Option<String>,
    /// Name, 1–100 characters.
    pub name: String,
    /// Billing e-mail, up to 150 characters.
    pub email: String,
    /// Phone, up to 50 characters.
    pub phone: Option<String>,
    /// Description, up to 200 characters.
    pub description: Option<String>,
    /// ISO 4217 code, lower case.
    pub currency: String,
    /// Postal address (Stripe's shape).
    pub address: Option<serde_json::Value>,
    /// The customer's default payment method (Stripe id).
    pub default_payment_method: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A row of `payment_methods`.
#[derive(
    Debug, Clone, Queryable, QueryableByName, Selectable, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = payment_methods)]
pub struct PaymentMethodRow {
    /// Primary key.
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Account.
    pub billing_account_id: Uuid,
    /// Stripe id (`pm_…`).
    pub stripe_payment_method_id: String,
    /// Stripe's `type` (`card` …).
    pub kind: String,
    /// Card brand.
    pub brand: Option<String>,
    /// Last four digits.
    pub last4: Option<String>,
    /// Expiry month.
    pub exp_month: Option<i32>,
    /// Expiry year.
    pub exp_year: Option<i32>,
    /// Attached.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A row of `subscriptions`.
#[derive(
    Debug, Clone, Queryable, QueryableByName, Selectable, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = subscriptions)]
pub struct SubscriptionRow {
    /// Primary key.
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Account.
    pub billing_account_id: Uuid,
    /// Stripe id (`None` while being created).
    pub stripe_subscription_id: Option<String>,
    /// Plan.
    pub plan: String,
    /// Stripe's status in upper case, or `PENDING`.
    pub status: String,
    /// Ends at the end of the period.
    pub cancel_at_period_end: bool,
    /// Current period start.
    pub current_period_start: Option<DateTime<Utc>>,
    /// Current period end.
    pub current_period_end: Option<DateTime<Utc>>,
    /// Trial end.
    pub trial_end: Option<DateTime<Utc>>,
    /// Canceled.
    pub canceled_at: Option<DateTime<Utc>>,
    /// Metadata (string map).
    pub metadata: serde_json::Value,
    /// Time of the Stripe state last applied.
    pub stripe_seen_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A row of `invoices` (read by name; the table has more columns than diesel's `table!`
/// takes without its wide-table feature).
#[derive(Debug, Clone, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct InvoiceRow {
    /// Primary key.
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// Account.
    #[diesel(sql_type = SqlUuid)]
    pub billing_account_id: Uuid,
    /// Stripe id (`in_…`).
    #[diesel(sql_type = Text)]
    pub stripe_invoice_id: String,
    /// Stripe subscription.
    #[diesel(sql_type = Nullable<Text>)]
    pub stripe_subscription_id: Option<String>,
    /// Stripe status (`draft`, `open`, `paid`, `uncollectible`, `void`).
    #[diesel(sql_type = Nullable<Text>)]
    pub status: Option<String>,
    /// Number.
    #[diesel(sql_type = Nullable<Text>)]
    pub number: Option<String>,
    /// Minor units.
    #[diesel(sql_type = BigInt)]
    pub amount_due: i64,
    /// Minor units.
    #[diesel(sql_type = BigInt)]
    pub amount_paid: i64,
    /// Minor units.
    #[diesel(sql_type = BigInt)]
    pub amount_remaining: i64,
    /// Minor units.
    #[diesel(sql_type = BigInt)]
    pub subtotal: i64,
    /// Minor units.
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    /// Lower-case ISO code.
    #[diesel(sql_type = Text)]
    pub currency: String,
    /// Hosted page.
    #[diesel(sql_type = Nullable<Text>)]
    pub hosted_invoice_url: Option<String>,
    /// PDF.
    #[diesel(sql_type = Nullable<Text>)]
    pub invoice_pdf: Option<String>,
    /// Lines (our JSON of Stripe's lines).
    #[diesel(sql_type = Jsonb)]
    pub lines: serde_json::Value,
    /// Period start.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub period_start: Option<DateTime<Utc>>,
    /// Period end.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub period_end: Option<DateTime<Utc>>,
    /// Stripe's `created`.
    #[diesel(sql_type = Timestamptz)]
    pub stripe_created: DateTime<Utc>,
    /// Rank of the status last applied.
    #[diesel(sql_type = diesel::sql_types::SmallInt)]
    pub status_rank: i16,
    /// Last changed.
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

/// A row of `stripe_intents`.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = stripe_intents)]
pub struct IntentRow {
    /// Primary key.
    pub id: Uuid,
    /// Workspace.
    pub workspace_id: Uuid,
    /// Who asked.
    pub caller_id: Option<Uuid>,
    /// Their idempotency key.
    pub client_key: Option<String>,
    /// Operation.
    pub operation: String,
    /// Fingerprint of the request.
    pub fingerprint: String,
    /// The Stripe idempotency key.
    pub stripe_key: String,
    /// The row the call is for.
    pub target_id: Uuid,
    /// The call.
    pub request: serde_json::Value,
    /// `PENDING`, `DONE` or `FAILED`.
    pub state: String,
    /// Stripe's answer.
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

// ----- billing accounts -----

/// Inserts an account (normally `PENDING`).
pub async fn insert_account(
    conn: &mut AsyncPgConnection,
    row: &BillingAccountRow,
) -> QueryResult<()> {
    diesel::insert_into(billing_accounts::table)
        .values((
            billing_accounts::id.eq(row.id),
            billing_accounts::workspace_id.eq(row.workspace_id),
            billing_accounts::state.eq(&row.state),
            billing_accounts::stripe_customer_id.eq(&row.stripe_customer_id),
            billing_accounts::name.eq(&row.name),
            billing_accounts::email.eq(&row.email),
            billing_accounts::phone.eq(&row.phone),
            billing_accounts::description.eq(&row.description),
            billing_accounts::currency.eq(&row.currency),
            billing_accounts::address.eq(&row.address),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// An account in any state.
pub async fn account(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<BillingAccountRow>> {
    billing_accounts::table
        .find(id)
        .select(BillingAccountRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A live (not deleted) account, locked for update.
pub async fn lock_account(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<BillingAccountRow>> {
    billing_accounts::table
        .find(id)
        .filter(billing_accounts::state.ne("DELETED"))
        .select(BillingAccountRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// The account of a Stripe customer.
pub async fn account_by_customer(
    conn: &mut AsyncPgConnection,
    customer: &str,
) -> QueryResult<Option<BillingAccountRow>> {
    billing_accounts::table
        .filter(billing_accounts::stripe_customer_id.eq(customer))
        .select(BillingAccountRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The active accounts of several workspaces, oldest first.
pub async fn active_accounts(
    conn: &mut AsyncPgConnection,
    ws_ids: &[Uuid],
) -> QueryResult<Vec<BillingAccountRow>> {
    billing_accounts::table
        .filter(billing_accounts::workspace_id.eq_any(ws_ids))
        .filter(billing_accounts::state.eq("ACTIVE"))
        .order((billing_accounts::created_at, billing_accounts::id))
        .select(BillingAccountRow::as_select())
        .load(conn)
        .await
}

/// Accounts of a workspace that hold a place under the mode's cap (pending and active).
pub async fn count_live_accounts(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<i64> {
    billing_accounts::table
        .filter(billing_accounts::workspace_id.eq(ws))
        .filter(billing_accounts::state.ne("DELETED"))
        .count()
        .get_result(conn)
        .await
}

/// Marks a pending account active with its Stripe customer; `false` when it was not pending.
pub async fn activate_account(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    customer: &str,
) -> QueryResult<bool> {
    diesel::update(
        billing_accounts::table
            .find(id)
            .filter(billing_accounts::state.eq("PENDING")),
    )
    .set((
        billing_accounts::state.eq("ACTIVE"),
        billing_accounts::stripe_customer_id.eq(customer),
        billing_accounts::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await
    .map(|n| n == 1)
}

/// Deletes a pending account (its customer was never created).
pub async fn discard_pending_account(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::delete(
        billing_accounts::table
            .find(id)
            .filter(billing_accounts::state.eq("PENDING")),
    )
    .execute(conn)
    .await
}

/// The editable fields of an account.
pub struct AccountFields<'a> {
    /// Name.
    pub name: &'a str,
    /// E-mail.
    pub email: &'a str,
    /// Phone.
    pub phone: Option<&'a str>,
    /// Description.
    pub description: Option<&'a str>,
    /// Address.
    pub address: Option<&'a serde_json::Value>,
}

/// Writes an account's fields.
pub async fn update_account(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    f: &AccountFields<'_>,
) -> QueryResult<()> {
    diesel::update(billing_accounts::table.find(id))
        .set((
            billing_accounts::name.eq(f.name),
            billing_accounts::email.eq(f.email),
            billing_accounts::phone.eq(f.phone),
            billing_accounts::description.eq(f.description),
            billing_accounts::address.eq(f.address),
            billing_accounts::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Marks an account deleted.
pub async fn delete_account(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::update(billing_accounts::table.find(id))
        .set((
            billing_accounts::state.eq("DELETED"),
            billing_accounts::deleted_at.eq(diesel::dsl::now),
            billing_accounts::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Sets the customer's default payment method as Stripe has it.
pub async fn set_default_payment_method(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    pm: Option<&str>,
) -> QueryResult<()> {
    diesel::update(billing_accounts::table.find(id))
        .set((
            billing_accounts::default_payment_method.eq(pm),
            billing_accounts::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Root organizations assigned to an account.
pub async fn count_assigned_roots(conn: &mut AsyncPgConnection, account: Uuid) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let r: N =
        diesel::sql_query("SELECT count(*) AS n FROM organizations WHERE billing_account_id = $1")
            .bind::<SqlUuid, _>(account)
            .get_result(conn)
            .await?;
    Ok(r.n)
}

/// Assigns (or clears) a root organization's account.
pub async fn assign_root(
    conn: &mut AsyncPgConnection,
    org: Uuid,
    account: Option<Uuid>,
) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE organizations SET billing_account_id = $2, updated_at = now() WHERE id = $1 AND parent_id IS NULL",
    )
    .bind::<SqlUuid, _>(org)
    .bind::<Nullable<SqlUuid>, _>(account)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The account a root organization is assigned.
pub async fn root_account(conn: &mut AsyncPgConnection, org: Uuid) -> QueryResult<Option<Uuid>> {
    #[derive(QueryableByName)]
    struct A {
        #[diesel(sql_type = Nullable<SqlUuid>)]
        billing_account_id: Option<Uuid>,
    }
    let r: Option<A> =
        diesel::sql_query("SELECT billing_account_id FROM organizations WHERE id = $1")
            .bind::<SqlUuid, _>(org)
            .get_result(conn)
            .await
            .optional()?;
    Ok(r.and_then(|a| a.billing_account_id))
}

/// The assigned accounts of root organizations (`None`: unassigned), for many roots.
pub async fn root_accounts(
    conn: &mut AsyncPgConnection,
    orgs: &[Uuid],
) -> QueryResult<Vec<(Uuid, Option<Uuid>)>> {
    #[derive(QueryableByName)]
    struct A {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Nullable<SqlUuid>)]
        billing_account_id: Option<Uuid>,
    }
    let rows: Vec<A> =
        diesel::sql_query("SELECT id, billing_account_id FROM organizations WHERE id = ANY($1)")
            .bind::<Array<SqlUuid>, _>(orgs)
            .load(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|a| (a.id, a.billing_account_id))
        .collect())
}

// ----- payment methods -----

/// Payment methods of several accounts, oldest first.
pub async fn payment_methods_of(
    conn: &mut AsyncPgConnection,
    accounts: &[Uuid],
) -> QueryResult<Vec<PaymentMethodRow>> {
    payment_methods::table
        .filter(payment_methods::billing_account_id.eq_any(accounts))
        .order((payment_methods::created_at, payment_methods::id))
        .select(PaymentMethodRow::as_select())
        .load(conn)
        .await
}

/// A payment method by Stripe id.
pub async fn payment_method_by_stripe(
    conn: &mut AsyncPgConnection,
    pm: &str,
) -> QueryResult<Option<PaymentMethodRow>> {
    payment_methods::table
        .filter(payment_methods::stripe_payment_method_id.eq(pm))
        .select(PaymentMethodRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A payment method by id.
pub async fn payment_method(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<PaymentMethodRow>> {
    payment_methods::table
        .find(id)
        .select(PaymentMethodRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Inserts or refreshes a payment method attached to `account`; returns its row.
pub async fn upsert_payment_method(
    conn: &mut AsyncPgConnection,
    row: &PaymentMethodRow,
) -> QueryResult<PaymentMethodRow> {
    diesel::insert_into(payment_methods::table)
        .values((
            payment_methods::id.eq(row.id),
            payment_methods::workspace_id.eq(row.workspace_id),
            payment_methods::billing_account_id.eq(row.billing_account_id),
            payment_methods::stripe_payment_method_id.eq(&row.stripe_payment_method_id),
            payment_methods::kind.eq(&row.kind),
            payment_methods::brand.eq(&row.brand),
            payment_methods::last4.eq(&row.last4),
            payment_methods::exp_month.eq(row.exp_month),
            payment_methods::exp_year.eq(row.exp_year),
        ))
        .on_conflict(payment_methods::stripe_payment_method_id)
        .do_update()
        .set((
            payment_methods::billing_account_id.eq(row.billing_account_id),
            payment_methods::workspace_id.eq(row.workspace_id),
            payment_methods::brand.eq(&row.brand),
            payment_methods::last4.eq(&row.last4),
            payment_methods::exp_month.eq(row.exp_month),
            payment_methods::exp_year.eq(row.exp_year),
            payment_methods::updated_at.eq(diesel::dsl::now),
        ))
        .returning(PaymentMethodRow::as_returning())
        .get_result(conn)
        .await
}

/// Removes a payment method by Stripe id; returns how many rows went.
pub async fn delete_payment_method(conn: &mut AsyncPgConnection, pm: &str) -> QueryResult<usize> {
    diesel::delete(payment_methods::table.filter(payment_methods::stripe_payment_method_id.eq(pm)))
        .execute(conn)
        .await
}

/// Payment methods of an account.
pub async fn count_payment_methods(
    conn: &mut AsyncPgConnection,
    account: Uuid,
) -> QueryResult<i64> {
    payment_methods::table
        .filter(payment_methods::billing_account_id.eq(account))
        .count()
        .get_result(conn)
        .await
}

// ----- subscriptions -----

/// The statuses that hold a place under the three-subscription cap.
pub const LIVE_STATUSES: [&str; 7] = [
    "PENDING",
    "TRIALING",
    "ACTIVE",
    "PAST_DUE",
    "UNPAID",
    "INCOMPLETE",
    "PAUSED",
];

/// The statuses whose subscriptions fund their pool.
pub const FUNDING_STATUSES: [&str; 3] = ["TRIALING", "ACTIVE", "PAST_DUE"];

/// Subscriptions of several accounts, oldest first.
pub async fn subscriptions_of(
    conn: &mut AsyncPgConnection,
    accounts: &[Uuid],
) -> QueryResult<Vec<SubscriptionRow>> {
    subscriptions::table
        .filter(subscriptions::billing_account_id.eq_any(accounts))
        .filter(subscriptions::status.ne("PENDING"))
        .order((subscriptions::created_at, subscriptions::id))
        .select(SubscriptionRow::as_select())
        .load(conn)
        .await
}

/// A subscription by id.
pub async fn subscription(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table
        .find(id)
        .select(SubscriptionRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// A subscription by Stripe id, locked.
pub async fn lock_subscription_by_stripe(
    conn: &mut AsyncPgConnection,
    stripe_id: &str,
) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table
        .filter(subscriptions::stripe_subscription_id.eq(stripe_id))
        .select(SubscriptionRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// A subscription by id, locked.
pub async fn lock_subscription(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table
        .find(id)
        .select(SubscriptionRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Subscriptions of an account that count against the cap of three.
pub async fn count_live_subscriptions(
    conn: &mut AsyncPgConnection,
    account: Uuid,
) -> QueryResult<i64> {
    subscriptions::table
        .filter(subscriptions::billing_account_id.eq(account))
        .filter(subscriptions::status.eq_any(LIVE_STATUSES))
        .count()
        .get_result(conn)
        .await
}

/// Whether the workspace ever had a subscription (trial eligibility).
pub async fn any_subscription(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        subscriptions::table.filter(subscriptions::workspace_id.eq(ws)),
    ))
    .get_result(conn)
    .await
}

/// Inserts a pending subscription.
pub async fn insert_pending_subscription(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    ws: Uuid,
    account: Uuid,
    plan: &str,
    metadata: &serde_json::Value,
) -> QueryResult<()> {
    diesel::insert_into(subscriptions::table)
        .values((
            subscriptions::id.eq(id),
            subscriptions::workspace_id.eq(ws),
            subscriptions::billing_account_id.eq(account),
            subscriptions::plan.eq(plan),
            subscriptions::status.eq("PENDING"),
            subscriptions::metadata.eq(metadata),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Deletes a pending subscription (Stripe refused to create it).
pub async fn discard_pending_subscription(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<usize> {
    diesel::delete(
        subscriptions::table
            .find(id)
            .filter(subscriptions::status.eq("PENDING")),
    )
    .execute(conn)
    .await
}

/// Stripe's state of a subscription, as the mirror writes it.
pub struct SubscriptionState<'a> {
    /// Stripe id.
    pub stripe_id: &'a str,
    /// Status (upper case).
    pub status: &'a str,
    /// Cancel at period end.
    pub cancel_at_period_end: bool,
    /// Period start.
    pub current_period_start: Option<DateTime<Utc>>,
    /// Period end.
    pub current_period_end: Option<DateTime<Utc>>,
    /// Trial end.
    pub trial_end: Option<DateTime<Utc>>,
    /// Canceled at.
    pub canceled_at: Option<DateTime<Utc>>,
    /// Metadata.
    pub metadata: &'a serde_json::Value,
    /// When this state was read from Stripe (orders the states of one subscription).
    pub seen_at: DateTime<Utc>,
}

/// Writes Stripe's state onto a subscription row.
pub async fn write_subscription_state(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    s: &SubscriptionState<'_>,
) -> QueryResult<()> {
    diesel::update(subscriptions::table.find(id))
        .set((
            subscriptions::stripe_subscription_id.eq(s.stripe_id),
            subscriptions::status.eq(s.status),
            subscriptions::cancel_at_period_end.eq(s.cancel_at_period_end),
            subscriptions::current_period_start.eq(s.current_period_start),
            subscriptions::current_period_end.eq(s.current_period_end),
            subscriptions::trial_end.eq(s.trial_end),
            subscriptions::canceled_at.eq(s.canceled_at),
            subscriptions::metadata.eq(s.metadata),
            subscriptions::stripe_seen_at.eq(s.seen_at),
            subscriptions::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Inserts a subscription row for a Stripe subscription created elsewhere (the dashboard,
/// Checkout) with Stripe's state.
pub async fn insert_subscription_from_stripe(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    ws: Uuid,
    account: Uuid,
    plan: &str,
    s: &SubscriptionState<'_>,
) -> QueryResult<bool> {
    diesel::insert_into(subscriptions::table)
        .values((
            subscriptions::id.eq(id),
            subscriptions::workspace_id.eq(ws),
            subscriptions::billing_account_id.eq(account),
            subscriptions::stripe_subscription_id.eq(s.stripe_id),
            subscriptions::plan.eq(plan),
            subscriptions::status.eq(s.status),
            subscriptions::cancel_at_period_end.eq(s.cancel_at_period_end),
            subscriptions::current_period_start.eq(s.current_period_start),
            subscriptions::current_period_end.eq(s.current_period_end),
            subscriptions::trial_end.eq(s.trial_end),
            subscriptions::canceled_at.eq(s.canceled_at),
            subscriptions::metadata.eq(s.metadata),
            subscriptions::stripe_seen_at.eq(s.seen_at),
        ))
        .on_conflict(subscriptions::stripe_subscription_id)
        .do_nothing()
        .execute(conn)
        .await
        .map(|n| n == 1)
}

/// A subscription's Stripe items `(price, item id, quantity)`.
pub async fn subscription_items(
    conn: &mut AsyncPgConnection,
    subs: &[Uuid],
) -> QueryResult<Vec<(Uuid, String, Option<String>, i64)>> {
    #[derive(QueryableByName)]
    struct I {
        #[diesel(sql_type = SqlUuid)]
        subscription_id: Uuid,
        #[diesel(sql_type = Text)]
        stripe_price_id: String,
        #[diesel(sql_type = Nullable<Text>)]
        stripe_item_id: Option<String>,
        #[diesel(sql_type = BigInt)]
        quantity: i64,
    }
    let rows: Vec<I> = diesel::sql_query(
        "SELECT subscription_id, stripe_price_id, stripe_item_id, quantity FROM subscription_items
          WHERE subscription_id = ANY($1) ORDER BY subscription_id, stripe_price_id",
    )
    .bind::<Array<SqlUuid>, _>(subs)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|i| {
            (
                i.subscription_id,
                i.stripe_price_id,
                i.stripe_item_id,
                i.quantity,
            )
        })
        .collect())
}

/// Replaces a subscription's items.
pub async fn replace_items(
    conn: &mut AsyncPgConnection,
    sub: Uuid,
    items: &[(String, Option<String>, i64)],
) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM subscription_items WHERE subscription_id = $1")
        .bind::<SqlUuid, _>(sub)
        .execute(conn)
        .await?;
    let prices: Vec<&str> = items.iter().map(|i| i.0.as_str()).collect();
    let ids: Vec<Option<&str>> = items.iter().map(|i| i.1.as_deref()).collect();
    let qs: Vec<i64> = items.iter().map(|i| i.2).collect();
    diesel::sql_query(
        "INSERT INTO subscription_items (subscription_id, stripe_price_id, stripe_item_id, quantity)
         SELECT $1, p, i, q FROM unnest($2::text[], $3::text[], $4::bigint[]) AS t(p, i, q)
         ON CONFLICT (subscription_id, stripe_price_id) DO UPDATE SET quantity = EXCLUDED.quantity",
    )
    .bind::<SqlUuid, _>(sub)
    .bind::<Array<Text>, _>(prices)
    .bind::<Array<Nullable<Text>>, _>(ids)
    .bind::<Array<BigInt>, _>(qs)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Capacities per resource of subscriptions.
pub async fn subscription_capacities(
    conn: &mut AsyncPgConnection,
    subs: &[Uuid],
) -> QueryResult<Vec<(Uuid, String, i64)>> {
    #[derive(QueryableByName)]
    struct C {
        #[diesel(sql_type = SqlUuid)]
        subscription_id: Uuid,
        #[diesel(sql_type = Text)]
        resource: String,
        #[diesel(sql_type = BigInt)]
        quantity: i64,
    }
    let rows: Vec<C> = diesel::sql_query(
        "SELECT subscription_id, resource, quantity FROM subscription_capacities
          WHERE subscription_id = ANY($1) ORDER BY subscription_id, resource",
    )
    .bind::<Array<SqlUuid>, _>(subs)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|c| (c.subscription_id, c.resource, c.quantity))
        .collect())
}

/// Sets a subscription's capacity of each resource.
pub async fn set_capacities(
    conn: &mut AsyncPgConnection,
    sub: Uuid,
    caps: &[(&str, i64)],
) -> QueryResult<()> {
    let rs: Vec<&str> = caps.iter().map(|c| c.0).collect();
    let qs: Vec<i64> = caps.iter().map(|c| c.1).collect();
    diesel::sql_query(
        "INSERT INTO subscription_capacities (subscription_id, resource, quantity)
         SELECT $1, r, q FROM unnest($2::text[], $3::bigint[]) AS t(r, q)
         ON CONFLICT (subscription_id, resource) DO UPDATE SET quantity = EXCLUDED.quantity",
    )
    .bind::<SqlUuid, _>(sub)
    .bind::<Array<Text>, _>(rs)
    .bind::<Array<BigInt>, _>(qs)
    .execute(conn)
    .await
    .map(|_| ())
}

// ----- pools -----

/// Recomputes a pool's capacities of `resources` (the pooled resources) from its funding
/// subscriptions and copies them onto its counters. `accounts`: the accounts that feed the
/// pool.
pub async fn refresh_pool(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    pool: Uuid,
    accounts: &[Uuid],
    resources: &[&str],
) -> QueryResult<()> {
    diesel::sql_query(
        "WITH caps AS (
            SELECT r.key AS resource, coalesce(sum(c.quantity), 0)::bigint AS capacity
              FROM unnest($4::text[]) AS r(key)
              LEFT JOIN subscriptions s ON s.billing_account_id = ANY($3) AND s.status = ANY($5)
              LEFT JOIN subscription_capacities c ON c.subscription_id = s.id AND c.resource = r.key
             GROUP BY r.key
         ), upd AS (
            INSERT INTO pool_capacities (pool_id, resource, workspace_id, capacity)
            SELECT $2, resource, $1, capacity FROM caps
            ON CONFLICT (pool_id, resource) DO UPDATE SET capacity = EXCLUDED.capacity
         )
         UPDATE pool_counters p SET capacity = caps.capacity
           FROM caps WHERE p.pool_id = $2 AND p.resource = caps.resource",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<SqlUuid, _>(pool)
    .bind::<Array<SqlUuid>, _>(accounts)
    .bind::<Array<Text>, _>(resources)
    .bind::<Array<Text>, _>(FUNDING_STATUSES.to_vec())
    .execute(conn)
    .await
    .map(|_| ())
}

/// A pool's counter of one resource and window.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct PoolNumbers {
    /// In use by the pool's organizations.
    #[diesel(sql_type = BigInt)]
    pub used: i64,
    /// Funded by its subscriptions.
    #[diesel(sql_type = BigInt)]
    pub capacity: i64,
}

/// The SQL that makes sure a pool counter exists (`$p` pool, `$ws`, `$r` resource, `$w`
/// window, `$roots_sql` a query of the pool's root organizations): a new counter starts
/// with the subtree usage of the pool's roots and the pool's capacity.
fn ensure_counter_sql(
    pool: usize,
    ws: usize,
    resource: usize,
    window: usize,
    mode_accounts: usize,
) -> String {
    format!(
        "INSERT INTO pool_counters (pool_id, resource, period_start, workspace_id, used, capacity)
         SELECT ${pool}, ${resource}, ${window}, ${ws},
                (SELECT coalesce(sum(u.subtree), 0)::bigint
                   FROM organizations o
                   JOIN usage_counters u ON u.organization_id = o.id AND u.resource = ${resource} AND u.period_start = ${window}
                  WHERE o.workspace_id = ${ws} AND o.parent_id IS NULL
                    AND (${mode_accounts}::boolean IS FALSE OR o.billing_account_id = ${pool})),
                coalesce((SELECT capacity FROM pool_capacities WHERE pool_id = ${pool} AND resource = ${resource}), 0)
         ON CONFLICT (pool_id, resource, period_start) DO NOTHING"
    )
}

/// Locks a pool counter (creating it if needed) and returns it.
pub async fn lock_pool_counter(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    pool: Uuid,
    per_account: bool,
    resource: &str,
    window: DateTime<Utc>,
) -> QueryResult<PoolNumbers> {
    diesel::sql_query(ensure_counter_sql(1, 2, 3, 4, 5))
        .bind::<SqlUuid, _>(pool)
        .bind::<SqlUuid, _>(ws)
        .bind::<Text, _>(resource)
        .bind::<Timestamptz, _>(window)
        .bind::<Bool, _>(per_account)
        .execute(conn)
        .await?;
    diesel::sql_query(
        "SELECT used, capacity FROM pool_counters WHERE pool_id = $1 AND resource = $2 AND period_start = $3 FOR UPDATE",
    )
    .bind::<SqlUuid, _>(pool)
    .bind::<Text, _>(resource)
    .bind::<Timestamptz, _>(window)
    .get_result(conn)
    .await
}

/// Applies an allocation of `delta` (already applied to the organizations' counters in
/// this transaction) to a pool counter, creating it if needed, and returns the counter
/// after the change (its row stays locked until COMMIT). A new counter starts from the
/// subtree usage of the pool's roots, which already includes the change.
pub async fn apply_to_pool(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    pool: Uuid,
    per_account: bool,
    resource: &str,
    window: DateTime<Utc>,
    delta: i64,
) -> QueryResult<PoolNumbers> {
    diesel::sql_query(
        "INSERT INTO pool_counters AS p (pool_id, resource, period_start, workspace_id, used, capacity)
         SELECT $1, $3, $4, $2,
                (SELECT coalesce(sum(u.subtree), 0)::bigint
                   FROM organizations o
                   JOIN usage_counters u ON u.organization_id = o.id AND u.resource = $3 AND u.period_start = $4
                  WHERE o.workspace_id = $2 AND o.parent_id IS NULL
                    AND ($5 IS FALSE OR o.billing_account_id = $1)),
                coalesce((SELECT capacity FROM pool_capacities WHERE pool_id = $1 AND resource = $3), 0)
         ON CONFLICT (pool_id, resource, period_start) DO UPDATE SET used = GREATEST(p.used + $6, 0)
         RETURNING p.used, p.capacity",
    )
    .bind::<SqlUuid, _>(pool)
    .bind::<SqlUuid, _>(ws)
    .bind::<Text, _>(resource)
    .bind::<Timestamptz, _>(window)
    .bind::<Bool, _>(per_account)
    .bind::<BigInt, _>(delta)
    .cached()
    .get_result(conn)
    .await
}

/// Adds `delta` to a locked pool counter.
pub async fn adjust_pool(
    conn: &mut AsyncPgConnection,
    pool: Uuid,
    resource: &str,
    window: DateTime<Utc>,
    delta: i64,
) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE pool_counters SET used = used + $4 WHERE pool_id = $1 AND resource = $2 AND period_start = $3",
    )
    .bind::<SqlUuid, _>(pool)
    .bind::<Text, _>(resource)
    .bind::<Timestamptz, _>(window)
    .bind::<BigInt, _>(delta)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Drops a workspace's pool counters (they are rebuilt from the organizations' counters on
/// next use): when its pools start to apply.
pub async fn reset_pool_counters(conn: &mut AsyncPgConnection, ws: Uuid) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM pool_counters WHERE workspace_id = $1")
        .bind::<SqlUuid, _>(ws)
        .execute(conn)
        .await
        .map(|_| ())
}

/// The capacities of pools.
pub async fn pool_capacities(
    conn: &mut AsyncPgConnection,
    pools: &[Uuid],
) -> QueryResult<Vec<(Uuid, String, i64)>> {
    #[derive(QueryableByName)]
    struct C {
        #[diesel(sql_type = SqlUuid)]
        pool_id: Uuid,
        #[diesel(sql_type = Text)]
        resource: String,
        #[diesel(sql_type = BigInt)]
        capacity: i64,
    }
    let rows: Vec<C> = diesel::sql_query(
        "SELECT pool_id, resource, capacity FROM pool_capacities WHERE pool_id = ANY($1)",
    )
    .bind::<Array<SqlUuid>, _>(pools)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|c| (c.pool_id, c.resource, c.capacity))
        .collect())
}

/// What the pool's organizations use now of `resource` in `window` (the sum of its roots'
/// subtree counters).
pub async fn pool_usage(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    pool: Uuid,
    per_account: bool,
    resource: &str,
    window: DateTime<Utc>,
) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let r: N = diesel::sql_query(
        "SELECT coalesce(sum(u.subtree), 0)::bigint AS n
           FROM organizations o
           JOIN usage_counters u ON u.organization_id = o.id AND u.resource = $3 AND u.period_start = $4
          WHERE o.workspace_id = $1 AND o.parent_id IS NULL AND ($5 IS FALSE OR o.billing_account_id = $2)",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<SqlUuid, _>(pool)
    .bind::<Text, _>(resource)
    .bind::<Timestamptz, _>(window)
    .bind::<Bool, _>(per_account)
    .get_result(conn)
    .await?;
    Ok(r.n)
}

/// What usage views need of the billing pools of workspaces whose billing is active: one
/// row per root organization (`root_id`, its `pool_id`, `None` when unassigned) and one per
/// pool and pooled resource (`resource`, `capacity`, `used` now).
#[derive(Debug, Clone, QueryableByName)]
pub struct PoolViewRow {
    /// Workspace.
    #[diesel(sql_type = SqlUuid)]
    pub workspace_id: Uuid,
    /// A root organization (root rows).
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub root_id: Option<Uuid>,
    /// Its pool (root rows), or the pool (pool rows).
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub pool_id: Option<Uuid>,
    /// A pooled resource (pool rows).
    #[diesel(sql_type = Nullable<Text>)]
    pub resource: Option<String>,
    /// The pool's capacity (pool rows).
    #[diesel(sql_type = BigInt)]
    pub capacity: i64,
    /// What its organizations use now (pool rows).
    #[diesel(sql_type = BigInt)]
    pub used: i64,
}

/// The pools of `ws_ids` for usage views (see [`PoolViewRow`]); nothing for workspaces
/// without an active billing account. Takes `&AsyncPgConnection` so that it pipelines with
/// the view's other statements.
pub async fn pool_views(
    conn: &AsyncPgConnection,
    ws_ids: &[Uuid],
    window: DateTime<Utc>,
) -> QueryResult<Vec<PoolViewRow>> {
    diesel::sql_query(
        "WITH ws AS (
            SELECT w.id, w.billing_mode FROM workspaces w
             WHERE w.id = ANY($1)
               AND EXISTS (SELECT 1 FROM billing_accounts b WHERE b.workspace_id = w.id AND b.state = 'ACTIVE')
         ), roots AS (
            SELECT o.workspace_id, o.id,
                   CASE WHEN ws.billing_mode = 'ASSIGNED' THEN o.billing_account_id ELSE o.workspace_id END AS pool_id
              FROM organizations o JOIN ws ON ws.id = o.workspace_id
             WHERE o.parent_id IS NULL
         )
         SELECT workspace_id, id AS root_id, pool_id, NULL::text AS resource, 0::bigint AS capacity, 0::bigint AS used
           FROM roots
         UNION ALL
         SELECT pc.workspace_id, NULL, pc.pool_id, pc.resource, pc.capacity,
                coalesce((SELECT sum(u.subtree) FROM roots r
                            JOIN usage_counters u ON u.organization_id = r.id AND u.resource = pc.resource AND u.period_start = $2
                           WHERE r.pool_id = pc.pool_id), 0)::bigint
           FROM pool_capacities pc JOIN ws ON ws.id = pc.workspace_id",
    )
    .bind::<Array<SqlUuid>, _>(ws_ids)
    .bind::<Timestamptz, _>(window)
    .cached()
    .load(&mut { conn })
    .await
}

/// Net units of each of `resources` a workspace's organizations used in `[from, to)` (the
/// usage ledger's changes).
pub async fn metered_units(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    resources: &[&str],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> QueryResult<Vec<(String, i64)>> {
    #[derive(QueryableByName)]
    struct U {
        #[diesel(sql_type = Text)]
        resource: String,
        #[diesel(sql_type = BigInt)]
        units: i64,
    }
    let rows: Vec<U> = diesel::sql_query(
        "SELECT resource, sum(delta)::bigint AS units FROM usage_events
          WHERE workspace_id = $1 AND resource = ANY($2)
            AND created_at >= $3 AND created_at < $4
          GROUP BY resource",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Array<Text>, _>(resources)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|u| (u.resource, u.units)).collect())
}

// ----- invoices -----

/// Inserts or updates an invoice unless the stored state is later (by status rank).
pub async fn upsert_invoice(conn: &mut AsyncPgConnection, row: &InvoiceRow) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO invoices AS i (id, workspace_id, billing_account_id, stripe_invoice_id, stripe_subscription_id,
                status, number, amount_due, amount_paid, amount_remaining, subtotal, total, currency,
                hosted_invoice_url, invoice_pdf, lines, period_start, period_end, stripe_created, status_rank)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
         ON CONFLICT (stripe_invoice_id) DO UPDATE SET
                status = EXCLUDED.status, number = EXCLUDED.number, amount_due = EXCLUDED.amount_due,
                amount_paid = EXCLUDED.amount_paid, amount_remaining = EXCLUDED.amount_remaining,
                subtotal = EXCLUDED.subtotal, total = EXCLUDED.total,
                hosted_invoice_url = EXCLUDED.hosted_invoice_url, invoice_pdf = EXCLUDED.invoice_pdf,
                lines = EXCLUDED.lines, status_rank = EXCLUDED.status_rank, updated_at = now()
          WHERE i.status_rank <= EXCLUDED.status_rank",
    )
    .bind::<SqlUuid, _>(row.id)
    .bind::<SqlUuid, _>(row.workspace_id)
    .bind::<SqlUuid, _>(row.billing_account_id)
    .bind::<Text, _>(&row.stripe_invoice_id)
    .bind::<Nullable<Text>, _>(row.stripe_subscription_id.as_deref())
    .bind::<Nullable<Text>, _>(row.status.as_deref())
    .bind::<Nullable<Text>, _>(row.number.as_deref())
    .bind::<BigInt, _>(row.amount_due)
    .bind::<BigInt, _>(row.amount_paid)
    .bind::<BigInt, _>(row.amount_remaining)
    .bind::<BigInt, _>(row.subtotal)
    .bind::<BigInt, _>(row.total)
    .bind::<Text, _>(&row.currency)
    .bind::<Nullable<Text>, _>(row.hosted_invoice_url.as_deref())
    .bind::<Nullable<Text>, _>(row.invoice_pdf.as_deref())
    .bind::<Jsonb, _>(&row.lines)
    .bind::<Nullable<Timestamptz>, _>(row.period_start)
    .bind::<Nullable<Timestamptz>, _>(row.period_end)
    .bind::<Timestamptz, _>(row.stripe_created)
    .bind::<diesel::sql_types::SmallInt, _>(row.status_rank)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Newest-first page of an account's invoices after the invoice `after` (of the same
/// account).
pub async fn invoice_page(
    conn: &mut AsyncPgConnection,
    account: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<InvoiceRow>> {
    diesel::sql_query(
        "SELECT i.* FROM invoices i
          WHERE i.billing_account_id = $1
            AND ($2::uuid IS NULL OR (i.stripe_created, i.id) <
                 (SELECT c.stripe_created, c.id FROM invoices c WHERE c.id = $2 AND c.billing_account_id = $1))
          ORDER BY i.stripe_created DESC, i.id DESC LIMIT $3",
    )
    .bind::<SqlUuid, _>(account)
    .bind::<Nullable<SqlUuid>, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Invoices of a workspace created in `[from, to)`.
pub async fn invoices_between(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> QueryResult<Vec<InvoiceRow>> {
    diesel::sql_query(
        "SELECT * FROM invoices WHERE workspace_id = $1 AND stripe_created >= $2 AND stripe_created < $3",
    )
    .bind::<SqlUuid, _>(ws)
    .bind::<Timestamptz, _>(from)
    .bind::<Timestamptz, _>(to)
    .load(conn)
    .await
}

// ----- intents -----

/// Stores an intent; `false` when the caller's key already has one.
pub async fn insert_intent(conn: &mut AsyncPgConnection, row: &IntentRow) -> QueryResult<bool> {
    diesel::sql_query(
        "INSERT INTO stripe_intents (id, workspace_id, caller_id, client_key, operation, fingerprint,
                                     stripe_key, target_id, request, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'PENDING')
         ON CONFLICT (caller_id, client_key) WHERE client_key IS NOT NULL DO NOTHING",
    )
    .bind::<SqlUuid, _>(row.id)
    .bind::<SqlUuid, _>(row.workspace_id)
    .bind::<Nullable<SqlUuid>, _>(row.caller_id)
    .bind::<Nullable<Text>, _>(row.client_key.as_deref())
    .bind::<Text, _>(&row.operation)
    .bind::<Text, _>(&row.fingerprint)
    .bind::<Text, _>(&row.stripe_key)
    .bind::<SqlUuid, _>(row.target_id)
    .bind::<Jsonb, _>(&row.request)
    .execute(conn)
    .await
    .map(|n| n == 1)
}

/// The intent with Stripe idempotency key `key`.
pub async fn intent_by_stripe_key(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> QueryResult<Option<IntentRow>> {
    stripe_intents::table
        .filter(stripe_intents::stripe_key.eq(key))
        .select(IntentRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The intent of a caller's key.
pub async fn intent_for_key(
    conn: &mut AsyncPgConnection,
    caller: Uuid,
    key: &str,
) -> QueryResult<Option<IntentRow>> {
    stripe_intents::table
        .filter(stripe_intents::caller_id.eq(caller))
        .filter(stripe_intents::client_key.eq(key))
        .select(IntentRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// An intent by id, locked.
pub async fn lock_intent(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<IntentRow>> {
    stripe_intents::table
        .find(id)
        .select(IntentRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// An intent by id.
pub async fn intent(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<IntentRow>> {
    stripe_intents::table
        .find(id)
        .select(IntentRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Deletes up to `batch` completed intents older than `older_than_secs` (a retried mutation
/// whose key is still kept replays from its key, not its intent); returns how many.
pub async fn purge_done_intents(
    conn: &mut AsyncPgConnection,
    older_than_secs: i64,
    batch: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM stripe_intents WHERE id IN (
            SELECT id FROM stripe_intents
             WHERE state = 'DONE' AND updated_at < now() - make_interval(secs => $1)
             LIMIT $2)",
    )
    .bind::<BigInt, _>(older_than_secs)
    .bind::<BigInt, _>(batch)
    .execute(conn)
    .await
}

/// Pending intents created more than `older_than_secs` ago, oldest first: id, workspace,
/// caller.
pub async fn stale_intents(
    conn: &mut AsyncPgConnection,
    older_than_secs: i64,
    limit: i64,
) -> QueryResult<Vec<(Uuid, Uuid, Option<Uuid>)>> {
    stripe_intents::table
        .filter(stripe_intents::state.eq("PENDING"))
        .filter(
            stripe_intents::created_at.lt(Utc::now() - chrono::Duration::seconds(older_than_secs)),
        )
        .order(stripe_intents::created_at)
        .limit(limit)
        .select((
            stripe_intents::id,
            stripe_intents::workspace_id,
            stripe_intents::caller_id,
        ))
        .load(conn)
        .await
}

/// Completes a pending intent with Stripe's answer; `false` when it was not pending.
pub async fn complete_intent(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    result: &serde_json::Value,
) -> QueryResult<bool> {
    diesel::update(
        stripe_intents::table
            .find(id)
            .filter(stripe_intents::state.eq("PENDING")),
    )
    .set((
        stripe_intents::state.eq("DONE"),
        stripe_intents::result.eq(result),
        stripe_intents::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await
    .map(|n| n == 1)
}

/// Deletes an intent Stripe refused (the caller may correct the request and use the key
/// again, as with our own idempotency keys).
pub async fn delete_intent(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<usize> {
    diesel::delete(
        stripe_intents::table
            .find(id)
            .filter(stripe_intents::state.eq("PENDING")),
    )
    .execute(conn)
    .await
}
