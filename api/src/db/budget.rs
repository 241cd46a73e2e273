//! The statements one request may run (`GRAPHQL_MAX_STATEMENTS`), the last line behind the
//! per-request batching and caching of every field: a request is run inside [`scope`], every
//! statement its connections start counts against it (the pool's instrumentation calls
//! [`count`]), and once it has run more than its ceiling, no further connection is handed to
//! it (`domain::Services::conn`), so its remaining fields are refused with `LIMIT_EXCEEDED`.
//! Work spawned for the request (DataLoader batches) keeps its budget ([`spawn`]); jobs run
//! outside any scope and are not limited.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

tokio::task_local! {
    static BUDGET: Arc<Budget>;
}

/// The statement budget of one request.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    ceiling: u64,
}

impl Budget {
    /// A budget of `ceiling` statements.
    pub fn new(ceiling: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            ceiling,
        })
    }

    /// Statements run so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The ceiling.
    pub fn ceiling(&self) -> u64 {
        self.ceiling
    }

    /// Whether the request has used its whole budget.
    pub fn spent(&self) -> bool {
        self.used() >= self.ceiling
    }
}

/// Runs `f` with `budget` as its request's budget.
pub async fn scope<F: std::future::Future>(budget: Arc<Budget>, f: F) -> F::Output {
    BUDGET.scope(budget, f).await
}

/// The budget of the running request, if it runs in one.
pub fn current() -> Option<Arc<Budget>> {
    BUDGET.try_with(Arc::clone).ok()
}

/// Counts one statement against the running request's budget (nothing outside a request).
pub fn count() {
    let _ = BUDGET.try_with(|b| b.used.fetch_add(1, Ordering::Relaxed));
}

/// Spawns `f` within the running request's budget (for the request's DataLoaders).
pub fn spawn(f: futures::future::BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()> {
    match current() {
        Some(b) => tokio::spawn(BUDGET.scope(b, f)),
        None => tokio::spawn(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn statements_count_in_their_request_and_its_spawned_work_only() {
        let b = Budget::new(3);
        count();
        scope(b.clone(), async {
            count();
            spawn(Box::pin(async { count() })).await.expect("spawned");
        })
        .await;
        count();
        assert_eq!(b.used(), 2);
        assert!(!b.spent());
        scope(b.clone(), async { count() }).await;
        assert!(b.spent());
    }
}
