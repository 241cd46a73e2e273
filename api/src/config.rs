//! Typed configuration, read once from the environment and validated at start.

use std::net::SocketAddr;
use std::time::Duration;

/// Where the process reads a value from, and what went wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it, in one line.
    pub message: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything the api and the worker read from the environment.
#[derive(Clone)]
pub struct Config {
    /// PostgreSQL connection URL.
    pub database_url: String,
    /// Connections in the pool.
    pub database_pool_size: usize,
    /// Address the HTTP server listens on.
    pub bind_addr: SocketAddr,
    /// Shared secret for HS256 development tokens (`api dev-token`).
    pub jwt_hs256_secret: Option<String>,
    /// JWKS endpoint for RS256 tokens (Auth0 style).
    pub jwt_jwks_url: Option<String>,
    /// Required `iss` claim.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    pub jwt_audience: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Whether authenticated callers may introspect the schema (GraphiQL needs it).
    pub introspection: bool,
    /// Production mode: no field suggestions in validation errors.
    pub production: bool,
    /// Whether selections of plain fields are answered in one step (`GRAPHQL_ONE_STEP`);
    /// off, every field takes the general resolver (the test suite runs both ways).
    pub one_step: bool,
    /// Maximum selection depth of one operation.
    pub max_query_depth: usize,
    /// Maximum complexity of one operation (each field counts 1, connections multiply by `first`).
    pub max_query_complexity: usize,
    /// Maximum operations in one batched request.
    pub max_batch_size: usize,
    /// Most database statements one request may run (`GRAPHQL_MAX_STATEMENTS`, 200): past
    /// it, its remaining fields are refused (`db::budget`).
    pub max_statements: u64,
    /// The caps every document is checked against before it reaches the engine
    /// (`GRAPHQL_MAX_FIELDS`, `_ALIASES`, `_TOKENS`, `_DIRECTIVES`, `_ROOT_FIELDS`,
    /// `_FRAGMENTS`, `_SPREADS`).
    pub document_limits: crate::graphql::limits::Limits,
    /// Largest request body accepted on `/graphql`.
    pub max_body_bytes: usize,
    /// Largest total size of a request's headers.
    pub max_header_bytes: usize,
    /// How long one request (reading its body and executing it) may take before its work
    /// is dropped.
    pub request_timeout: Duration,
    /// How long a stopping process waits for requests in flight before it exits anyway.
    pub shutdown_timeout: Duration,
    /// How long an idempotency key and its stored result are kept.
    pub idempotency_ttl: Duration,
    /// How long a statement waits for a row lock (and so how long a repeat of an idempotent
    /// request waits for the first one) before giving up.
    pub lock_timeout: Duration,
    /// How long a DataLoader collects keys before it sends one batched statement.
    pub loader_delay: Duration,
    /// Allowed CORS origins (`*` or a comma-separated list); empty means same-origin only.
    pub cors_origins: Vec<String>,
    /// How long finished jobs stay in `apalis.jobs` (`JOB_RETENTION_HOURS`).
    pub job_retention: Duration,
    /// How long failed jobs stay, with their errors (`JOB_FAILED_RETENTION_HOURS`).
    pub failed_job_retention: Duration,
    /// How long processed Stripe events are kept (`STRIPE_EVENT_RETENTION_DAYS`).
    pub stripe_event_retention: Duration,
    /// How the job queues run: jobs at once per queue, per-workspace limits, the retries of
    /// Stripe events (`JOB_CONCURRENCY`, `STRIPE_EVENT_CONCURRENCY`, `WORKSPACE_JOB_LIMIT`,
    /// `STRIPE_EVENT_RETRY_MAX_SECS`, `STRIPE_EVENT_SWEEP_AFTER_SECS`).
    pub jobs: crate::jobs::JobConfig,
    /// The schedules of the periodic jobs (`SCHEDULE_<NAME>`, one per job of
    /// `jobs::maintenance::PERIODIC`; `off` turns one off in this process).
    pub schedules: crate::jobs::Schedules,
    /// Signing secrets of the Stripe webhook endpoint (`STRIPE_WEBHOOK_SECRET`, several
    /// comma-separated while a secret is rolled); empty, `/webhooks/stripe` refuses every
    /// delivery with 503 so that Stripe keeps retrying until it is configured.
    pub stripe_webhook_secrets: Vec<String>,
    /// Stripe's API and the catalog (`STRIPE_SECRET_KEY`, `STRIPE_PUBLISHABLE_KEY`,
    /// `STRIPE_API_BASE`, `STRIPE_PRICE_*`).
    pub billing: crate::domain::billing::BillingConfig,
    /// Where archives and exports go (`ARCHIVE_URL`: `file:///dir`, `s3://bucket/prefix`,
    /// `gs://…`, `az://…`); by default a directory of the user's data directory.
    pub archive_url: String,
    /// The object store's settings (`AWS_*`, `GOOGLE_*`, `AZURE_*` variables that
    /// `object_store` knows, lower-cased).
    pub archive_options: Vec<(String, String)>,
    /// The key that wraps the data keys (`ARCHIVE_MASTER_KEY`: 64 hex digits or base64 of
    /// 32 bytes); required in production, a public development key otherwise.
    pub archive_master_key: [u8; 32],
    /// Whether `ARCHIVE_MASTER_KEY` was set (a warning is logged at start when it was not).
    pub archive_master_key_set: bool,
    /// Notification channels: `INTEGRATIONS_ALLOW_HTTP_LOOPBACK` (development: http to
    /// loopback destinations), `SMTP_URL` and `SMTP_FROM` (`domain::notifications::channels`).
    pub notifications: crate::domain::notifications::NotificationConfig,
    /// Workspace governance: `TRUSTED_PROXIES` (whose `X-Forwarded-For`/`-Proto` count),
    /// `GOVERNANCE_CACHE_MS` (how long settings and API keys are cached, 2000) and
    /// `RATE_LIMIT_WINDOW_SECS` (the rate limit window, 60).
    pub governance: crate::domain::governance::GovernanceConfig,
    /// How often each API process stores its request counters (`API_USAGE_FLUSH_SECS`, 10):
    /// the counts a crash can lose (`domain::api_usage`).
    pub api_usage_flush: Duration,
    /// How long a download link stays valid (`DOWNLOAD_LINK_TTL_SECS`, 900; `http::downloads`).
    pub download_link_ttl: Duration,
    /// Invitations: how long one can be accepted (`INVITATION_TTL_DAYS`, 14) and the page
    /// their e-mails link to (`INVITATION_ACCEPT_URL`; `domain::invitations`).
    pub invitations: crate::domain::invitations::InvitationConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs.
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("bind_addr", &self.bind_addr)
            .field(
                "jwt_hs256_secret",
                &self.jwt_hs256_secret.as_ref().map(|_| "<set>"),
            )
            .field("jwt_jwks_url", &self.jwt_jwks_url)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("log_format", &self.log_format)
            .field("production", &self.production)
            .field(
                "stripe_secret_key",
                &self.billing.stripe_secret_key.as_ref().map(|_| "<set>"),
            )
            .field("stripe_api_base", &self.billing.stripe_api_base)
            .field("archive_url", &self.archive_url)
            .finish_non_exhaustive()
    }
}

/// The default database URL.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/workspaces";

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &'static str| get(name).filter(|v| !v.trim().is_empty());
        let database_url = var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(err("DATABASE_URL", "must be a postgres:// URL"));
        }
        let bind_addr = parse(
            &var,
            "BIND_ADDR",
            "127.0.0.1:8080",
            "a socket address such as 127.0.0.1:8080",
        )?;
        let database_pool_size: usize = parse(
            &var,
            "DATABASE_POOL_SIZE",
            &default_pool_size().to_string(),
            "a whole number",
        )?;
        if database_pool_size < 2 {
            return Err(err("DATABASE_POOL_SIZE", "must be at least 2"));
        }
        let jwt_hs256_secret = var("JWT_HS256_SECRET");
        if jwt_hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(err("JWT_HS256_SECRET", "must be at least 32 bytes long"));
        }
        let jwt_jwks_url = var("JWT_JWKS_URL");
        if jwt_jwks_url
            .as_ref()
            .is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://")))
        {
            return Err(err("JWT_JWKS_URL", "must be an http(s) URL"));
        }
        let jwt_issuer = var("JWT_ISSUER");
        let jwt_audience = var("JWT_AUDIENCE");
        if jwt_jwks_url.is_some() && (jwt_issuer.is_none() || jwt_audience.is_none()) {
            return Err(err(
                if jwt_issuer.is_none() {
                    "JWT_ISSUER"
                } else {
                    "JWT_AUDIENCE"
                },
                "must be set when JWT_JWKS_URL is set",
            ));
        }
        let log_format = match var("LOG_FORMAT").as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(err("LOG_FORMAT", "must be `text` or `json`")),
        };
        let production = parse_bool(&var, "PRODUCTION", false)?;
        let introspection = parse_bool(&var, "GRAPHQL_INTROSPECTION", true)?;
        let one_step = parse_bool(&var, "GRAPHQL_ONE_STEP", true)?;
        let max_query_depth = parse(&var, "GRAPHQL_MAX_DEPTH", "12", "a whole number")?;
        let max_query_complexity =
            parse(&var, "GRAPHQL_MAX_COMPLEXITY", "20000", "a whole number")?;
        let max_batch_size = parse(&var, "GRAPHQL_MAX_BATCH", "10", "a whole number")?;
        let max_statements: u64 = parse(&var, "GRAPHQL_MAX_STATEMENTS", "200", "a whole number")?;
        if max_statements == 0 {
            return Err(err("GRAPHQL_MAX_STATEMENTS", "must be at least 1"));
        }
        let defaults = crate::graphql::limits::Limits::default();
        let cap = |name: &'static str, default: usize| -> Result<usize, ConfigError> {
            parse(&var, name, &default.to_string(), "a whole number")
        };
        let document_limits = crate::graphql::limits::Limits {
            max_fields: cap("GRAPHQL_MAX_FIELDS", defaults.max_fields)?,
            max_aliases: cap("GRAPHQL_MAX_ALIASES", defaults.max_aliases)?,
            max_tokens: cap("GRAPHQL_MAX_TOKENS", defaults.max_tokens)?,
            max_directives: cap("GRAPHQL_MAX_DIRECTIVES", defaults.max_directives)?,
            max_root_fields: cap("GRAPHQL_MAX_ROOT_FIELDS", defaults.max_root_fields)?,
            max_fragments: cap("GRAPHQL_MAX_FRAGMENTS", defaults.max_fragments)?,
            max_spreads: cap("GRAPHQL_MAX_SPREADS", defaults.max_spreads)?,
        };
        let max_body_bytes: usize = parse(
            &var,
            "GRAPHQL_MAX_BODY_BYTES",
            "1048576",
            "a whole number of bytes",
        )?;
        if max_body_bytes < 1024 {
            return Err(err("GRAPHQL_MAX_BODY_BYTES", "must be at least 1024"));
        }
        let max_header_bytes: usize = parse(
            &var,
            "HTTP_MAX_HEADER_BYTES",
            "32768",
            "a whole number of bytes",
        )?;
        if !(4096..=MAX_HEADER_BUFFER / 2).contains(&max_header_bytes) {
            return Err(err(
                "HTTP_MAX_HEADER_BYTES",
                format!("must be between 4096 and {}", MAX_HEADER_BUFFER / 2),
            ));
        }
        let timeout_ms: u64 = parse(
            &var,
            "GRAPHQL_TIMEOUT_MS",
            "30000",
            "a whole number of milliseconds",
        )?;
        if timeout_ms == 0 {
            return Err(err("GRAPHQL_TIMEOUT_MS", "must be at least 1"));
        }
        let shutdown_secs: u64 = parse(
            &var,
            "SHUTDOWN_TIMEOUT_SECS",
            "20",
            "a whole number of seconds",
        )?;
        let ttl_hours: u64 = parse(
            &var,
            "IDEMPOTENCY_TTL_HOURS",
            "24",
            "a whole number of hours",
        )?;
        let lock_timeout_ms: u64 = parse(
            &var,
            "DATABASE_LOCK_TIMEOUT_MS",
            "10000",
            "a whole number of milliseconds",
        )?;
        if lock_timeout_ms == 0 {
            return Err(err("DATABASE_LOCK_TIMEOUT_MS", "must be at least 1"));
        }
        let loader_delay_ms: u64 = parse(
            &var,
            "GRAPHQL_LOADER_DELAY_MS",
            "2",
            "a whole number of milliseconds",
        )?;
        let hours = |name: &'static str, default: &str| -> Result<Duration, ConfigError> {
            let h: u64 = parse(&var, name, default, "a whole number of hours")?;
            Ok(Duration::from_secs(h.saturating_mul(3600)))
        };
        let job_retention = hours("JOB_RETENTION_HOURS", "168")?;
        let failed_job_retention = hours("JOB_FAILED_RETENTION_HOURS", "720")?;
        let stripe_event_days: u64 = parse(
            &var,
            "STRIPE_EVENT_RETENTION_DAYS",
            "90",
            "a whole number of days",
        )?;
        if stripe_event_days == 0 {
            return Err(err("STRIPE_EVENT_RETENTION_DAYS", "must be at least 1"));
        }
        let stripe_event_retention = Duration::from_secs(stripe_event_days * 86_400);
        let schedules = crate::jobs::Schedules::from_lookup(&var)?;
        let jobs = crate::jobs::JobConfig::from_lookup(&var)?;
        let notifications =
            crate::domain::notifications::NotificationConfig::from_lookup(&var, production)?;
        let governance = crate::domain::governance::GovernanceConfig::from_lookup(&var)?;
        let invitations =
            crate::domain::invitations::InvitationConfig::from_lookup(&var, bind_addr)?;
        let archive_url = match var("ARCHIVE_URL") {
            Some(u) => u,
            None => default_archive_url(&var),
        };
        if let Err(e) = url::Url::parse(&archive_url) {
            return Err(err("ARCHIVE_URL", format!("not a URL: {e}")));
        }
        let archive_options = ARCHIVE_OPTIONS
            .iter()
            .filter_map(|name| var(name).map(|v| (name.to_ascii_lowercase(), v)))
            .collect();
        let archive_master_key_set = var("ARCHIVE_MASTER_KEY").is_some();
        let archive_master_key = match var("ARCHIVE_MASTER_KEY") {
            Some(k) => crate::storage::parse_master_key(&k).ok_or_else(|| {
                err(
                    "ARCHIVE_MASTER_KEY",
                    "must be 32 bytes as 64 hex digits or base64 (e.g. `openssl rand -hex 32`)",
                )
            })?,
            None if production => {
                return Err(err(
                    "ARCHIVE_MASTER_KEY",
                    "must be set in production (32 bytes as 64 hex digits or base64)",
                ));
            }
            None => crate::storage::development_master_key(),
        };
        // A comma-separated list (empty items dropped).
        let list = |name: &'static str| -> Vec<String> {
            var(name)
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let cors_origins = list("CORS_ORIGINS");
        let stripe_webhook_secrets = list("STRIPE_WEBHOOK_SECRET");
        if stripe_webhook_secrets.iter().any(|s| s.len() < 16) {
            return Err(err(
                "STRIPE_WEBHOOK_SECRET",
                "each secret must be at least 16 characters (Stripe's look like whsec_…)",
            ));
        }
        let stripe_secret_key = var("STRIPE_SECRET_KEY");
        if stripe_secret_key
            .as_ref()
            .is_some_and(|k| !(k.starts_with("sk_") || k.starts_with("rk_")))
        {
            return Err(err(
                "STRIPE_SECRET_KEY",
                "must be a Stripe secret or restricted key (sk_… or rk_…)",
            ));
        }
        let stripe_api_base = var("STRIPE_API_BASE");
        if stripe_api_base
            .as_ref()
            .is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://")))
        {
            return Err(err("STRIPE_API_BASE", "must be an http(s) URL"));
        }
        let prices = crate::domain::billing::catalog::Prices {
            starter: var("STRIPE_PRICE_STARTER"),
            enterprise: var("STRIPE_PRICE_ENTERPRISE"),
            custom: var("STRIPE_PRICE_CUSTOM"),
            users: var("STRIPE_PRICE_USERS"),
            locations: var("STRIPE_PRICE_LOCATIONS"),
            sso_connections: var("STRIPE_PRICE_SSO_CONNECTIONS"),
        };
        let meters = list("BILLING_METERS")
            .iter()
            .map(|e| crate::domain::billing::catalog::Meter::parse(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| err("BILLING_METERS", m))?;
        let billing = crate::domain::billing::BillingConfig {
            stripe_secret_key,
            stripe_publishable_key: var("STRIPE_PUBLISHABLE_KEY"),
            stripe_api_base,
            catalog: crate::domain::billing::catalog::Catalog::new(prices).with_meters(meters),
            recovery_delay: Duration::from_secs(parse(
                &var,
                "STRIPE_RECOVERY_DELAY_SECS",
                "60",
                "a whole number of seconds",
            )?),
        };
        let api_usage_flush_secs: u64 = parse(
            &var,
            "API_USAGE_FLUSH_SECS",
            "10",
            "a whole number of seconds",
        )?;
        if !(1..=3600).contains(&api_usage_flush_secs) {
            return Err(err("API_USAGE_FLUSH_SECS", "must be between 1 and 3600"));
        }
        let download_link_secs: u64 = parse(
            &var,
            "DOWNLOAD_LINK_TTL_SECS",
            "900",
            "a whole number of seconds",
        )?;
        if !(1..=86_400).contains(&download_link_secs) {
            return Err(err("DOWNLOAD_LINK_TTL_SECS", "must be between 1 and 86400"));
        }
        Ok(Self {
            notifications,
            governance,
            invitations,
            api_usage_flush: Duration::from_secs(api_usage_flush_secs),
            download_link_ttl: Duration::from_secs(download_link_secs),
            billing,
            database_url,
            database_pool_size,
            bind_addr,
            jwt_hs256_secret,
            jwt_jwks_url,
            jwt_issuer,
            jwt_audience,
            log_format,
            introspection,
            production,
            one_step,
            max_query_depth,
            max_query_complexity,
            max_batch_size,
            max_statements,
            document_limits,
            max_body_bytes,
            max_header_bytes,
            request_timeout: Duration::from_millis(timeout_ms),
            shutdown_timeout: Duration::from_secs(shutdown_secs),
            idempotency_ttl: Duration::from_secs(ttl_hours * 3600),
            lock_timeout: Duration::from_millis(lock_timeout_ms),
            loader_delay: Duration::from_millis(loader_delay_ms),
            cors_origins,
            job_retention,
            failed_job_retention,
            stripe_event_retention,
            jobs,
            schedules,
            stripe_webhook_secrets,
            archive_url,
            archive_options,
            archive_master_key,
            archive_master_key_set,
        })
    }
}

impl Config {
    /// The API must be able to verify tokens one way or the other.
    pub fn require_token_verification(&self) -> Result<(), ConfigError> {
        if self.jwt_hs256_secret.is_none() && self.jwt_jwks_url.is_none() {
            return Err(err(
                "JWT_JWKS_URL",
                "no way to verify tokens: set JWT_JWKS_URL (with JWT_ISSUER and JWT_AUDIENCE), or JWT_HS256_SECRET for development",
            ));
        }
        Ok(())
    }
}

/// The object store settings read from the environment (see `object_store`'s builders).
const ARCHIVE_OPTIONS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
    "AWS_SERVER_SIDE_ENCRYPTION",
    "AWS_SSE_KMS_KEY_ID",
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_STORAGE_TENANT_ID",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_USE_EMULATOR",
    "AZURE_STORAGE_ENDPOINT",
];

/// `file://` of `$XDG_DATA_HOME/workspaces/archives` (or `$HOME/.local/share/…`, or the
/// system's temporary directory without a home).
fn default_archive_url(var: &impl Fn(&'static str) -> Option<String>) -> String {
    let base = var("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| var("HOME").map(|h| std::path::Path::new(&h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("workspaces").join("archives");
    url::Url::from_directory_path(&dir)
        .map(String::from)
        .unwrap_or_else(|()| format!("file://{}", dir.display()))
}

pub(crate) fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

pub(crate) fn parse<T: std::str::FromStr>(
    var: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    default: &str,
    expected: &str,
) -> Result<T, ConfigError> {
    let raw = var(name).unwrap_or_else(|| default.to_string());
    raw.trim()
        .parse()
        .map_err(|_| err(name, format!("`{raw}` is not {expected}")))
}

fn parse_bool(
    var: &impl Fn(&'static str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match var(name).as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(err(name, format!("`{other}` is not true or false"))),
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The HTTP layer's own buffer for a request head: heads larger than
/// `HTTP_MAX_HEADER_BYTES` but within this get our JSON `431`; only heads past this get the
/// HTTP library's bare one.
pub const MAX_HEADER_BUFFER: usize = 1024 * 1024;

/// Default pool wait before a request gives up on a connection.
pub const POOL_WAIT: Duration = Duration::from_secs(5);

/// Connections per process when `DATABASE_POOL_SIZE` is not set: twice the cores plus two
/// (at least 4), the usual starting point for PostgreSQL. More connections than that only
/// add context switches once the cores are busy (measured on the nested-query benchmark).
pub fn default_pool_size() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores + 2).max(4)
}
