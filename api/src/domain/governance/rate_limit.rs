//! Rate limits shared by every `api` process through PostgreSQL.
//!
//! Time is cut into fixed windows (`RATE_LIMIT_WINDOW_SECS`, one minute by default) and
//! each scope (a workspace, or an API key) has a budget per window: its requests per minute
//! scaled to the window. A process does not ask PostgreSQL for every request: it *leases* a
//! part of the window's budget (a twentieth, at least 1 and at most 200 requests) with one
//! upsert on `rate_limit_windows`, and spends the lease from memory. A request costs what it
//! does: one unit per operation (a batch of n operations costs n), and one per field of a
//! mutation (aliased mutation fields cost one each). The upsert computes the
//! grant from the locked row, so the sum of all leases never exceeds the budget:
//! **a scope is never admitted more than its budget in a window**. The error is the other way
//! only: requests leased by one process but not spent in the window are lost to the others,
//! so with `P` processes a busy scope may be refused up to `(P - 1) × lease` requests before
//! its budget is spent. A request costs no statement while its process holds a lease, and one
//! when it must take a new one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::repo::governance as repo;
use crate::domain::{DomainError, DomainResult};

/// Scopes kept in memory at most (the map is emptied when full; a scope forgotten only
/// loses its process's unspent lease).
const CAPACITY: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Start of the window, in seconds since the epoch.
    window: i64,
    /// Leased and not yet spent.
    left: i64,
    /// PostgreSQL had nothing more for this window.
    spent: bool,
}

/// The rate limiter of one process.
pub struct RateLimiter {
    window_secs: i64,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

impl RateLimiter {
    /// A limiter with windows of `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window_secs: window.as_secs().max(1) as i64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The budget of a window for `per_minute` requests per minute.
    pub fn budget(&self, per_minute: u32) -> i64 {
        ((i64::from(per_minute) * self.window_secs + 59) / 60).max(1)
    }

    /// Admits `cost` units of `scope` (an operation, or each field of a mutation), limited to
    /// `per_minute`, or refuses them all with `RATE_LIMITED` and the seconds until the window
    /// ends.
    pub async fn admit(
        &self,
        governance: &super::Governance,
        scope: Uuid,
        per_minute: u32,
        cost: i64,
    ) -> DomainResult<()> {
        let cost = cost.max(1);
        let now = Utc::now();
        let secs = now.timestamp();
        let window = secs - secs.rem_euclid(self.window_secs);
        let budget = self.budget(per_minute);
        let retry_after = (window + self.window_secs - secs).max(1) as u64;
        {
            let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= CAPACITY && !map.contains_key(&scope) {
                map.clear();
            }
            let b = map.entry(scope).or_insert(Bucket {
                window,
                left: 0,
                spent: false,
            });
            if b.window != window {
                *b = Bucket {
                    window,
                    left: 0,
                    spent: false,
                };
            }
            if b.left >= cost {
                b.left -= cost;
                return Ok(());
            }
            if b.spent {
                return Err(limited(per_minute, retry_after));
            }
        }
        let want = (budget / 20).clamp(1, 200).max(cost);
        let start = DateTime::<Utc>::from_timestamp(window, 0).unwrap_or(now);
        let mut conn = governance.conn().await?;
        let granted = repo::lease(&mut conn, scope, start, want, budget).await?;
        drop(conn);
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = map.entry(scope).or_insert(Bucket {
            window,
            left: 0,
            spent: false,
        });
        if b.window > window {
            // The bucket moved on to a later window meanwhile: this grant belongs to the
            // old one, which admits this request when it covers it and keeps the rest.
            return if granted >= cost {
                Ok(())
            } else {
                Err(limited(per_minute, retry_after))
            };
        }
        if b.window < window {
            *b = Bucket {
                window,
                left: 0,
                spent: false,
            };
        }
        b.left += granted;
        if granted < want {
            // The window's budget is used up: what is left serves cheaper requests only.
            b.spent = true;
        }
        if b.left < cost {
            return Err(limited(per_minute, retry_after));
        }
        // `cost` of the units held are this request's.
        b.left -= cost;
        Ok(())
    }
}

fn limited(per_minute: u32, retry_after: u64) -> DomainError {
    DomainError::RateLimited {
        message: format!(
            "the rate limit of {per_minute} requests per minute is reached; retry in {retry_after} s"
        ),
        retry_after_secs: retry_after,
    }
}
