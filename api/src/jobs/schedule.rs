//! Periodic jobs on cron schedules, driven by apalis-cron 1.0.
//!
//! Every process that runs the workers runs one scheduler per periodic job: an apalis worker
//! whose backend is apalis-cron's `CronScheduler` (it sleeps until the schedule's next tick
//! and hands the tick to the worker as a task), registered on the same monitor as the queue
//! workers (restarted on error, stopped on shutdown). apalis-cron knows nothing of other
//! processes: on N replicas every tick fires N times. So a tick does no work itself: its
//! handler enqueues ONE job on the `maintenance` queue through `db::repo::jobs::enqueue`,
//! with the idempotency key `"{schedule}:{tick}"` (the tick's scheduled time, RFC 3339 in
//! UTC, to the second: `meter-report:2026-12-01T10:15:00Z`). The first process to insert it
//! enqueues the job; the others insert nothing. The job then runs on the queue workers like
//! any other (one worker runs it, `count_run`, retries).
//!
//! Facts of apalis-cron 1.0 this relies on:
//! - a tick is the schedule's time in whole seconds (`Tick::get_timestamp`), the same in every
//!   process whatever its clock's skew, so the key is the same too;
//! - a tick whose time has already passed when the scheduler is polled (its worker was
//!   blocked) is not caught up: the scheduler yields `Error::OutOfRange` from then on, which
//!   stops the worker; the monitor restarts it with a new scheduler that waits for the next
//!   tick. Ticks missed while no process runs are skipped too: a periodic job catches up by
//!   itself (each purges or reports everything due), not by replaying ticks.
//!
//! Schedules are cron expressions of the `cron` crate, in UTC: six fields, seconds first
//! (`sec min hour day-of-month month day-of-week`, an optional seventh for years), or
//! `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. Each periodic job reads its own from
//! `SCHEDULE_<NAME>` at start (a bad one stops the process), `off` turns it off in this
//! process.

use std::str::FromStr;

use apalis::layers::retry::RetryPolicy;
use apalis::layers::retry::backoff::MakeBackoff;
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use chrono::{DateTime, SecondsFormat, Timelike as _, Utc};
use futures::future::BoxFuture;

use super::Settings;
use crate::config::ConfigError;
use crate::db::DbPool;

/// The work of a periodic job (one tick's).
pub type Job = for<'a> fn(&'a DbPool, &'a Settings) -> BoxFuture<'a, anyhow::Result<()>>;

/// A periodic job: registered once in `maintenance::PERIODIC`.
#[derive(Clone, Copy)]
pub struct Periodic {
    /// Its name: the `schedule` of its jobs' payloads and the start of their keys.
    pub name: &'static str,
    /// The environment variable of its schedule (`SCHEDULE_` and the name in upper snake
    /// case).
    pub var: &'static str,
    /// Its schedule when the variable is not set.
    pub default: &'static str,
    /// What a tick's job does.
    pub job: Job,
}

impl Periodic {
    /// A periodic job named `name`, scheduled by `var` (`default` when unset), doing `job`.
    pub const fn new(
        name: &'static str,
        var: &'static str,
        default: &'static str,
        job: Job,
    ) -> Self {
        Self {
            name,
            var,
            default,
            job,
        }
    }
}

impl std::fmt::Debug for Periodic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Periodic")
            .field("name", &self.name)
            .field("var", &self.var)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

/// A periodic job with the schedule it runs on.
#[derive(Clone, Debug)]
pub struct Scheduled {
    /// The job.
    pub periodic: &'static Periodic,
    /// Its schedule.
    pub schedule: cron::Schedule,
}

/// The periodic jobs a process schedules, from the configuration (`SCHEDULE_*`).
#[derive(Clone, Debug, Default)]
pub struct Schedules(Vec<Scheduled>);

impl Schedules {
    /// None (a worker that only runs the queues).
    pub fn none() -> Self {
        Self::default()
    }

    /// Every job of `maintenance::PERIODIC` on its schedule read through `var` (its default
    /// when unset), but those set to `off`; a schedule that is not a cron expression, or
    /// that never fires, is a [`ConfigError`] naming its variable.
    pub fn from_lookup(var: &impl Fn(&'static str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut scheduled = Vec::new();
        for periodic in super::maintenance::PERIODIC {
            let raw = var(periodic.var).unwrap_or_else(|| periodic.default.to_string());
            let expression = raw.trim();
            if expression.eq_ignore_ascii_case("off") {
                continue;
            }
            let schedule = parse(expression).map_err(|message| ConfigError {
                var: periodic.var,
                message,
            })?;
            scheduled.push(Scheduled { periodic, schedule });
        }
        Ok(Self(scheduled))
    }

    /// The scheduled jobs.
    pub fn iter(&self) -> impl Iterator<Item = &Scheduled> {
        self.0.iter()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The schedule of job `name`, if scheduled.
    pub fn get(&self, name: &str) -> Option<&cron::Schedule> {
        self.iter()
            .find(|s| s.periodic.name == name)
            .map(|s| &s.schedule)
    }
}

impl std::fmt::Display for Schedules {
    /// ``name `expression` `` each, comma-separated (for the start-up log line).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} `{}`", s.periodic.name, s.schedule.source())?;
        }
        Ok(())
    }
}

/// The expected form, for messages.
const FORM: &str = "expected 6 or 7 fields, seconds first (`sec min hour day-of-month month \
                    day-of-week [year]`, e.g. `0 */5 * * * *`, in UTC), @hourly, @daily, \
                    @weekly, @monthly, @yearly, or off";

/// Parses a schedule; the error is one line for a `ConfigError`.
pub fn parse(expression: &str) -> Result<cron::Schedule, String> {
    let fields = expression.split_whitespace().count();
    if fields == 5 && !expression.starts_with('@') {
        // A crontab line: its fields would shift by one (and its weekdays count from 0,
        // the `cron` crate's from 1 = Sunday), so it is refused rather than guessed.
        return Err(format!(
            "`{expression}` has 5 fields (a crontab line?); {FORM}"
        ));
    }
    let schedule = cron::Schedule::from_str(expression).map_err(|e| {
        let reason = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        format!("`{expression}` is not a cron schedule ({reason}); {FORM}")
    })?;
    if schedule.upcoming(Utc).next().is_none() {
        return Err(format!("`{expression}` never fires again"));
    }
    Ok(schedule)
}

/// The idempotency key of the job of `schedule`'s tick at `at`: `"{schedule}:{at}"`, `at` in
/// RFC 3339, UTC, to the second.
pub fn tick_key(schedule: &str, at: DateTime<Utc>) -> String {
    format!(
        "{schedule}:{}",
        at.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// Enqueues the job of `schedule`'s tick at `at` on the maintenance queue unless a process
/// already did; `true` when this call enqueued it.
pub async fn enqueue_tick(
    pool: &DbPool,
    schedule: &str,
    at: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let at = at
        .with_nanosecond(0)
        .ok_or_else(|| anyhow::anyhow!("tick {at} out of range"))?;
    let key = tick_key(schedule, at);
    let task = crate::tasks::Task::Tick {
        schedule: schedule.to_string(),
        tick: at.to_rfc3339_opts(SecondsFormat::Secs, true),
    };
    let mut conn = pool.get().await?;
    Ok(task
        .enqueue(&mut conn, &key, super::maintenance::MAX_ATTEMPTS, 0)
        .await?)
}

/// A cron expression as apalis-cron's [`apalis_cron::Schedule`], in UTC. (apalis-cron's own
/// implementation for `cron::Schedule` comes with its `cron` feature, which also brings
/// chrono-tz for time zones we do not use; this one is the same computation:
/// `src/schedule/cron.rs` of apalis-cron 1.0.)
#[derive(Clone, Debug)]
struct Cron(cron::Schedule);

impl apalis_cron::Schedule<apalis_cron::timezone::Utc> for Cron {
    fn next_tick(&mut self, _: &apalis_cron::timezone::Utc) -> Option<Tick> {
        let next = self.0.upcoming(Utc).next()?;
        u64::try_from(next.timestamp()).ok().map(Tick::new)
    }
}

/// The periodic job a scheduler ticks for (its workers' data).
#[derive(Clone, Copy, Debug)]
struct Ticking(&'static str);

/// One tick of a scheduler: enqueues its job (once across processes).
async fn on_tick(
    tick: Tick,
    pool: Data<DbPool>,
    ticking: Data<Ticking>,
) -> Result<(), BoxDynError> {
    let secs = i64::try_from(tick.get_timestamp())?;
    let at = DateTime::<Utc>::from_timestamp(secs, 0).ok_or("tick out of range")?;
    let Ticking(name) = *ticking;
    let enqueued = enqueue_tick(&pool, name, at).await?;
    tracing::debug!(
        schedule = name,
        tick = %at.to_rfc3339_opts(SecondsFormat::Secs, true),
        enqueued,
        "schedule ticked"
    );
    Ok(())
}

/// Registers the scheduler of `scheduled` on `monitor`: an apalis worker on apalis-cron's
/// `CronScheduler` whose handler enqueues each tick's job (retried with backoff when the
/// database fails).
pub fn register(monitor: Monitor, scheduled: Scheduled, pool: DbPool) -> Monitor {
    let name = scheduled.periodic.name;
    let schedule = Cron(scheduled.schedule);
    monitor.register(move |n| {
        let mut backoff = apalis::layers::retry::backoff::ExponentialBackoffMaker::default();
        WorkerBuilder::new(format!("schedule-{name}-{}-{n}", super::ulid_suffix()))
            .backend(CronScheduler::new(schedule.clone()))
            .data(pool.clone())
            .data(Ticking(name))
            .retry(RetryPolicy::retries(super::RETRIES).with_backoff(backoff.make_backoff()))
            .catch_panic()
            .build(on_tick)
    })
}
