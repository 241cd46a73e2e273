//! The workspace and billing service: a GraphQL gateway over PostgreSQL.
//!
//! Data flows one way: HTTP → GraphQL resolver → domain service → repository → PostgreSQL.

pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod graphql;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod storage;
pub mod stripe;
pub mod tasks;
pub mod telemetry;

use std::sync::Arc;

pub use http::router;

/// Shared state of the HTTP server.
#[derive(Clone)]
pub struct AppState {
    /// Configuration.
    pub config: Arc<config::Config>,
    /// Domain services (pool and settings).
    pub services: domain::Services,
    /// The executable GraphQL schema.
    pub schema: graphql::AppSchema,
    /// Token verification.
    pub verifier: Arc<auth::Verifier>,
    /// Metrics.
    pub metrics: Arc<telemetry::Metrics>,
    /// Parsed documents by query text.
    pub documents: Arc<graphql::documents::DocumentCache>,
    /// Large documents run on the blocking pool, this many at a time (the cores).
    pub heavy: Arc<tokio::sync::Semaphore>,
    /// One connection for `/metrics`' reads of the job queues and the flushes of the API
    /// usage counters, outside the statement count of the request pool (neither is a
    /// request's work).
    pub metrics_pool: db::DbPool,
    /// The API usage counters of this process (`domain::api_usage`), flushed every
    /// `API_USAGE_FLUSH_SECS` by a task spawned with the state, and by [`Self::flush_api_usage`].
    pub api_usage: Arc<domain::api_usage::ApiUsage>,
}

impl AppState {
    /// Builds the state over an existing pool (the database must be migrated) whose
    /// connections count their statements into `statements`.
    pub fn new(
        config: config::Config,
        pool: db::DbPool,
        statements: db::StatementCounter,
    ) -> anyhow::Result<Self> {
        let governance_pool = db::build_pool_for(
            &config.database_url,
            4,
            config.lock_timeout,
            statements.clone(),
        )?;
        let services = domain::Services {
            governance: Arc::new(domain::governance::Governance::new(
                config.governance.clone(),
                governance_pool,
            )),
            pool,
            idempotency_ttl: config.idempotency_ttl,
            invitations: config.invitations.clone(),
            job_limit: config.jobs.workspace_limit,
            lock_timeout: config.lock_timeout,
            loader_delay: config.loader_delay,
            identities: Default::default(),
            notifier: Arc::new(domain::notifications::Notifier::new(
                config.notifications.clone(),
            )?),
            billing: domain::billing::Billing::new(&config.billing),
            vault: Arc::new(storage::Vault::open(
                &config.archive_url,
                &config.archive_options,
                config.archive_master_key,
            )?),
        };
        let metrics_pool = db::build_pool_for(
            &config.database_url,
            1,
            config.lock_timeout,
            Default::default(),
        )?;
        let api_usage = Arc::new(domain::api_usage::ApiUsage::default());
        // Built outside a runtime (a tool, a unit test), the state has no periodic flush.
        if tokio::runtime::Handle::try_current().is_ok() {
            api_usage.spawn_flusher(metrics_pool.clone(), config.api_usage_flush);
            spawn_key_use_flusher(
                Arc::downgrade(&services.governance),
                metrics_pool.clone(),
                config.api_usage_flush,
            );
        }
        Ok(Self {
            api_usage,
            metrics_pool,
            schema: graphql::schema(&config),
            verifier: Arc::new(auth::Verifier::new(&config)),
            metrics: Arc::new(telemetry::Metrics::new(statements)?),
            documents: Arc::new(graphql::documents::DocumentCache::new(
                std::num::NonZeroUsize::new(1_000).expect("non-zero"),
                config.document_limits,
            )),
            heavy: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            services,
            config: Arc::new(config),
        })
    }
}

impl AppState {
    /// Stores the API usage counters recorded so far (at shutdown, and when a test needs the
    /// numbers now); the counters written.
    pub async fn flush_api_usage(&self) -> anyhow::Result<usize> {
        let mut conn = self.metrics_pool.get().await?;
        self.services.governance.keys.flush(&mut conn).await?;
        drop(conn);
        self.api_usage.flush(&self.metrics_pool).await
    }
}

/// Stores the API keys' last uses every `every` (with the API usage counters' cadence), on
/// the connection outside the request pool.
fn spawn_key_use_flusher(
    governance: std::sync::Weak<domain::governance::Governance>,
    pool: db::DbPool,
    every: std::time::Duration,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(g) = governance.upgrade() else {
                return;
            };
            let flushed = match pool.get().await {
                Ok(mut conn) => g.keys.flush(&mut conn).await,
                Err(e) => Err(e.into()),
            };
            if let Err(e) = flushed {
                tracing::warn!(error = %e, "storing API keys' last use failed");
            }
        }
    });
}

/// Makes sure the database exists and is migrated, then returns a pool over it.
pub async fn prepare_database(
    config: &config::Config,
    statements: db::StatementCounter,
) -> Result<db::DbPool, db::StartupError> {
    db::ensure_database(&config.database_url).await?;
    let applied = db::migrate(&config.database_url).await?;
    if applied > 0 {
        tracing::info!(applied, "applied migrations");
    }
    db::build_pool(config, statements)
}

/// Resolves on SIGINT or SIGTERM (what process managers send to stop a service).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
