//! Recovery points of calls that change something in Stripe.
//!
//! A billing mutation runs in three steps:
//! 1. **intent**: in one transaction it checks the request, writes its local side (a
//!    `PENDING` account or subscription that holds its place under the caps), stores the
//!    intent with the Stripe idempotency key it will use, and enqueues a recovery job to
//!    run later;
//! 2. **call**: it calls Stripe with that key (retried on 409/429/5xx with the same key);
//! 3. **result**: in the mutation's transaction (under the caller's idempotency key) it
//!    completes the intent with Stripe's answer and applies it to the local rows.
//!
//! A retry of the mutation with the same key finds its intent and repeats the call with
//! the same Stripe key, so Stripe answers with the object it created the first time. A
//! crash between the steps leaves a `PENDING` intent that the recovery job
//! (`billing-intents`) finishes with the same key. When Stripe refuses the request (a
//! definitive 4xx), the intent and its local side are removed, so the caller can correct
//! the request and use the key again. The Stripe key is derived from the caller, their key
//! and the request's fingerprint (a corrected request gets a new Stripe key), or random
//! when the caller sent no key.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::super::governance::approvals::ApprovalRow;
use super::super::mutation::{self, Done, Keyed};
use super::super::{Actor, DomainError, DomainResult, Services};
use super::{Billing, stripe_error};
use crate::db::DbPool;
use crate::db::repo::billing::{self as repo, IntentRow};
use crate::db::repo::{approvals as approvals_repo, idempotency, workspace_jobs};
use crate::ids::{UserId, WorkspaceId};
use crate::stripe::{self, StripeApi, StripeError};

/// The queue of recovery jobs.
pub const QUEUE: &str = crate::tasks::queue::BILLING_INTENTS;

/// What a recovery job is in `Workspace.jobs`.
pub const JOB_KIND: &str = "billing.request";

/// A call to Stripe, as stored with its intent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum StripeCall {
    /// Create the customer of an account.
    CreateCustomer {
        /// Its fields.
        fields: CustomerFields,
    },
    /// Mirror an account's fields to its customer.
    UpdateCustomer {
        /// Customer.
        customer: String,
        /// Fields.
        fields: CustomerFields,
    },
    /// Delete a customer.
    DeleteCustomer {
        /// Customer.
        customer: String,
    },
    /// Attach a payment method (and make it the default when asked).
    AttachPaymentMethod {
        /// Payment method.
        payment_method: String,
        /// Customer.
        customer: String,
        /// Also make it the customer's default.
        make_default: bool,
    },
    /// Detach a payment method.
    DetachPaymentMethod {
        /// Payment method.
        payment_method: String,
    },
    /// Set the customer's default payment method.
    SetDefaultPaymentMethod {
        /// Customer.
        customer: String,
        /// Payment method.
        payment_method: String,
    },
    /// Create a subscription.
    CreateSubscription {
        /// Customer.
        customer: String,
        /// `(price, quantity)`.
        items: Vec<(String, u64)>,
        /// Trial days.
        trial_period_days: Option<u32>,
        /// Payment method to charge.
        default_payment_method: Option<String>,
        /// Metadata.
        metadata: Vec<(String, String)>,
    },
    /// Change a subscription.
    UpdateSubscription {
        /// Subscription.
        subscription: String,
        /// Item changes.
        items: Vec<ItemChange>,
        /// Prorate (increases) or not (decreases take effect with the next period).
        prorate: bool,
        /// Cancel at period end.
        cancel_at_period_end: Option<bool>,
    },
}

pub use crate::stripe::{Address, CustomerFields, ItemChange};

/// Stripe's answer to a call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "object", content = "value", rename_all = "snake_case")]
pub enum StripeAnswer {
    /// A customer.
    Customer(stripe::Customer),
    /// A payment method.
    PaymentMethod(stripe::PaymentMethod),
    /// A subscription.
    Subscription(stripe::Subscription),
    /// A deleted object.
    Deleted,
}

/// Makes the call with the intent's Stripe key.
pub async fn execute(
    api: &StripeApi,
    call: &StripeCall,
    key: &str,
) -> Result<StripeAnswer, StripeError> {
    Ok(match call {
        StripeCall::CreateCustomer { fields } => {
            StripeAnswer::Customer(api.create_customer(key, fields).await?)
        }
        StripeCall::UpdateCustomer { customer, fields } => {
            StripeAnswer::Customer(api.update_customer(key, customer, fields).await?)
        }
        StripeCall::DeleteCustomer { customer } => {
            api.delete_customer(key, customer).await?;
            StripeAnswer::Deleted
        }
        StripeCall::AttachPaymentMethod {
            payment_method,
            customer,
            make_default,
        } => {
            let pm = api
                .attach_payment_method(key, payment_method, customer)
                .await?;
            if *make_default {
                api.set_default_payment_method(&format!("{key}:default"), customer, &pm.id)
                    .await?;
            }
            StripeAnswer::PaymentMethod(pm)
        }
        StripeCall::DetachPaymentMethod { payment_method } => {
            StripeAnswer::PaymentMethod(api.detach_payment_method(key, payment_method).await?)
        }
        StripeCall::SetDefaultPaymentMethod {
            customer,
            payment_method,
        } => StripeAnswer::Customer(
            api.set_default_payment_method(key, customer, payment_method)
                .await?,
        ),
        StripeCall::CreateSubscription {
            customer,
            items,
            trial_period_days,
            default_payment_method,
            metadata,
        } => StripeAnswer::Subscription(
            api.create_subscription(
                key,
                &stripe::NewSubscription {
                    customer: customer.clone(),
                    items: items.clone(),
                    trial_period_days: *trial_period_days,
                    default_payment_method: default_payment_method.clone(),
                    metadata: metadata.clone(),
                },
            )
            .await?,
        ),
        StripeCall::UpdateSubscription {
            subscription,
            items,
            prorate,
            cancel_at_period_end,
        } => StripeAnswer::Subscription(
            api.update_subscription(
                key,
                subscription,
                &stripe::SubscriptionChange {
                    items: items.clone(),
                    proration_behavior: (!items.is_empty()).then_some(if *prorate {
                        stripe::Proration::CreateProrations
                    } else {
                        stripe::Proration::None
                    }),
                    cancel_at_period_end: *cancel_at_period_end,
                },
            )
            .await?,
        ),
    })
}

/// What a mutation's first step hands over: the workspace, the row the call is for, and
/// the call.
pub struct Intent {
    /// Workspace.
    pub workspace: WorkspaceId,
    /// The account, subscription or payment method row the call is for.
    pub target: Uuid,
    /// The call.
    pub call: StripeCall,
}

/// The first step of a mutation (checks and the local side), in its transaction.
pub type Prepare<'c> = BoxFuture<'c, DomainResult<Intent>>;

/// What the first step of a mutation that may be held for approval decided.
pub enum Prepared {
    /// Call Stripe.
    Call(Intent),
    /// Held for a second person's approval (`governance::approvals`): nothing is called now.
    Held {
        /// The row the call would be for.
        target: Uuid,
        /// The pending request.
        request: ApprovalRow,
    },
}

/// The first step of a mutation that may be held, in its transaction.
pub type PrepareOrHold<'c> = BoxFuture<'c, DomainResult<Prepared>>;

/// What a mutation that may be held returns: the row it is about (unchanged when held) and
/// the approval request that holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaybeHeld<T> {
    /// The row.
    pub row: T,
    /// The pending request, when held.
    pub held: Option<ApprovalRow>,
}

/// The Stripe key of a caller's key and request.
fn derived_key(caller: Uuid, key: &str, operation: &str, fingerprint: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        caller.as_bytes().as_slice(),
        key.as_bytes(),
        operation.as_bytes(),
        fingerprint.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    format!("ws-{}", hex::encode(&h.finalize()[..20]))
}

/// Delay before the recovery job looks at an intent (the mutation normally completes it
/// well before).
pub fn recovery_delay_secs(billing: &Billing) -> i64 {
    billing
        .recovery_delay
        .as_secs()
        .try_into()
        .unwrap_or(i64::MAX)
}

/// Attempts of a recovery job before it is left failed (with backoff, about an hour).
const RECOVERY_ATTEMPTS: i32 = 25;

/// Runs a billing mutation through its recovery point (see the module docs): `prepare`
/// checks the request and writes its local side, `load` reads the mutation's result after
/// Stripe's answer was applied.
pub async fn run<T, I, P, L>(
    services: &Services,
    actor: &Actor,
    operation: &'static str,
    key: Option<&mutation::Key>,
    input: &I,
    prepare: P,
    load: L,
) -> DomainResult<Done<T>>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    I: Serialize + Sync,
    P: for<'c> Fn(&'c mut AsyncPgConnection) -> Prepare<'c> + Send + Sync,
    L: for<'c> Fn(&'c mut AsyncPgConnection, Uuid) -> BoxFuture<'c, DomainResult<T>>
        + Send
        + Sync
        + Copy
        + 'static,
{
    run_inner(
        services,
        actor,
        operation,
        key,
        input,
        |c| {
            let prepared = prepare(c);
            Box::pin(async move { prepared.await.map(Prepared::Call) })
        },
        load,
        |_, _, _| {
            Box::pin(async {
                Err(DomainError::internal(anyhow::anyhow!(
                    "a billing mutation that is never held was held"
                )))
            })
        },
    )
    .await
}

/// [`run`] for a mutation that may be held for approval: `prepare` holds it (returns
/// [`Prepared::Held`]) instead of recording an intent; the request is then stored under the
/// caller's idempotency key in the same transaction, and Stripe is not called.
pub async fn run_holdable<T, I, P, L>(
    services: &Services,
    actor: &Actor,
    operation: &'static str,
    key: Option<&mutation::Key>,
    input: &I,
    prepare: P,
    load: L,
) -> DomainResult<Done<MaybeHeld<T>>>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    I: Serialize + Sync,
    P: for<'c> Fn(&'c mut AsyncPgConnection) -> PrepareOrHold<'c> + Send + Sync,
    L: for<'c> Fn(&'c mut AsyncPgConnection, Uuid) -> BoxFuture<'c, DomainResult<T>>
        + Send
        + Sync
        + Copy
        + 'static,
{
    run_inner(
        services,
        actor,
        operation,
        key,
        input,
        prepare,
        move |c, target| {
            let row = load(c, target);
            Box::pin(async move {
                Ok(MaybeHeld {
                    row: row.await?,
                    held: None,
                })
            })
        },
        move |c, target, request| {
            let row = load(c, target);
            Box::pin(async move {
                Ok(MaybeHeld {
                    row: row.await?,
                    held: Some(request),
                })
            })
        },
    )
    .await
}

/// [`run`] and [`run_holdable`]: `load` reads the result after Stripe's answer, `held` the
/// result of a held request (in the transaction that held it).
#[allow(clippy::too_many_arguments)]
async fn run_inner<T, I, P, L, H>(
    services: &Services,
    actor: &Actor,
    operation: &'static str,
    key: Option<&mutation::Key>,
    input: &I,
    prepare: P,
    load: L,
    held: H,
) -> DomainResult<Done<T>>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    I: Serialize + Sync,
    P: for<'c> Fn(&'c mut AsyncPgConnection) -> PrepareOrHold<'c> + Send + Sync,
    L: for<'c> Fn(&'c mut AsyncPgConnection, Uuid) -> BoxFuture<'c, DomainResult<T>>
        + Send
        + Sync
        + Copy
        + 'static,
    H: for<'c> Fn(&'c mut AsyncPgConnection, Uuid, ApprovalRow) -> BoxFuture<'c, DomainResult<T>>
        + Send
        + Sync,
{
    let api = services.billing.stripe()?.clone();
    let selection = key.map_or("", |k| k.selection.as_str());
    let client_key = mutation::check_key(key.map(|k| k.key.as_str()))?.map(str::to_string);
    let fingerprint = mutation::fingerprint(operation, input, selection)?;
    let mut conn = services.conn().await?;
    // A key already used: by another request, refused; by this one and completed, replayed
    // (its intent may be gone by now) without a second call.
    if let Some(k) = &client_key
        && let Some(stored) = idempotency::find(&mut conn, actor.user_id.0, k).await?
    {
        if stored.operation != operation || stored.fingerprint != fingerprint {
            return Err(DomainError::IdempotencyKeyReused);
        }
        if stored.response.is_some() {
            drop(conn);
            return mutation::run(services, actor, operation, key, input, |_, _| {
                // Reached only if the key expired in between: the caller retries.
                Box::pin(async { Err(DomainError::IdempotencyKeyInUse) })
            })
            .await;
        }
    }
    // 1. The intent: found under the caller's key, or recorded now.
    let intent = loop {
        if let Some(k) = &client_key
            && let Some(found) = repo::intent_for_key(&mut conn, actor.user_id.0, k).await?
        {
            if found.operation != operation || found.fingerprint != fingerprint {
                return Err(DomainError::IdempotencyKeyReused);
            }
            // Whoever retries must still be allowed what the first attempt was.
            reauthorize(&mut conn, actor, &found).await?;
            break found;
        }
        let recorded = conn
            .transaction(async |c| match prepare(c).await? {
                Prepared::Call(intent) => {
                    let stripe_key = match &client_key {
                        Some(k) => derived_key(actor.user_id.0, k, operation, &fingerprint),
                        None => format!("ws-{}", Uuid::new_v4().simple()),
                    };
                    let row = record(
                        c,
                        &services.billing,
                        Some(actor.user_id.0),
                        client_key.clone(),
                        operation,
                        fingerprint.clone(),
                        stripe_key,
                        intent,
                    )
                    .await?;
                    Ok::<_, DomainError>(row.map(|r| Step::Recorded(Box::new(r))))
                }
                Prepared::Held { target, request } => {
                    let value = held(c, target, request).await?;
                    if let Some(k) = &client_key {
                        let claim = idempotency::KeyClaim {
                            caller: actor.user_id.0,
                            key: k.clone(),
                            operation,
                            fingerprint: fingerprint.clone(),
                            ttl_secs: services.idempotency_ttl.as_secs().max(1) as i64,
                        };
                        if !idempotency::claim(c, &claim)
                            .await
                            .map_err(mutation::map_lock_timeout)?
                        {
                            // A concurrent request with the same key came first: roll this
                            // one back and replay it.
                            return Err(DomainError::IdempotencyKeyInUse);
                        }
                        let stored = serde_json::to_value(&value).map_err(DomainError::internal)?;
                        idempotency::complete(c, actor.user_id.0, k, &stored).await?;
                    }
                    Ok(Some(Step::Held(value)))
                }
            })
            .await;
        match recorded {
            Ok(Some(Step::Recorded(row))) => break *row,
            // A concurrent request with the same key recorded its intent first.
            Ok(None) => {}
            Ok(Some(Step::Held(value))) => {
                return Ok(Done {
                    value,
                    keyed: match client_key {
                        Some(key) => Keyed::First {
                            caller: actor.user_id.0,
                            key,
                        },
                        None => Keyed::None,
                    },
                });
            }
            Err(DomainError::IdempotencyKeyInUse) if client_key.is_some() => {
                drop(conn);
                return mutation::run(services, actor, operation, key, input, |_, _| {
                    Box::pin(async { Err(DomainError::IdempotencyKeyInUse) })
                })
                .await;
            }
            Err(e) => return Err(e),
        }
    };
    // 2. The call, unless an earlier attempt or the recovery job already made it.
    let answer = if intent.state == "PENDING" {
        let call: StripeCall =
            serde_json::from_value(intent.request.clone()).map_err(DomainError::internal)?;
        match execute(&api, &call, &intent.stripe_key).await {
            Ok(a) => Some((a, chrono::Utc::now())),
            Err(e @ StripeError::Refused { .. }) => {
                conn.transaction(async |c| discard(c, intent.id).await)
                    .await?;
                return Err(stripe_error(e));
            }
            Err(e) => return Err(stripe_error(e)),
        }
    } else {
        None
    };
    drop(conn);
    // 3. The result, under the caller's key.
    let intent_id = intent.id;
    let catalog = services.billing.catalog.clone();
    mutation::run(services, actor, operation, key, input, |c, _| {
        let answer = answer.clone();
        let catalog = catalog.clone();
        let actor = actor.clone();
        Box::pin(async move {
            if let Some(answer) = &answer {
                complete(c, &catalog, intent_id, &answer.0, answer.1, Some(&actor)).await?;
            }
            let target = repo::intent(c, intent_id)
                .await?
                .ok_or(DomainError::NotFound("billing request"))?
                .target_id;
            load(c, target).await
        })
    })
    .await
}

/// What the first step's transaction did.
enum Step<T> {
    /// Recorded the intent.
    Recorded(Box<IntentRow>),
    /// Held the request for approval; the mutation's result.
    Held(T),
}

/// Records `intent` (with the Stripe key it will be called with) and its recovery job in
/// the caller's transaction; `None` when a concurrent request with the same client key
/// recorded its own first.
#[allow(clippy::too_many_arguments)]
async fn record(
    c: &mut AsyncPgConnection,
    billing: &Billing,
    caller: Option<Uuid>,
    client_key: Option<String>,
    operation: &str,
    fingerprint: String,
    stripe_key: String,
    intent: Intent,
) -> DomainResult<Option<IntentRow>> {
    let Intent {
        workspace,
        target,
        call,
    } = intent;
    let row = IntentRow {
        id: Uuid::now_v7(),
        workspace_id: workspace.0,
        caller_id: caller,
        client_key,
        operation: operation.to_string(),
        fingerprint,
        stripe_key,
        target_id: target,
        request: serde_json::to_value(&call).map_err(DomainError::internal)?,
        state: "PENDING".into(),
        result: None,
        error: None,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
    };
    if !repo::insert_intent(c, &row).await? {
        return Ok(None);
    }
    workspace_jobs::enqueue(
        c,
        workspace.0,
        JOB_KIND,
        caller,
        QUEUE,
        &crate::tasks::Task::BillingRecovery { intent: row.id }.payload(),
        &row.id.to_string(),
        RECOVERY_ATTEMPTS,
        recovery_delay_secs(billing),
    )
    .await?;
    Ok(Some(row))
}

/// The Stripe idempotency key of the call an approved request makes: derived from the
/// request alone, so that it is made once whoever approves, retries or recovers it.
pub fn approval_key(approval: Uuid) -> String {
    format!("ws-apr-{}", approval.simple())
}

/// The approval request whose call has Stripe key `key`, if it is one.
fn approval_of_key(key: &str) -> Option<Uuid> {
    key.strip_prefix("ws-apr-")
        .and_then(|id| Uuid::try_parse(id).ok())
}

/// Records the intent of an approved request (`governance::approvals`), in the approval's
/// transaction, as `actor` (the requester): Stripe is called after the commit
/// ([`finish_key`]), or by the recovery job.
pub async fn record_approved(
    conn: &mut AsyncPgConnection,
    billing: &Billing,
    actor: &Actor,
    operation: &str,
    approval: Uuid,
    intent: Intent,
) -> DomainResult<IntentRow> {
    billing.stripe()?;
    record(
        conn,
        billing,
        Some(actor.user_id.0),
        None,
        operation,
        format!("approval:{approval}"),
        approval_key(approval),
        intent,
    )
    .await?
    .ok_or_else(|| {
        DomainError::internal(anyhow::anyhow!(
            "an approved intent without a client key conflicted"
        ))
    })
}

/// What finishing an intent came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Stripe answered and the answer was applied.
    Completed,
    /// Stripe refused: the intent and its local side were removed (and an approved request
    /// that made it marked `FAILED`).
    Refused(String),
    /// Nothing to do: the intent is gone or no longer pending.
    NotPending,
}

/// Calls Stripe for a pending intent with its key and applies the answer (what the
/// recovery job does, and what follows an approval). `Err` while Stripe or the database
/// cannot be reached: the intent stays pending.
pub async fn finish(pool: &DbPool, billing: &Billing, id: Uuid) -> anyhow::Result<Finished> {
    let mut conn = pool.get().await?;
    let Some(intent) = repo::intent(&mut conn, id).await? else {
        return Ok(Finished::NotPending);
    };
    if intent.state != "PENDING" {
        return Ok(Finished::NotPending);
    }
    let Some(api) = billing.stripe.as_ref() else {
        anyhow::bail!("Stripe is not configured; intent {id} stays pending");
    };
    let call: StripeCall = serde_json::from_value(intent.request.clone())?;
    match execute(api, &call, &intent.stripe_key).await {
        Ok(answer) => {
            let answered = chrono::Utc::now();
            let catalog = billing.catalog.clone();
            conn.transaction(async |c| complete(c, &catalog, id, &answer, answered, None).await)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(Finished::Completed)
        }
        Err(StripeError::Refused { message, .. }) => {
            let reason = format!("Stripe refused the request: {message}");
            conn.transaction(async |c| {
                discard(c, id).await?;
                if let Some(approval) = approval_of_key(&intent.stripe_key) {
                    approvals_repo::fail(c, approval, &reason).await?;
                }
                Ok::<_, DomainError>(())
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(Finished::Refused(message))
        }
        Err(StripeError::Unavailable(e)) => anyhow::bail!("Stripe unavailable: {e}"),
    }
}

/// [`finish`] for the intent with Stripe key `key` (an approved request's,
/// [`approval_key`]).
pub async fn finish_key(services: &Services, key: &str) -> DomainResult<Finished> {
    let mut conn = services.conn().await?;
    let found = repo::intent_by_stripe_key(&mut conn, key).await?;
    drop(conn);
    match found {
        None => Ok(Finished::NotPending),
        Some(i) => finish(&services.pool, &services.billing, i.id)
            .await
            .map_err(DomainError::internal),
    }
}

/// What a caller who may no longer see an intent's target is told: exactly what a missing
/// target answers.
fn target_name(operation: &str) -> &'static str {
    match operation {
        "createBillingAccount" => "workspace",
        "setDefaultPaymentMethod" | "detachPaymentMethod" => "payment method",
        "updateSubscription" | "cancelSubscription" => "subscription",
        _ => "billing account",
    }
}

/// Checks that the caller of a retry is still an owner of the intent's workspace.
async fn reauthorize(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    intent: &IntentRow,
) -> DomainResult<()> {
    match super::require_owner(conn, actor, WorkspaceId(intent.workspace_id)).await {
        Ok(_) => Ok(()),
        Err(DomainError::NotFound(_)) => Err(DomainError::NotFound(target_name(&intent.operation))),
        Err(e) => Err(e),
    }
}

/// Completes a pending intent with Stripe's answer and applies it (a no-op when it was
/// already completed); `actor` is who asked (the recovery job passes `None` and the
/// intent's caller is recorded).
pub async fn complete(
    conn: &mut AsyncPgConnection,
    catalog: &super::catalog::Catalog,
    intent_id: Uuid,
    answer: &StripeAnswer,
    answered_at: chrono::DateTime<chrono::Utc>,
    actor: Option<&Actor>,
) -> DomainResult<()> {
    let Some(intent) = repo::lock_intent(conn, intent_id).await? else {
        return Ok(());
    };
    if intent.state != "PENDING" {
        return Ok(());
    }
    let stored = serde_json::to_value(answer).map_err(DomainError::internal)?;
    repo::complete_intent(conn, intent.id, &stored).await?;
    let job_actor;
    let actor = match actor {
        Some(a) => a,
        None => {
            job_actor = Actor::system(
                UserId(intent.caller_id.unwrap_or_default()),
                format!("billing-intent:{}", intent.id),
            );
            &job_actor
        }
    };
    super::mirror::apply_intent(conn, catalog, &intent, answer, answered_at, actor).await
}

/// Removes a refused intent and its local side (a no-op when it is no longer pending).
pub async fn discard(conn: &mut AsyncPgConnection, intent_id: Uuid) -> DomainResult<()> {
    let Some(intent) = repo::lock_intent(conn, intent_id).await? else {
        return Ok(());
    };
    if intent.state != "PENDING" {
        return Ok(());
    }
    match intent.operation.as_str() {
        "createBillingAccount" => {
            repo::discard_pending_account(conn, intent.target_id).await?;
        }
        "createSubscription" => {
            repo::discard_pending_subscription(conn, intent.target_id).await?;
        }
        _ => {}
    }
    repo::delete_intent(conn, intent.id).await?;
    Ok(())
}

/// The recovery job: finishes an intent whose mutation did not (a crash, an outage the
/// caller did not retry). Returns an error (retried with backoff) while Stripe is down.
pub async fn recover(pool: &DbPool, billing: &Billing, id: Uuid) -> anyhow::Result<()> {
    match finish(pool, billing, id).await? {
        Finished::Completed => {
            tracing::info!(intent = %id, "recovered a billing request");
        }
        Finished::Refused(message) => {
            tracing::warn!(intent = %id, %message, "Stripe refused a recovered billing request; discarded");
        }
        Finished::NotPending => {}
    }
    Ok(())
}

/// Enqueues a recovery job again for every request still pending long after its first one
/// was due (its job gave up during a long Stripe outage, or was purged), at most once an
/// hour per request; returns how many.
pub async fn requeue_stale(pool: &DbPool, billing: &Billing) -> anyhow::Result<usize> {
    let mut conn = pool.get().await?;
    let delay = recovery_delay_secs(billing);
    let stale = repo::stale_intents(&mut conn, delay.saturating_mul(10).max(600), 100).await?;
    let hour = chrono::Utc::now().timestamp() / 3600;
    let mut n = 0;
    for (id, ws, caller) in stale {
        let key = format!("{id}:{hour}");
        let payload = crate::tasks::Task::BillingRecovery { intent: id }.payload();
        if workspace_jobs::enqueue(
            &mut conn,
            ws,
            JOB_KIND,
            caller,
            QUEUE,
            &payload,
            &key,
            RECOVERY_ATTEMPTS,
            0,
        )
        .await?
        .is_some()
        {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approval_keys_name_their_request_and_nothing_else() {
        let id = Uuid::now_v7();
        let key = approval_key(id);
        assert!(key.starts_with("ws-apr-") && key.len() <= 255);
        assert_eq!(approval_of_key(&key), Some(id));
        assert_eq!(approval_of_key(&format!("ws-{}", id.simple())), None);
        assert_eq!(approval_of_key("ws-apr-nope"), None);
    }

    #[test]
    fn derived_keys_differ_by_caller_key_operation_and_request() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let k = derived_key(a, "k1", "createBillingAccount", "fp");
        assert_eq!(k, derived_key(a, "k1", "createBillingAccount", "fp"));
        assert!(k.starts_with("ws-") && k.len() <= 255);
        for other in [
            derived_key(b, "k1", "createBillingAccount", "fp"),
            derived_key(a, "k2", "createBillingAccount", "fp"),
            derived_key(a, "k1", "createSubscription", "fp"),
            derived_key(a, "k1", "createBillingAccount", "fp2"),
            // Boundaries between parts count.
            derived_key(a, "k1c", "reateBillingAccount", "fp"),
        ] {
            assert_ne!(k, other);
        }
    }
}
