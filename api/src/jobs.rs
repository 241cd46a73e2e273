//! Background work shared by the `worker` binary and the in-process worker of `api`.
//!
//! Every task here is idempotent and safe to run in several processes at once.
//!
//! Jobs are rows of apalis-postgres's `apalis.jobs`, enqueued in the transaction of the
//! change that causes them (`db::repo::jobs::enqueue`) and run by apalis workers, one per
//! queue, named explicitly (the default name is a Rust type path). Designed around
//! apalis-postgres 1.0:
//! - workers listen for new jobs (`with_pubsub`): without it a job waits for the next poll;
//! - a job whose worker stopped heartbeating is taken back after `HEARTBEAT` × `MISSED`
//!   (15 s; the default is 5 minutes);
//! - failures are retried in the worker with exponential backoff (without a retry layer a
//!   failed job is fetched again at once), then stay `Failed` in `apalis.jobs` with their
//!   error;
//! - payloads are decoded as plain JSON and read defensively by each job: a payload that does
//!   not decode into the worker's type would stop the worker;
//! - a worker that exits on a database error is restarted by the monitor.

use std::time::Duration;

use apalis::layers::retry::RetryPolicy;
use apalis::layers::retry::backoff::MakeBackoff;
use apalis::prelude::*;
use apalis_postgres::{Config as QueueConfig, PgPool, PostgresStorage};
use tokio::sync::watch;

use crate::db::DbPool;
use crate::db::repo::idempotency;

/// How often a worker tells the queue it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Heartbeats missed before a worker's jobs are taken back by another.
pub const MISSED: usize = 3;
/// Attempts of a job inside one worker before it is left `Failed`.
pub const RETRIES: usize = 5;

/// Runs one job of the Stripe events queue (see `domain::webhooks::process`).
async fn stripe_event(payload: serde_json::Value, pool: Data<DbPool>) -> Result<(), BoxDynError> {
    crate::domain::webhooks::process(&pool, &payload).await?;
    Ok(())
}

/// The queue workers until `shutdown` turns true.
async fn run_queues(database_url: String, pool: DbPool, mut shutdown: watch::Receiver<bool>) {
    let queue_pool = match PgPool::connect_lazy(&database_url) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "the job queue cannot use DATABASE_URL");
            return;
        }
    };
    let monitor = Monitor::new()
        .should_restart(|worker, error| {
            tracing::warn!(worker = worker.name(), %error, "job worker stopped; restarting it");
            true
        })
        .register(move |n| {
            let backend = PostgresStorage::<serde_json::Value>::new(&queue_pool)
                .with_config(
                    QueueConfig::default()
                        .queue(crate::domain::webhooks::QUEUE)
                        .heartbeat_interval(HEARTBEAT)
                        .missed_heartbeats(MISSED),
                )
                .with_pubsub();
            let mut backoff = apalis::layers::retry::backoff::ExponentialBackoffMaker::default();
            WorkerBuilder::new(format!("stripe-events-{}-{n}", ulid_suffix()))
                .backend(backend)
                .data(pool.clone())
                .retry(RetryPolicy::retries(RETRIES).with_backoff(backoff.make_backoff()))
                .catch_panic()
                .build(stripe_event)
        });
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        Ok(())
    };
    if let Err(e) = monitor.run_with_signal(stop).await {
        tracing::error!(error = %e, "job workers stopped");
    }
}

/// How often expired idempotency keys and finished jobs are purged.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// What the workers need from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `DATABASE_URL` (the job queue opens its own connections).
    pub database_url: String,
    /// How long finished jobs are kept.
    pub done_retention: Duration,
    /// How long failed jobs are kept.
    pub failed_retention: Duration,
}

impl From<&crate::config::Config> for Settings {
    fn from(c: &crate::config::Config) -> Self {
        Self {
            database_url: c.database_url.clone(),
            done_retention: c.job_retention,
            failed_retention: c.failed_job_retention,
        }
    }
}

/// Jobs deleted per statement by the retention purge.
const PURGE_BATCH: i64 = 10_000;

/// Deletes finished jobs past their retention, a batch at a time; returns how many.
pub async fn purge_finished_jobs(pool: &DbPool, settings: &Settings) -> anyhow::Result<usize> {
    let mut conn = pool.get().await?;
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let mut total = 0;
    loop {
        let n = crate::db::repo::jobs::purge_finished(
            &mut conn,
            secs(settings.done_retention),
            secs(settings.failed_retention),
            PURGE_BATCH,
        )
        .await?;
        total += n;
        if (n as i64) < PURGE_BATCH {
            return Ok(total);
        }
    }
}

/// Deletes expired idempotency keys once; returns how many.
pub async fn purge_expired_idempotency_keys(pool: &DbPool) -> anyhow::Result<usize> {
    let mut conn = pool.get().await?;
    Ok(idempotency::purge_expired(&mut conn).await?)
}

/// A name part unique to this process (worker names are unique across processes).
fn ulid_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Runs the job queues and the periodic maintenance tasks until `shutdown` turns true.
pub async fn run(pool: DbPool, settings: Settings, mut shutdown: watch::Receiver<bool>) {
    tracing::info!("worker started");
    let queues = tokio::spawn(run_queues(
        settings.database_url.clone(),
        pool.clone(),
        shutdown.clone(),
    ));
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match purge_expired_idempotency_keys(&pool).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "purged expired idempotency keys"),
                    Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
                }
                match purge_finished_jobs(&pool, &settings).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "purged finished jobs"),
                    Err(e) => tracing::warn!(error = %e, "purging finished jobs failed"),
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    let _ = queues.await;
    tracing::info!("worker stopped");
}
