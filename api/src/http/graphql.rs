//! `GET`/`POST /graphql`: authenticate, check the batch, execute, count.

use std::sync::Arc;
use std::time::Instant;

use async_graphql::Positioned;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType,
};
use async_graphql::{BatchResponse, ErrorExtensionValues, Response as GqlResponse, ServerError};
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use super::{RequestId, refuse, request};
use crate::AppState;
use crate::domain::governance::{Caller, Credentials, Gate, api_keys, network};
use crate::domain::{Actor, DomainError, users};
use crate::graphql::api_usage::Attribution;
use crate::graphql::error::code;
use crate::graphql::{RequestCtx, json, one_step};

/// The bearer token of the only `Authorization` header, or why there is none.
fn bearer(headers: &HeaderMap) -> Result<&str, request::Refusal> {
    let missing = || request::Refusal {
        status: StatusCode::UNAUTHORIZED,
        code: code::UNAUTHENTICATED,
        message: "missing bearer token in the Authorization header".into(),
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(header::AUTHORIZATION) {
            request::Refusal {
                status: StatusCode::BAD_REQUEST,
                code: code::BAD_USER_INPUT,
                message: "send exactly one Authorization header".into(),
            }
        } else {
            missing()
        });
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(missing)
}

/// The response to a caller whose identity was refused (an erased person, a bad API key) or
/// could not be established (the database).
fn refuse_identity(e: DomainError, request_id: &str) -> Response {
    if let DomainError::Unauthenticated(m) = &e {
        return refuse(StatusCode::UNAUTHORIZED, code::UNAUTHENTICATED, m);
    }
    let unavailable = matches!(e, DomainError::Unavailable(_));
    let err = crate::graphql::error::to_graphql(e, request_id);
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        if unavailable {
            code::SERVICE_UNAVAILABLE
        } else {
            code::INTERNAL_SERVER_ERROR
        },
        &err.message,
    )
}

/// Executes a (possibly batched) GraphQL request for an authenticated caller. The token is
/// checked before the body is read; reading and executing share one deadline
/// (`GRAPHQL_TIMEOUT_MS`) past which the work is dropped.
pub async fn handle(
    State(state): State<AppState>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    req: axum::extract::Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let token = match bearer(&parts.headers) {
        Ok(t) => t,
        Err(r) => return refuse(r.status, r.code, &r.message),
    };
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let origin = network::origin(
        peer,
        &parts.headers,
        &state.services.governance.config.trusted_proxies,
    );
    let (user_id, caller) = if api_keys::looks_like_key(token) {
        match api_keys::authenticate(&state.services.governance, token).await {
            Ok(k) => (
                k.user,
                Caller::ApiKey {
                    key: k.key,
                    workspace: k.workspace,
                },
            ),
            Err(e) => return refuse_identity(e, &request_id),
        }
    } else {
        let (claims, session) = match state.verifier.verify(token).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(reason = %e.0, "bearer token refused");
                return refuse(StatusCode::UNAUTHORIZED, code::UNAUTHENTICATED, e.public());
            }
        };
        match users::provision(&state.services, &claims).await {
            Ok(u) => (
                u.id,
                Caller::Person {
                    mfa: session.mfa,
                    authenticated_at: session.authenticated_at,
                },
            ),
            Err(e) => return refuse_identity(e, &request_id),
        }
    };
    let actor = Actor {
        user_id: crate::ids::UserId(user_id),
        request_id,
        gate: Gate::new(
            Credentials { caller, origin },
            state.services.governance.clone(),
        ),
    };
    let deadline = state.config.request_timeout;
    let until = tokio::time::Instant::now() + deadline;
    // Every statement of the request counts against its budget (`db::budget`).
    let budget = crate::db::budget::Budget::new(state.config.max_statements);
    let work = crate::db::budget::scope(budget, execute(&state, &parts, body, actor, until));
    match tokio::time::timeout_at(until, work).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(
                timeout_ms = deadline.as_millis() as u64,
                "request stopped at its deadline"
            );
            refuse(
                StatusCode::GATEWAY_TIMEOUT,
                code::TIMEOUT,
                &format!(
                    "the request took longer than {} ms and was stopped (GRAPHQL_TIMEOUT_MS)",
                    deadline.as_millis()
                ),
            )
        }
    }
}

async fn execute(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
    actor: Actor,
    deadline: tokio::time::Instant,
) -> Response {
    let limits = request::ReadLimits {
        max_body_bytes: state.config.max_body_bytes,
        max_batch: state.config.max_batch_size,
    };
    let operations = match request::read(parts, body, limits).await {
        Ok(o) => o,
        Err(r) => return refuse(r.status, r.code, &r.message),
    };
    let mut responses = Vec::with_capacity(operations.requests.len());
    for r in operations.requests {
        let is_get = parts.method == Method::GET;
        let resp = if r.query.len() > HEAVY_DOCUMENT_BYTES {
            // Parsing, validating and executing a large document takes CPU in long
            // stretches: it runs on the blocking pool, a few at a time, so that the runtime
            // threads keep serving everyone else (`/healthz` included).
            let permit = state.heavy.clone().acquire_owned().await.ok();
            let (state, mine) = (state.clone(), actor.clone());
            let runtime = tokio::runtime::Handle::current();
            let budget = crate::db::budget::current();
            // A blocking task cannot be cancelled from outside: the deadline is kept inside.
            let heavy = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let run =
                    tokio::time::timeout_at(deadline, operation(&state, r, is_get, mine, deadline));
                runtime.block_on(async move {
                    match budget {
                        Some(b) => crate::db::budget::scope(b, run).await,
                        None => run.await,
                    }
                })
            });
            match heavy.await {
                Ok(Ok(resp)) => resp,
                Ok(Err(_)) => error_response(code::TIMEOUT, "the operation ran past its deadline"),
                Err(e) => {
                    let e = DomainError::internal(anyhow::anyhow!("operation task failed: {e}"));
                    let e = crate::graphql::error::to_graphql(e, &actor.request_id);
                    GqlResponse::from_errors(vec![e.into_server_error(Default::default())])
                }
            }
        } else {
            operation(state, r, is_get, actor.clone(), deadline).await
        };
        responses.push(resp);
    }
    // Database failures (`SERVICE_UNAVAILABLE`, reads already run once more) make the whole
    // answer a 503 with `Retry-After`, whatever else it holds.
    let unavailable = responses.iter().any(|r| is_unavailable(&r.errors));
    // The longest wait any rate limit asks for.
    let retry_after = responses
        .iter()
        .flat_map(|r| &r.errors)
        .filter_map(|e| e.extensions.as_ref())
        .filter(|x| {
            x.get("code")
                .is_some_and(|v| *v == async_graphql::Value::from(code::RATE_LIMITED))
        })
        .filter_map(|x| match x.get("retryAfter") {
            Some(async_graphql::Value::Number(n)) => n.as_u64(),
            _ => None,
        })
        .max();
    let body = match (operations.is_batch, responses.pop()) {
        (false, Some(one)) => BatchResponse::Single(one),
        (_, last) => {
            responses.extend(last);
            BatchResponse::Batch(responses)
        }
    };
    let mut resp = respond(body);
    if unavailable {
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    } else if let Some(secs) = retry_after {
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    resp
}

/// Documents longer than this run on the blocking pool (see `execute`).
pub const HEAVY_DOCUMENT_BYTES: usize = 16 * 1024;

/// Whether `errors` hold a `SERVICE_UNAVAILABLE` (the database or its pool failed:
/// `DomainError::Unavailable` is its only source inside an operation).
fn is_unavailable(errors: &[ServerError]) -> bool {
    errors.iter().any(|e| {
        e.extensions
            .as_ref()
            .and_then(|x| x.get("code"))
            .is_some_and(|v| *v == async_graphql::Value::from(code::SERVICE_UNAVAILABLE))
    })
}

/// Parses, checks and executes one operation, and counts it for the workspaces it names
/// (`domain::api_usage`: in memory, no statement).
async fn operation(
    state: &AppState,
    r: async_graphql::Request,
    is_get: bool,
    actor: Actor,
    deadline: tokio::time::Instant,
) -> GqlResponse {
    let user = actor.user_id.0;
    let (mut resp, usage) = run_operation(state, r, is_get, actor, deadline).await;
    label_errors(&mut resp.errors);
    state.api_usage.record(
        &usage.owners,
        user,
        &usage.operation,
        !resp.errors.is_empty(),
        chrono::Utc::now().date_naive(),
    );
    resp
}

async fn run_operation(
    state: &AppState,
    r: async_graphql::Request,
    is_get: bool,
    actor: Actor,
    deadline: tokio::time::Instant,
) -> (GqlResponse, Attribution) {
    let parsed = match state.documents.parse(&r.query) {
        Ok(p) => p,
        Err(e) => {
            let resp = GqlResponse::from_errors(vec![e]);
            return (resp, Attribution::unparsed(&r.variables));
        }
    };
    let usage = Attribution::of(&parsed.doc, r.operation_name.as_deref(), &r.variables);
    // Each operation is charged anew: one unit, or one per field of a mutation.
    let mut actor = actor;
    actor.gate = actor
        .gate
        .for_operation(mutation_fields(&parsed.doc, r.operation_name.as_deref()).max(1));
    if let Err(bad) = crate::graphql::limits::check_strings(&parsed.doc, &r.variables) {
        let mut e = ServerError::new(bad.message, None);
        let mut ext = ErrorExtensionValues::default();
        ext.set("code", code::BAD_USER_INPUT);
        ext.set("field", bad.field);
        e.extensions = Some(ext);
        return (GqlResponse::from_errors(vec![e]), usage);
    }
    if is_get && is_mutation(&parsed.doc) {
        let resp = error_response(code::BAD_USER_INPUT, "mutations must be sent with POST");
        return (resp, usage);
    }
    let name = r
        .operation_name
        .clone()
        .or_else(|| operation_name(&parsed.doc));
    let shape = Arc::new(crate::graphql::shape::Shape::new(
        parsed.doc.clone(),
        r.variables.clone(),
    ));
    let switch = Arc::new(one_step::Switch::new(
        state.config.one_step,
        !parsed.may_merge,
    ));
    let is_read = operation_type(&parsed.doc, r.operation_name.as_deref())
        .is_some_and(|t| t == OperationType::Query);
    let rerun = is_read.then(|| replica(&r));
    let statements_before = crate::db::budget::current().map(|b| b.used());
    let started = Instant::now();
    let run = |mut r: async_graphql::Request| {
        // Each run has its own context: loaders and memos do not keep the failed run's
        // errors. The gate (and so the rate limit's charge) is the operation's, shared.
        let ctx = RequestCtx::new(state.services.clone(), actor.clone(), shape.clone());
        r.set_parsed_query((*parsed.doc).clone());
        state.schema.execute(r.data(ctx).data(switch.clone()))
    };
    let mut resp = run(r).await;
    if let Some(again) = rerun
        && is_unavailable(&resp.errors)
        && may_rerun(deadline, started.elapsed(), statements_before)
    {
        tracing::warn!(
            request.id = %actor.request_id,
            operation = name.as_deref().unwrap_or("anonymous"),
            "a read failed on the database connection; running it once more"
        );
        resp = run(again).await;
    }
    state.metrics.observe_operation(
        name.as_deref(),
        resp.errors.is_empty(),
        started.elapsed().as_secs_f64(),
    );
    let (answered, fallback) = switch.outcomes();
    state.metrics.observe_one_step(answered, fallback);
    (resp, usage)
}

/// A copy of a request as `request::read` builds it (query, operation name and variables),
/// to run it again.
fn replica(r: &async_graphql::Request) -> async_graphql::Request {
    let mut copy = async_graphql::Request::new(r.query.clone()).variables(r.variables.clone());
    copy.operation_name = r.operation_name.clone();
    copy
}

/// Whether a read that failed on the database (its connection was lost or could not be
/// had: `SERVICE_UNAVAILABLE`) runs once more. A query changes nothing, so running it again
/// is safe (a workspace that audits billing reads may record the read twice: it was read
/// twice); mutations are not run again here (`domain::mutation` does it where it is safe),
/// nor are subscriptions. It runs again only if it can afford what its first run cost: as
/// much time again before the request's deadline, and as many statements again (at least
/// one) in the request's budget (`GRAPHQL_MAX_STATEMENTS`), which the second run shares
/// (`statements_before`: the budget's use before the first run). Otherwise the 503 goes out
/// at once: a second run cut short by the deadline or the budget would turn a failure to
/// retry into a `TIMEOUT`, or a `LIMIT_EXCEEDED` that says to ask for less.
fn may_rerun(
    deadline: tokio::time::Instant,
    took: std::time::Duration,
    statements_before: Option<u64>,
) -> bool {
    let time = tokio::time::Instant::now() + took < deadline;
    let statements = match (crate::db::budget::current(), statements_before) {
        (Some(b), Some(before)) => {
            let cost = b.used().saturating_sub(before);
            b.ceiling().saturating_sub(b.used()) >= cost.max(1)
        }
        _ => true,
    };
    time && statements
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

/// The operation `name` (or the only one) of a document, if there is one.
fn selected<'d>(
    doc: &'d ExecutableDocument,
    name: Option<&str>,
) -> Option<&'d Positioned<OperationDefinition>> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(n)) => ops.get(n),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    }
}

/// Whether the operation `name` (or the only one) is a query, a mutation or a subscription.
fn operation_type(doc: &ExecutableDocument, name: Option<&str>) -> Option<OperationType> {
    selected(doc, name).map(|op| op.node.ty)
}

/// The root fields of the operation `name` (or the only one) when it is a mutation, fragments
/// at the root expanded; 0 for a query. Bounded by the document's caps (`graphql::limits`).
fn mutation_fields(doc: &ExecutableDocument, name: Option<&str>) -> usize {
    use async_graphql::parser::types::{Selection, SelectionSet};
    let Some(op) = selected(doc, name).filter(|op| op.node.ty == OperationType::Mutation) else {
        return 0;
    };
    fn count(doc: &ExecutableDocument, set: &SelectionSet, depth: usize) -> usize {
        if depth > crate::graphql::limits::MAX_TEXT_NESTING {
            return 0;
        }
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(_) => 1,
                Selection::InlineFragment(f) => count(doc, &f.node.selection_set.node, depth + 1),
                Selection::FragmentSpread(s) => doc
                    .fragments
                    .get(&s.node.fragment_name.node)
                    .map_or(0, |f| count(doc, &f.node.selection_set.node, depth + 1)),
            })
            .sum()
    }
    count(doc, &op.node.selection_set.node, 0)
}

fn is_mutation(doc: &ExecutableDocument) -> bool {
    doc.operations
        .iter()
        .any(|(_, op)| op.node.ty == OperationType::Mutation)
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
/// input coercion) carry no code: they are all the client's input. Every message is bounded
/// (`graphql::error::bounded`): none echoes more than a few dozen characters of its input.
fn label_errors(errors: &mut [ServerError]) {
    for e in errors {
        if let std::borrow::Cow::Owned(m) = crate::graphql::error::bounded(&e.message) {
            e.message = m;
        }
        let ext = e
            .extensions
            .get_or_insert_with(ErrorExtensionValues::default);
        if ext.get("code").is_none() {
            ext.set("code", code::BAD_USER_INPUT);
        }
    }
}
