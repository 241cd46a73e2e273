//! `GET`/`POST /graphql`: authenticate, check the batch, execute, count.

use std::time::Instant;

use async_graphql::parser::types::{DocumentOperations, ExecutableDocument};
use async_graphql::{
    BatchRequest, BatchResponse, ErrorExtensionValues, Response as GqlResponse, ServerError,
};
use async_graphql_axum::GraphQLBatchRequest;
use async_graphql_axum::rejection::GraphQLRejection;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::RequestId;
use crate::AppState;
use crate::domain::{Actor, users};
use crate::graphql::error::code;
use crate::graphql::{RequestCtx, json};

/// A refusal of the whole request, as a GraphQL-shaped JSON body.
fn refuse(status: StatusCode, c: &str, message: &str) -> Response {
    let body = json!({"errors": [{"message": message, "extensions": {"code": c}}]});
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Executes a (possibly batched) GraphQL request for an authenticated caller.
pub async fn handle(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    method: Method,
    headers: HeaderMap,
    request: Result<GraphQLBatchRequest, GraphQLRejection>,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            code::UNAUTHENTICATED,
            "missing bearer token in the Authorization header",
        );
    };
    let claims = match state.verifier.verify(token).await {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, code::UNAUTHENTICATED, &e.0),
    };
    let user = match users::provision(&state.services, &claims).await {
        Ok(u) => u,
        Err(e) => {
            let err = crate::graphql::error::to_graphql(e, &request_id);
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                code::INTERNAL_SERVER_ERROR,
                &err.message,
            );
        }
    };
    let batch = match request {
        Ok(r) => r.into_inner(),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                code::BAD_USER_INPUT,
                &format!("invalid GraphQL request: {}", e.0),
            );
        }
    };
    let (requests, is_batch) = match batch {
        BatchRequest::Single(r) => (vec![r], false),
        BatchRequest::Batch(rs) => {
            if rs.len() > state.config.max_batch_size {
                let msg = format!(
                    "a batch may hold at most {} operations (got {})",
                    state.config.max_batch_size,
                    rs.len()
                );
                return refuse(StatusCode::BAD_REQUEST, code::BAD_USER_INPUT, &msg);
            }
            if rs.is_empty() {
                return refuse(StatusCode::BAD_REQUEST, code::BAD_USER_INPUT, "empty batch");
            }
            (rs, true)
        }
    };
    let actor = Actor {
        user_id: crate::ids::UserId(user.id),
        request_id: request_id.clone(),
    };
    let mut responses = Vec::with_capacity(requests.len());
    for mut r in requests {
        let parsed = state.documents.parse(&r.query);
        if method == Method::GET && parsed.as_ref().is_some_and(|p| is_mutation(&p.doc)) {
            responses.push(error_response(
                code::BAD_USER_INPUT,
                "mutations must be sent with POST",
            ));
            continue;
        }
        let name = r
            .operation_name
            .clone()
            .or_else(|| parsed.as_ref().and_then(|p| operation_name(&p.doc)));
        let mut ctx = RequestCtx::new(state.services.clone(), actor.clone());
        if let Some(p) = parsed {
            ctx.raw_json = !p.may_merge;
            r.set_parsed_query(p.doc);
        }
        let started = Instant::now();
        let r = r.data(ctx);
        let mut resp = state.schema.execute(r).await;
        state.metrics.observe_operation(
            name.as_deref(),
            resp.errors.is_empty(),
            started.elapsed().as_secs_f64(),
        );
        label_errors(&mut resp.errors);
        responses.push(resp);
    }
    let body = match (is_batch, responses.pop()) {
        (false, Some(one)) => BatchResponse::Single(one),
        (_, last) => {
            responses.extend(last);
            BatchResponse::Batch(responses)
        }
    };
    respond(body)
}

/// The HTTP response of a (batch) GraphQL response: the headers async-graphql-axum would
/// set, and a body written by `graphql::json`, which moves the JSON text of one-step
/// selections in as it is (async-graphql's serializer would parse it again to check it).
fn respond(body: BatchResponse) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/graphql-response+json"),
    );
    if body.is_ok()
        && let Some(cache_control) = body.cache_control().value()
        && let Ok(value) = header::HeaderValue::from_str(&cache_control)
    {
        headers.insert(header::CACHE_CONTROL, value);
    }
    headers.extend(body.http_headers());
    let mut out = json::Pieces::default();
    match body {
        BatchResponse::Single(r) => write_response(&mut out, r),
        BatchResponse::Batch(rs) => {
            out.text().push('[');
            for (i, r) in rs.into_iter().enumerate() {
                if i > 0 {
                    out.text().push(',');
                }
                write_response(&mut out, r);
            }
            out.text().push(']');
        }
    }
    let mut resp = Response::new(axum::body::Body::new(PiecesBody::new(out.finish())));
    *resp.headers_mut() = headers;
    resp
}

/// A body of pieces known up front (its length is exact, so it goes out with a
/// `Content-Length`, written with vectored writes).
struct PiecesBody {
    pieces: std::collections::VecDeque<Bytes>,
    len: u64,
}

impl PiecesBody {
    fn new(pieces: Vec<Bytes>) -> Self {
        let len = pieces.iter().map(|p| p.len() as u64).sum();
        Self {
            pieces: pieces.into_iter().filter(|p| !p.is_empty()).collect(),
            len,
        }
    }
}

impl http_body::Body for PiecesBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.pieces.pop_front().map(|p| {
            self.len -= p.len() as u64;
            Ok(http_body::Frame::data(p))
        });
        std::task::Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// One response object, with the members in async-graphql's order (`data`, then
/// `extensions` and `errors` when not empty).
fn write_response(out: &mut json::Pieces, r: GqlResponse) {
    out.text().push_str("{\"data\":");
    json::value(out, r.data);
    let text = out.text();
    if !r.extensions.is_empty() {
        text.push_str(",\"extensions\":");
        text.push_str(&serde_json::to_string(&r.extensions).unwrap_or_else(|_| "{}".into()));
    }
    if !r.errors.is_empty() {
        text.push_str(",\"errors\":");
        text.push_str(&serde_json::to_string(&r.errors).unwrap_or_else(|_| "[]".into()));
    }
    text.push('}');
}

fn is_mutation(doc: &ExecutableDocument) -> bool {
    doc.operations
        .iter()
        .any(|(_, op)| op.node.ty == async_graphql::parser::types::OperationType::Mutation)
}

/// The name of the only operation of a document (for metrics when the client sent none).
fn operation_name(doc: &ExecutableDocument) -> Option<String> {
    match &doc.operations {
        DocumentOperations::Multiple(ops) if ops.len() == 1 => {
            ops.keys().next().map(|n| n.to_string())
        }
        _ => None,
    }
}

fn error_response(c: &str, message: &str) -> GqlResponse {
    let mut e = ServerError::new(message, None);
    let mut ext = ErrorExtensionValues::default();
    ext.set("code", c);
    e.extensions = Some(ext);
    GqlResponse::from_errors(vec![e])
}

/// Errors raised by the engine itself (syntax, validation, depth and complexity limits,
/// input coercion) carry no code: they are all the client's input.
fn label_errors(errors: &mut [ServerError]) {
    for e in errors {
        let ext = e
            .extensions
            .get_or_insert_with(ErrorExtensionValues::default);
        if ext.get("code").is_none() {
            ext.set("code", code::BAD_USER_INPUT);
        }
    }
}
