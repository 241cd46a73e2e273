//! Capacity pools: what subscriptions fund, enforced by the limit engine beside the
//! organizations' caps.
//!
//! A workspace without an active billing account is not limited by billing (organization
//! caps still apply). Once it has one, allocations of the pooled resources
//! (`catalog::POOLED_RESOURCES`) draw from a pool:
//! - `SINGLE` and `POOLED`: one pool for the workspace, funded by all its accounts;
//! - `ASSIGNED`: one pool per account, drawn on by the trees of the roots assigned to it;
//!   a tree whose root has no account cannot allocate pooled resources.
//!
//! A pool's capacity is the sum of the capacities of its accounts' subscriptions in a funding
//! state (`TRIALING`, `ACTIVE`, `PAST_DUE`: a past-due subscription keeps its capacity until
//! Stripe cancels it). Its usage is counted in `pool_counters`, changed in the transaction of
//! every allocation after the organizations' counters (the global lock order), so concurrent
//! allocations never overshoot.

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use super::catalog;
use crate::db::repo::billing as repo;
use crate::domain::{BillingMode, DomainError, DomainResult};
use crate::ids::{BillingAccountId, WorkspaceId};

/// Where an organization's allocations of pooled resources draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolOf {
    /// Billing does not limit this workspace (no active account).
    Unbilled,
    /// A pool.
    Pool(Pool),
    /// ASSIGNED mode, and the organization's root has no account.
    Unassigned,
}

/// A pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// The workspace (SINGLE, POOLED) or the account (ASSIGNED).
    pub id: Uuid,
    /// ASSIGNED mode: the pool is one account's.
    pub per_account: bool,
}

impl Pool {
    /// The pool's external id (`ws_…` or `ba_…`).
    pub fn external_id(&self) -> String {
        if self.per_account {
            BillingAccountId(self.id).encode()
        } else {
            WorkspaceId(self.id).encode()
        }
    }
}

/// The pool of an organization of workspace `ws`, whose root is assigned `root_account`.
pub fn pool_of(
    ws: Uuid,
    mode: BillingMode,
    billing_active: bool,
    root_account: Option<Uuid>,
) -> PoolOf {
    if !billing_active {
        return PoolOf::Unbilled;
    }
    match mode {
        BillingMode::Single | BillingMode::Pooled => PoolOf::Pool(Pool {
            id: ws,
            per_account: false,
        }),
        BillingMode::Assigned => match root_account {
            Some(a) => PoolOf::Pool(Pool {
                id: a,
                per_account: true,
            }),
            None => PoolOf::Unassigned,
        },
    }
}

/// The window of a pooled resource (they are allocated resources: one window).
pub fn window() -> DateTime<Utc> {
    crate::domain::usage::epoch()
}

/// Applies an allocation (or release) of a pooled resource to its pool, after the
/// organizations' counters changed in the same transaction; refuses (the caller rolls
/// back) when the pool's capacity would be exceeded.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    pool: Pool,
    resource: &str,
    delta: i64,
) -> DomainResult<()> {
    let n = repo::apply_to_pool(
        conn,
        ws,
        pool.id,
        pool.per_account,
        resource,
        window(),
        delta,
    )
    .await?;
    if delta > 0 && n.used > n.capacity {
        return Err(exhausted(pool, resource, n.used - delta, n.capacity, delta));
    }
    // A statement only when the allocation crosses 80 % or 100 % of the capacity.
    crate::domain::notifications::quota::after_pool_allocation(
        conn,
        ws,
        &pool.external_id(),
        resource,
        n.capacity,
        n.used,
        delta,
    )
    .await
}

/// The error of an allocation the pool cannot fund.
pub fn exhausted(
    pool: Pool,
    resource: &str,
    used: i64,
    capacity: i64,
    requested: i64,
) -> DomainError {
    let whose = if pool.per_account {
        format!("billing account {}", pool.external_id())
    } else {
        format!("the billing pool of workspace {}", pool.external_id())
    };
    DomainError::PoolExhausted {
        message: format!(
            "allocating {requested} {resource} would exceed the capacity of {whose}: {used} of {capacity} in use; add a subscription or raise its quantities"
        ),
        pool: pool.external_id(),
        capacity,
        used,
        requested,
    }
}

/// The refusal for an organization whose root has no billing account (ASSIGNED mode).
pub fn unassigned() -> DomainError {
    DomainError::FailedPrecondition(
        "the root of this organization has no billing account: assign one (assignBillingAccount) before allocating billed resources".into(),
    )
}

/// The accounts that feed the pool of `account` in `mode`, and the pool.
pub async fn pool_of_account(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    mode: BillingMode,
    account: Uuid,
) -> DomainResult<(Pool, Vec<Uuid>)> {
    Ok(match mode {
        BillingMode::Assigned => (
            Pool {
                id: account,
                per_account: true,
            },
            vec![account],
        ),
        BillingMode::Single | BillingMode::Pooled => {
            let accounts = repo::active_accounts(conn, &[ws])
                .await?
                .into_iter()
                .map(|a| a.id)
                .collect();
            (
                Pool {
                    id: ws,
                    per_account: false,
                },
                accounts,
            )
        }
    })
}

/// Recomputes the capacity of the pool `account` feeds (after its subscriptions changed).
pub async fn refresh(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    mode: BillingMode,
    account: Uuid,
) -> DomainResult<()> {
    let (pool, accounts) = pool_of_account(conn, ws, mode, account).await?;
    repo::refresh_pool(conn, ws, pool.id, &accounts, &catalog::POOLED_RESOURCES).await?;
    Ok(())
}

/// Per pooled resource: the pool's capacity and usage, for checks that a smaller capacity
/// still covers usage (decreases, cancellations, switching a root's account). Locks the
/// pool's counters.
pub async fn numbers(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    pool: Pool,
) -> DomainResult<Vec<(&'static str, repo::PoolNumbers)>> {
    let mut out = Vec::with_capacity(catalog::POOLED_RESOURCES.len());
    for r in catalog::POOLED_RESOURCES {
        let n = repo::lock_pool_counter(conn, ws, pool.id, pool.per_account, r, window()).await?;
        out.push((r, n));
    }
    Ok(out)
}

/// Refuses a change that would leave `pool` with less capacity than its usage: `lost` is
/// the capacity per resource the change removes.
pub async fn check_still_covers(
    conn: &mut AsyncPgConnection,
    ws: Uuid,
    pool: Pool,
    lost: &[(&str, i64)],
    what: &str,
) -> DomainResult<()> {
    for (resource, n) in numbers(conn, ws, pool).await? {
        let lose = lost
            .iter()
            .filter(|(r, _)| *r == resource)
            .map(|(_, q)| *q)
            .sum::<i64>();
        if lose > 0 && n.capacity - lose < n.used {
            return Err(DomainError::Conflict(format!(
                "{what} would under-provision {resource}: {} in use, {} would remain",
                n.used,
                n.capacity - lose
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_follow_the_mode() {
        let ws = Uuid::now_v7();
        let a = Uuid::now_v7();
        assert_eq!(
            pool_of(ws, BillingMode::Single, false, None),
            PoolOf::Unbilled
        );
        assert_eq!(
            pool_of(ws, BillingMode::Assigned, false, Some(a)),
            PoolOf::Unbilled
        );
        assert_eq!(
            pool_of(ws, BillingMode::Single, true, None),
            PoolOf::Pool(Pool {
                id: ws,
                per_account: false
            })
        );
        assert_eq!(
            pool_of(ws, BillingMode::Pooled, true, Some(a)),
            PoolOf::Pool(Pool {
                id: ws,
                per_account: false
            })
        );
        assert_eq!(
            pool_of(ws, BillingMode::Assigned, true, Some(a)),
            PoolOf::Pool(Pool {
                id: a,
                per_account: true
            })
        );
        assert_eq!(
            pool_of(ws, BillingMode::Assigned, true, None),
            PoolOf::Unassigned
        );
    }
}
