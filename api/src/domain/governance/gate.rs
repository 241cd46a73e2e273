//! The gate: every time a request acts in a workspace the caller belongs to (its membership
//! was just established by a repository), the workspace's settings decide whether this
//! request may. The decision is taken once per request and workspace, and costs no statement
//! while the settings and the rate limit lease are cached.
//!
//! Checks, in order: IP allow-list, TLS, then for people MFA (`amr` holds `mfa`) and the
//! session age (`auth_time`, else `iat`), for API keys whether the workspace allows them;
//! last the rate limit (per workspace for people, per key for API keys). A non-member never
//! reaches the gate: a workspace they do not belong to stays indistinguishable from a missing
//! one, whatever its settings.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::network::{self, Origin};
use crate::domain::{DomainError, DomainResult};

/// `extensions.reason` of refusals (a fixed contract).
pub mod reason {
    /// The token was not obtained with multi-factor authentication.
    pub const MFA_REQUIRED: &str = "MFA_REQUIRED";
    /// The session is older than the workspace allows.
    pub const SESSION_EXPIRED: &str = "SESSION_EXPIRED";
    /// The client address is outside the IP allow-list.
    pub const IP_NOT_ALLOWED: &str = "IP_NOT_ALLOWED";
    /// The request did not arrive over TLS.
    pub const TLS_REQUIRED: &str = "TLS_REQUIRED";
    /// The e-mail address's domain is not allowed.
    pub const DOMAIN_NOT_ALLOWED: &str = "DOMAIN_NOT_ALLOWED";
    /// External integrations are off.
    pub const INTEGRATIONS_DISABLED: &str = "INTEGRATIONS_DISABLED";
    /// API keys are off.
    pub const API_KEYS_DISABLED: &str = "API_KEYS_DISABLED";
}

/// A refusal by a policy or security setting (`FORBIDDEN` with `extensions.reason`).
pub fn refused(reason: &'static str, message: impl Into<String>) -> DomainError {
    DomainError::PolicyRefused {
        reason,
        message: message.into(),
    }
}

/// Who presented the credentials.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A person with a token.
    Person {
        /// `amr` holds `mfa`.
        mfa: bool,
        /// `auth_time`, else `iat` (seconds since the epoch).
        authenticated_at: Option<i64>,
    },
    /// An API key (a service account of one workspace).
    ApiKey {
        /// The key.
        key: Uuid,
        /// Its workspace.
        workspace: Uuid,
    },
    /// A signed link (a download): no token, so only the network rules apply.
    Link,
    /// The system itself (jobs, approved actions run for their requester).
    System,
}

/// The credentials of one request.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Who.
    pub caller: Caller,
    /// From where.
    pub origin: Origin,
}

/// The gate of one request.
pub struct Gate {
    credentials: Credentials,
    /// Rate limit units the operation costs in each workspace it acts in (see
    /// [`Gate::for_operation`]).
    cost: i64,
    /// The settings and limits to decide by (`None` for the system, which admits all).
    governance: Option<Arc<super::Governance>>,
    decided: tokio::sync::Mutex<HashMap<Uuid, Result<(), DomainError>>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// The gate of a request with `credentials`, deciding by `governance`.
    pub fn new(credentials: Credentials, governance: Arc<super::Governance>) -> Arc<Self> {
        Arc::new(Self {
            credentials,
            cost: 1,
            governance: Some(governance),
            decided: Default::default(),
        })
    }

    /// The gate of one operation of this request, costing `cost` rate limit units (its
    /// mutation fields, or one): every operation of a batch decides and is charged anew.
    pub fn for_operation(&self, cost: usize) -> Arc<Self> {
        Arc::new(Self {
            credentials: self.credentials.clone(),
            cost: i64::try_from(cost).unwrap_or(i64::MAX).max(1),
            governance: self.governance.clone(),
            decided: Default::default(),
        })
    }

    /// The gate of work the system does itself: it admits everything.
    pub fn system() -> Arc<Self> {
        Arc::new(Self {
            credentials: Credentials {
                caller: Caller::System,
                origin: Origin {
                    ip: None,
                    tls: false,
                },
            },
            cost: 1,
            governance: None,
            decided: Default::default(),
        })
    }

    /// The caller.
    pub fn caller(&self) -> &Caller {
        &self.credentials.caller
    }

    /// Where the request came from (e.g. to refuse a change that would lock it out).
    pub fn origin(&self) -> Origin {
        self.credentials.origin
    }

    /// The API key calling, if one is: (key, its workspace).
    pub fn api_key(&self) -> Option<(Uuid, Uuid)> {
        match self.credentials.caller {
            Caller::ApiKey { key, workspace } => Some((key, workspace)),
            _ => None,
        }
    }

    /// Refuses API keys (`FORBIDDEN`) for what only people may do, e.g. create a workspace.
    pub fn person_only(&self, what: &str) -> DomainResult<()> {
        match self.credentials.caller {
            Caller::ApiKey { .. } => Err(DomainError::Forbidden(format!(
                "API keys act only within their workspace and may not {what}"
            ))),
            _ => Ok(()),
        }
    }

    /// Whether this request may act in `ws`, of which the caller is a member (decided once
    /// per request; a refusal is `FORBIDDEN` with a reason, or `RATE_LIMITED`).
    pub async fn admit(&self, ws: Uuid) -> DomainResult<()> {
        let Some(governance) = &self.governance else {
            return Ok(());
        };
        if matches!(self.credentials.caller, Caller::System) {
            return Ok(());
        }
        let mut decided = self.decided.lock().await;
        if let Some(d) = decided.get(&ws) {
            return d.clone();
        }
        let d = self.decide(governance, ws).await;
        // Unavailability is not a decision: the next attempt may succeed.
        if !matches!(
            d,
            Err(DomainError::Unavailable(_) | DomainError::Internal(_))
        ) {
            decided.insert(ws, d.clone());
        }
        d
    }

    /// `admit` as a yes or no, for lists that leave refused workspaces out. Errors other
    /// than refusals are still errors.
    pub async fn admits(&self, ws: Uuid) -> DomainResult<bool> {
        match self.admit(ws).await {
            Ok(()) => Ok(true),
            Err(DomainError::PolicyRefused { .. } | DomainError::RateLimited { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether a list of the caller's workspaces shows `ws`: listing acts in it (its nested
    /// fields read it), so it passes its policies and is charged like any operation; a
    /// workspace that refuses, or whose budget is spent, is left out.
    pub async fn lists(&self, ws: Uuid) -> DomainResult<bool> {
        self.admits(ws).await
    }

    async fn decide(&self, governance: &Arc<super::Governance>, ws: Uuid) -> DomainResult<()> {
        let e = governance.enforced(ws).await?;
        let s = &e.row;
        let origin = self.credentials.origin;
        if !e.nets.is_empty() && !origin.ip.is_some_and(|ip| network::contains(&e.nets, ip)) {
            if let Some(ip) = origin.ip {
                governance.report_ip_refused(ws, network::canonical(ip));
            }
            let you = origin.ip.map(|ip| network::canonical(ip).to_string());
            return Err(refused(
                reason::IP_NOT_ALLOWED,
                format!(
                    "this workspace accepts requests only from its IP allow-list; this one came from {}",
                    you.as_deref().unwrap_or("an unknown address")
                ),
            ));
        }
        if s.require_tls && !origin.tls {
            return Err(refused(
                reason::TLS_REQUIRED,
                "this workspace accepts requests over TLS (HTTPS) only",
            ));
        }
        let scope = match self.credentials.caller {
            Caller::Person {
                mfa,
                authenticated_at,
            } => {
                if s.mfa_required && !mfa {
                    return Err(refused(
                        reason::MFA_REQUIRED,
                        "this workspace requires multi-factor authentication: sign in again with MFA",
                    ));
                }
                if let Some(minutes) = s.session_timeout_minutes {
                    let now = chrono::Utc::now().timestamp();
                    // A sign-in "in the future" (beyond the clock skew tokens are allowed)
                    // proves nothing.
                    let fresh = authenticated_at.is_some_and(|at| {
                        let age = now.saturating_sub(at);
                        (-(crate::auth::LEEWAY_SECS as i64)..=i64::from(minutes) * 60)
                            .contains(&age)
                    });
                    if !fresh {
                        return Err(refused(
                            reason::SESSION_EXPIRED,
                            format!(
                                "this workspace allows sessions of at most {minutes} minutes: sign in again"
                            ),
                        ));
                    }
                }
                s.rate_limit_per_minute.map(|n| (ws, n))
            }
            Caller::ApiKey { key, workspace } => {
                if workspace != ws {
                    // Unreachable through memberships; kept as the key's own rule.
                    return Err(DomainError::NotFound("workspace"));
                }
                if !s.api_keys_allowed {
                    return Err(refused(
                        reason::API_KEYS_DISABLED,
                        "this workspace does not allow API keys",
                    ));
                }
                s.api_key_rate_limit_per_minute
                    .or(s.rate_limit_per_minute)
                    .map(|n| (key, n))
            }
            Caller::Link | Caller::System => None,
        };
        if let Some((scope, per_minute)) = scope {
            let per_minute = u32::try_from(per_minute).unwrap_or(1).max(1);
            governance
                .limiter
                .admit(governance, scope, per_minute, self.cost)
                .await?;
        }
        Ok(())
    }
}
