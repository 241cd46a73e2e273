//! The periodic jobs and their queue, `maintenance`.
//!
//! Each tick of a periodic job's schedule (see `schedule`) enqueues one job on this queue,
//! `{"v": 1, "schedule": NAME, "tick": RFC3339}`, which the queue's workers run like any
//! other job: counted by `count_run`, retried with backoff, kept `Failed` with its error. Every
//! periodic job is idempotent and catches up by itself (it does everything due, not one
//! tick's share), so a skipped tick costs nothing but time and a repeated one nothing at all.
//!
//! Adding one is one line in [`PERIODIC`]: its name, the variable of its schedule, the default
//! schedule and its function.

use std::time::{Duration, Instant};

use futures::FutureExt as _;

use super::Settings;
use super::schedule::Periodic;
use crate::db::DbPool;
use crate::db::repo::idempotency;

/// The queue of the periodic jobs.
pub const QUEUE: &str = crate::tasks::queue::MAINTENANCE;

/// Attempts of a periodic job across workers and restarts (the next tick comes anyway).
pub const MAX_ATTEMPTS: i32 = 5;

/// The periodic jobs: name, schedule variable, default schedule (UTC, seconds first), job.
pub const PERIODIC: &[Periodic] = &[
    Periodic::new(
        "idempotency-expiry",
        "SCHEDULE_IDEMPOTENCY_EXPIRY",
        "0 0 * * * *",
        |pool, _| idempotency_expiry(pool).boxed(),
    ),
    Periodic::new(
        "job-retention",
        "SCHEDULE_JOB_RETENTION",
        "0 30 * * * *",
        |pool, settings| job_retention(pool, settings).boxed(),
    ),
    Periodic::new(
        "retention",
        "SCHEDULE_RETENTION",
        "0 15 3 * * *",
        |pool, settings| retention(pool, settings).boxed(),
    ),
    Periodic::new(
        "meter-report",
        "SCHEDULE_METER_REPORT",
        "0 * * * * *",
        |pool, settings| meter_report(pool, settings).boxed(),
    ),
    Periodic::new(
        "analytics",
        "SCHEDULE_ANALYTICS",
        "0 45 * * * *",
        |pool, _| crate::domain::analytics::refresh_periodic(pool).boxed(),
    ),
    Periodic::new(
        "notification-retry",
        "SCHEDULE_NOTIFICATION_RETRY",
        "30 * * * * *",
        |pool, _| crate::domain::notifications::delivery::retry_periodic(pool).boxed(),
    ),
    Periodic::new(
        "approval-expiry",
        "SCHEDULE_APPROVAL_EXPIRY",
        "20 */5 * * * *",
        |pool, _| approval_expiry(pool).boxed(),
    ),
    Periodic::new(
        "stripe-event-retry",
        "SCHEDULE_STRIPE_EVENT_RETRY",
        "*/15 * * * * *",
        |pool, settings| stripe_event_retry(pool, settings).boxed(),
    ),
    Periodic::new(
        "invitation-expiry",
        "SCHEDULE_INVITATION_EXPIRY",
        "40 10 * * * *",
        |pool, _| invitation_expiry(pool).boxed(),
    ),
];

/// The periodic job named `name`.
pub fn find(name: &str) -> Option<&'static Periodic> {
    PERIODIC.iter().find(|p| p.name == name)
}

/// Runs one job of the maintenance queue: the tick `tick` of the periodic job `schedule`. A
/// periodic job this release does not have is logged and dropped.
pub async fn run(
    pool: &DbPool,
    settings: &Settings,
    schedule: &str,
    tick: &str,
) -> anyhow::Result<()> {
    let Some(periodic) = find(schedule) else {
        tracing::warn!(
            schedule,
            "maintenance job of an unknown periodic job; dropped"
        );
        return Ok(());
    };
    let started = Instant::now();
    (periodic.job)(pool, settings).await?;
    tracing::debug!(
        schedule = periodic.name,
        tick,
        ms = started.elapsed().as_millis() as u64,
        "periodic job done"
    );
    Ok(())
}

/// `approval-expiry`: marks pending approval requests past their expiry `EXPIRED` and
/// abandons what they left waiting (see `domain::governance::approvals::expire_due`).
async fn approval_expiry(pool: &DbPool) -> anyhow::Result<()> {
    let n = crate::domain::governance::approvals::expire_due(pool).await?;
    if n > 0 {
        tracing::info!(expired = n, "expired approval requests");
    }
    Ok(())
}

/// `idempotency-expiry`: deletes expired idempotency keys.
async fn idempotency_expiry(pool: &DbPool) -> anyhow::Result<()> {
    let n = purge_expired_idempotency_keys(pool).await?;
    if n > 0 {
        tracing::info!(deleted = n, "purged expired idempotency keys");
    }
    Ok(())
}

/// `job-retention`: deletes finished jobs past their retention and completed billing
/// requests past [`INTENT_RETENTION`] (each even when the other fails).
async fn job_retention(pool: &DbPool, settings: &Settings) -> anyhow::Result<()> {
    let intents = purge_done_intents(pool).await;
    if let Ok(n @ 1..) = intents {
        tracing::info!(deleted = n, "purged completed billing requests");
    }
    let jobs = purge_finished_jobs(pool, settings).await;
    if let Ok(n @ 1..) = jobs {
        tracing::info!(deleted = n, "purged finished jobs");
    }
    intents.map_err(|e| e.context("purging completed billing requests"))?;
    jobs.map_err(|e| e.context("purging finished jobs"))?;
    Ok(())
}

/// `meter-report`: reports metered usage to Stripe's billing meters
/// (`domain::billing::meters::report`) and enqueues again the recovery jobs of billing
/// requests left pending (`domain::billing::intents::requeue_stale`), each even when the other
/// fails.
async fn meter_report(pool: &DbPool, settings: &Settings) -> anyhow::Result<()> {
    let billing = &settings.billing;
    let round = crate::domain::billing::meters::report(pool, billing, chrono::Utc::now()).await;
    match &round {
        Ok(r) if *r == Default::default() => {}
        Ok(r) => tracing::info!(
            stored = r.stored,
            sent = r.sent,
            failed = r.failed,
            "reported metered usage to Stripe"
        ),
        Err(_) => {}
    }
    let requeued = crate::domain::billing::intents::requeue_stale(pool, billing).await;
    if let Ok(n @ 1..) = requeued {
        tracing::info!(requeued = n, "re-enqueued stale billing requests");
    }
    round.map_err(|e| e.context("reporting metered usage"))?;
    requeued.map_err(|e| e.context("re-enqueuing stale billing requests"))?;
    Ok(())
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

/// Deletes completed billing requests past [`INTENT_RETENTION`], a batch at a time.
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

/// `retention`: deletes every workspace's data past its retention and the service's
/// (see `domain::retention`), a batch at a time.
async fn retention(pool: &DbPool, settings: &Settings) -> anyhow::Result<()> {
    let days =
        i64::try_from(settings.stripe_event_retention.as_secs() / 86_400).unwrap_or(i64::MAX);
    let done = crate::domain::retention::cleanup(
        pool,
        &settings.vault,
        chrono::Utc::now(),
        days,
        RETENTION_BATCH,
    )
    .await?;
    if done != Default::default() {
        tracing::info!(?done, "retention cleanup");
    }
    Ok(())
}

/// Rows one retention statement deletes at the most (a short lock, whatever the backlog).
pub const RETENTION_BATCH: i64 = 5_000;

/// Deletes expired invitations (`domain::invitations`).
async fn invitation_expiry(pool: &DbPool) -> anyhow::Result<()> {
    let n = crate::domain::invitations::expire_due(pool).await?;
    if n > 0 {
        tracing::info!(deleted = n, "deleted expired invitations");
    }
    Ok(())
}

/// `stripe-event-retry`: enqueues again the Stripe events left unprocessed with no job to run
/// them (`domain::webhooks::sweep`).
async fn stripe_event_retry(pool: &DbPool, settings: &Settings) -> anyhow::Result<()> {
    let n = crate::domain::webhooks::sweep(pool, &settings.config.stripe_retry).await?;
    if n > 0 {
        tracing::warn!(
            requeued = n,
            "re-enqueued Stripe events whose jobs ended without applying them"
        );
    }
    Ok(())
}
