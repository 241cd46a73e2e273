//! `POST /webhooks/stripe`: verify the delivery, store the event once, answer at once.
//!
//! Any answer other than 2xx makes Stripe deliver again later (for up to three days), so
//! what is our fault (no secret configured, database unavailable) is a 503 and loses
//! nothing, while what is the sender's (bad signature, stale timestamp, not an event) is a
//! 400 and stores nothing.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::refuse;
use crate::AppState;
use crate::domain::webhooks;

/// Largest event body accepted (Stripe's events are a few kilobytes; an invoice with many
/// lines stays far below this).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Receives one Stripe event delivery.
pub async fn stripe(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if state.config.stripe_webhook_secrets.is_empty() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "Stripe webhooks are not configured on this server (STRIPE_WEBHOOK_SECRET)",
        );
    }
    let read = tokio::time::timeout(
        state.config.request_timeout,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    )
    .await;
    let body = match read {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the event body is larger than 1 MiB or was cut off",
            );
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                "TIMEOUT",
                "the event body did not arrive in time",
            );
        }
    };
    let signature = match headers
        .get_all("stripe-signature")
        .iter()
        .collect::<Vec<_>>()[..]
    {
        [] => None,
        [one] => one.to_str().ok(),
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "WEBHOOK_SIGNATURE_INVALID",
                "send exactly one Stripe-Signature header",
            );
        }
    };
    if let Err(e) = webhooks::verify(
        signature,
        &body,
        &state.config.stripe_webhook_secrets,
        chrono::Utc::now(),
    ) {
        let code = match e {
            webhooks::SignatureError::OutsideTolerance => "WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE",
            _ => "WEBHOOK_SIGNATURE_INVALID",
        };
        return refuse(StatusCode::BAD_REQUEST, code, e.message());
    }
    let Some((head, payload)) = webhooks::event_head(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "the body is not a Stripe event (an object with id, type and created)",
        );
    };
    if webhooks::holds_nul(&payload) {
        // Signed, so Stripe's own: it cannot be stored as sent (jsonb refuses NUL); a 400
        // tells Stripe it is not ours to retry. The id is logged escaped.
        tracing::warn!(event = ?head.id, kind = ?head.kind, "a signed Stripe event holds a NUL character; refused");
        return refuse(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "the event holds a NUL character (\\u0000), which cannot be stored",
        );
    }
    match webhooks::record(&state.services, &head, &payload).await {
        Ok(new) => (
            StatusCode::OK,
            Json(json!({"received": true, "duplicate": !new})),
        )
            .into_response(),
        Err(crate::domain::DomainError::BadInput { message, .. }) => {
            refuse(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", &message)
        }
        Err(e) => {
            tracing::error!(error = %e, event = %head.id, "storing a Stripe event failed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "the event could not be stored; deliver it again",
            )
        }
    }
}
