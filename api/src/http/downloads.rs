//! `GET /downloads/{token}`: serves the files of signed download links
//! (`domain::downloads`, which says what a token holds and how it is checked). Any invalid,
//! tampered, expired or revoked link is answered with the same `404` (no detail), and each
//! kind re-checks here, at download time, that the user named in the link may still read
//! what it grants. Answers carry `Cache-Control: no-store` and `Referrer-Policy: no-referrer`
//! (the link is a bearer credential until it expires).

use axum::Extension;
use axum::extract::{Path, State, rejection::PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::RequestId;
use crate::AppState;
use crate::domain::analytics;
pub use crate::domain::downloads::{Download, verify};
use crate::domain::{Actor, DomainError};
use crate::ids::{UserId, WorkspaceId};

/// The one answer to every link that does not lead to a file.
pub fn not_found() -> Response {
    let mut resp = (
        StatusCode::NOT_FOUND,
        "Not found: the link is invalid or has expired.\n",
    )
        .into_response();
    private(&mut resp);
    resp
}

fn private(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// A file as an attachment. `filename` must be plain ASCII (letters, digits, `-_.`).
pub fn attachment(content_type: &'static str, filename: &str, body: Vec<u8>) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    private(&mut resp);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    let safe: String = filename
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// `GET /downloads/{token}`.
pub async fn download(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    peer: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: axum::http::HeaderMap,
    token: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(token)) = token else {
        return not_found();
    };
    let Some(download) = verify(&state.services.vault, &token, Utc::now()) else {
        tracing::info!(request.id = %request_id, "download link refused");
        return not_found();
    };
    // A link carries no token: the workspace's network rules (IP allow-list, TLS) still
    // apply to whoever follows it.
    let origin = crate::domain::governance::network::origin(
        peer.map(|p| p.0.0.ip()),
        &headers,
        &state.services.governance.config.trusted_proxies,
    );
    let gate = crate::domain::governance::Gate::new(
        crate::domain::governance::Credentials {
            caller: crate::domain::governance::Caller::Link,
            origin,
        },
        state.services.governance.clone(),
    );
    serve(&state, download, request_id, gate).await
}

/// The answer to a verified link: each kind re-checks access now.
async fn serve(
    state: &AppState,
    download: Download,
    request_id: String,
    gate: std::sync::Arc<crate::domain::governance::Gate>,
) -> Response {
    match download {
        Download::AnalyticsExport {
            workspace,
            user,
            period_start,
            format,
        } => {
            let actor = Actor {
                user_id: UserId(user),
                request_id,
                gate: gate.clone(),
            };
            let ws = WorkspaceId(workspace);
            match analytics::export(&state.services, &actor, ws, period_start, format).await {
                Ok(e) => attachment(e.content_type, &e.filename, e.body),
                Err(e) => refused(e, &actor.request_id),
            }
        }
        Download::DataExport { user, export_id } => {
            let actor = Actor {
                user_id: UserId(user),
                request_id,
                gate: gate.clone(),
            };
            let id = crate::ids::DataExportId(export_id);
            match crate::domain::gdpr::export::download(&state.services, &actor, id).await {
                Ok(d) => attachment("application/json", &d.filename, d.body),
                Err(e) => refused(e, &actor.request_id),
            }
        }
    }
}

/// A domain error at download time: the caller lost access or the object is gone (`404`),
/// or the service failed (`503`/`500`, logged once here).
fn refused(e: DomainError, request_id: &str) -> Response {
    match e {
        DomainError::Unavailable(cause) => {
            tracing::warn!(request.id = %request_id, error = %cause, "download: database unavailable");
            let mut resp =
                (StatusCode::SERVICE_UNAVAILABLE, "Unavailable, retry.\n").into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            private(&mut resp);
            resp
        }
        DomainError::Internal(_) => {
            // Logged (once) by the mapping, with the request id.
            let _ = crate::graphql::error::to_graphql(e, request_id);
            let mut resp = (StatusCode::INTERNAL_SERVER_ERROR, "Internal error.\n").into_response();
            private(&mut resp);
            resp
        }
        _ => not_found(),
    }
}
