//! Workspace governance: the policies and security settings the gateway enforces on every
//! request that acts in a workspace ([`gate`]), shared rate limits ([`rate_limit`]), API keys
//! ([`api_keys`]), quotas, approval workflows and templates.
//!
//! The settings of a workspace are one row of `workspace_settings` (none: the defaults,
//! which enforce nothing). Each process caches the rows it reads for `GOVERNANCE_CACHE_MS`
//! (2 s by default), so the gate costs no statement per request; a change made through this
//! process applies to its next request at once, one made through another process within
//! that time.

pub mod api_key_admin;
pub mod api_keys;
pub mod approvals;
pub mod gate;
pub mod network;
mod owner_change;
pub mod quotas;
pub mod rate_limit;
pub mod settings;
pub mod templates;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use uuid::Uuid;

use super::DomainResult;
use crate::config::ConfigError;
use crate::db::repo::governance::{self as repo, SettingsRow};

pub use gate::{Caller, Credentials, Gate};

/// Workspaces whose settings are cached at most (emptied when full).
const CACHE_CAPACITY: usize = 100_000;

/// The operator's settings (`TRUSTED_PROXIES`, `GOVERNANCE_CACHE_MS`,
/// `RATE_LIMIT_WINDOW_SECS`).
#[derive(Debug, Clone)]
pub struct GovernanceConfig {
    /// Peers whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// How long a process trusts the settings it read.
    pub cache_ttl: Duration,
    /// Length of a rate limit window.
    pub rate_window: Duration,
}

impl Default for GovernanceConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            cache_ttl: Duration::from_millis(2_000),
            rate_window: Duration::from_secs(60),
        }
    }
}

impl GovernanceConfig {
    /// Reads the settings through `var`.
    pub fn from_lookup(var: &impl Fn(&'static str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        if let Some(list) = var("TRUSTED_PROXIES") {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                c.trusted_proxies
                    .push(network::parse_cidr(item).ok_or_else(|| ConfigError {
                        var: "TRUSTED_PROXIES",
                        message: format!(
                            "`{}` is not an IP address or CIDR (e.g. 10.0.0.0/8, ::1)",
                            super::excerpt(item)
                        ),
                    })?);
            }
        }
        if let Some(ms) = var("GOVERNANCE_CACHE_MS") {
            let ms: u64 = ms.trim().parse().map_err(|_| ConfigError {
                var: "GOVERNANCE_CACHE_MS",
                message: "must be a whole number of milliseconds".into(),
            })?;
            if ms > 60_000 {
                return Err(ConfigError {
                    var: "GOVERNANCE_CACHE_MS",
                    message: "must be at most 60000 (a minute)".into(),
                });
            }
            c.cache_ttl = Duration::from_millis(ms);
        }
        if let Some(secs) = var("RATE_LIMIT_WINDOW_SECS") {
            let secs: u64 = secs.trim().parse().map_err(|_| ConfigError {
                var: "RATE_LIMIT_WINDOW_SECS",
                message: "must be a whole number of seconds".into(),
            })?;
            if !(1..=3600).contains(&secs) {
                return Err(ConfigError {
                    var: "RATE_LIMIT_WINDOW_SECS",
                    message: "must be between 1 and 3600".into(),
                });
            }
            c.rate_window = Duration::from_secs(secs);
        }
        Ok(c)
    }
}

/// A workspace's settings as the gate uses them.
#[derive(Debug)]
pub struct Enforced {
    /// The stored row (or the defaults).
    pub row: SettingsRow,
    /// `ip_allow_list`, parsed.
    pub nets: Vec<IpNet>,
    /// The workspace's quotas by resource key, read on first need (`quotas::limits`) and
    /// trusted as long as this entry.
    pub quotas: std::sync::OnceLock<Arc<HashMap<String, i64>>>,
}

impl Enforced {
    fn new(row: SettingsRow) -> Self {
        let nets = row
            .ip_allow_list
            .iter()
            .filter_map(|c| network::parse_cidr(c))
            .collect();
        Self {
            row,
            nets,
            quotas: std::sync::OnceLock::new(),
        }
    }
}

/// The governance state of one process.
pub struct Governance {
    /// Operator settings.
    pub config: GovernanceConfig,
    /// Shared rate limits.
    pub limiter: rate_limit::RateLimiter,
    /// API keys recently authenticated, and their last uses.
    pub keys: api_keys::KeyCache,
    /// Connections of the gate alone: it never waits for one while holding another, so
    /// requests that hold connections of the main pool cannot starve it.
    pool: crate::db::DbPool,
    settings: Mutex<HashMap<Uuid, (Instant, Arc<Enforced>)>>,
    /// (workspace, address, hour) of IP refusals already reported by this process.
    reported: Mutex<std::collections::HashSet<(Uuid, std::net::IpAddr, i64)>>,
}

impl Governance {
    /// The state for `config`, reading through `pool` (its own: see `pool`).
    pub fn new(config: GovernanceConfig, pool: crate::db::DbPool) -> Self {
        Self {
            pool,
            limiter: rate_limit::RateLimiter::new(config.rate_window),
            keys: api_keys::KeyCache::new(config.cache_ttl),
            settings: Mutex::new(HashMap::new()),
            reported: Mutex::new(Default::default()),
            config,
        }
    }

    /// The settings of `ws`: from the cache, or one statement.
    pub async fn enforced(&self, ws: Uuid) -> DomainResult<Arc<Enforced>> {
        if let Some(e) = self.cached(ws) {
            return Ok(e);
        }
        let mut conn = self.conn().await?;
        let row = repo::settings(&mut conn, ws)
            .await?
            .unwrap_or_else(|| SettingsRow::defaults(ws));
        drop(conn);
        let e = Arc::new(Enforced::new(row));
        let mut map = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_CAPACITY {
            map.clear();
        }
        map.insert(ws, (Instant::now(), e.clone()));
        Ok(e)
    }

    /// Reports a request to `ws` from `ip` refused by its allow-list as a security alert
    /// (`security.ip_refused`), at most once per workspace, address and hour from this process
    /// (the notification's dedupe key makes it once across processes). It is written in the
    /// background: the refused request does not wait for it.
    pub fn report_ip_refused(self: &Arc<Self>, ws: Uuid, ip: std::net::IpAddr) {
        let now = chrono::Utc::now();
        let hour = now.timestamp().div_euclid(3600);
        {
            let mut seen = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= CACHE_CAPACITY {
                seen.clear();
            }
            if !seen.insert((ws, ip, hour)) {
                return;
            }
        }
        let governance = self.clone();
        tokio::spawn(async move {
            let reported = async {
                let mut conn = governance.conn().await?;
                super::notifications::ip_refused(&mut conn, crate::ids::WorkspaceId(ws), ip, now)
                    .await
            };
            if let Err(e) = reported.await {
                tracing::warn!(error = %e, "recording an IP refusal alert failed");
            }
        });
    }

    /// A connection of the gate's pool.
    pub async fn conn(&self) -> DomainResult<crate::db::DbConn> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|e| super::DomainError::Unavailable(Arc::new(e.into())))?;
        super::refuse_past_budget()?;
        Ok(conn)
    }

    fn cached(&self, ws: Uuid) -> Option<Arc<Enforced>> {
        let map = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ws)
            .filter(|(at, _)| at.elapsed() < self.config.cache_ttl)
            .map(|(_, e)| e.clone())
    }

    /// Forgets the cached settings of `ws` (they were just changed by this process).
    pub fn forget(&self, ws: Uuid) {
        let mut map = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&ws);
    }
}
