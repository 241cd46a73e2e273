//! HTTP surface: GraphQL, GraphiQL, Stripe webhooks, signed download links, health,
//! readiness and metrics.

pub mod downloads;
mod graphiql;
mod graphql;
mod health;
mod limits;
pub mod request;
mod request_id;
pub mod server;
mod webhooks;

use axum::Router;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use request_id::RequestId;

use crate::AppState;

/// The application's router.
pub fn router(state: AppState) -> Router {
    let cors = cors(&state.config.cors_origins);
    Router::new()
        .route("/graphql", get(graphql::handle).post(graphql::handle))
        .route("/graphiql", get(graphiql::page))
        .route("/graphiql/assets/{file}", get(graphiql::asset))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/webhooks/stripe", axum::routing::post(webhooks::stripe))
        .route("/downloads/{token}", get(downloads::download))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::headers,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_id::observe,
        ))
        .layer(cors)
        .with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([header::HeaderName::from_static("x-request-id")]);
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(AllowOrigin::any())
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
        layer.allow_origin(AllowOrigin::list(list))
    }
}

/// A refusal of the whole request, as a GraphQL-shaped JSON body (`401` asks for a bearer
/// token, `503` to retry in a second).
pub(crate) fn refuse(status: StatusCode, c: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"message": message, "extensions": {"code": c}}]});
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    resp
}
