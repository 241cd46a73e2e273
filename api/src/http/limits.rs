//! Limits on the request head, answered with the usual JSON error.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use super::refuse;
use crate::AppState;
use crate::graphql::error::code;

/// Most header fields in one request.
pub const MAX_HEADER_FIELDS: usize = 100;

/// Refuses requests whose headers exceed `HTTP_MAX_HEADER_BYTES` (names, values and their
/// separators) or [`MAX_HEADER_FIELDS`] fields with `431` and a JSON body.
pub async fn headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let bytes: usize = h
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if h.len() > MAX_HEADER_FIELDS || bytes > state.config.max_header_bytes {
        return refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code::BAD_USER_INPUT,
            &format!(
                "the request headers are too large: at most {} bytes (HTTP_MAX_HEADER_BYTES) in at most {MAX_HEADER_FIELDS} fields",
                state.config.max_header_bytes
            ),
        );
    }
    next.run(req).await
}
