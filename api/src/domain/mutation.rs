//! The one path every mutation takes: a short transaction that claims the idempotency key,
//! applies the effect, writes the audit event and stores the result, retried on
//! serialization failures and deadlocks so that those never reach the client.
//!
//! Semantics follow Stripe's: keys are scoped to the caller; a repeat with the same input
//! replays the stored result without a second effect; a repeat with another input is
//! refused (`IDEMPOTENCY_KEY_REUSED`); a repeat that arrives while the first is running
//! waits for it on the key's row lock and then replays (or, after `DATABASE_LOCK_TIMEOUT_MS`, is refused
//! with `IDEMPOTENCY_KEY_IN_USE`). Only successful results are stored: a request that fails
//! leaves no trace, so it can be corrected and retried with the same key.
//!
//! A replay returns what the first request *returned*: the fingerprint covers the operation,
//! its input and the response selection the caller asked for ([`Key::selection`]), and the
//! first response's rendering of the mutation field is stored with the key as soon as it
//! exists ([`Keyed::First`]). A repeat finds it ([`Keyed::Replay`]) and sends it back as it
//! was; it waits for it while the first request is still rendering, and only when the first
//! request never stored one (it died, or its response held errors) is the payload resolved
//! afresh, with every access rule of a fresh read.
//!
//! A transaction whose connection fails before COMMIT was sent (the server ended the
//! session, `domain::is_connection_failure`) is run once more on a fresh connection: the
//! server rolled it back, so the effect has not happened. A connection that fails at COMMIT
//! leaves the outcome unknown (the server may have committed before the session ended), so
//! that failure reaches the client as `SERVICE_UNAVAILABLE`; a retry with the same
//! idempotency key then replays or applies it, exactly once.

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::{Actor, DomainError, DomainResult, Services};
use crate::db::repo::idempotency::{self, KeyClaim};

/// Attempts for a transaction that hits a serialization failure or deadlock.
const MAX_ATTEMPTS: u32 = 8;

/// Runs of a transaction on a fresh connection after its connection failed before COMMIT.
const RECONNECTS: u32 = 1;

/// How often a waiting repeat looks again.
const RENDER_POLL: Duration = Duration::from_millis(10);

/// An idempotency key sent with a mutation, and what the caller asked to see of its result.
#[derive(Debug, Clone)]
pub struct Key {
    /// The client's key (1–255 characters).
    pub key: String,
    /// Fingerprint of the response selection: part of the request's fingerprint, so that a
    /// repeat asking for more than the first request saw is a reuse, not a replay.
    pub selection: String,
}

/// What a mutation run under [`run`] did.
#[derive(Debug)]
pub struct Done<T> {
    /// The effect's result (for a replay: the first request's).
    pub value: T,
    /// What the idempotency key says about it.
    pub keyed: Keyed,
}

/// The idempotency side of a mutation's outcome.
#[derive(Debug, Clone)]
pub enum Keyed {
    /// No key was sent.
    None,
    /// This request did the effect: its rendering is to be settled under the key
    /// (`idempotency::settle_rendering`).
    First {
        /// The caller.
        caller: uuid::Uuid,
        /// The key.
        key: String,
    },
    /// A repeat: the first response's rendering, or `None` when it has none (the payload
    /// must then be resolved afresh with the access rules of a fresh read).
    Replay {
        /// JSON text of the first response's mutation field.
        rendered: Option<String>,
    },
}

impl<T> Done<T> {
    /// The same outcome with `f` applied to the value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Done<U> {
        Done {
            value: f(self.value),
            keyed: self.keyed,
        }
    }
}

/// The effect of a mutation, run inside its transaction. It may run more than once if
/// the transaction is retried, so it must not touch anything outside the database.
pub type Effect<'c, T> = BoxFuture<'c, DomainResult<T>>;

/// Lets an effect store its result under the idempotency key before its last statement,
/// so that the statement that takes the hottest row locks is the last before COMMIT.
pub struct Completion {
    key: Option<(uuid::Uuid, String)>,
    done: std::sync::atomic::AtomicBool,
    /// For `run_claiming_in_effect`: what the effect needs to claim the key itself.
    claim: Option<KeyClaim>,
    /// The key was found used: the result is the first request's.
    replayed: std::sync::atomic::AtomicBool,
}

impl Completion {
    /// Stores `value` as the result (a no-op without an idempotency key).
    pub async fn store<T: Serialize + Sync>(
        &self,
        conn: &mut AsyncPgConnection,
        value: &T,
    ) -> DomainResult<()> {
        if let Some((caller, key)) = &self.key {
            let stored = serde_json::to_value(value).map_err(DomainError::internal)?;
            idempotency::complete(conn, *caller, key, &stored).await?;
            self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// For an effect that stores the result in its own last statement: the caller, key and
    /// serialized `value`, and the result counts as stored (the statement must do it, or the
    /// effect must fail so that the transaction rolls back).
    pub fn hand_over<T: Serialize>(
        &self,
        value: &T,
    ) -> DomainResult<Option<(uuid::Uuid, &str, serde_json::Value)>> {
        let Some((caller, key)) = &self.key else {
            return Ok(None);
        };
        let stored = serde_json::to_value(value).map_err(DomainError::internal)?;
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Some((*caller, key.as_str(), stored)))
    }

    /// The key the effect must claim in its first statement (`run_claiming_in_effect`).
    pub fn key_claim(&self) -> Option<&KeyClaim> {
        self.claim.as_ref()
    }

    /// When the effect's claim found the key already used: the stored result of the first
    /// request, or why it cannot be replayed.
    pub async fn replay<T: DeserializeOwned>(
        &self,
        conn: &mut AsyncPgConnection,
    ) -> DomainResult<T> {
        let c = self
            .claim
            .as_ref()
            .ok_or_else(|| DomainError::internal(anyhow::anyhow!("replay without a key")))?;
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        self.replayed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        replay_key(conn, c.caller, &c.key, c.operation, &c.fingerprint).await
    }

    fn is_done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Checks an idempotency key's shape.
pub fn check_key(key: Option<&str>) -> DomainResult<Option<&str>> {
    match key {
        None => Ok(None),
        Some(k) if k.is_empty() || k.chars().count() > 255 => Err(DomainError::bad_input(
            "idempotencyKey",
            "idempotencyKey must be 1 to 255 characters",
        )),
        Some(k) => Ok(Some(k)),
    }
}

/// Fingerprint of an operation, its input and the response selection (without the key).
pub fn fingerprint(
    operation: &str,
    input: &impl Serialize,
    selection: &str,
) -> DomainResult<String> {
    let body = serde_json::to_vec(input).map_err(DomainError::internal)?;
    let mut h = Sha256::new();
    h.update(operation.as_bytes());
    h.update([0]);
    h.update(&body);
    h.update([0]);
    h.update(selection.as_bytes());
    Ok(hex::encode(h.finalize()))
}

/// Runs `effect` once per idempotency key (see the module docs).
pub async fn run<T, I, F>(
    services: &Services,
    actor: &Actor,
    operation: &'static str,
    key: Option<&Key>,
    input: &I,
    effect: F,
) -> DomainResult<Done<T>>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    I: Serialize + ?Sized,
    F: for<'c> Fn(&'c mut AsyncPgConnection, &'c Completion) -> Effect<'c, T> + Send + Sync,
{
    run_inner(services, actor, operation, key, input, false, effect).await
}

/// Like `run`, but the effect claims the key itself in its first statement (saving a
/// round trip on hot paths): it reads `Completion::key_claim`, and when the key turns out to
/// be taken returns `Completion::replay`. Lock timeouts of its claim must map to
/// `IDEMPOTENCY_KEY_IN_USE` (`map_lock_timeout`).
pub async fn run_claiming_in_effect<T, I, F>(
    services: &Services,
    actor: &Actor,
    operation: &'static str,
    key: Option<&Key>,
    input: &I,
    effect: F,
) -> DomainResult<Done<T>>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    I: Serialize + ?Sized,
    F: for<'c> Fn(&'c mut AsyncPgConnection, &'c Completion) -> Effect<'c, T> + Send + Sync,
{
    run_inner(services, actor, operation, key, input, true, effect).await
}

async fn run_inner<T, I, F>(
    services: &Services,
    actor: &Actor,
    operation: &'static str,
    key: Option<&Key>,
    input: &I,
    claim_in_effect: bool,
    effect: F,
) -> DomainResult<Done<T>>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    I: Serialize + ?Sized,
    F: for<'c> Fn(&'c mut AsyncPgConnection, &'c Completion) -> Effect<'c, T> + Send + Sync,
{
    let selection = key.map_or("", |k| k.selection.as_str());
    let key = check_key(key.map(|k| k.key.as_str()))?;
    let fp = fingerprint(operation, &input, selection)?;
    let ttl = services.idempotency_ttl.as_secs().max(1) as i64;
    let mut conn = services.conn().await?;
    let claim = key.map(|k| KeyClaim {
        caller: actor.user_id.0,
        key: k.to_string(),
        operation,
        fingerprint: fp.clone(),
        ttl_secs: ttl,
    });
    let completion = Completion {
        key: key.map(|k| (actor.user_id.0, k.to_string())),
        done: std::sync::atomic::AtomicBool::new(false),
        claim: claim.clone().filter(|_| claim_in_effect),
        replayed: std::sync::atomic::AtomicBool::new(false),
    };
    let mut attempt = 0;
    let mut reconnects = 0;
    loop {
        attempt += 1;
        completion
            .done
            .store(false, std::sync::atomic::Ordering::Relaxed);
        completion
            .replayed
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // Set when the effect returned Ok, i.e. just before diesel sends COMMIT.
        let committing = std::sync::atomic::AtomicBool::new(false);
        let result = conn
            .transaction(async |conn| {
                // Connections wait at most DATABASE_LOCK_TIMEOUT_MS for any row lock (set when they are
                // opened), which bounds how long a repeat waits for the first request.
                if let Some(claim) = claim.as_ref().filter(|_| !claim_in_effect) {
                    let key = claim.key.as_str();
                    let claimed = idempotency::claim(conn, claim)
                        .await
                        .map_err(map_lock_timeout)?;
                    if !claimed {
                        completion
                            .replayed
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        return replay_key(conn, actor.user_id.0, key, operation, &fp).await;
                    }
                }
                let out = effect(conn, &completion).await?;
                if !completion.is_done() {
                    completion.store(conn, &out).await?;
                }
                committing.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(out)
            })
            .await;
        let committing = committing.load(std::sync::atomic::Ordering::Relaxed);
        match result {
            // The connection failed before COMMIT was sent: the server rolled the
            // transaction back, nothing happened, and another connection may do it. Once
            // COMMIT was sent, the outcome is unknown (the server may have committed before
            // the session ended, e.g. a synchronous commit cut short by a shutdown): never
            // run again here; the client retries with its idempotency key.
            Err(DomainError::Unavailable(e)) if !committing && reconnects < RECONNECTS => {
                reconnects += 1;
                tracing::warn!(
                    request.id = %actor.request_id,
                    operation,
                    error = %e,
                    "database connection failed inside a transaction before COMMIT; running it once more on a fresh connection"
                );
                // The failed connection is closed, not pooled (`DbConn`'s drop guard).
                drop(conn);
                conn = match services.conn().await {
                    Ok(c) => c,
                    // The request's statement budget is spent: the failure stays what it was.
                    Err(DomainError::LimitExceeded(_)) => return Err(DomainError::Unavailable(e)),
                    Err(other) => return Err(other),
                };
            }
            Err(DomainError::Internal(e)) if attempt < MAX_ATTEMPTS && is_retryable(&e) => {
                tracing::debug!(
                    attempt,
                    operation,
                    "retrying transaction after a concurrency failure"
                );
                let backoff = 2u64.pow(attempt.min(6)) + u64::from(rand_jitter());
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
            Err(e) => return Err(e),
            Ok(value) => {
                let replayed = completion
                    .replayed
                    .load(std::sync::atomic::Ordering::Relaxed);
                let keyed = match key {
                    None => Keyed::None,
                    Some(k) if replayed => {
                        // The first request needs connections to render: hold none while waiting.
                        drop(conn);
                        Keyed::Replay {
                            rendered: wait_for_rendering(services, actor.user_id.0, k).await?,
                        }
                    }
                    Some(k) => Keyed::First {
                        caller: actor.user_id.0,
                        key: k.to_string(),
                    },
                };
                return Ok(Done { value, keyed });
            }
        }
    }
}

/// Settles the rendering of a key whose effect this request did (see [`Keyed::First`]):
/// the mutation field's JSON text as the response shows it, or `None` when the response
/// is not to be replayed as is.
pub async fn settle_rendering(
    services: &Services,
    caller: uuid::Uuid,
    key: &str,
    rendered: Option<&str>,
) -> DomainResult<()> {
    let mut conn = services.conn().await?;
    Ok(idempotency::settle_rendering(&mut conn, caller, key, rendered).await?)
}

/// The first response's rendering of a replayed key: waits (outside any transaction, so as
/// not to hold the key's row) while the first request has committed its effect but not yet
/// settled its rendering, as long as it would wait for the key's lock
/// (`DATABASE_LOCK_TIMEOUT_MS`), holding a connection only to look.
async fn wait_for_rendering(
    services: &Services,
    caller: uuid::Uuid,
    key: &str,
) -> DomainResult<Option<String>> {
    let deadline = tokio::time::Instant::now() + services.lock_timeout;
    let mut pause = RENDER_POLL;
    loop {
        let found = idempotency::find(&mut *services.conn().await?, caller, key).await?;
        match found {
            Some(k) if k.rendered_at.is_some() => return Ok(k.rendered),
            Some(_) if tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RENDER_POLL * 8);
            }
            _ => return Ok(None),
        }
    }
}

async fn replay_key<T: DeserializeOwned>(
    conn: &mut AsyncPgConnection,
    caller: uuid::Uuid,
    key: &str,
    operation: &str,
    fp: &str,
) -> DomainResult<T> {
    let stored = idempotency::find(conn, caller, key).await?;
    match stored {
        Some(s) if s.operation != operation || s.fingerprint != fp => {
            Err(DomainError::IdempotencyKeyReused)
        }
        Some(s) => match s.response {
            Some(v) => serde_json::from_value(v).map_err(DomainError::internal),
            None => Err(DomainError::IdempotencyKeyInUse),
        },
        // Expired and purged between our claim and this read: the caller may retry.
        None => Err(DomainError::IdempotencyKeyInUse),
    }
}

/// A lock timeout while claiming a key means another request holds it.
pub fn map_lock_timeout(e: diesel::result::Error) -> DomainError {
    if e.to_string().contains("lock timeout") {
        DomainError::IdempotencyKeyInUse
    } else {
        e.into()
    }
}

fn is_retryable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<diesel::result::Error>()
        .is_some_and(crate::db::is_retryable)
}

fn rand_jitter() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0] % 16
}
