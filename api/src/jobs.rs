//! Background work shared by the `worker` binary and the in-process worker of `api`.
//!
//! Every task here is idempotent and safe to run in several processes at once.

use std::time::Duration;

use tokio::sync::watch;

use crate::db::DbPool;
use crate::db::repo::idempotency;

/// How often expired idempotency keys are purged.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// Deletes expired idempotency keys once; returns how many.
pub async fn purge_expired_idempotency_keys(pool: &DbPool) -> anyhow::Result<usize> {
    let mut conn = pool.get().await?;
    Ok(idempotency::purge_expired(&mut conn).await?)
}

/// Runs the periodic maintenance tasks until `shutdown` turns true.
pub async fn run(pool: DbPool, mut shutdown: watch::Receiver<bool>) {
    tracing::info!("worker started");
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match purge_expired_idempotency_keys(&pool).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "purged expired idempotency keys"),
                    Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    tracing::info!("worker stopped");
}
