//! Billing accounts: one Stripe customer each; how many a workspace has depends on its
//! billing mode. In the ASSIGNED mode root organizations are assigned an account.

use diesel_async::AsyncPgConnection;
use serde_json::json;
use uuid::Uuid;

use super::intents::{self, Address, CustomerFields, Intent, StripeCall};
use super::pools::{self, Pool};
use super::{catalog, max_accounts, optional_text, require_owner};
use crate::db::models::OrganizationRow;
use crate::db::repo::billing::{self as repo, BillingAccountRow};
use crate::db::repo::{self as repos, organizations as orgs, usage as usage_repo};
use crate::domain::access::Owned;
use crate::domain::audit::{self, Change};
use crate::domain::mutation::{self, Done, Effect};
use crate::domain::{Actor, BillingMode, DomainError, DomainResult, Role, Services, check_name};
use crate::ids::{BillingAccountId, OrganizationId, WorkspaceId};

/// Input of `create`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewAccount {
    /// Workspace.
    pub workspace_id: WorkspaceId,
    /// Name (≤ 100).
    pub name: String,
    /// Billing e-mail (≤ 150).
    pub email: String,
    /// ISO 4217 code, any case (default `usd`); fixed after creation.
    pub currency: Option<String>,
    /// Phone (≤ 50).
    pub phone: Option<String>,
    /// Description (≤ 200).
    pub description: Option<String>,
    /// Postal address.
    pub address: Option<Address>,
}

/// Checks an address: a two-letter country, lines of at most 200 characters.
pub fn check_address(a: Option<&Address>) -> DomainResult<Option<Address>> {
    let Some(a) = a else { return Ok(None) };
    let line = |field: &'static str, v: &Option<String>| optional_text(field, v.as_deref(), 200);
    let country = match a
        .country
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        None => None,
        Some(c) if c.len() == 2 && c.chars().all(|ch| ch.is_ascii_alphabetic()) => {
            Some(c.to_ascii_uppercase())
        }
        Some(_) => {
            return Err(DomainError::bad_input(
                "address.country",
                "country must be an ISO 3166-1 alpha-2 code such as US or DE",
            ));
        }
    };
    let out = Address {
        line1: line("address.line1", &a.line1)?,
        line2: line("address.line2", &a.line2)?,
        city: line("address.city", &a.city)?,
        state: line("address.state", &a.state)?,
        postal_code: optional_text("address.postalCode", a.postal_code.as_deref(), 20)?,
        country,
    };
    Ok((out != Address::default()).then_some(out))
}

/// Checks a billing e-mail (≤ 150 characters).
pub fn check_billing_email(email: &str) -> DomainResult<String> {
    let e = crate::domain::members::check_email(email)?;
    if e.chars().count() > 150 {
        return Err(DomainError::bad_input(
            "email",
            "email must be at most 150 characters",
        ));
    }
    Ok(e)
}

#[derive(Clone)]
struct Checked {
    name: String,
    email: String,
    phone: Option<String>,
    description: Option<String>,
    address: Option<Address>,
}

fn fields(c: &Checked, ws: Uuid, account: Uuid) -> CustomerFields {
    CustomerFields {
        name: c.name.clone(),
        email: c.email.clone(),
        phone: c.phone.clone(),
        description: c.description.clone(),
        address: c.address.clone(),
        metadata: vec![
            ("workspace_id".into(), WorkspaceId(ws).encode()),
            (
                "billing_account_id".into(),
                BillingAccountId(account).encode(),
            ),
        ],
    }
}

/// Reads a live account for its owner (`NotFound` alike for missing, deleted and other
/// workspaces' accounts), locked.
pub async fn owned(
    conn: &mut AsyncPgConnection,
    actor: &Actor,
    id: BillingAccountId,
) -> DomainResult<BillingAccountRow> {
    let access =
        crate::domain::access::to(conn, actor, Owned::BillingAccount, id.0, "billing account")
            .await?;
    access.require(|r| r == Role::Owner, "manage billing")?;
    active_locked(conn, id.0, "billing account").await
}

/// A live account, locked, once the caller's access to it (or to what it pays for) is
/// established; `NotFound` naming `what` when it is deleted.
pub(super) async fn active_locked(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    what: &'static str,
) -> DomainResult<BillingAccountRow> {
    repo::lock_account(conn, id)
        .await?
        .filter(|a| a.state == "ACTIVE")
        .ok_or(DomainError::NotFound(what))
}

/// Loads an account after a mutation.
fn load_account(
    c: &mut AsyncPgConnection,
    id: Uuid,
) -> futures::future::BoxFuture<'_, DomainResult<BillingAccountRow>> {
    Box::pin(async move {
        repo::account(c, id)
            .await?
            .ok_or(DomainError::NotFound("billing account"))
    })
}

/// Creates a billing account and its Stripe customer (owners).
pub async fn create(
    services: &Services,
    actor: &Actor,
    input: NewAccount,
    key: Option<&mutation::Key>,
) -> DomainResult<Done<BillingAccountRow>> {
    let checked = Checked {
        name: check_name("name", &input.name, 100)?,
        email: check_billing_email(&input.email)?,
        phone: optional_text("phone", input.phone.as_deref(), 50)?,
        description: optional_text("description", input.description.as_deref(), 200)?,
        address: check_address(input.address.as_ref())?,
    };
    let currency = super::check_currency(input.currency.as_deref().unwrap_or("usd"))?;
    let ws = input.workspace_id;
    intents::run(
        services,
        actor,
        "createBillingAccount",
        key,
        &input,
        |c| {
            let (checked, currency, actor) = (checked.clone(), currency.clone(), actor.clone());
            Box::pin(async move {
                let (checked, actor) = (&checked, &actor);
                require_owner(c, actor, ws).await?;
                let w = repos::workspaces::lock(c, ws.0)
                    .await?
                    .ok_or(DomainError::NotFound("workspace"))?;
                let mode = BillingMode::parse(&w.billing_mode)
                    .ok_or_else(|| DomainError::internal(anyhow::anyhow!("bad billing mode")))?;
                let max = max_accounts(mode);
                if repo::count_live_accounts(c, ws.0).await? >= max {
                    return Err(DomainError::LimitExceeded(match mode {
                        BillingMode::Single => {
                            "a SINGLE workspace has exactly one billing account".into()
                        }
                        _ => format!(
                            "a {} workspace has at most {max} billing accounts",
                            mode.as_str()
                        ),
                    }));
                }
                let id = BillingAccountId::new().0;
                let now = chrono::Utc::now();
                repo::insert_account(
                    c,
                    &BillingAccountRow {
                        id,
                        workspace_id: ws.0,
                        state: "PENDING".into(),
                        stripe_customer_id: None,
                        name: checked.name.clone(),
                        email: checked.email.clone(),
                        phone: checked.phone.clone(),
                        description: checked.description.clone(),
                        currency: currency.clone(),
                        address: checked
                            .address
                            .as_ref()
                            .map(serde_json::to_value)
                            .transpose()
                            .map_err(DomainError::internal)?,
                        default_payment_method: None,
                        created_at: now,
                        updated_at: now,
                        deleted_at: None,
                    },
                )
                .await?;
                Ok(Intent {
                    workspace: ws,
                    target: id,
                    call: StripeCall::CreateCustomer {
                        fields: fields(checked, ws.0, id),
                    },
                })
            })
        },
        load_account,
    )
    .await
}

/// Input of `update`: absent fields keep their value (`currency` cannot change).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccountChange {
    /// Account.
    pub billing_account_id: BillingAccountId,
    /// Name.
    pub name: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// Phone (empty clears it).
    pub phone: Option<String>,
    /// Description (empty clears it).
    pub description: Option<String>,
    /// Address (replaces it).
    pub address: Option<Address>,
}

/// Changes an account's fields and mirrors them to its Stripe customer (owners).
pub async fn update(
    services: &Services,
    actor: &Actor,
    input: AccountChange,
    key: Option<&mutation::Key>,
) -> DomainResult<Done<BillingAccountRow>> {
    let name = input
        .name
        .as_deref()
        .map(|n| check_name("name", n, 100))
        .transpose()?;
    let email = input
        .email
        .as_deref()
        .map(check_billing_email)
        .transpose()?;
    let phone = input
        .phone
        .as_deref()
        .map(|p| optional_text("phone", Some(p), 50))
        .transpose()?;
    let description = input
        .description
        .as_deref()
        .map(|d| optional_text("description", Some(d), 200))
        .transpose()?;
    let address = input
        .address
        .as_ref()
        .map(|a| check_address(Some(a)))
        .transpose()?;
    let id = input.billing_account_id;
    intents::run(
        services,
        actor,
        "updateBillingAccount",
        key,
        &input,
        |c| {
            let (name, email, phone, description, address, actor) = (
                name.clone(),
                email.clone(),
                phone.clone(),
                description.clone(),
                address.clone(),
                actor.clone(),
            );
            Box::pin(async move {
                let a = owned(c, &actor, id).await?;
                let current_address: Option<Address> = a
                    .address
                    .clone()
                    .and_then(|v| serde_json::from_value(v).ok());
                let merged = Checked {
                    name: name.clone().unwrap_or(a.name.clone()),
                    email: email.clone().unwrap_or(a.email.clone()),
                    phone: phone.clone().unwrap_or(a.phone.clone()),
                    description: description.clone().unwrap_or(a.description.clone()),
                    address: address.clone().unwrap_or(current_address),
                };
                let customer = a
                    .stripe_customer_id
                    .clone()
                    .ok_or(DomainError::NotFound("billing account"))?;
                Ok(Intent {
                    workspace: WorkspaceId(a.workspace_id),
                    target: a.id,
                    call: StripeCall::UpdateCustomer {
                        customer,
                        fields: fields(&merged, a.workspace_id, a.id),
                    },
                })
            })
        },
        load_account,
    )
    .await
}

/// Deletes an account and its Stripe customer (owners); refused while it has live
/// subscriptions or assigned organizations.
pub async fn delete(
    services: &Services,
    actor: &Actor,
    id: BillingAccountId,
    key: Option<&mutation::Key>,
) -> DomainResult<Done<BillingAccountRow>> {
    intents::run(
        services,
        actor,
        "deleteBillingAccount",
        key,
        &id,
        |c| {
            let actor = actor.clone();
            Box::pin(async move {
                let a = owned(c, &actor, id).await?;
                let subs = repo::count_live_subscriptions(c, a.id).await?;
                if subs > 0 {
                    return Err(DomainError::Conflict(format!(
                        "billing account {id} has {subs} active subscription(s): cancel them first"
                    )));
                }
                let roots = repo::count_assigned_roots(c, a.id).await?;
                if roots > 0 {
                    return Err(DomainError::Conflict(format!(
                        "billing account {id} is assigned to {roots} root organization(s): assign them another account first"
                    )));
                }
                let customer = a
                    .stripe_customer_id
                    .clone()
                    .ok_or(DomainError::NotFound("billing account"))?;
                Ok(Intent {
                    workspace: WorkspaceId(a.workspace_id),
                    target: a.id,
                    call: StripeCall::DeleteCustomer { customer },
                })
            })
        },
        load_account,
    )
    .await
}

/// The active accounts of several workspaces, for a reader of each (the caller checked).
pub async fn active_of(services: &Services, ws: &[Uuid]) -> DomainResult<Vec<BillingAccountRow>> {
    let mut conn = services.conn().await?;
    Ok(repo::active_accounts(&mut conn, ws).await?)
}

/// An account the actor may read (owners and admins of its workspace); `None` alike for
/// missing and foreign ones; `Forbidden` for viewers.
pub async fn find_readable(
    services: &Services,
    actor: &Actor,
    id: BillingAccountId,
) -> DomainResult<Option<BillingAccountRow>> {
    let mut conn = services.conn().await?;
    let access = match crate::domain::access::to(
        &mut conn,
        actor,
        Owned::BillingAccount,
        id.0,
        "billing account",
    )
    .await
    {
        Err(DomainError::NotFound(_)) => return Ok(None),
        other => other?,
    };
    access.require(Role::is_manager, "read billing")?;
    Ok(repo::account(&mut conn, id.0)
        .await?
        .filter(|a| a.state == "ACTIVE"))
}

/// The billing account a new organization of workspace `w` is assigned (`root`: it has no
/// parent): only roots of ASSIGNED workspaces take one, and they must once the workspace
/// has an active account. Call with the workspace row locked.
pub async fn account_for_new_org(
    conn: &mut AsyncPgConnection,
    w: &crate::db::models::WorkspaceRow,
    root: bool,
    requested: Option<BillingAccountId>,
) -> DomainResult<Option<Uuid>> {
    let assigned = BillingMode::parse(&w.billing_mode) == Some(BillingMode::Assigned);
    match requested {
        Some(_) if !root => Err(DomainError::bad_input(
            "billingAccountId",
            "children inherit their root's billing account: leave billingAccountId out",
        )),
        Some(_) if !assigned => Err(DomainError::bad_input(
            "billingAccountId",
            format!(
                "only roots of ASSIGNED workspaces take a billing account; this workspace is {}",
                w.billing_mode
            ),
        )),
        Some(id) => repo::account(conn, id.0)
            .await?
            .filter(|a| a.state == "ACTIVE" && a.workspace_id == w.id)
            .map(|a| Some(a.id))
            .ok_or(DomainError::NotFound("billing account")),
        None if root && assigned && !repo::active_accounts(conn, &[w.id]).await?.is_empty() => {
            Err(DomainError::bad_input(
                "billingAccountId",
                "a root organization of an ASSIGNED workspace needs a billingAccountId",
            ))
        }
        None => Ok(None),
    }
}

/// Input of `assign`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Assignment {
    /// A root organization.
    pub organization_id: OrganizationId,
    /// The account its tree draws from.
    pub billing_account_id: BillingAccountId,
}

/// Assigns a root organization an account (ASSIGNED mode, owners). Switching accounts
/// moves the tree's usage to the new account's pool, and is refused when it does not fit.
pub async fn assign(
    services: &Services,
    actor: &Actor,
    input: Assignment,
    key: Option<&mutation::Key>,
) -> DomainResult<Done<OrganizationRow>> {
    mutation::run(
        services,
        actor,
        "assignBillingAccount",
        key,
        &input,
        |c, _| -> Effect<'_, _> { Box::pin(assign_effect(c, input.clone(), actor.clone())) },
    )
    .await
}

async fn assign_effect(
    conn: &mut AsyncPgConnection,
    input: Assignment,
    actor: Actor,
) -> DomainResult<OrganizationRow> {
    let access = crate::domain::access::to(
        conn,
        &actor,
        Owned::Organization,
        input.organization_id.0,
        "organization",
    )
    .await?;
    access.require(|r| r == Role::Owner, "assign billing accounts")?;
    let ws = access.workspace;
    let org = orgs::find_many(conn, &[input.organization_id.0])
        .await?
        .into_iter()
        .next()
        .ok_or(DomainError::NotFound("organization"))?;
    let w = repos::workspaces::lock(conn, ws.0)
        .await?
        .ok_or(DomainError::NotFound("organization"))?;
    if BillingMode::parse(&w.billing_mode) != Some(BillingMode::Assigned) {
        return Err(DomainError::FailedPrecondition(format!(
            "organizations are assigned billing accounts only in ASSIGNED workspaces; this one is {}",
            w.billing_mode
        )));
    }
    if org.parent_id.is_some() {
        return Err(DomainError::bad_input(
            "organizationId",
            "only root organizations are assigned a billing account; children inherit their root's",
        ));
    }
    let account = repo::account(conn, input.billing_account_id.0)
        .await?
        .filter(|a| a.state == "ACTIVE" && a.workspace_id == ws.0)
        .ok_or(DomainError::NotFound("billing account"))?;
    let previous = repo::root_account(conn, org.id).await?;
    if previous == Some(account.id) {
        return Ok(org);
    }
    move_pool_usage(
        conn,
        ws.0,
        &org,
        previous.map(|id| Pool {
            id,
            per_account: true,
        }),
        Some(Pool {
            id: account.id,
            per_account: true,
        }),
        "switching the billing account",
    )
    .await?;
    repo::assign_root(conn, org.id, Some(account.id)).await?;
    audit::record(
        conn,
        Change {
            workspace: ws,
            action: "organization.assign_billing_account",
            target_type: "Organization",
            target_id: OrganizationId(org.id).encode(),
            summary: json!({
                "from": previous.map(|p| BillingAccountId(p).encode()),
                "to": BillingAccountId(account.id).encode(),
            }),
            actor: &actor,
        },
    )
    .await?;
    Ok(org)
}

/// Before `moved`'s subtree moves under `new_prefix` (empty: it becomes a root): in an
/// ASSIGNED workspace whose billing is active, its pooled usage moves to the pool of its new
/// root's account (refused when it does not fit); a root that becomes a child gives up its
/// own account (it inherits its new root's), and a subtree that becomes a root has none.
/// Call with the workspace and the subtree locked.
pub async fn carry_pool_usage(
    conn: &mut AsyncPgConnection,
    w: &crate::db::models::WorkspaceRow,
    moved: &OrganizationRow,
    new_prefix: &[Uuid],
) -> DomainResult<()> {
    if BillingMode::parse(&w.billing_mode) != Some(BillingMode::Assigned) {
        return Ok(());
    }
    let old_root = moved.ancestors.first().copied().unwrap_or(moved.id);
    let old = repo::root_account(conn, old_root).await?;
    let new = match new_prefix.first() {
        Some(r) => repo::root_account(conn, *r).await?,
        None if moved.parent_id.is_none() => old,
        None => None,
    };
    let pool = |id: Option<Uuid>| {
        id.map(|id| Pool {
            id,
            per_account: true,
        })
    };
    move_pool_usage(
        conn,
        w.id,
        moved,
        pool(old),
        pool(new),
        "moving this organization",
    )
    .await?;
    if moved.parent_id.is_none() && !new_prefix.is_empty() && old.is_some() {
        repo::assign_root(conn, moved.id, None).await?;
    }
    Ok(())
}

/// Moves the pooled usage of `root`'s subtree from pool `from` to pool `to` (either may be
/// none), refusing when it does not fit `to`'s capacity. Locks the subtree's counters, then
/// the pools' (the global lock order). Without active billing it does nothing.
pub async fn move_pool_usage(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    root: &OrganizationRow,
    from: Option<Pool>,
    to: Option<Pool>,
    what: &str,
) -> DomainResult<()> {
    if repo::active_accounts(conn, &[ws]).await?.is_empty() || from == to {
        return Ok(());
    }
    let window = pools::window();
    for resource in catalog::POOLED_RESOURCES {
        let counters = usage_repo::lock_counters(conn, ws, &[root.id], resource, window).await?;
        let amount = counters.first().map_or(0, |c| c.subtree);
        if amount == 0 {
            continue;
        }
        if let Some(to) = to {
            let n =
                repo::lock_pool_counter(conn, ws, to.id, to.per_account, resource, window).await?;
            if n.used + amount > n.capacity {
                let mut e = pools::exhausted(to, resource, n.used, n.capacity, amount);
                if let DomainError::PoolExhausted { message, .. } = &mut e {
                    *message = format!("{what}: {message}");
                }
                return Err(e);
            }
            repo::adjust_pool(conn, to.id, resource, window, amount).await?;
        }
        if let Some(from) = from {
            repo::lock_pool_counter(conn, ws, from.id, from.per_account, resource, window).await?;
            repo::adjust_pool(conn, from.id, resource, window, -amount).await?;
        }
    }
    Ok(())
}
