//! The local mirror of Stripe's objects: customers (billing accounts), payment methods,
//! subscriptions (and so the pools' capacities) and invoices.
//!
//! Two writers keep it: billing mutations apply Stripe's answer to their own calls
//! (`apply_intent`), and the `stripe-events` worker applies Stripe's events in three steps
//! (`target`, `read`, `apply`; see `domain::webhooks::process`). Events arrive duplicated and
//! out of order, so an event is a hint to read the object's current state from Stripe's API,
//! with no database connection held, which is then applied in a short transaction unless a
//! state read later was applied already (`stripe_reads`); without an API key the event's own
//! object is applied, read at the event's `created`. An answer about another object than the
//! one asked for is refused and the event tried again. Every application is idempotent.

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde_json::json;
use uuid::Uuid;

use super::catalog::{Catalog, POOLED_RESOURCES, Plan, PriceOf};
use super::intents::{StripeAnswer, StripeCall};
use super::{Billing, pools};
use crate::db::repo::billing::{
    self as repo, IntentRow, InvoiceRow, PaymentMethodRow, SubscriptionState,
};
use crate::db::repo::stripe_events as repo_reads;
use crate::domain::audit::{self, Change};
use crate::domain::{Actor, BillingMode, DomainError, DomainResult};
use crate::ids::{BillingAccountId, PaymentMethodId, SubscriptionId, WorkspaceId};
use crate::stripe::{self, StripeApi, StripeError};

fn ts(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

async fn mode_of(conn: &mut AsyncPgConnection, ws: Uuid) -> DomainResult<BillingMode> {
    let row = crate::db::repo::workspaces::find_many(conn, &[ws])
        .await?
        .into_iter()
        .next()
        .ok_or(DomainError::NotFound("workspace"))?;
    BillingMode::parse(&row.billing_mode)
        .ok_or_else(|| DomainError::internal(anyhow::anyhow!("bad billing mode in db")))
}

/// Applies Stripe's answer to an intent's call (see `intents`), with its audit event.
pub async fn apply_intent(
    conn: &mut AsyncPgConnection,
    catalog: &Catalog,
    intent: &IntentRow,
    answer: &StripeAnswer,
    answered_at: DateTime<Utc>,
    actor: &Actor,
) -> DomainResult<()> {
    let ws = intent.workspace_id;
    let call: StripeCall =
        serde_json::from_value(intent.request.clone()).map_err(DomainError::internal)?;
    let target = intent.target_id;
    let (action, target_type, target_id, summary) = match (&call, answer) {
        (StripeCall::CreateCustomer { fields }, StripeAnswer::Customer(c)) => {
            if repo::activate_account(conn, target, &c.id).await? {
                activated(conn, ws, target).await?;
            }
            (
                "billing_account.create",
                "BillingAccount",
                BillingAccountId(target).encode(),
                json!({"stripeCustomerId": c.id, "name": fields.name, "email": fields.email}),
            )
        }
        (StripeCall::UpdateCustomer { fields, .. }, StripeAnswer::Customer(_)) => {
            let address = fields
                .address
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(DomainError::internal)?;
            repo::update_account(
                conn,
                target,
                &repo::AccountFields {
                    name: &fields.name,
                    email: &fields.email,
                    phone: fields.phone.as_deref(),
                    description: fields.description.as_deref(),
                    address: address.as_ref(),
                },
            )
            .await?;
            (
                "billing_account.update",
                "BillingAccount",
                BillingAccountId(target).encode(),
                json!({"name": fields.name, "email": fields.email, "phone": fields.phone, "description": fields.description}),
            )
        }
        (StripeCall::DeleteCustomer { customer }, _) => {
            repo::delete_account(conn, target).await?;
            let mode = mode_of(conn, ws).await?;
            pools::refresh(conn, ws, mode, target).await?;
            (
                "billing_account.delete",
                "BillingAccount",
                BillingAccountId(target).encode(),
                json!({"stripeCustomerId": customer}),
            )
        }
        (StripeCall::AttachPaymentMethod { make_default, .. }, StripeAnswer::PaymentMethod(pm)) => {
            let row = upsert_payment_method(conn, ws, target, pm).await?;
            if *make_default {
                repo::set_default_payment_method(conn, target, Some(&pm.id)).await?;
            }
            (
                "payment_method.attach",
                "PaymentMethod",
                PaymentMethodId(row.id).encode(),
                json!({"billingAccountId": BillingAccountId(target).encode(), "stripePaymentMethodId": pm.id, "brand": pm.brand, "last4": pm.last4, "default": make_default}),
            )
        }
        (StripeCall::DetachPaymentMethod { payment_method }, _) => {
            repo::delete_payment_method(conn, payment_method).await?;
            if let Some(a) = repo::account(conn, target).await?
                && a.default_payment_method.as_deref() == Some(payment_method.as_str())
            {
                repo::set_default_payment_method(conn, target, None).await?;
            }
            (
                "payment_method.detach",
                "BillingAccount",
                BillingAccountId(target).encode(),
                json!({"stripePaymentMethodId": payment_method}),
            )
        }
        (StripeCall::SetDefaultPaymentMethod { payment_method, .. }, _) => {
            repo::set_default_payment_method(conn, target, Some(payment_method)).await?;
            (
                "payment_method.set_default",
                "BillingAccount",
                BillingAccountId(target).encode(),
                json!({"stripePaymentMethodId": payment_method}),
            )
        }
        (StripeCall::CreateSubscription { items, .. }, StripeAnswer::Subscription(s)) => {
            apply_subscription(conn, catalog, s, answered_at, Some(target)).await?;
            (
                "subscription.create",
                "Subscription",
                SubscriptionId(target).encode(),
                json!({"stripeSubscriptionId": s.id, "status": s.status, "items": items}),
            )
        }
        (
            StripeCall::UpdateSubscription {
                items,
                cancel_at_period_end,
                ..
            },
            StripeAnswer::Subscription(s),
        ) => {
            apply_subscription(conn, catalog, s, answered_at, Some(target)).await?;
            let action = if cancel_at_period_end.is_some() {
                "subscription.cancel"
            } else {
                "subscription.update"
            };
            (
                action,
                "Subscription",
                SubscriptionId(target).encode(),
                json!({"stripeSubscriptionId": s.id, "items": items, "cancelAtPeriodEnd": cancel_at_period_end}),
            )
        }
        (call, answer) => {
            return Err(DomainError::internal(anyhow::anyhow!(
                "Stripe answered {answer:?} to {call:?}"
            )));
        }
    };
    audit::record(
        conn,
        Change {
            workspace: WorkspaceId(ws),
            action,
            target_type,
            target_id,
            summary,
            actor,
        },
    )
    .await
}

/// An account became active: when it is the workspace's only one, its pools start to
/// apply (their counters are rebuilt from the organizations' counters); its pool's
/// capacity is computed.
async fn activated(conn: &mut AsyncPgConnection, ws: Uuid, account: Uuid) -> DomainResult<()> {
    let active = repo::active_accounts(conn, &[ws]).await?;
    if active.len() == 1 {
        repo::reset_pool_counters(conn, ws).await?;
    }
    let mode = mode_of(conn, ws).await?;
    pools::refresh(conn, ws, mode, account).await
}

async fn upsert_payment_method(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    account: Uuid,
    pm: &stripe::PaymentMethod,
) -> DomainResult<PaymentMethodRow> {
    let now = Utc::now();
    Ok(repo::upsert_payment_method(
        conn,
        &PaymentMethodRow {
            id: Uuid::now_v7(),
            workspace_id: ws,
            billing_account_id: account,
            stripe_payment_method_id: pm.id.clone(),
            kind: pm.kind.clone(),
            brand: pm.brand.clone(),
            last4: pm.last4.clone(),
            exp_month: pm.exp_month.and_then(|m| i32::try_from(m).ok()),
            exp_year: pm.exp_year.and_then(|y| i32::try_from(y).ok()),
            created_at: now,
            updated_at: now,
        },
    )
    .await?)
}

/// The plan of a Stripe subscription's items (`CUSTOM` when no plan price is among them).
fn plan_of(catalog: &Catalog, s: &stripe::Subscription) -> Plan {
    s.items
        .iter()
        .find_map(|i| match catalog.price_of(&i.price) {
            Some(PriceOf::Plan(p)) => Some(p),
            _ => None,
        })
        .unwrap_or(Plan::Custom)
}

/// Applies Stripe's state of a subscription observed at `seen_at`; `target` is our row
/// when we created it. Capacity increases apply at once; decreases only when Stripe reports
/// a new period (or the subscription stops funding its pool by its status).
pub async fn apply_subscription(
    conn: &mut AsyncPgConnection,
    catalog: &Catalog,
    s: &stripe::Subscription,
    seen_at: DateTime<Utc>,
    target: Option<Uuid>,
) -> DomainResult<Option<Uuid>> {
    let mut row = repo::lock_subscription_by_stripe(conn, &s.id).await?;
    if row.is_none()
        && let Some(t) = target
    {
        row = repo::lock_subscription(conn, t).await?;
    }
    let status = s.status.to_ascii_uppercase();
    if !repo::LIVE_STATUSES.contains(&status.as_str())
        && !["CANCELED", "INCOMPLETE_EXPIRED"].contains(&status.as_str())
    {
        return Err(DomainError::internal(anyhow::anyhow!(
            "unknown subscription status {}",
            s.status
        )));
    }
    // The keys this service adds for itself are not the customer's metadata.
    let metadata: serde_json::Map<String, serde_json::Value> = s
        .metadata
        .iter()
        .filter(|(k, _)| !super::subscriptions::RESERVED_METADATA.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let metadata = serde_json::Value::Object(metadata);
    let state = SubscriptionState {
        stripe_id: &s.id,
        status: &status,
        cancel_at_period_end: s.cancel_at_period_end,
        current_period_start: s.current_period_start.and_then(ts),
        current_period_end: s.current_period_end.and_then(ts),
        trial_end: s.trial_end.and_then(ts),
        canceled_at: s.canceled_at.and_then(ts),
        metadata: &metadata,
        seen_at,
    };
    let (id, ws, account, previous_start, was_pending) = match row {
        Some(r) => {
            if r.stripe_seen_at.is_some_and(|seen| seen > seen_at) {
                // A later state was applied already.
                return Ok(Some(r.id));
            }
            // Stripe never revives an ended subscription: a non-final state is older.
            let ended = |s: &str| matches!(s, "CANCELED" | "INCOMPLETE_EXPIRED");
            if ended(&r.status) && !ended(&status) {
                return Ok(Some(r.id));
            }
            repo::write_subscription_state(conn, r.id, &state).await?;
            (
                r.id,
                r.workspace_id,
                r.billing_account_id,
                r.current_period_start,
                r.status == "PENDING",
            )
        }
        None => {
            // Created outside this service (Stripe's dashboard, Checkout): adopted when its
            // customer is one of our accounts.
            let Some(account) = repo::account_by_customer(conn, &s.customer).await? else {
                tracing::debug!(subscription = s.id, "subscription of an unknown customer");
                return Ok(None);
            };
            let id = Uuid::now_v7();
            let plan = plan_of(catalog, s);
            if !repo::insert_subscription_from_stripe(
                conn,
                id,
                account.workspace_id,
                account.id,
                plan.as_str(),
                &state,
            )
            .await?
            {
                return Ok(None);
            }
            (id, account.workspace_id, account.id, None, true)
        }
    };
    let items: Vec<(String, Option<String>, i64)> = s
        .items
        .iter()
        .map(|i| {
            (
                i.price.clone(),
                Some(i.id.clone()),
                i64::try_from(i.quantity).unwrap_or(i64::MAX),
            )
        })
        .collect();
    repo::replace_items(conn, id, &items).await?;
    let priced: Vec<(String, i64)> = items.iter().map(|(p, _, q)| (p.clone(), *q)).collect();
    let new_caps = catalog.capacities(&priced);
    let old_caps = repo::subscription_capacities(conn, &[id]).await?;
    let new_period = match (previous_start, state.current_period_start) {
        (Some(old), Some(new)) => new > old,
        (None, _) => true,
        (Some(_), None) => false,
    };
    let caps: Vec<(&str, i64)> = POOLED_RESOURCES
        .iter()
        .map(|r| {
            let new = new_caps.iter().find(|(k, _)| k == r).map_or(0, |(_, q)| *q);
            let old = old_caps.iter().find(|(_, k, _)| k == r).map(|(_, _, q)| *q);
            let keep = match old {
                Some(old) if new < old && !new_period && !was_pending => old,
                _ => new,
            };
            (*r, keep)
        })
        .collect();
    repo::set_capacities(conn, id, &caps).await?;
    let mode = mode_of(conn, ws).await?;
    pools::refresh(conn, ws, mode, account).await?;
    Ok(Some(id))
}

/// The rank of an invoice status: a late event never moves an invoice back.
fn invoice_rank(status: Option<&str>) -> i16 {
    match status {
        Some("draft") => 1,
        Some("open") => 2,
        Some("uncollectible") => 3,
        Some("paid") | Some("void") => 4,
        _ => 0,
    }
}

/// Applies Stripe's state of an invoice (of one of our accounts).
pub async fn apply_invoice(
    conn: &mut AsyncPgConnection,
    inv: &stripe::Invoice,
) -> DomainResult<()> {
    let Some(id) = inv.id.as_ref() else {
        return Ok(());
    };
    let Some(account) = repo::account_by_customer(conn, &inv.customer).await? else {
        tracing::debug!(invoice = id, "invoice of an unknown customer");
        return Ok(());
    };
    let lines = serde_json::to_value(&inv.lines).map_err(DomainError::internal)?;
    repo::upsert_invoice(
        conn,
        &InvoiceRow {
            id: Uuid::now_v7(),
            workspace_id: account.workspace_id,
            billing_account_id: account.id,
            stripe_invoice_id: id.clone(),
            stripe_subscription_id: inv.subscription.clone(),
            status: inv.status.clone(),
            number: inv.number.clone(),
            amount_due: inv.amount_due,
            amount_paid: inv.amount_paid,
            amount_remaining: inv.amount_remaining,
            subtotal: inv.subtotal,
            total: inv.total,
            currency: inv.currency.to_ascii_lowercase(),
            hosted_invoice_url: inv.hosted_invoice_url.clone(),
            invoice_pdf: inv.invoice_pdf.clone(),
            lines,
            period_start: ts(inv.period_start),
            period_end: ts(inv.period_end),
            stripe_created: ts(inv.created).unwrap_or_else(Utc::now),
            status_rank: invoice_rank(inv.status.as_deref()),
            updated_at: Utc::now(),
        },
    )
    .await?;
    Ok(())
}

/// Applies Stripe's state of a customer: its default payment method, or its deletion.
pub async fn apply_customer(
    conn: &mut AsyncPgConnection,
    c: &stripe::Customer,
) -> DomainResult<()> {
    let Some(account) = repo::account_by_customer(conn, &c.id).await? else {
        return Ok(());
    };
    if c.deleted {
        if account.state != "DELETED" {
            repo::delete_account(conn, account.id).await?;
            let mode = mode_of(conn, account.workspace_id).await?;
            pools::refresh(conn, account.workspace_id, mode, account.id).await?;
        }
        return Ok(());
    }
    if account.default_payment_method != c.default_payment_method {
        repo::set_default_payment_method(conn, account.id, c.default_payment_method.as_deref())
            .await?;
    }
    Ok(())
}

/// Applies Stripe's state of a payment method: attached to one of our customers, or not.
pub async fn apply_payment_method(
    conn: &mut AsyncPgConnection,
    pm: &stripe::PaymentMethod,
) -> DomainResult<()> {
    match &pm.customer {
        Some(customer) => {
            if let Some(account) = repo::account_by_customer(conn, customer).await?
                && account.state == "ACTIVE"
            {
                upsert_payment_method(conn, account.workspace_id, account.id, pm).await?;
            }
        }
        None => {
            repo::delete_payment_method(conn, &pm.id).await?;
        }
    }
    Ok(())
}

/// The kinds of objects events carry that the mirror keeps, with the id of the one an event
/// is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// A customer (`cus_…`).
    Customer(String),
    /// A payment method (`pm_…`).
    PaymentMethod(String),
    /// A subscription (`sub_…`).
    Subscription(String),
    /// An invoice (`in_…`).
    Invoice(String),
    /// `checkout.session.completed`: the subscription it created, if any.
    Checkout(Option<String>),
}

fn object_of(kind: &str, object: &serde_json::Value) -> Option<Object> {
    let id = object
        .get("id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    match kind {
        "customer.created" | "customer.updated" | "customer.deleted" => id.map(Object::Customer),
        "payment_method.attached" | "payment_method.detached" | "payment_method.updated" => {
            id.map(Object::PaymentMethod)
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.trial_will_end"
        | "customer.subscription.paused"
        | "customer.subscription.resumed" => id.map(Object::Subscription),
        "invoice.created"
        | "invoice.finalized"
        | "invoice.paid"
        | "invoice.payment_failed"
        | "invoice.payment_succeeded"
        | "invoice.updated"
        | "invoice.voided"
        | "invoice.marked_uncollectible" => id.map(Object::Invoice),
        "checkout.session.completed" => Some(Object::Checkout(
            object
                .get("subscription")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        )),
        _ => None,
    }
}

/// What an event asks of the mirror, decided from the database before Stripe is called.
#[derive(Debug, Clone)]
pub struct Target {
    /// The event's type.
    pub kind: String,
    /// Its `created`.
    pub created: DateTime<Utc>,
    /// The object it is about.
    pub object: Object,
    /// The object as the event carries it (`data.object`).
    pub carried: serde_json::Value,
}

/// Step 1 of applying an event, on a connection and in no transaction: the object the event of
/// type `kind` is about, when the mirror keeps it; `None` for unknown types and for objects of
/// customers that are not ours (a Stripe account shared with other systems), acknowledged
/// without a call to Stripe.
pub async fn target(
    conn: &mut AsyncPgConnection,
    kind: &str,
    created: DateTime<Utc>,
    payload: &serde_json::Value,
) -> anyhow::Result<Option<Target>> {
    let carried = payload
        .pointer("/data/object")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let Some(object) = object_of(kind, &carried) else {
        return Ok(None);
    };
    let customer = match &object {
        Object::Customer(id) => Some(id.clone()),
        _ => carried
            .get("customer")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    };
    let ours = match (&object, &customer) {
        (_, Some(c)) => repo::account_by_customer(conn, c).await?.is_some(),
        (Object::PaymentMethod(id), None) => {
            repo::payment_method_by_stripe(conn, id).await?.is_some()
        }
        _ => false,
    };
    if !ours {
        tracing::debug!(kind, "event about a customer that is not ours");
        return Ok(None);
    }
    Ok(Some(Target {
        kind: kind.to_string(),
        created,
        object,
        carried,
    }))
}

/// The state of an object to apply, as Stripe said it was at `read_at`.
#[derive(Debug, Clone)]
pub struct Read {
    /// The state (`None`: nothing to apply).
    pub state: Option<State>,
    /// When it was read: the start of the read from Stripe's API, or the event's `created`
    /// when the event's own object is applied.
    pub read_at: DateTime<Utc>,
}

/// An object's state.
#[derive(Debug, Clone)]
pub enum State {
    /// A customer.
    Customer(stripe::Customer),
    /// A payment method.
    PaymentMethod(stripe::PaymentMethod),
    /// A subscription.
    Subscription(stripe::Subscription),
    /// An invoice.
    Invoice(stripe::Invoice),
}

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Stripe failed, refused or answered another object: not the event's fault; the event is
    /// tried again later (`domain::webhooks`).
    #[error("{0}")]
    Stripe(String),
    /// The event's own object does not have a shape we read: trying again changes nothing.
    #[error("{0}")]
    Event(String),
}

/// Checks that Stripe answered the object asked for.
fn same(asked: &str, answered: &str, what: &str) -> Result<(), ReadError> {
    if asked == answered {
        return Ok(());
    }
    Err(ReadError::Stripe(format!(
        "asked Stripe for {what} {} and it answered {} instead",
        crate::domain::excerpt(asked),
        crate::domain::excerpt(answered)
    )))
}

/// Step 2, with no database connection held: the object's current state, read from Stripe
/// when an API key is configured (the event's own object without a key, or when Stripe no
/// longer has it). Events arrive duplicated and out of order: the event is a hint to read the
/// object, and what Stripe says now is what is applied.
pub async fn read(billing: &Billing, target: &Target) -> Result<Read, ReadError> {
    let api = billing.stripe.as_ref();
    let started = Utc::now();
    let event_object = |r: Result<State, String>| -> Result<Read, ReadError> {
        Ok(Read {
            state: Some(r.map_err(ReadError::Event)?),
            read_at: target.created,
        })
    };
    let carried = &target.carried;
    match &target.object {
        Object::Customer(id) => match fetch(api, async |a| a.retrieve_customer(id).await).await? {
            Some(c) => {
                same(id, &c.id, "customer")?;
                Ok(Read {
                    state: Some(State::Customer(c)),
                    read_at: started,
                })
            }
            None => event_object(stripe::Customer::from_event_object(carried).map(State::Customer)),
        },
        Object::PaymentMethod(id) => {
            match fetch(api, async |a| a.retrieve_payment_method(id).await).await? {
                Some(pm) => {
                    same(id, &pm.id, "payment method")?;
                    Ok(Read {
                        state: Some(State::PaymentMethod(pm)),
                        read_at: started,
                    })
                }
                None => event_object(
                    stripe::PaymentMethod::from_event_object(carried).map(State::PaymentMethod),
                ),
            }
        }
        Object::Subscription(id) | Object::Checkout(Some(id)) => {
            match fetch(api, async |a| a.retrieve_subscription(id).await).await? {
                Some(s) => {
                    same(id, &s.id, "subscription")?;
                    Ok(Read {
                        state: Some(State::Subscription(s)),
                        read_at: started,
                    })
                }
                // The session's subscription is not at Stripe (any more): nothing to adopt.
                None if matches!(target.object, Object::Checkout(_)) => Ok(Read {
                    state: None,
                    read_at: started,
                }),
                None => event_object(
                    stripe::Subscription::from_event_object(carried).map(State::Subscription),
                ),
            }
        }
        Object::Invoice(id) => match fetch(api, async |a| a.retrieve_invoice(id).await).await? {
            Some(i) => {
                same(id, i.id.as_deref().unwrap_or_default(), "invoice")?;
                Ok(Read {
                    state: Some(State::Invoice(i)),
                    read_at: started,
                })
            }
            None => event_object(stripe::Invoice::from_event_object(carried).map(State::Invoice)),
        },
        Object::Checkout(None) => Ok(Read {
            state: None,
            read_at: started,
        }),
    }
}

/// The current state of an object, read from Stripe when an API key is configured
/// (`Ok(None)`: no key, or Stripe no longer has it; use the event's object).
async fn fetch<T>(
    api: Option<&StripeApi>,
    read: impl AsyncFnOnce(&StripeApi) -> Result<T, StripeError>,
) -> Result<Option<T>, ReadError> {
    let Some(api) = api else { return Ok(None) };
    match read(api).await {
        Ok(v) => Ok(Some(v)),
        Err(StripeError::Refused { status: 404, .. }) => Ok(None),
        Err(StripeError::Refused {
            status, message, ..
        }) => Err(ReadError::Stripe(format!(
            "Stripe refused to read the object ({status}): {message}"
        ))),
        Err(StripeError::Unavailable(e)) => {
            Err(ReadError::Stripe(format!("Stripe unavailable: {e}")))
        }
    }
}

/// The id of the object a state is about.
fn state_id(state: &State) -> Option<&str> {
    match state {
        State::Customer(c) => Some(&c.id),
        State::PaymentMethod(pm) => Some(&pm.id),
        State::Subscription(s) => Some(&s.id),
        State::Invoice(i) => i.id.as_deref(),
    }
}

/// Step 3, in the caller's short transaction: applies the state read unless a state of the
/// same object read later was applied already (`stripe_reads`, whose row lock also makes
/// the applications of one object take turns), then the workspace's notifications, built from
/// the object as Stripe says it is now. `event_id` names the event in the notifications.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    billing: &Billing,
    target: &Target,
    read: &Read,
    event_id: &str,
) -> anyhow::Result<()> {
    let Some(state) = &read.state else {
        return Ok(());
    };
    let fail = |e: DomainError| anyhow::anyhow!("{e}");
    let newest = match state_id(state) {
        Some(id) => repo_reads::claim_read(conn, id, read.read_at).await?,
        None => true,
    };
    if newest {
        match state {
            State::Customer(c) => apply_customer(conn, c).await.map_err(fail)?,
            State::PaymentMethod(pm) => apply_payment_method(conn, pm).await.map_err(fail)?,
            State::Subscription(s) => {
                apply_subscription(conn, &billing.catalog, s, read.read_at, None)
                    .await
                    .map_err(fail)?;
            }
            State::Invoice(i) => apply_invoice(conn, i).await.map_err(fail)?,
        }
    } else {
        tracing::debug!(
            kind = target.kind,
            "a later state of the object was applied already"
        );
    }
    // Payment failures, trials ending and cancellations notify the workspace.
    crate::domain::notifications::stripe_event(conn, &target.kind, event_id, &current(state))
        .await
        .map_err(fail)?;
    Ok(())
}

/// The state as the notifications read it (Stripe's field names).
fn current(state: &State) -> serde_json::Value {
    match state {
        State::Invoice(i) => json!({
            "object": "invoice",
            "id": i.id,
            "customer": i.customer,
            "status": i.status,
            "number": i.number,
            "amount_due": i.amount_due,
            "amount_remaining": i.amount_remaining,
            "currency": i.currency,
            "attempt_count": i.attempt_count,
            "hosted_invoice_url": i.hosted_invoice_url,
            "next_payment_attempt": i.next_payment_attempt,
        }),
        State::Subscription(s) => json!({
            "object": "subscription",
            "id": s.id,
            "customer": s.customer,
            "status": s.status,
            "trial_end": s.trial_end,
            "canceled_at": s.canceled_at,
        }),
        State::Customer(c) => json!({"object": "customer", "id": c.id}),
        State::PaymentMethod(pm) => {
            json!({"object": "payment_method", "id": pm.id, "customer": pm.customer})
        }
    }
}
