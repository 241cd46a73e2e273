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
//! - payloads are decoded as plain JSON, then into a typed [`Task`] (`tasks`), read
//!   defensively: a payload that does not decode is logged and dropped (one that failed to
//!   decode into the worker's own type would stop the worker);
//! - a worker that exits on a database error is restarted by the monitor;
//! - a job re-queued because its worker stopped heartbeating is fetched whatever its
//!   `max_attempts`: every handler starts with [`count_run`], which gives up past
//!   [`MAX_RUNS`].
//!
//! Queues (`tasks::queue`), one worker each, every job run by the one handler [`job`], which
//! decodes its [`Task`] and calls one domain function ([`perform`]): the billing lane
//! (`stripe-events`, `billing-intents`) and the tenant lane (`maintenance`, the periodic jobs
//! put there by the schedulers of [`schedule`] on the same monitor; `analytics`,
//! `notifications`, `archives`, `gdpr`).

use std::sync::Arc;
use std::time::Duration;

use apalis::layers::retry::RetryPolicy;
use apalis::layers::retry::backoff::MakeBackoff;
use apalis::prelude::*;
use apalis_postgres::{Config as QueueConfig, PgPool, PostgresStorage};
use tokio::sync::watch;

use crate::db::DbPool;
use crate::domain::billing::Billing;
use crate::tasks::{Task, queue};

pub mod maintenance;
pub mod schedule;

pub use maintenance::{purge_done_intents, purge_expired_idempotency_keys, purge_finished_jobs};
pub use schedule::Schedules;

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

/// The queue a worker serves (handed to [`job`] as worker data).
#[derive(Clone, Copy, Debug)]
struct Queue(&'static str);

/// Runs one job of any queue: counts the run ([`count_run`]), decodes its task
/// ([`Task::decode`]; a payload this release cannot read is logged and dropped) and hands it
/// to its one domain function ([`perform`]). A task that must not run again
/// ([`crate::tasks::GiveUp`]) is recorded `Killed` with its message; any other error is
/// retried with backoff.
async fn job(
    payload: serde_json::Value,
    queue: Data<Queue>,
    pool: Data<DbPool>,
    settings: Data<Arc<Settings>>,
    id: TaskId,
) -> Result<(), BoxDynError> {
    let Queue(queue) = *queue;
    count_run(&pool, queue, &id).await?;
    let Some(task) = Task::decode(queue, &payload) else {
        tracing::warn!(queue, %payload, "dropping a job of an unknown shape");
        return Ok(());
    };
    match perform(task, &pool, &settings).await {
        Ok(()) => Ok(()),
        Err(e) => match e.downcast::<crate::tasks::GiveUp>() {
            Ok(give_up) => Err(Box::new(AbortError::new(give_up.0))),
            Err(e) => Err(e.into()),
        },
    }
}

/// Does the work of one task: each kind is one domain function.
async fn perform(task: Task, pool: &DbPool, settings: &Settings) -> anyhow::Result<()> {
    use crate::domain::{analytics, archives, billing, gdpr, notifications, webhooks};
    match task {
        Task::StripeEvent { event_id } => {
            let retry = &settings.config.stripe_retry;
            webhooks::process(pool, &settings.billing, retry, &event_id).await
        }
        Task::BillingRecovery { intent } => {
            billing::intents::recover(pool, &settings.billing, intent).await
        }
        Task::Tick { schedule, tick } => maintenance::run(pool, settings, &schedule, &tick).await,
        Task::Analytics {
            workspace,
            period_start,
        } => analytics::run(&settings.services(pool), workspace, period_start).await,
        Task::FanOut { notification } => notifications::delivery::fan_out(pool, notification).await,
        Task::Deliver { delivery, due } => {
            notifications::delivery::deliver(&settings.services(pool), delivery, &due).await
        }
        Task::ArchiveRestore { archive } => {
            archives::run_restore(pool, &settings.vault, archive, chrono::Utc::now()).await
        }
        Task::Export { export } => gdpr::export::run(pool, &settings.vault, export).await,
        Task::Erase { user } => gdpr::erase::run(pool, &settings.vault, user).await,
        Task::EraseInWorkspace { user, workspace } => {
            gdpr::erase::run_in_workspace(pool, &settings.vault, workspace, user).await
        }
    }
}

/// The queues of the billing lane: Stripe's events and the recovery of billing requests.
/// They run on connections of their own, so that no tenant's exports or analytics can delay
/// them (see [`run_workers`]).
const BILLING_LANE: [&str; 2] = [queue::STRIPE_EVENTS, queue::BILLING_INTENTS];

/// The queues of the tenant lane: what workspaces ask for (analytics, archives, exports,
/// erasures), their notifications, and the periodic jobs.
const TENANT_LANE: [&str; 5] = [
    queue::MAINTENANCE,
    queue::ANALYTICS,
    queue::NOTIFICATIONS,
    queue::ARCHIVES,
    queue::GDPR,
];

/// The queue workers and the schedulers until `shutdown` turns true; `false` when they could
/// not start.
///
/// Each queue's worker runs at most its concurrency of jobs at once (`JOB_CONCURRENCY`,
/// `STRIPE_EVENT_CONCURRENCY`) and takes no more jobs from the table than it can run, so the
/// processes share a backlog. The queues run in two lanes, each with a connection pool of its
/// own sized for its queues' concurrency (plus one): the billing lane ([`BILLING_LANE`]) and
/// the tenant lane ([`TENANT_LANE`]). A job never waits for a connection another lane holds,
/// and the HTTP side of an `api` process that runs the worker keeps its own pool: a webhook is
/// stored, and GraphQL answers, even while every job waits on Stripe. `pool` serves the
/// schedulers.
async fn run_workers(
    pool: DbPool,
    settings: Arc<Settings>,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    let queue_pool = match PgPool::connect_lazy(&settings.database_url) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "the job queue cannot use DATABASE_URL");
            return false;
        }
    };
    let jobs = &settings.config;
    let concurrency = |name: &str| {
        if name == queue::STRIPE_EVENTS {
            jobs.stripe_concurrency
        } else {
            jobs.concurrency
        }
    };
    let lane_pool = |queues: &[&str]| {
        let size = queues.iter().map(|q| concurrency(q)).sum::<usize>() + 1;
        crate::db::build_pool_for(
            &settings.database_url,
            size,
            settings.lock_timeout,
            Default::default(),
        )
    };
    let (billing_pool, tenant_pool) = match (lane_pool(&BILLING_LANE), lane_pool(&TENANT_LANE)) {
        (Ok(b), Ok(t)) => (b, t),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "the job workers cannot build their connection pools");
            return false;
        }
    };
    // One worker per queue, each named explicitly, with the settings of the module docs.
    macro_rules! register_queue {
        ($monitor:expr, $lane:expr, $queue:expr, $handler:expr) => {{
            let (queue_pool, pool, settings) =
                (queue_pool.clone(), $lane.clone(), settings.clone());
            let at_once = concurrency($queue);
            $monitor.register(move |n| {
                let backend = PostgresStorage::<serde_json::Value>::new(&queue_pool)
                    .with_config(
                        QueueConfig::default()
                            .queue($queue)
                            .heartbeat_interval(HEARTBEAT)
                            .missed_heartbeats(MISSED)
                            .batch_size(at_once),
                    )
                    .with_pubsub();
                let mut backoff =
                    apalis::layers::retry::backoff::ExponentialBackoffMaker::default();
                WorkerBuilder::new(format!("{}-{}-{}", $queue, ulid_suffix(), n))
                    .backend(backend)
                    .data(Queue($queue))
                    .data(pool.clone())
                    .data(settings.clone())
                    .retry(RetryPolicy::retries(RETRIES).with_backoff(backoff.make_backoff()))
                    .catch_panic()
                    .concurrency(at_once)
                    .build($handler)
            })
        }};
    }
    let mut monitor = Monitor::new().should_restart(|worker, error| {
        tracing::warn!(worker = worker.name(), %error, "job worker stopped; restarting it");
        true
    });
    for (lane, queues) in [
        (&billing_pool, &BILLING_LANE[..]),
        (&tenant_pool, &TENANT_LANE[..]),
    ] {
        for &q in queues {
            monitor = register_queue!(monitor, lane, q, job);
        }
    }
    // The schedulers: each tick of a periodic job enqueues its job on the maintenance queue,
    // once however many processes tick (see `schedule`).
    for scheduled in settings.schedules.iter() {
        monitor = schedule::register(monitor, scheduled.clone(), pool.clone());
    }
    if !settings.schedules.is_empty() {
        tracing::info!(schedules = %settings.schedules, "periodic jobs scheduled");
    }
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        Ok(())
    };
    if let Err(e) = monitor.run_with_signal(stop).await {
        tracing::error!(error = %e, "job workers stopped");
    }
    true
}

/// How the job queues run (from the environment).
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Jobs one queue runs at once in one process (`JOB_CONCURRENCY`, default 2).
    pub concurrency: usize,
    /// Stripe events one process applies at once (`STRIPE_EVENT_CONCURRENCY`, default 4).
    pub stripe_concurrency: usize,
    /// Jobs of one kind (analytics, data exports, archive restores; never erasures) a
    /// workspace, or a person for their own exports, may have queued or running at once (`WORKSPACE_JOB_LIMIT`, default 3): one more is the one
    /// of them doing the same work, if any, else refused with `RATE_LIMITED`.
    pub workspace_limit: i64,
    /// The retries of Stripe events (`STRIPE_EVENT_RETRY_MAX_SECS`, default 300, and
    /// `STRIPE_EVENT_SWEEP_AFTER_SECS`, default 60).
    pub stripe_retry: crate::domain::webhooks::Retry,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            concurrency: 2,
            stripe_concurrency: 4,
            workspace_limit: 3,
            stripe_retry: crate::domain::webhooks::Retry {
                max_delay: Duration::from_secs(300),
                sweep_after: Duration::from_secs(60),
            },
        }
    }
}

impl JobConfig {
    /// Reads the settings through `var`.
    pub fn from_lookup(
        var: &impl Fn(&'static str) -> Option<String>,
    ) -> Result<Self, crate::config::ConfigError> {
        use crate::config::{err, parse};
        let d = Self::default();
        let bounded = |name: &'static str, default: usize, max: usize| {
            let n: usize = parse(var, name, &default.to_string(), "a whole number")?;
            if n == 0 || n > max {
                return Err(err(name, format!("must be between 1 and {max}")));
            }
            Ok(n)
        };
        let concurrency = bounded("JOB_CONCURRENCY", d.concurrency, 64)?;
        let stripe_concurrency = bounded("STRIPE_EVENT_CONCURRENCY", d.stripe_concurrency, 64)?;
        let workspace_limit = bounded("WORKSPACE_JOB_LIMIT", 3, 1_000)? as i64;
        let max_delay = bounded("STRIPE_EVENT_RETRY_MAX_SECS", 300, 86_400)? as u64;
        let sweep_after = bounded("STRIPE_EVENT_SWEEP_AFTER_SECS", 60, 86_400)? as u64;
        Ok(Self {
            concurrency,
            stripe_concurrency,
            workspace_limit,
            stripe_retry: crate::domain::webhooks::Retry {
                max_delay: Duration::from_secs(max_delay),
                sweep_after: Duration::from_secs(sweep_after),
            },
        })
    }
}

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
    /// How long processed Stripe events are kept.
    pub stripe_event_retention: Duration,
    /// Object storage of archives and exports.
    pub vault: Arc<crate::storage::Vault>,
    /// The periodic jobs this process schedules (`SCHEDULE_*`; see [`schedule`]).
    pub schedules: Schedules,
    /// The notification channels (`domain::notifications`).
    pub notifier: Arc<crate::domain::notifications::Notifier>,
    /// Invitations (their e-mails link to `INVITATION_ACCEPT_URL`).
    pub invitations: crate::domain::invitations::InvitationConfig,
    /// How the queues run ([`JobConfig`]).
    pub config: JobConfig,
    /// How long the workers' statements wait for a row lock (`DATABASE_LOCK_TIMEOUT_MS`).
    pub lock_timeout: Duration,
}

impl Settings {
    /// The settings of `c`; fails when the object store of `ARCHIVE_URL` cannot be set up.
    pub fn new(c: &crate::config::Config) -> anyhow::Result<Self> {
        if !c.archive_master_key_set {
            tracing::warn!(
                "ARCHIVE_MASTER_KEY is not set: archives and exports are sealed under the public \
                 development key"
            );
        }
        Ok(Self {
            vault: Arc::new(crate::storage::Vault::open(
                &c.archive_url,
                &c.archive_options,
                c.archive_master_key,
            )?),
            billing: Billing::new(&c.billing),
            database_url: c.database_url.clone(),
            done_retention: c.job_retention,
            failed_retention: c.failed_job_retention,
            stripe_event_retention: c.stripe_event_retention,
            schedules: c.schedules.clone(),
            notifier: Arc::new(crate::domain::notifications::Notifier::new(
                c.notifications.clone(),
            )?),
            invitations: c.invitations.clone(),
            config: c.jobs.clone(),
            lock_timeout: c.lock_timeout,
        })
    }
}

impl Settings {
    /// Domain services over `pool` for a job (no request settings: jobs take no row-lock
    /// waits of a client's and batch nothing).
    pub fn services(&self, pool: &DbPool) -> crate::domain::Services {
        crate::domain::Services {
            pool: pool.clone(),
            idempotency_ttl: Duration::ZERO,
            lock_timeout: Duration::ZERO,
            loader_delay: Duration::ZERO,
            billing: self.billing.clone(),
            vault: self.vault.clone(),
            identities: Default::default(),
            notifier: self.notifier.clone(),
            invitations: self.invitations.clone(),
            job_limit: self.config.workspace_limit,
            // Jobs act as the system: their gate admits everything and reads nothing.
            governance: Arc::new(crate::domain::governance::Governance::new(
                Default::default(),
                pool.clone(),
            )),
        }
    }
}

/// A name part unique to this process (worker names are unique across processes).
fn ulid_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Runs the job queues and the schedules of the periodic jobs until `shutdown` turns true.
pub async fn run(pool: DbPool, settings: Settings, mut shutdown: watch::Receiver<bool>) {
    tracing::info!("worker started");
    if !run_workers(pool, Arc::new(settings), shutdown.clone()).await {
        // The queues could not start: nothing runs, but the process stops when told to.
        let _ = shutdown.wait_for(|stop| *stop).await;
    }
    tracing::info!("worker stopped");
}
