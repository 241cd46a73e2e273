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
//! - a worker that exits on a database error is restarted by the monitor;
//! - a job re-queued because its worker stopped heartbeating is fetched whatever its
//!   `max_attempts`: every handler starts with [`count_run`], which gives up past
//!   [`MAX_RUNS`].

use std::sync::Arc;
use std::time::Duration;

use apalis::layers::retry::RetryPolicy;
use apalis::layers::retry::backoff::MakeBackoff;
use apalis::prelude::*;
use apalis_postgres::{Config as QueueConfig, PgPool, PostgresStorage};
use tokio::sync::watch;

use crate::db::DbPool;
use crate::db::repo::idempotency;
use crate::domain::billing::Billing;

/// How often a worker tells the queue it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Heartbeats missed before a worker's jobs are taken back by another.
pub const MISSED: usize = 3;
/// Attempts of a job inside one worker before it is left `Failed`.
pub const RETRIES: usize = 5;

/// Runs of one job (starts of its handler, however the earlier ones ended) after which it
/// gives up.
pub const MAX_RUNS: i32 = 10;

/// Counts a run of job `id` of `queue`; every job handler calls it first. apalis-postgres 1.0
/// re-queues the jobs of a worker that stopped heartbeating as `Pending`, and fetches
/// `Pending` jobs whatever their `max_attempts`: a job that kills its process (a crash, out
/// of memory) would run forever. Each start is counted in `job_runs` by a statement of its
/// own, committed before the work, so a run that dies is counted too; past [`MAX_RUNS`] the
/// job gives up with an [`AbortError`], which apalis records as `Killed` (not retried, never
/// fetched again) with the message. Returns the runs so far, this one included.
pub async fn count_run(pool: &DbPool, queue: &str, id: &TaskId) -> Result<i32, BoxDynError> {
    let job = id.to_string();
    let mut conn = pool.get().await?;
    let runs = crate::db::repo::jobs::count_run(&mut conn, &job).await?;
    if runs <= MAX_RUNS {
        return Ok(runs);
    }
    let last = crate::db::repo::jobs::last_error(&mut conn, &job)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "none".into());
    let message = format!(
        "gave up: run {runs} of a job that may run {MAX_RUNS} times (its earlier runs failed \
         or their worker died); last result: {last}"
    );
    tracing::error!(queue, job = %job, runs, "{message}");
    Err(Box::new(AbortError::new(message)))
}

/// Runs one job of the Stripe events queue (see `domain::webhooks::process`).
async fn stripe_event(
    payload: serde_json::Value,
    pool: Data<DbPool>,
    billing: Data<Arc<Billing>>,
    id: TaskId,
) -> Result<(), BoxDynError> {
    count_run(&pool, crate::domain::webhooks::QUEUE, &id).await?;
    crate::domain::webhooks::process(&pool, &billing, &payload).await?;
    Ok(())
}

/// Runs one job of the billing recovery queue (see `domain::billing::intents::recover`).
async fn billing_intent(
    payload: serde_json::Value,
    pool: Data<DbPool>,
    billing: Data<Arc<Billing>>,
    id: TaskId,
) -> Result<(), BoxDynError> {
    count_run(&pool, crate::domain::billing::intents::QUEUE, &id).await?;
    crate::domain::billing::intents::recover(&pool, &billing, &payload).await?;
    Ok(())
}

/// The queue workers until `shutdown` turns true.
async fn run_queues(
    database_url: String,
    pool: DbPool,
    billing: Arc<Billing>,
    mut shutdown: watch::Receiver<bool>,
) {
    let queue_pool = match PgPool::connect_lazy(&database_url) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "the job queue cannot use DATABASE_URL");
            return;
        }
    };
    // One worker per queue, each named explicitly, with the settings of the module docs.
    macro_rules! queue_worker {
        ($queue_pool:ident, $pool:ident, $billing:ident, $queue:expr, $n:expr, $handler:expr) => {{
            let backend = PostgresStorage::<serde_json::Value>::new(&$queue_pool)
                .with_config(
                    QueueConfig::default()
                        .queue($queue)
                        .heartbeat_interval(HEARTBEAT)
                        .missed_heartbeats(MISSED),
                )
                .with_pubsub();
            let mut backoff = apalis::layers::retry::backoff::ExponentialBackoffMaker::default();
            WorkerBuilder::new(format!("{}-{}-{}", $queue, ulid_suffix(), $n))
                .backend(backend)
                .data($pool.clone())
                .data($billing.clone())
                .retry(RetryPolicy::retries(RETRIES).with_backoff(backoff.make_backoff()))
                .catch_panic()
                .build($handler)
        }};
    }
    let monitor = Monitor::new()
        .should_restart(|worker, error| {
            tracing::warn!(worker = worker.name(), %error, "job worker stopped; restarting it");
            true
        })
        .register({
            let (queue_pool, pool, billing) = (queue_pool.clone(), pool.clone(), billing.clone());
            move |n| {
                queue_worker!(
                    queue_pool,
                    pool,
                    billing,
                    crate::domain::webhooks::QUEUE,
                    n,
                    stripe_event
                )
            }
        })
        .register({
            let (queue_pool, pool, billing) = (queue_pool.clone(), pool.clone(), billing.clone());
            move |n| {
                queue_worker!(
                    queue_pool,
                    pool,
                    billing,
                    crate::domain::billing::intents::QUEUE,
                    n,
                    billing_intent
                )
            }
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

/// How often metered usage is reported to Stripe and stale billing requests are looked at.
pub const BILLING_INTERVAL: Duration = Duration::from_secs(60);

/// What the workers need from the configuration.
#[derive(Clone)]
pub struct Settings {
    /// Stripe and the catalog (the mirror reads objects from Stripe).
    pub billing: Arc<Billing>,
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
            billing: Billing::new(&c.billing),
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

/// How long completed billing requests (`stripe_intents`) are kept.
pub const INTENT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// Deletes completed billing requests past `INTENT_RETENTION`, a batch at a time.
pub async fn purge_done_intents(pool: &DbPool) -> anyhow::Result<usize> {
    let mut conn = pool.get().await?;
    let secs = i64::try_from(INTENT_RETENTION.as_secs()).unwrap_or(i64::MAX);
    let mut total = 0;
    loop {
        let n = crate::db::repo::billing::purge_done_intents(&mut conn, secs, PURGE_BATCH).await?;
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
        settings.billing.clone(),
        shutdown.clone(),
    ));
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    let mut billing_tick = tokio::time::interval(BILLING_INTERVAL);
    loop {
        tokio::select! {
            _ = billing_tick.tick() => {
                let billing = &settings.billing;
                match crate::domain::billing::meters::report(&pool, billing, chrono::Utc::now()).await {
                    Ok(r) if r == Default::default() => {}
                    Ok(r) => tracing::info!(stored = r.stored, sent = r.sent, failed = r.failed, "reported metered usage to Stripe"),
                    Err(e) => tracing::warn!(error = %e, "reporting metered usage failed"),
                }
                match crate::domain::billing::intents::requeue_stale(&pool, billing).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(requeued = n, "re-enqueued stale billing requests"),
                    Err(e) => tracing::warn!(error = %e, "re-enqueuing stale billing requests failed"),
                }
            }
            _ = tick.tick() => {
                match purge_expired_idempotency_keys(&pool).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "purged expired idempotency keys"),
                    Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
                }
                match purge_done_intents(&pool).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "purged completed billing requests"),
                    Err(e) => tracing::warn!(error = %e, "purging completed billing requests failed"),
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
