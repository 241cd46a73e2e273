//! The one mapping from domain errors to GraphQL errors with a stable `extensions.code`.

use async_graphql::ErrorExtensions;

use crate::domain::DomainError;

/// The stable error codes clients depend on.
pub mod code {
    /// Missing or bad credentials.
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// The role does not allow it.
    pub const FORBIDDEN: &str = "FORBIDDEN";
    /// Missing, or not visible to the caller.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// Invalid input, including invalid GraphQL documents and exceeded query limits.
    pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
    /// A cap would be exceeded.
    pub const LIMIT_EXCEEDED: &str = "LIMIT_EXCEEDED";
    /// Conflicts with the current state.
    pub const CONFLICT: &str = "CONFLICT";
    /// The system is not in a state that allows it (e.g. Stripe is not configured).
    pub const FAILED_PRECONDITION: &str = "FAILED_PRECONDITION";
    /// Stripe refused the request (`extensions.stripeCode` carries Stripe's code).
    pub const PAYMENT_PROVIDER_ERROR: &str = "PAYMENT_PROVIDER_ERROR";
    /// Stripe could not be reached: retry with the same idempotency key.
    pub const PAYMENT_PROVIDER_UNAVAILABLE: &str = "PAYMENT_PROVIDER_UNAVAILABLE";
    /// Idempotency key reused with another request.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
    /// Idempotency key held by a running request.
    pub const IDEMPOTENCY_KEY_IN_USE: &str = "IDEMPOTENCY_KEY_IN_USE";
    /// Too many requests.
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// Our fault; details are in the logs under the request id.
    pub const INTERNAL_SERVER_ERROR: &str = "INTERNAL_SERVER_ERROR";
    /// The database cannot be reached right now (HTTP 503 with `Retry-After`).
    pub const SERVICE_UNAVAILABLE: &str = "SERVICE_UNAVAILABLE";
    /// The request ran past `GRAPHQL_TIMEOUT_MS` and was stopped (HTTP 504).
    pub const TIMEOUT: &str = "TIMEOUT";
}

/// Turns a domain error into a GraphQL error. Internal errors are logged here, once, with
/// the request id, and reach the client only as a code and the request id.
pub fn to_graphql(e: DomainError, request_id: &str) -> async_graphql::Error {
    let (c, message, field) = match &e {
        DomainError::Unauthenticated(m) => (code::UNAUTHENTICATED, m.clone(), None),
        DomainError::Forbidden(m) => (code::FORBIDDEN, m.clone(), None),
        DomainError::NotFound(_) => (code::NOT_FOUND, e.to_string(), None),
        DomainError::BadInput { field, message } => {
            (code::BAD_USER_INPUT, message.clone(), Some(*field))
        }
        DomainError::LimitExceeded(m) => (code::LIMIT_EXCEEDED, m.clone(), None),
        DomainError::LimitBreached {
            message,
            organization_id,
            limit,
            used,
            requested,
        } => {
            let (org, limit, used, requested) =
                (organization_id.clone(), *limit, *used, *requested);
            return async_graphql::Error::new(message.clone()).extend_with(move |_, ext| {
                ext.set("code", code::LIMIT_EXCEEDED);
                ext.set("organizationId", org.clone());
                ext.set("limit", limit);
                ext.set("used", used);
                ext.set("requested", requested);
            });
        }
        DomainError::PoolExhausted {
            message,
            pool,
            capacity,
            used,
            requested,
        } => {
            let (pool, capacity, used, requested) = (pool.clone(), *capacity, *used, *requested);
            return async_graphql::Error::new(message.clone()).extend_with(move |_, ext| {
                ext.set("code", code::LIMIT_EXCEEDED);
                ext.set("pool", pool.clone());
                ext.set("limit", capacity);
                ext.set("used", used);
                ext.set("requested", requested);
            });
        }
        DomainError::QuotaExceeded {
            message,
            resource,
            quota,
            used,
            requested,
        } => {
            let (resource, quota, used, requested) = (resource.clone(), *quota, *used, *requested);
            return async_graphql::Error::new(message.clone()).extend_with(move |_, ext| {
                ext.set("code", code::LIMIT_EXCEEDED);
                ext.set("resource", resource.clone());
                ext.set("quota", quota);
                ext.set("limit", quota);
                ext.set("used", used);
                ext.set("requested", requested);
            });
        }
        DomainError::Conflict(m) => (code::CONFLICT, m.clone(), None),
        DomainError::FailedPrecondition(m) => (code::FAILED_PRECONDITION, m.clone(), None),
        DomainError::PaymentProvider {
            message,
            stripe_code,
            retryable,
        } => {
            let c = if *retryable {
                code::PAYMENT_PROVIDER_UNAVAILABLE
            } else {
                code::PAYMENT_PROVIDER_ERROR
            };
            let stripe_code = stripe_code.clone();
            return async_graphql::Error::new(message.clone()).extend_with(move |_, ext| {
                ext.set("code", c);
                if let Some(s) = &stripe_code {
                    ext.set("stripeCode", s.clone());
                }
            });
        }
        DomainError::IdempotencyKeyReused => (code::IDEMPOTENCY_KEY_REUSED, e.to_string(), None),
        DomainError::IdempotencyKeyInUse => (code::IDEMPOTENCY_KEY_IN_USE, e.to_string(), None),
        DomainError::RateLimited {
            message,
            retry_after_secs,
        } => {
            let (message, retry) = (message.clone(), *retry_after_secs);
            return async_graphql::Error::new(message).extend_with(move |_, ext| {
                ext.set("code", code::RATE_LIMITED);
                ext.set("retryAfter", retry);
            });
        }
        DomainError::PolicyRefused { reason, message } => {
            let (message, reason) = (message.clone(), *reason);
            return async_graphql::Error::new(message).extend_with(move |_, ext| {
                ext.set("code", code::FORBIDDEN);
                ext.set("reason", reason);
            });
        }
        DomainError::Unavailable(cause) => {
            tracing::warn!(request.id = %request_id, error = %cause, "database unavailable");
            (
                code::SERVICE_UNAVAILABLE,
                format!(
                    "the service is temporarily unavailable; retry shortly (request id {request_id})"
                ),
                None,
            )
        }
        DomainError::Internal(cause) => {
            tracing::error!(request.id = %request_id, error = ?cause, "internal error");
            (
                code::INTERNAL_SERVER_ERROR,
                format!("internal server error (request id {request_id})"),
                None,
            )
        }
    };
    async_graphql::Error::new(message).extend_with(|_, ext| {
        ext.set("code", c);
        if let Some(f) = field {
            ext.set("field", f);
        }
        if c == code::INTERNAL_SERVER_ERROR || c == code::SERVICE_UNAVAILABLE {
            ext.set("requestId", request_id);
        }
    })
}

/// A `BAD_USER_INPUT` error on `field`.
pub fn bad_input(field: &'static str, message: impl Into<String>) -> async_graphql::Error {
    let message = message.into();
    async_graphql::Error::new(message).extend_with(|_, ext| {
        ext.set("code", code::BAD_USER_INPUT);
        ext.set("field", field);
    })
}

/// A `NOT_FOUND` error for `what`.
pub fn not_found(what: &'static str) -> async_graphql::Error {
    to_graphql(DomainError::NotFound(what), "")
}

/// Longest run of quoted text (between `"` or `` ` ``) an error message keeps: what the
/// engine and our messages quote is the client's input (a field, an operation name, a
/// resource key), and a refusal must not grow with it.
pub const MAX_QUOTED_CHARS: usize = 40;
/// Longest error message, whatever it holds.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// `message` as a response may carry it: every quoted run cut to [`MAX_QUOTED_CHARS`] and the
/// whole to [`MAX_MESSAGE_CHARS`] (each cut marked `…`), control characters replaced. Applied
/// to every error of every response (`http::graphql`), so that no message echoes more than
/// 200 characters of its input.
pub fn bounded(message: &str) -> std::borrow::Cow<'_, str> {
    let fits =
        message.chars().count() <= MAX_QUOTED_CHARS && !message.chars().any(char::is_control);
    if fits {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len().min(4 * MAX_MESSAGE_CHARS));
    let (mut quote, mut run, mut total) = (None::<char>, 0usize, 0usize);
    for c in message.chars() {
        if total >= MAX_MESSAGE_CHARS {
            out.push('…');
            return std::borrow::Cow::Owned(out);
        }
        match quote {
            Some(q) if c == q => quote = None,
            None if c == '"' || c == '`' => {
                quote = Some(c);
                run = 0;
            }
            Some(_) => {
                run += 1;
                if run > MAX_QUOTED_CHARS {
                    if run == MAX_QUOTED_CHARS + 1 {
                        out.push('…');
                        total += 1;
                    }
                    continue;
                }
            }
            None => {}
        }
        out.push(if c.is_control() { '\u{FFFD}' } else { c });
        total += 1;
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_whatever_they_quote() {
        assert_eq!(bounded("short"), "short");
        let name = "f".repeat(1_000_000);
        let m = format!("Unknown field \"{name}\" on type \"Query\".");
        let b = bounded(&m);
        assert!(b.chars().count() < 120, "{b}");
        assert!(b.contains(&"f".repeat(MAX_QUOTED_CHARS)));
        assert!(!b.contains(&"f".repeat(MAX_QUOTED_CHARS + 1)));
        assert!(b.ends_with("on type \"Query\"."), "{b}");
        let raw = format!("bad: {name}");
        assert_eq!(bounded(&raw).chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(bounded("a\nb"), "a\u{FFFD}b");
        let ok = "a normal message that is longer than forty characters, with `quotes`";
        assert_eq!(bounded(ok), ok);
    }
}
