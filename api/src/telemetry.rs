//! Logging and Prometheus metrics.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::config::LogFormat;
use crate::db::DbPool;

/// Installs the global tracing subscriber (`RUST_LOG` filters, default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second call (tests) keeps the first subscriber.
    let _ = result;
}

/// Distinct operation names tracked before the rest are counted as `other`.
const MAX_OPERATION_LABELS: usize = 500;

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    graphql_operations: IntCounterVec,
    one_step: IntCounterVec,
    graphql_duration: HistogramVec,
    pool_size: IntGauge,
    pool_available: IntGauge,
    pool_in_use: IntGauge,
    pool_waiting: IntGauge,
    pool_max: IntGauge,
    statements: IntCounter,
    jobs: prometheus::IntGaugeVec,
    job_latency: prometheus::GaugeVec,
    stripe_events: prometheus::IntGaugeVec,
    statement_source: crate::db::StatementCounter,
    operation_names: Mutex<HashSet<String>>,
}

impl Metrics {
    /// Registers every metric.
    pub fn new(statement_source: crate::db::StatementCounter) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(buckets.clone()),
            &["route"],
        )?;
        let graphql_operations = IntCounterVec::new(
            Opts::new(
                "graphql_operations_total",
                "GraphQL operations by name and outcome (ok or error)",
            ),
            &["operation", "outcome"],
        )?;
        let one_step = IntCounterVec::new(
            Opts::new(
                "graphql_one_step_total",
                "Plain selections answered in one step, or handed to the general resolver",
            ),
            &["outcome"],
        )?;
        let graphql_duration = HistogramVec::new(
            HistogramOpts::new(
                "graphql_operation_duration_seconds",
                "GraphQL operation latency by name",
            )
            .buckets(buckets),
            &["operation"],
        )?;
        let pool_size = IntGauge::new(
            "db_pool_connections",
            "Connections open in the database pool",
        )?;
        let pool_available = IntGauge::new(
            "db_pool_connections_idle",
            "Idle connections in the database pool",
        )?;
        let pool_in_use = IntGauge::new(
            "db_pool_connections_in_use",
            "Connections checked out of the database pool",
        )?;
        let pool_waiting =
            IntGauge::new("db_pool_waiting", "Tasks waiting for a database connection")?;
        let pool_max = IntGauge::new(
            "db_pool_connections_max",
            "Maximum connections of the database pool",
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(graphql_operations.clone()))?;
        registry.register(Box::new(graphql_duration.clone()))?;
        registry.register(Box::new(one_step.clone()))?;
        registry.register(Box::new(pool_size.clone()))?;
        registry.register(Box::new(pool_available.clone()))?;
        registry.register(Box::new(pool_in_use.clone()))?;
        registry.register(Box::new(pool_waiting.clone()))?;
        registry.register(Box::new(pool_max.clone()))?;
        let statements = IntCounter::new(
            "db_statements_total",
            "SQL statements sent, BEGIN and COMMIT included",
        )?;
        registry.register(Box::new(statements.clone()))?;
        let jobs = prometheus::IntGaugeVec::new(
            Opts::new("jobs", "Jobs in apalis.jobs by queue and status"),
            &["queue", "status"],
        )?;
        let job_latency = prometheus::GaugeVec::new(
            Opts::new(
                "job_latency_seconds",
                "From due to done, of the jobs finished in the last 15 minutes, by queue",
            ),
            &["queue", "quantile"],
        )?;
        registry.register(Box::new(jobs.clone()))?;
        let stripe_events = prometheus::IntGaugeVec::new(
            Opts::new(
                "stripe_events_unprocessed",
                "Stripe events received and not applied yet: pending (within three days of \
                 receipt, tried again by themselves) or abandoned (older; for an operator)",
            ),
            &["state"],
        )?;
        registry.register(Box::new(stripe_events.clone()))?;
        registry.register(Box::new(job_latency.clone()))?;
        Ok(Self {
            jobs,
            stripe_events,
            job_latency,
            registry,
            http_requests,
            http_duration,
            graphql_operations,
            one_step,
            graphql_duration,
            pool_size,
            pool_available,
            pool_in_use,
            pool_waiting,
            pool_max,
            statements,
            statement_source,
            operation_names: Mutex::new(HashSet::new()),
        })
    }

    /// Records one HTTP request.
    pub fn observe_http(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[route])
            .observe(seconds);
    }

    /// Records one GraphQL operation.
    pub fn observe_operation(&self, name: Option<&str>, ok: bool, seconds: f64) {
        let label = self.operation_label(name);
        self.graphql_operations
            .with_label_values(&[label.as_str(), if ok { "ok" } else { "error" }])
            .inc();
        self.graphql_duration
            .with_label_values(&[label.as_str()])
            .observe(seconds);
    }

    /// Records one request's one-step attempts.
    pub fn observe_one_step(&self, answered: u64, fallback: u64) {
        self.one_step
            .with_label_values(&["answered"])
            .inc_by(answered);
        self.one_step
            .with_label_values(&["fallback"])
            .inc_by(fallback);
    }

    fn operation_label(&self, name: Option<&str>) -> String {
        let Some(name) = name
            .filter(|n| n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        else {
            return "anonymous".into();
        };
        let Ok(mut names) = self.operation_names.lock() else {
            return "other".into();
        };
        if names.contains(name) || names.len() < MAX_OPERATION_LABELS {
            names.insert(name.to_string());
            name.to_string()
        } else {
            "other".into()
        }
    }

    /// Reads the job gauges from the queue tables (skipped, with a warning, when the
    /// database does not answer within a second).
    pub async fn read_jobs(&self, pool: &DbPool) {
        let read = async {
            let mut conn = pool.get().await?;
            let counts = crate::db::repo::job_stats::counts(&mut conn).await?;
            let latencies = crate::db::repo::job_stats::latencies(&mut conn, 900).await?;
            let horizon = crate::domain::webhooks::RETRY_HORIZON.as_secs() as i64;
            let events = crate::db::repo::stripe_events::unprocessed(&mut conn, horizon).await?;
            anyhow::Ok((counts, latencies, events))
        };
        match tokio::time::timeout(std::time::Duration::from_secs(1), read).await {
            Ok(Ok((counts, latencies, (unprocessed, abandoned)))) => {
                self.stripe_events
                    .with_label_values(&["pending"])
                    .set(unprocessed - abandoned);
                self.stripe_events
                    .with_label_values(&["abandoned"])
                    .set(abandoned);
                self.jobs.reset();
                for c in counts {
                    self.jobs
                        .with_label_values(&[c.queue.as_str(), c.status.as_str()])
                        .set(c.jobs);
                }
                self.job_latency.reset();
                for l in latencies {
                    for (q, v) in [("0.5", l.p50), ("0.99", l.p99)] {
                        if let Some(v) = v {
                            self.job_latency
                                .with_label_values(&[l.queue.as_str(), q])
                                .set(v);
                        }
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "reading job metrics failed"),
            Err(_) => tracing::warn!("reading job metrics timed out"),
        }
    }

    /// The Prometheus text exposition, with pool gauges read now.
    pub fn render(&self, pool: &DbPool) -> String {
        let status = pool.status();
        self.pool_size.set(status.size as i64);
        self.pool_available.set(status.available as i64);
        self.pool_in_use
            .set(status.size.saturating_sub(status.available) as i64);
        self.pool_waiting.set(status.waiting as i64);
        self.pool_max.set(status.max_size as i64);
        let sent = self
            .statement_source
            .load(std::sync::atomic::Ordering::Relaxed);
        self.statements
            .inc_by(sent.saturating_sub(self.statements.get()));
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
