//! Domain services: who may do what, the invariants, and orchestration of repositories.
//! Nothing here knows about HTTP or GraphQL.

pub mod access;
pub mod analytics;
pub mod api_usage;
pub mod archives;
pub mod audit;
pub mod billing;
pub mod downloads;
pub mod gdpr;
pub mod governance;
pub mod integrations;
pub mod invitations;
pub mod jobs;
pub mod members;
pub mod mutation;
pub mod notifications;
pub mod organizations;
pub mod resources;
pub mod retention;
pub mod usage;
pub mod users;
pub mod webhooks;
pub mod workspaces;

use crate::ids::UserId;

/// A workspace role. The matrix of what each may do is in docs/features/identity-and-roles.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Everything, including billing, members and deleting the workspace.
    Owner,
    /// Organizations, admins and viewers; reads settings and billing.
    Admin,
    /// Read only.
    Viewer,
}

impl Role {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "OWNER",
            Role::Admin => "ADMIN",
            Role::Viewer => "VIEWER",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "OWNER" => Some(Role::Owner),
            "ADMIN" => Some(Role::Admin),
            "VIEWER" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// Owners and admins.
    pub fn is_manager(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// How a workspace is billed; fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BillingMode {
    /// One billing account for the workspace.
    Single,
    /// Up to ten accounts, each root organization assigned one.
    Assigned,
    /// Up to ten accounts feeding one workspace pool.
    Pooled,
}

impl BillingMode {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            BillingMode::Single => "SINGLE",
            BillingMode::Assigned => "ASSIGNED",
            BillingMode::Pooled => "POOLED",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "SINGLE" => Some(BillingMode::Single),
            "ASSIGNED" => Some(BillingMode::Assigned),
            "POOLED" => Some(BillingMode::Pooled),
            _ => None,
        }
    }
}

/// Who is calling, and for which request.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The signed-in user (an API key's service-account user for a key).
    pub user_id: UserId,
    /// The request id (also in logs and the `x-request-id` header).
    pub request_id: String,
    /// The workspace policies' gate of this request (`governance::gate`).
    pub gate: std::sync::Arc<governance::Gate>,
}

impl Actor {
    /// An actor of the system itself (jobs, signed links): its gate admits everything.
    pub fn system(user_id: UserId, request_id: String) -> Self {
        Self {
            user_id,
            request_id,
            gate: governance::Gate::system(),
        }
    }

    /// Whether this request may act in `ws`, whose member the caller was just found to be
    /// (see `governance::gate`).
    pub async fn admit(&self, ws: uuid::Uuid) -> DomainResult<()> {
        self.gate.admit(ws).await
    }
}

/// Every failure a domain function can report. One mapping in `graphql::error` turns
/// these into `extensions.code`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DomainError {
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but the role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// The object does not exist or is not visible to the caller (indistinguishable).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The input is invalid.
    #[error("{message}")]
    BadInput {
        /// Input field at fault.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A cap would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// A cap on an organization's path would be exceeded by an allocation.
    #[error("{message}")]
    LimitBreached {
        /// Human-readable explanation with the numbers.
        message: String,
        /// The organization whose cap binds (external id).
        organization_id: String,
        /// Its cap.
        limit: i64,
        /// Its subtree usage now.
        used: i64,
        /// The allocation asked for.
        requested: i64,
    },
    /// A billing pool's capacity would be exceeded by an allocation.
    #[error("{message}")]
    PoolExhausted {
        /// Human-readable explanation with the numbers.
        message: String,
        /// The pool: the billing account (`ba_…`) or, in SINGLE and POOLED modes, the
        /// workspace (`ws_…`).
        pool: String,
        /// Its capacity.
        capacity: i64,
        /// In use now.
        used: i64,
        /// The allocation asked for.
        requested: i64,
    },
    /// A workspace quota (`governance::quotas`) would be exceeded.
    #[error("{message}")]
    QuotaExceeded {
        /// Human-readable explanation with the numbers.
        message: String,
        /// The quota's resource key.
        resource: String,
        /// The quota.
        quota: i64,
        /// In use now (in the current window, for metered resources).
        used: i64,
        /// What was asked for.
        requested: i64,
    },
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The system is not in a state that allows the request (e.g. Stripe not configured,
    /// a root organization without a billing account).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The payment provider refused the request, or could not be reached (`retryable`).
    #[error("{message}")]
    PaymentProvider {
        /// What happened.
        message: String,
        /// Stripe's error code, if it gave one.
        stripe_code: Option<String>,
        /// Retrying with the same idempotency key may succeed.
        retryable: bool,
    },
    /// The idempotency key was used before with a different request.
    #[error("this idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    /// A request with this idempotency key is still running.
    #[error("a request with this idempotency key is still in progress; retry later")]
    IdempotencyKeyInUse,
    /// A policy or security setting of the workspace refuses this request (`FORBIDDEN` with
    /// `extensions.reason`, one of `governance::gate::reason`).
    #[error("{message}")]
    PolicyRefused {
        /// The reason code.
        reason: &'static str,
        /// What to do about it.
        message: String,
    },
    /// Too many requests (`RATE_LIMITED`, HTTP 429 with `Retry-After`).
    #[error("{message}")]
    RateLimited {
        /// What limit.
        message: String,
        /// Seconds until the limit resets.
        retry_after_secs: u64,
    },
    /// The database cannot be reached (a connection could not be had or was lost).
    #[error("service unavailable")]
    Unavailable(std::sync::Arc<anyhow::Error>),
    /// Something broke on our side. The detail is logged, never shown.
    #[error("internal error")]
    Internal(std::sync::Arc<anyhow::Error>),
}

impl DomainError {
    /// Invalid input on `field`.
    pub fn bad_input(field: &'static str, message: impl Into<String>) -> Self {
        DomainError::BadInput {
            field,
            message: message.into(),
        }
    }

    /// An internal failure with its cause (logged where it is turned into a response).
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        DomainError::Internal(std::sync::Arc::new(e.into()))
    }
}

/// A database error is `Unavailable` (HTTP 503 with `Retry-After`) when the connection
/// failed ([`is_connection_failure`]), else internal.
impl From<diesel::result::Error> for DomainError {
    fn from(e: diesel::result::Error) -> Self {
        if is_connection_failure(&e) {
            DomainError::Unavailable(std::sync::Arc::new(e.into()))
        } else {
            DomainError::internal(e)
        }
    }
}

/// Whether `e` is a failure of the connection rather than of the statement: the session was
/// lost or ended by the server (a restart, a failover, `pg_terminate_backend`, an idle
/// timeout), or the server is starting, stopping or recovering. The same work may succeed
/// on another connection a moment later, so it is reported as unavailable, never as an
/// internal error; every other database error stays internal.
///
/// Failures on our side of the socket (closed, reset, broken transaction manager) carry no
/// SQLSTATE and come with their own kinds. Those the server reports before it ends the
/// session are recognized by their message: diesel-async 0.9 turns every SQLSTATE outside a
/// few constraint classes into `DatabaseErrorKind::Unknown` and exposes only the message,
/// detail and hint, not the SQLSTATE. This depends on the server sending English messages
/// (`lc_messages`, English by default; `C` and `en_*` qualify): with a translated
/// `lc_messages`, these failures fall back to `INTERNAL_SERVER_ERROR`. The texts are
/// PostgreSQL 15's, as its binary holds them.
pub fn is_connection_failure(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind as K, Error as E};
    match e {
        E::DatabaseError(K::ClosedConnection | K::UnableToSendCommand, _)
        | E::BrokenTransactionManager => true,
        E::RollbackErrorOnCommit {
            rollback_error,
            commit_error,
        } => is_connection_failure(commit_error) || is_connection_failure(rollback_error),
        E::DatabaseError(_, info) => matches!(
            info.message(),
            // 57P01 admin_shutdown: pg_terminate_backend, a fast or immediate shutdown, a
            // postmaster that died; on a standby, a conflict with recovery (40001 or 57P04,
            // also FATAL: the session ends).
            "terminating connection due to administrator command"
                | "terminating connection due to immediate shutdown command"
                | "terminating connection because of unexpected SIGQUIT signal"
                | "terminating connection due to unexpected postmaster exit"
                | "terminating connection due to conflict with recovery"
                // 57P02 crash_shutdown: another backend crashed, the server restarts.
                | "terminating connection because of crash of another server process"
                // 57P03 cannot_connect_now (when connecting: the pool reports its own
                // failures as unavailable, these are for connections opened otherwise).
                | "the database system is starting up"
                | "the database system is not yet accepting connections"
                | "the database system is not accepting connections"
                | "the database system is shutting down"
                | "the database system is in recovery mode"
                // 57P05 idle_session_timeout.
                | "terminating connection due to idle-session timeout"
                // 25P03 idle_in_transaction_session_timeout.
                | "terminating connection due to idle-in-transaction timeout"
        ),
        _ => false,
    }
}

/// Result of a domain function.
pub type DomainResult<T> = Result<T, DomainError>;

/// A client's input as an error message may quote it: at most 40 characters (then `…`),
/// control characters replaced, so that a refusal never grows with its input.
pub fn excerpt(input: &str) -> String {
    const MAX: usize = 40;
    let mut out: String = input
        .chars()
        .take(MAX)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if input.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// Checks a display name: trimmed length within `min..=max` characters.
pub fn check_name(field: &'static str, value: &str, max: usize) -> DomainResult<String> {
    let v = value.trim();
    let n = v.chars().count();
    if n == 0 {
        return Err(DomainError::bad_input(
            field,
            format!("{field} must not be empty"),
        ));
    }
    if n > max {
        return Err(DomainError::bad_input(
            field,
            format!("{field} must be at most {max} characters (got {n})"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(DomainError::bad_input(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(v.to_string())
}

/// What domain functions need: the pool and the settings that shape behaviour.
#[derive(Clone)]
pub struct Services {
    /// Connection pool.
    pub pool: crate::db::DbPool,
    /// How long idempotency keys live.
    pub idempotency_ttl: std::time::Duration,
    /// How long a statement waits for a row lock (`DATABASE_LOCK_TIMEOUT_MS`); a repeat of
    /// an idempotent request waits as long for the first one's response.
    pub lock_timeout: std::time::Duration,
    /// How long DataLoaders collect keys.
    pub loader_delay: std::time::Duration,
    /// Stripe and the catalog.
    pub billing: std::sync::Arc<billing::Billing>,
    /// Object storage of archives and exports, and the master key (`storage`).
    pub vault: std::sync::Arc<crate::storage::Vault>,
    /// Recently seen identities, so that a signed-in caller costs no statement per request.
    pub identities: std::sync::Arc<users::IdentityCache>,
    /// The notification channels and their settings (`INTEGRATIONS_ALLOW_HTTP_LOOPBACK`,
    /// `SMTP_*`).
    pub notifier: std::sync::Arc<notifications::Notifier>,
    /// Cached workspace settings, rate limits and API keys (`governance`).
    pub governance: std::sync::Arc<governance::Governance>,
    /// Invitations' lifetime and link (`INVITATION_TTL_DAYS`, `INVITATION_ACCEPT_URL`).
    pub invitations: invitations::InvitationConfig,
    /// Jobs of one kind a workspace (or a person) may have queued or running at once
    /// (`WORKSPACE_JOB_LIMIT`; see `jobs::JobConfig`).
    pub job_limit: i64,
}

impl Services {
    /// A pooled connection; failure to get one means the database is unavailable.
    pub async fn conn(&self) -> DomainResult<crate::db::DbConn> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|e| DomainError::Unavailable(std::sync::Arc::new(e.into())))?;
        // Checked once the connection is had: the statements of the requests' other
        // connections, run while this one waited, count.
        refuse_past_budget()?;
        Ok(conn)
    }
}

/// Refuses a connection to a request that ran all the statements it may
/// (`GRAPHQL_MAX_STATEMENTS`; `db::budget`).
pub fn refuse_past_budget() -> DomainResult<()> {
    match crate::db::budget::current() {
        Some(b) if b.spent() => Err(DomainError::LimitExceeded(format!(
            "this request ran the {} database statements a request may run \
             (GRAPHQL_MAX_STATEMENTS); ask for less in one request",
            b.ceiling()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_bounded_and_printable() {
        assert_eq!(excerpt("short"), "short");
        let long = "z".repeat(500_000);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), 41);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt("a\u{0}b\nc"), "a\u{FFFD}b\u{FFFD}c");
        assert_eq!(excerpt(&"é".repeat(40)), "é".repeat(40));
    }

    fn server_error(
        kind: diesel::result::DatabaseErrorKind,
        message: &str,
    ) -> diesel::result::Error {
        diesel::result::Error::DatabaseError(kind, Box::new(message.to_string()))
    }

    #[test]
    fn connection_failures_are_unavailable_and_everything_else_internal() {
        use diesel::result::{DatabaseErrorKind as K, Error as E};
        let unavailable = [
            "terminating connection due to administrator command",
            "terminating connection due to immediate shutdown command",
            "terminating connection because of unexpected SIGQUIT signal",
            "terminating connection due to unexpected postmaster exit",
            "terminating connection due to conflict with recovery",
            "terminating connection because of crash of another server process",
            "the database system is starting up",
            "the database system is not yet accepting connections",
            "the database system is not accepting connections",
            "the database system is shutting down",
            "the database system is in recovery mode",
            "terminating connection due to idle-session timeout",
            "terminating connection due to idle-in-transaction timeout",
        ];
        for m in unavailable {
            let e = server_error(K::Unknown, m);
            assert!(is_connection_failure(&e), "{m}");
            assert!(
                matches!(DomainError::from(e), DomainError::Unavailable(_)),
                "{m}"
            );
        }
        // A conflict with recovery may come as 40001, which diesel-async names.
        assert!(is_connection_failure(&server_error(
            K::SerializationFailure,
            "terminating connection due to conflict with recovery"
        )));
        // Our side of the socket: no SQLSTATE.
        assert!(is_connection_failure(&server_error(
            K::UnableToSendCommand,
            "connection closed"
        )));
        assert!(is_connection_failure(&server_error(
            K::ClosedConnection,
            "closed"
        )));
        assert!(is_connection_failure(&E::BrokenTransactionManager));
        // COMMIT failed on a lost connection (its outcome is unknown, still unavailable).
        assert!(is_connection_failure(&E::RollbackErrorOnCommit {
            rollback_error: Box::new(server_error(K::UnableToSendCommand, "connection closed")),
            commit_error: Box::new(server_error(
                K::Unknown,
                "terminating connection due to administrator command"
            )),
        }));

        let internal = [
            "canceling statement due to statement timeout",
            "canceling statement due to lock timeout",
            "canceling statement due to user request",
            "canceling statement due to conflict with recovery",
            "deadlock detected",
            "relation \"organizations\" does not exist",
            // 08P01: a protocol violation is a bug to see, not an outage to wait out.
            "terminating connection because protocol synchronization was lost",
            // A translated server (`lc_messages`) is not recognized.
            "Verbindung wird abgebrochen aufgrund von Befehl des Administrators",
            // Prefixes and look-alikes do not count.
            "terminating connection due to administrator command; and more",
        ];
        for m in internal {
            let e = server_error(K::Unknown, m);
            assert!(!is_connection_failure(&e), "{m}");
            assert!(
                matches!(DomainError::from(e), DomainError::Internal(_)),
                "{m}"
            );
        }
        let unique = server_error(
            K::UniqueViolation,
            "duplicate key value violates unique constraint",
        );
        assert!(matches!(
            DomainError::from(unique),
            DomainError::Internal(_)
        ));
        assert!(matches!(
            DomainError::from(E::NotFound),
            DomainError::Internal(_)
        ));
    }
}
