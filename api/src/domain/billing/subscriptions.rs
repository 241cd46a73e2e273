//! Subscriptions: a plan and per-unit add-ons on a billing account (at most three live per
//! account), funding the account's pool.

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use super::catalog::{self, Plan};
use super::intents::{self, Intent, ItemChange, MaybeHeld, Prepared, StripeCall};
use super::{MAX_SUBSCRIPTIONS, TRIAL_DAYS, accounts, pools};
use crate::db::repo as repos;
use crate::db::repo::billing::{self as repo, SubscriptionRow};
use crate::domain::governance::approvals::{self, ApprovalAction, ApprovalRow, Held};
use crate::domain::mutation::{self, Done};
use crate::domain::{Actor, BillingMode, DomainError, DomainResult, Services};
use crate::ids::{BillingAccountId, SubscriptionId, WorkspaceId};

/// Metadata pairs a subscription may carry (Stripe allows 50; the reference 10).
pub const MAX_METADATA: usize = 10;
/// Metadata keys this service sets on Stripe objects for itself.
pub const RESERVED_METADATA: [&str; 3] = ["workspace_id", "subscription_id", "billing_account_id"];

/// Largest add-on quantity of one resource.
pub const MAX_QUANTITY: i64 = 100_000;

/// A quantity of an add-on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Quantity {
    /// `users`, `locations` or `sso_connections`.
    pub resource: String,
    /// Units (0 removes the add-on, on updates).
    pub quantity: i64,
}

/// Input of `create`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewSubscription {
    /// Account.
    pub billing_account_id: BillingAccountId,
    /// Plan.
    pub plan: Plan,
    /// Add-on quantities.
    pub quantities: Vec<Quantity>,
    /// Metadata (≤ 10 pairs; keys ≤ 40, values ≤ 500 characters).
    pub metadata: Vec<(String, String)>,
}

fn check_metadata(m: &[(String, String)]) -> DomainResult<()> {
    if m.len() > MAX_METADATA {
        return Err(DomainError::bad_input(
            "metadata",
            format!("at most {MAX_METADATA} metadata pairs"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in m {
        if k.is_empty() || k.chars().count() > 40 || k.contains(['[', ']']) {
            return Err(DomainError::bad_input(
                "metadata",
                "metadata keys are 1 to 40 characters, without square brackets",
            ));
        }
        if v.chars().count() > 500 {
            return Err(DomainError::bad_input(
                "metadata",
                "metadata values are at most 500 characters",
            ));
        }
        if RESERVED_METADATA.contains(&k.as_str()) {
            return Err(DomainError::bad_input(
                "metadata",
                format!("metadata key `{}` is reserved", crate::domain::excerpt(k)),
            ));
        }
        if !seen.insert(k) {
            return Err(DomainError::bad_input(
                "metadata",
                format!("metadata key `{}` repeats", crate::domain::excerpt(k)),
            ));
        }
    }
    Ok(())
}

/// Checks add-on quantities: known resources, each once, within bounds (`min` 1 on
/// creation, 0 on updates).
fn check_quantities(q: &[Quantity], min: i64) -> DomainResult<()> {
    let mut seen = std::collections::HashSet::new();
    for item in q {
        if !catalog::is_pooled(&item.resource) {
            return Err(DomainError::bad_input(
                "quantities",
                format!(
                    "`{}` has no add-on: quantities are for {}",
                    crate::domain::excerpt(&item.resource),
                    catalog::POOLED_RESOURCES.join(", ")
                ),
            ));
        }
        if !(min..=MAX_QUANTITY).contains(&item.quantity) {
            return Err(DomainError::bad_input(
                "quantities",
                format!("quantities are {min} to {MAX_QUANTITY}"),
            ));
        }
        if !seen.insert(&item.resource) {
            return Err(DomainError::bad_input(
                "quantities",
                format!(
                    "`{}` is listed twice",
                    crate::domain::excerpt(&item.resource)
                ),
            ));
        }
    }
    Ok(())
}

fn addon_price<'a>(catalog: &'a catalog::Catalog, resource: &str) -> DomainResult<&'a str> {
    match catalog.addon_price(resource) {
        Some((Some(p), _)) => Ok(p),
        Some((None, var)) => Err(DomainError::FailedPrecondition(format!(
            "the {resource} add-on has no Stripe price on this deployment ({var})"
        ))),
        None => Err(DomainError::bad_input(
            "quantities",
            format!("`{}` has no add-on", crate::domain::excerpt(resource)),
        )),
    }
}

fn load_sub(
    c: &mut AsyncPgConnection,
    id: Uuid,
) -> futures::future::BoxFuture<'_, DomainResult<SubscriptionRow>> {
    Box::pin(async move {
        repo::subscription(c, id)
            .await?
            .ok_or(DomainError::NotFound("subscription"))
    })
}

async fn mode(c: &mut AsyncPgConnection, ws: Uuid) -> DomainResult<BillingMode> {
    let w = repos::workspaces::find_many(c, &[ws])
        .await?
        .into_iter()
        .next()
        .ok_or(DomainError::NotFound("workspace"))?;
    BillingMode::parse(&w.billing_mode)
        .ok_or_else(|| DomainError::internal(anyhow::anyhow!("bad billing mode")))
}

/// Creates a subscription (owners): a 14-day trial without a payment method when the
/// workspace is trial-eligible (one billing account, never a subscription), otherwise the
/// account's default payment method is charged.
pub async fn create(
    services: &Services,
    actor: &Actor,
    input: NewSubscription,
    key: Option<&mutation::Key>,
) -> DomainResult<Done<SubscriptionRow>> {
    check_quantities(&input.quantities, 1)?;
    check_metadata(&input.metadata)?;
    let catalog = &services.billing.catalog;
    let mut items: Vec<(String, u64)> = Vec::new();
    match catalog.plan_price(input.plan) {
        (Some(p), _) => items.push((p.to_string(), 1)),
        (None, _) if input.plan == Plan::Custom => {}
        (None, var) => {
            return Err(DomainError::FailedPrecondition(format!(
                "the {} plan has no Stripe price on this deployment ({var})",
                input.plan.as_str()
            )));
        }
    }
    for q in &input.quantities {
        items.push((
            addon_price(catalog, &q.resource)?.to_string(),
            q.quantity.unsigned_abs(),
        ));
    }
    if items.is_empty() {
        return Err(DomainError::bad_input(
            "quantities",
            "a CUSTOM subscription without its own price needs at least one add-on quantity",
        ));
    }
    let id = input.billing_account_id;
    intents::run(
        services,
        actor,
        "createSubscription",
        key,
        &input,
        |c| {
            let (items, input, actor) = (items.clone(), input.clone(), actor.clone());
            Box::pin(async move {
                let input_ref = &input;
                let a = accounts::owned(c, &actor, id).await?;
                let ws = a.workspace_id;
                repos::workspaces::lock(c, ws)
                    .await?
                    .ok_or(DomainError::NotFound("billing account"))?;
                if repo::count_live_subscriptions(c, a.id).await? >= MAX_SUBSCRIPTIONS {
                    return Err(DomainError::LimitExceeded(format!(
                        "a billing account has at most {MAX_SUBSCRIPTIONS} active subscriptions: add another billing account"
                    )));
                }
                let eligible = repo::count_live_accounts(c, ws).await? == 1
                    && !repo::any_subscription(c, ws).await?;
                if !eligible && a.default_payment_method.is_none() {
                    return Err(DomainError::FailedPrecondition(
                        "this billing account needs a default payment method (the free trial is only for a workspace's first subscription with a single billing account)".into(),
                    ));
                }
                let sub = SubscriptionId::new().0;
                let metadata: serde_json::Map<String, serde_json::Value> = input_ref
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                    .collect();
                repo::insert_pending_subscription(
                    c,
                    sub,
                    ws,
                    a.id,
                    input_ref.plan.as_str(),
                    &serde_json::Value::Object(metadata),
                )
                .await?;
                let mut meta = input_ref.metadata.clone();
                meta.push(("workspace_id".into(), WorkspaceId(ws).encode()));
                meta.push(("subscription_id".into(), SubscriptionId(sub).encode()));
                Ok(Intent {
                    workspace: WorkspaceId(ws),
                    target: sub,
                    call: StripeCall::CreateSubscription {
                        customer: a
                            .stripe_customer_id
                            .clone()
                            .ok_or(DomainError::NotFound("billing account"))?,
                        items: items.clone(),
                        trial_period_days: eligible.then_some(TRIAL_DAYS),
                        default_payment_method: if eligible {
                            None
                        } else {
                            a.default_payment_method.clone()
                        },
                        metadata: meta,
                    },
                })
            })
        },
        load_sub,
    )
    .await
}

/// A subscription for its owner, with its account (`NotFound` alike for missing and
/// foreign ones).
async fn owned(
    c: &mut AsyncPgConnection,
    actor: &Actor,
    id: SubscriptionId,
) -> DomainResult<(SubscriptionRow, crate::db::repo::billing::BillingAccountRow)> {
    let access = crate::domain::access::to(
        c,
        actor,
        crate::domain::access::Owned::Subscription,
        id.0,
        "subscription",
    )
    .await?;
    access.require(|r| r == crate::domain::Role::Owner, "manage billing")?;
    let s = repo::lock_subscription(c, id.0)
        .await?
        .filter(|s| s.stripe_subscription_id.is_some())
        .ok_or(DomainError::NotFound("subscription"))?;
    let a = accounts::active_locked(c, s.billing_account_id, "subscription").await?;
    if matches!(s.status.as_str(), "CANCELED" | "INCOMPLETE_EXPIRED") {
        return Err(DomainError::Conflict(format!(
            "subscription {id} is {}",
            s.status
        )));
    }
    Ok((s, a))
}

/// Input of `update`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionUpdate {
    /// Subscription.
    pub subscription_id: SubscriptionId,
    /// New add-on quantities of the resources listed (0 removes the add-on).
    pub quantities: Vec<Quantity>,
}

/// Changes add-on quantities (owners). Increases take effect at once and are prorated;
/// decreases take effect at the next period and may not leave the pool below its usage.
/// One direction per request. Held for approval when the workspace requires it for
/// `CHANGE_SUBSCRIPTION` (the subscription is returned unchanged with the request).
pub async fn update(
    services: &Services,
    actor: &Actor,
    input: SubscriptionUpdate,
    key: Option<&mutation::Key>,
) -> DomainResult<Done<MaybeHeld<SubscriptionRow>>> {
    check_quantities(&input.quantities, 0)?;
    if input.quantities.is_empty() {
        return Err(DomainError::bad_input(
            "quantities",
            "list at least one quantity to change",
        ));
    }
    intents::run_holdable(
        services,
        actor,
        "updateSubscription",
        key,
        &input,
        |c| {
            let (catalog, input, actor) = (
                services.billing.catalog.clone(),
                input.clone(),
                actor.clone(),
            );
            Box::pin(async move {
                let intent = update_intent(c, &catalog, &input, &actor).await?;
                let target = SubscriptionId(intent.target);
                hold(
                    c,
                    &actor,
                    ApprovalAction::ChangeSubscription,
                    "updateSubscription",
                    &input,
                    target,
                    intent,
                )
                .await
            })
        },
        load_sub,
    )
    .await
}

/// The checks of `updateSubscription` and the call it makes, in its transaction.
async fn update_intent(
    c: &mut AsyncPgConnection,
    catalog: &catalog::Catalog,
    input_ref: &SubscriptionUpdate,
    actor: &Actor,
) -> DomainResult<Intent> {
    let id = input_ref.subscription_id;
    let (s, a) = owned(c, actor, id).await?;
    let current = repo::subscription_items(c, &[s.id]).await?;
    let mut changes = Vec::new();
    let (mut up, mut down) = (false, false);
    let mut lost: Vec<(&str, i64)> = Vec::new();
    for q in &input_ref.quantities {
        let price = addon_price(catalog, &q.resource)?;
        let existing = current.iter().find(|(_, p, _, _)| p == price);
        let old = existing.map_or(0, |e| e.3);
        if q.quantity > old {
            up = true;
        } else if q.quantity < old {
            down = true;
            let resource = catalog::POOLED_RESOURCES
                .iter()
                .copied()
                .find(|r| *r == q.resource)
                .ok_or_else(|| DomainError::bad_input("quantities", "unknown resource"))?;
            lost.push((resource, old - q.quantity));
        } else {
            continue;
        }
        changes.push(match existing {
            Some((_, _, item, _)) if q.quantity == 0 => ItemChange {
                id: item.clone(),
                price: None,
                quantity: None,
                deleted: true,
            },
            Some((_, _, item, _)) => ItemChange {
                id: item.clone(),
                price: None,
                quantity: Some(q.quantity.unsigned_abs()),
                deleted: false,
            },
            None => ItemChange {
                id: None,
                price: Some(price.to_string()),
                quantity: Some(q.quantity.unsigned_abs()),
                deleted: false,
            },
        });
    }
    if up && down {
        return Err(DomainError::bad_input(
            "quantities",
            "raise and lower quantities in separate requests (increases apply now, decreases at the next period)",
        ));
    }
    if changes.is_empty() {
        return Err(DomainError::bad_input(
            "quantities",
            "the quantities are unchanged",
        ));
    }
    if current.len() == changes.iter().filter(|c| c.deleted).count() {
        return Err(DomainError::bad_input(
            "quantities",
            "a subscription keeps at least one item: cancel it instead",
        ));
    }
    if down && matches!(s.status.as_str(), "TRIALING" | "ACTIVE" | "PAST_DUE") {
        let m = mode(c, a.workspace_id).await?;
        let (pool, _) = pools::pool_of_account(c, a.workspace_id, m, a.id).await?;
        pools::check_still_covers(c, a.workspace_id, pool, &lost, "this decrease").await?;
    }
    Ok(Intent {
        workspace: WorkspaceId(a.workspace_id),
        target: s.id,
        call: StripeCall::UpdateSubscription {
            subscription: s.stripe_subscription_id.clone().unwrap_or_default(),
            items: changes,
            prorate: up,
            cancel_at_period_end: None,
        },
    })
}

/// Cancels a subscription at the end of its period (owners); refused when the pool's
/// remaining capacity would fall below its usage. Held for approval when the workspace
/// requires it for `CANCEL_SUBSCRIPTION` (the subscription is returned unchanged with the
/// request).
pub async fn cancel(
    services: &Services,
    actor: &Actor,
    id: SubscriptionId,
    key: Option<&mutation::Key>,
) -> DomainResult<Done<MaybeHeld<SubscriptionRow>>> {
    intents::run_holdable(
        services,
        actor,
        "cancelSubscription",
        key,
        &id,
        |c| {
            let actor = actor.clone();
            Box::pin(async move {
                let intent = cancel_intent(c, id, &actor).await?;
                hold(
                    c,
                    &actor,
                    ApprovalAction::CancelSubscription,
                    "cancelSubscription",
                    &id,
                    id,
                    intent,
                )
                .await
            })
        },
        load_sub,
    )
    .await
}

/// The checks of `cancelSubscription` and the call it makes, in its transaction.
async fn cancel_intent(
    c: &mut AsyncPgConnection,
    id: SubscriptionId,
    actor: &Actor,
) -> DomainResult<Intent> {
    let (s, a) = owned(c, actor, id).await?;
    if matches!(s.status.as_str(), "TRIALING" | "ACTIVE" | "PAST_DUE") {
        let caps = repo::subscription_capacities(c, &[s.id]).await?;
        let lost: Vec<(&str, i64)> = catalog::POOLED_RESOURCES
            .iter()
            .map(|r| {
                (
                    *r,
                    caps.iter()
                        .filter(|(_, k, _)| k == r)
                        .map(|(_, _, q)| *q)
                        .sum(),
                )
            })
            .collect();
        let m = mode(c, a.workspace_id).await?;
        let (pool, _) = pools::pool_of_account(c, a.workspace_id, m, a.id).await?;
        pools::check_still_covers(
            c,
            a.workspace_id,
            pool,
            &lost,
            "cancelling this subscription",
        )
        .await?;
    }
    Ok(Intent {
        workspace: WorkspaceId(a.workspace_id),
        target: s.id,
        call: StripeCall::UpdateSubscription {
            subscription: s.stripe_subscription_id.clone().unwrap_or_default(),
            items: Vec::new(),
            prorate: false,
            cancel_at_period_end: Some(true),
        },
    })
}

/// Holds a subscription change for approval when its workspace requires it, else hands its
/// call over.
async fn hold<I: serde::Serialize>(
    c: &mut AsyncPgConnection,
    actor: &Actor,
    action: ApprovalAction,
    operation: &'static str,
    input: &I,
    target: SubscriptionId,
    intent: Intent,
) -> DomainResult<Prepared> {
    let held = Held {
        workspace: intent.workspace,
        action,
        operation,
        input,
        target_type: "Subscription",
        target_id: target.encode(),
    };
    Ok(match approvals::hold_if_required(c, actor, held).await? {
        Some(request) => Prepared::Held {
            target: intent.target,
            request,
        },
        None => Prepared::Call(intent),
    })
}

/// Executes an approved `updateSubscription` or `cancelSubscription`
/// (`governance::approvals`) as the requester: checks it again and records its billing
/// intent in the approval's transaction; Stripe is called after the commit
/// (`intents::finish_key`), with a key derived from the request.
pub(crate) async fn execute_approved(
    conn: &mut AsyncPgConnection,
    services: &Services,
    request: &ApprovalRow,
    actor: &Actor,
) -> DomainResult<serde_json::Value> {
    let input = request.input.clone();
    let intent = match request.operation.as_str() {
        "updateSubscription" => {
            let update: SubscriptionUpdate =
                serde_json::from_value(input).map_err(DomainError::internal)?;
            update_intent(conn, &services.billing.catalog, &update, actor).await?
        }
        _ => {
            let id: SubscriptionId =
                serde_json::from_value(input).map_err(DomainError::internal)?;
            cancel_intent(conn, id, actor).await?
        }
    };
    let row = intents::record_approved(
        conn,
        &services.billing,
        actor,
        &request.operation,
        request.id,
        intent,
    )
    .await?;
    Ok(serde_json::json!({
        "subscriptionId": SubscriptionId(row.target_id).encode(),
        "stripeIdempotencyKey": row.stripe_key,
    }))
}

/// Subscriptions of accounts with their items' capacities (the caller checked the reader).
pub async fn of_accounts(
    services: &Services,
    accounts: &[Uuid],
) -> DomainResult<(Vec<SubscriptionRow>, Vec<(Uuid, String, i64)>)> {
    let mut conn = services.conn().await?;
    let subs = repo::subscriptions_of(&mut conn, accounts).await?;
    let ids: Vec<Uuid> = subs.iter().map(|s| s.id).collect();
    let caps = repo::subscription_capacities(&mut conn, &ids).await?;
    Ok((subs, caps))
}

/// Capacities per resource of subscriptions `(subscription, resource, quantity)` (the
/// caller checked the reader).
pub async fn capacities(
    services: &Services,
    subs: &[Uuid],
) -> DomainResult<Vec<(Uuid, String, i64)>> {
    let mut conn = services.conn().await?;
    Ok(repo::subscription_capacities(&mut conn, subs).await?)
}
