//! Stripe webhooks: the `Stripe-Signature` check and the store of events received.
//!
//! Stripe signs `"{timestamp}.{raw body}"` with HMAC-SHA256 under the endpoint's secret and
//! sends `Stripe-Signature: t={timestamp},v1={hex},…` (one `v1` per active secret while a
//! secret is being rolled). An event is accepted when some `v1` matches some configured
//! secret and the timestamp is within the tolerance of now.

use chrono::{DateTime, Utc};
use hmac::{Mac, digest::CtOutput};
use sha2::Sha256;

use super::{DomainError, DomainResult, Services};
use diesel_async::AsyncConnection;

use crate::db::repo::{jobs, stripe_events};

/// How far the signed timestamp may be from now, either way (Stripe's libraries: 300 s).
pub const TOLERANCE_SECS: i64 = 300;

/// `v1` signatures examined in one header at the most (Stripe sends one per secret).
const MAX_SIGNATURES: usize = 16;

/// Why a delivery's signature is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// No `Stripe-Signature` header, or one without a timestamp or a `v1` signature.
    Malformed,
    /// The timestamp is further from now than the tolerance.
    OutsideTolerance,
    /// No `v1` signature matches any configured secret.
    NoMatch,
}

impl SignatureError {
    /// What the sender is told.
    pub fn message(&self) -> &'static str {
        match self {
            Self::Malformed => {
                "Stripe-Signature must hold a timestamp (t=) and at least one v1 signature"
            }
            Self::OutsideTolerance => "the signed timestamp is more than 300 seconds from now",
            Self::NoMatch => "no signature matches the endpoint's secrets",
        }
    }
}

type HmacSha256 = hmac::Hmac<Sha256>;

/// Checks a delivery: `header` is `Stripe-Signature`, `body` the raw request body, `secrets`
/// the endpoint's signing secrets, `now` the time of receipt. Linear in the header and the
/// body (the body is signed once per secret).
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Malformed)?;
    let mut timestamp: Option<&str> = None;
    let mut signatures: Vec<[u8; 32]> = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" if timestamp.is_none() => timestamp = Some(value),
            "v1" if signatures.len() < MAX_SIGNATURES => {
                let mut sig = [0u8; 32];
                if hex::decode_to_slice(value, &mut sig).is_ok() {
                    signatures.push(sig);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    let seconds: i64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now.timestamp() - seconds).abs() > TOLERANCE_SECS {
        return Err(SignatureError::OutsideTolerance);
    }
    for secret in secrets {
        let mut mac =
            HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::NoMatch)?;
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        let expected = mac.finalize();
        // `CtOutput` compares in constant time.
        if signatures
            .iter()
            .any(|s| CtOutput::<HmacSha256>::new((*s).into()) == expected)
        {
            return Ok(());
        }
    }
    Err(SignatureError::NoMatch)
}

/// The fields of an event the store needs, read from its (verified) body.
#[derive(Debug, serde::Deserialize)]
pub struct EventHead {
    /// `evt_…`.
    pub id: String,
    /// E.g. `customer.subscription.updated`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Seconds since the epoch.
    pub created: i64,
    /// Live or test mode.
    #[serde(default)]
    pub livemode: bool,
    /// The API version the event was rendered with.
    #[serde(default)]
    pub api_version: Option<String>,
}

/// Reads the head of a verified event body; `None` when it is not a Stripe event.
pub fn event_head(body: &[u8]) -> Option<(EventHead, serde_json::Value)> {
    let payload: serde_json::Value = serde_json::from_slice(body).ok()?;
    let head: EventHead = serde_json::from_value(payload.clone()).ok()?;
    let fits = |s: &str| (1..=255).contains(&s.len());
    (fits(&head.id) && fits(&head.kind)).then_some((head, payload))
}

/// Whether `v` holds a NUL character in a string or a key: PostgreSQL's `jsonb` cannot store
/// one (`\u0000`), so such an event is the sender's problem, refused with a 400 rather than
/// failing to store forever (serde_json bounds the nesting, so this walk is bounded too).
pub fn holds_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(holds_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, x)| k.contains('\0') || holds_nul(x)),
        _ => false,
    }
}

/// The job queue of stored Stripe events.
pub const QUEUE: &str = crate::tasks::queue::STRIPE_EVENTS;

/// Attempts of an event's job across workers and restarts.
pub const MAX_ATTEMPTS: i32 = 25;

/// Stores a verified event once and, in the same transaction, enqueues the job that
/// processes it; `true` when it was new (a repeated delivery is `false`, and enqueues
/// nothing).
pub async fn record(
    services: &Services,
    head: &EventHead,
    payload: &serde_json::Value,
) -> DomainResult<bool> {
    let created = DateTime::from_timestamp(head.created, 0)
        .ok_or_else(|| DomainError::bad_input("created", "created is not a valid time"))?;
    let mut conn = services.conn().await?;
    let job = crate::tasks::Task::StripeEvent {
        event_id: head.id.clone(),
    }
    .payload();
    let new = conn
        .transaction(async |conn| {
            let new = stripe_events::insert(
                conn,
                &head.id,
                &head.kind,
                head.api_version.as_deref(),
                head.livemode,
                created,
                payload,
            )
            .await?;
            if new {
                jobs::enqueue(conn, QUEUE, &job, &head.id, MAX_ATTEMPTS).await?;
            }
            Ok::<_, diesel::result::Error>(new)
        })
        .await?;
    Ok(new)
}

/// How long after its receipt an event is still tried again (Stripe retries a delivery for
/// three days; an event older than that is left for an operator, see [`sweep`]).
pub const RETRY_HORIZON: std::time::Duration = std::time::Duration::from_secs(3 * 86_400);

/// How the attempts of an event that could not be applied are spaced.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// The longest wait between two attempts (`STRIPE_EVENT_RETRY_MAX_SECS`); they wait
    /// 2, 4, 8 … seconds until then.
    pub max_delay: std::time::Duration,
    /// How long an event may sit unprocessed with no job left to run it before [`sweep`]
    /// enqueues one (`STRIPE_EVENT_SWEEP_AFTER_SECS`).
    pub sweep_after: std::time::Duration,
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Processes one job of [`QUEUE`]: applies the stored event to the billing mirror and marks
/// it processed, so that an event's effect happens once however often its jobs run. Three
/// steps, and no connection is held while Stripe is called: the object the event is about
/// is found in the database, the object is read from Stripe, then the state read is applied and the event
/// marked processed in one short transaction (`billing::mirror`).
///
/// When Stripe is the one failing (unreachable, refusing, answering another object), the
/// failure is counted on the event and its next attempt enqueued as a job of its own, due
/// after a backoff (2 s doubling up to `retry.max_delay`): the job itself succeeds, so the
/// run budget of `jobs::count_run`, meant for jobs that crash their process, is not spent, and
/// the event is tried for as long as Stripe is down. Unknown event types are acknowledged as
/// they are.
pub async fn process(
    pool: &crate::db::DbPool,
    billing: &super::billing::Billing,
    retry: &Retry,
    id: &str,
) -> anyhow::Result<()> {
    use super::billing::mirror;
    // 1. The event and the object it is about; the connection goes back to the pool.
    let target = {
        let mut conn = pool.get().await?;
        let Some(event) = stripe_events::find(&mut conn, id).await? else {
            tracing::warn!(event = id, "Stripe event job without its event; dropped");
            return Ok(());
        };
        if event.processed_at.is_some() {
            tracing::debug!(event = id, "Stripe event already processed");
            return Ok(());
        }
        mirror::target(&mut conn, &event.kind, event.created_at, &event.payload).await?
    };
    // 2. The object as Stripe says it is now, with no connection held.
    let read = match &target {
        None => None,
        Some(target) => match mirror::read(billing, target).await {
            Ok(read) => Some(read),
            Err(mirror::ReadError::Stripe(why)) => {
                return retry_later(pool, id, &why, retry).await;
            }
            Err(e @ mirror::ReadError::Event(_)) => return Err(e.into()),
        },
    };
    // 3. Applied in one short transaction; the event's row lock makes concurrent runs of its
    //    jobs apply it once.
    let mut conn = pool.get().await?;
    let applied = conn
        .transaction(async |c| {
            if !stripe_events::lock_unprocessed(c, id).await? {
                return Ok::<bool, anyhow::Error>(false);
            }
            if let (Some(target), Some(read)) = (&target, &read) {
                mirror::apply(c, billing, target, read, id).await?;
            }
            stripe_events::mark_processed(c, id).await?;
            Ok(true)
        })
        .await?;
    if applied {
        tracing::debug!(event = id, "Stripe event applied");
    }
    Ok(())
}

/// Counts a failed attempt of event `id` and enqueues its next one after the backoff, in one
/// transaction.
async fn retry_later(
    pool: &crate::db::DbPool,
    id: &str,
    why: &str,
    retry: &Retry,
) -> anyhow::Result<()> {
    let job = crate::tasks::Task::StripeEvent {
        event_id: id.to_string(),
    }
    .payload();
    let mut conn = pool.get().await?;
    let next = conn
        .transaction(async |c| {
            let Some((failures, delay)) =
                stripe_events::record_failure(c, id, why, secs(retry.max_delay)).await?
            else {
                return Ok::<_, diesel::result::Error>(None);
            };
            let key = stripe_events::attempt_key(id, failures);
            jobs::enqueue_at(c, QUEUE, &job, &key, MAX_ATTEMPTS, delay).await?;
            Ok(Some((failures, delay)))
        })
        .await?;
    if let Some((failures, delay)) = next {
        tracing::warn!(
            event = %super::excerpt(id),
            failures,
            retry_in_secs = delay,
            error = why,
            "Stripe event not applied yet; trying again later"
        );
    }
    Ok(())
}

/// Events one sweep re-enqueues at the most.
const SWEEP_BATCH: i64 = 500;

/// The periodic `stripe-event-retry`: enqueues the next attempt of every event left
/// unprocessed with no job to run it (its jobs crashed their process past their run budget,
/// their worker lost them, or its retry could not be enqueued), backing off like a failure,
/// for [`RETRY_HORIZON`] after its receipt; returns how many. Events older than that are left
/// for an operator: counted in the metric `stripe_events_unprocessed{state="abandoned"}` and
/// logged at each sweep.
pub async fn sweep(pool: &crate::db::DbPool, retry: &Retry) -> anyhow::Result<usize> {
    let mut conn = pool.get().await?;
    let mut total = 0;
    loop {
        let swept = conn
            .transaction(async |c| {
                let swept = stripe_events::sweep(
                    c,
                    QUEUE,
                    secs(RETRY_HORIZON),
                    secs(retry.sweep_after),
                    secs(retry.max_delay),
                    SWEEP_BATCH,
                )
                .await?;
                for (id, failures) in &swept {
                    let job = crate::tasks::Task::StripeEvent {
                        event_id: id.clone(),
                    }
                    .payload();
                    let key = stripe_events::attempt_key(id, *failures);
                    jobs::enqueue(c, QUEUE, &job, &key, MAX_ATTEMPTS).await?;
                }
                Ok::<_, diesel::result::Error>(swept.len())
            })
            .await?;
        total += swept;
        if (swept as i64) < SWEEP_BATCH {
            break;
        }
    }
    let (_, abandoned) = stripe_events::unprocessed(&mut conn, secs(RETRY_HORIZON)).await?;
    if abandoned > 0 {
        tracing::error!(
            abandoned,
            "Stripe events received more than three days ago were never applied and are no \
             longer retried: `api failed-jobs --queue stripe-events` lists their last jobs and \
             errors; once the cause is fixed, `api retry-job ID` runs one again"
        );
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_found_anywhere_in_an_event() {
        assert!(!holds_nul(
            &serde_json::json!({"a": ["b", {"c": "d"}], "n": 1})
        ));
        assert!(holds_nul(&serde_json::json!({"a": ["b", {"c": "d\u{0}"}]})));
        assert!(holds_nul(&serde_json::json!({"k\u{0}": 1})));
    }

    fn sign(secret: &str, t: i64, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key");
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn signatures_are_checked_as_stripe_signs_them() {
        let now = Utc::now();
        let t = now.timestamp();
        let body = br#"{"id":"evt_1","type":"customer.created","created":1}"#;
        let secrets = vec!["whsec_old".to_string(), "whsec_new".to_string()];
        let good = sign("whsec_new", t, body);
        let check = |h: &str, b: &[u8]| verify(Some(h), b, &secrets, now);
        assert_eq!(check(&format!("t={t},v1={good}"), body), Ok(()));
        // Several signatures (a rolled secret), unknown schemes and spaces are fine.
        let other = sign("whsec_elsewhere", t, body);
        assert_eq!(
            check(&format!("t={t}, v1={other}, v0=abc, v1={good}"), body),
            Ok(())
        );
        // The secret being rolled out still verifies.
        let old = sign("whsec_old", t, body);
        assert_eq!(check(&format!("t={t},v1={old}"), body), Ok(()));
        // A tampered body, another secret, another timestamp.
        let tampered = br#"{"id":"evt_1","type":"customer.deleted","created":1}"#;
        assert_eq!(
            check(&format!("t={t},v1={good}"), tampered),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            check(&format!("t={t},v1={other}"), body),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            check(&format!("t={},v1={good}", t + 1), body),
            Err(SignatureError::NoMatch)
        );
        // Outside the tolerance, either way, even when correctly signed.
        for off in [-301, 301] {
            let ts = t + off;
            let s = sign("whsec_new", ts, body);
            assert_eq!(
                check(&format!("t={ts},v1={s}"), body),
                Err(SignatureError::OutsideTolerance)
            );
        }
        let edge = t - 300;
        let s = sign("whsec_new", edge, body);
        assert_eq!(check(&format!("t={edge},v1={s}"), body), Ok(()));
        // Malformed headers.
        for h in [
            "",
            "t=",
            "v1=abc",
            &format!("v1={good}"),
            &format!("t=x,v1={good}"),
            &format!("t={t}"),
        ] {
            assert_eq!(check(h, body), Err(SignatureError::Malformed), "{h:?}");
        }
        assert_eq!(
            verify(None, body, &secrets, now),
            Err(SignatureError::Malformed)
        );
        // No secret configured: nothing verifies.
        assert_eq!(
            verify(Some(&format!("t={t},v1={good}")), body, &[], now),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn event_heads_are_read_defensively() {
        let (head, _) =
            event_head(br#"{"id":"evt_1","type":"invoice.paid","created":5,"livemode":true,"api_version":"2026-09-30.endive","data":{}}"#)
                .expect("an event");
        assert_eq!(
            (
                head.id.as_str(),
                head.kind.as_str(),
                head.created,
                head.livemode
            ),
            ("evt_1", "invoice.paid", 5, true)
        );
        for bad in [
            &b"not json"[..],
            br#"{"type":"x","created":1}"#,
            br#"{"id":"","type":"x","created":1}"#,
            br#"{"id":"evt","type":"x","created":"soon"}"#,
            br#"[]"#,
        ] {
            assert!(
                event_head(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
