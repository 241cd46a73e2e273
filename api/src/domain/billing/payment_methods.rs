//! Payment methods of billing accounts (at most five each), mirrored from Stripe.

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use super::intents::{self, Intent, StripeCall};
use super::{MAX_PAYMENT_METHODS, accounts, stripe_error};
use crate::db::repo::billing::{self as repo, BillingAccountRow, PaymentMethodRow};
use crate::domain::mutation::{self, Done};
use crate::domain::{Actor, DomainError, DomainResult, Services};
use crate::ids::{BillingAccountId, PaymentMethodId, WorkspaceId};

/// What Stripe Elements needs to collect a payment method.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SetupIntent {
    /// `seti_…`.
    pub id: String,
    /// The client secret (`seti_…_secret_…`).
    pub client_secret: String,
    /// The deployment's publishable key.
    pub publishable_key: Option<String>,
}

/// Creates a Stripe SetupIntent for collecting a payment method on the client (owners);
/// refused when the account has five payment methods already.
pub async fn create_setup_intent(
    services: &Services,
    actor: &Actor,
    id: BillingAccountId,
    key: Option<&mutation::Key>,
) -> DomainResult<SetupIntent> {
    let api = services.billing.stripe()?.clone();
    let key = mutation::check_key(key.map(|k| k.key.as_str()))?.map(str::to_string);
    let mut conn = services.conn().await?;
    let a = accounts::owned(&mut conn, actor, id).await?;
    check_room(&mut conn, &a).await?;
    drop(conn);
    let customer = a
        .stripe_customer_id
        .ok_or(DomainError::NotFound("billing account"))?;
    // A repeat with the same key gets the same SetupIntent from Stripe.
    let stripe_key = match key {
        Some(k) => format!("ws-seti-{}-{}", actor.user_id.0.simple(), sha(&k)),
        None => format!("ws-{}", Uuid::new_v4().simple()),
    };
    let si = api
        .create_setup_intent(&stripe_key, &customer)
        .await
        .map_err(stripe_error)?;
    Ok(SetupIntent {
        id: si.id,
        client_secret: si.client_secret,
        publishable_key: services.billing.publishable_key.clone(),
    })
}

fn sha(s: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(s.as_bytes())[..16])
}

async fn check_room(conn: &mut AsyncPgConnection, a: &BillingAccountRow) -> DomainResult<()> {
    if repo::count_payment_methods(conn, a.id).await? >= MAX_PAYMENT_METHODS {
        return Err(DomainError::LimitExceeded(format!(
            "a billing account has at most {MAX_PAYMENT_METHODS} payment methods: detach one first"
        )));
    }
    Ok(())
}

/// Checks a Stripe payment method id's shape.
fn check_pm(pm: &str) -> DomainResult<()> {
    let ok = pm.starts_with("pm_")
        && (4..=255).contains(&pm.len())
        && pm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(DomainError::bad_input(
            "paymentMethodId",
            "paymentMethodId must be a Stripe payment method id (pm_…)",
        ))
    }
}

fn load_pm(
    c: &mut AsyncPgConnection,
    account: Uuid,
) -> futures::future::BoxFuture<'_, DomainResult<(BillingAccountRow, Vec<PaymentMethodRow>)>> {
    Box::pin(async move {
        let a = repo::account(c, account)
            .await?
            .ok_or(DomainError::NotFound("billing account"))?;
        let pms = repo::payment_methods_of(c, &[account]).await?;
        Ok((a, pms))
    })
}

/// Input of `attach`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attach {
    /// Account.
    pub billing_account_id: BillingAccountId,
    /// Stripe payment method (`pm_…`), e.g. collected with Stripe.js.
    pub payment_method_id: String,
}

/// Attaches a payment method to an account's customer (owners). The first one becomes
/// the default.
pub async fn attach(
    services: &Services,
    actor: &Actor,
    input: Attach,
    key: Option<&mutation::Key>,
) -> DomainResult<Done<(BillingAccountRow, Vec<PaymentMethodRow>)>> {
    check_pm(&input.payment_method_id)?;
    let id = input.billing_account_id;
    intents::run(
        services,
        actor,
        "attachPaymentMethod",
        key,
        &input,
        |c| {
            let (pm, actor) = (input.payment_method_id.clone(), actor.clone());
            Box::pin(async move {
                let a = accounts::owned(c, &actor, id).await?;
                if let Some(existing) = repo::payment_method_by_stripe(c, &pm).await? {
                    if existing.billing_account_id != a.id {
                        return Err(DomainError::Conflict(
                            "this payment method is attached to another billing account".into(),
                        ));
                    }
                } else {
                    check_room(c, &a).await?;
                }
                Ok(Intent {
                    workspace: WorkspaceId(a.workspace_id),
                    target: a.id,
                    call: StripeCall::AttachPaymentMethod {
                        payment_method: pm,
                        customer: a
                            .stripe_customer_id
                            .clone()
                            .ok_or(DomainError::NotFound("billing account"))?,
                        make_default: a.default_payment_method.is_none(),
                    },
                })
            })
        },
        load_pm,
    )
    .await
}

/// Input of `set_default` and `detach`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MethodRef {
    /// Payment method.
    pub payment_method_id: PaymentMethodId,
}

async fn owned_method(
    c: &mut AsyncPgConnection,
    actor: &Actor,
    id: PaymentMethodId,
) -> DomainResult<(BillingAccountRow, PaymentMethodRow)> {
    let access = crate::domain::access::to(
        c,
        actor,
        crate::domain::access::Owned::PaymentMethod,
        id.0,
        "payment method",
    )
    .await?;
    access.require(|r| r == crate::domain::Role::Owner, "manage billing")?;
    let pm = repo::payment_method(c, id.0)
        .await?
        .ok_or(DomainError::NotFound("payment method"))?;
    let a = accounts::active_locked(c, pm.billing_account_id, "payment method").await?;
    Ok((a, pm))
}

/// What `change` does to a payment method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MethodOp {
    /// Make it the account's default.
    SetDefault,
    /// Detach it from the account's customer.
    Detach,
}

/// Makes a payment method its account's default (owners).
pub async fn set_default(
    services: &Services,
    actor: &Actor,
    input: MethodRef,
    key: Option<&mutation::Key>,
) -> DomainResult<Done<(BillingAccountRow, Vec<PaymentMethodRow>)>> {
    change(services, actor, MethodOp::SetDefault, input, key).await
}

/// Detaches a payment method (owners): refused for the only one, and for the default
/// while the account has live subscriptions.
pub async fn detach(
    services: &Services,
    actor: &Actor,
    input: MethodRef,
    key: Option<&mutation::Key>,
) -> DomainResult<Done<(BillingAccountRow, Vec<PaymentMethodRow>)>> {
    change(services, actor, MethodOp::Detach, input, key).await
}

async fn change(
    services: &Services,
    actor: &Actor,
    op: MethodOp,
    input: MethodRef,
    key: Option<&mutation::Key>,
) -> DomainResult<Done<(BillingAccountRow, Vec<PaymentMethodRow>)>> {
    let id = input.payment_method_id;
    let operation = match op {
        MethodOp::SetDefault => "setDefaultPaymentMethod",
        MethodOp::Detach => "detachPaymentMethod",
    };
    intents::run(
        services,
        actor,
        operation,
        key,
        &input,
        |c| {
            let actor = actor.clone();
            Box::pin(async move {
                let (a, pm) = owned_method(c, &actor, id).await?;
                let customer = a
                    .stripe_customer_id
                    .clone()
                    .ok_or(DomainError::NotFound("billing account"))?;
                let payment_method = pm.stripe_payment_method_id;
                let call = match op {
                    MethodOp::SetDefault => StripeCall::SetDefaultPaymentMethod {
                        customer,
                        payment_method,
                    },
                    MethodOp::Detach => {
                        if repo::count_payment_methods(c, a.id).await? <= 1 {
                            return Err(DomainError::Conflict(
                                "the only payment method of a billing account cannot be detached: attach another first".into(),
                            ));
                        }
                        if a.default_payment_method.as_deref() == Some(payment_method.as_str())
                            && repo::count_live_subscriptions(c, a.id).await? > 0
                        {
                            return Err(DomainError::Conflict(
                                "the default payment method cannot be detached while subscriptions are active: make another one the default first".into(),
                            ));
                        }
                        StripeCall::DetachPaymentMethod { payment_method }
                    }
                };
                Ok(Intent {
                    workspace: WorkspaceId(a.workspace_id),
                    target: a.id,
                    call,
                })
            })
        },
        load_pm,
    )
    .await
}

/// Payment methods of accounts (the caller checked the reader).
pub async fn of_accounts(
    services: &Services,
    accounts: &[Uuid],
) -> DomainResult<Vec<PaymentMethodRow>> {
    let mut conn = services.conn().await?;
    Ok(repo::payment_methods_of(&mut conn, accounts).await?)
}
