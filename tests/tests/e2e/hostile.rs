//! The API as a hostile client uses it. Every finding of a review (or of our own) becomes a
//! test here: it failed on the code before the fix and must keep passing.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tests::tokens::Tokens;
use tests::{Options, Ordered, TestApp, assert_code, assert_ok};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::webhooks;

/// `{...W0} fragment W0 on Query {viewer{id} ...W1 ...W1} … fragment Wn on Query {viewer{id}}`:
/// 2^(n+1) fields once expanded from a document of a few hundred bytes.
fn doubling_fragments(n: usize) -> String {
    let mut q = String::from("{...W0}");
    for i in 0..n {
        q.push_str(&format!(
            " fragment W{i} on Query {{viewer{{id}} ...W{} ...W{}}}",
            i + 1,
            i + 1
        ));
    }
    q.push_str(&format!(" fragment W{n} on Query {{viewer{{id}}}}"));
    q
}

fn message(body: &Value) -> &str {
    body["errors"][0]["message"].as_str().unwrap_or_default()
}

/// Sends raw bytes on a new connection and returns the status line and whatever the server
/// answered before closing or `wait` passing.
async fn raw_exchange(app: &TestApp, head: &str, body: &[u8], wait: Duration) -> String {
    let addr = app.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    // The server may answer (and close) before taking the whole body: ignore write errors.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // A complete response with Content-Length: stop reading.
                    let text = String::from_utf8_lossy(&out);
                    if let Some((head, body)) = text.split_once("\r\n\r\n")
                        && let Some(len) = head.lines().find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .and_then(|v| v.trim().parse::<usize>().ok())
                        })
                        && body.len() >= len
                    {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The head of a `POST /graphql` with `headers` (each ending in CRLF).
fn post_head(headers: &str) -> String {
    format!("POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\r\n")
}

fn json_body_of(raw: &str) -> Value {
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("no JSON body in response: {raw:?}"))
}

#[tokio::test]
async fn exponential_fragment_expansion_is_refused_before_it_is_walked() {
    let app = TestApp::spawn().await;
    let t = app.user("frag@example.com");
    // Small fan-outs still work.
    let ok = app.gql(&t, &doubling_fragments(3), json!({})).await;
    assert_ok(&ok);
    // n = 24 took ~7 s and n = 40 minutes of every runtime thread; both are refused now,
    // while the server keeps answering everyone else.
    let bombs: Vec<_> = [24, 40, 40, 90]
        .into_iter()
        .map(|n| {
            let app = &app;
            let t = t.clone();
            async move { app.gql(&t, &doubling_fragments(n), json!({})).await }
        })
        .collect();
    let health = async {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            app.http.get(format!("{}/healthz", app.base)).send(),
        )
        .await;
        r.is_ok_and(|r| r.is_ok_and(|r| r.status() == 200))
    };
    let (results, healthy) = tokio::join!(futures::future::join_all(bombs), health);
    assert!(healthy, "/healthz must keep answering");
    for r in results {
        assert_code(&r, "BAD_USER_INPUT");
        assert!(
            message(&r).contains("fields once its fragments are expanded"),
            "{r}"
        );
        assert!(r["data"].is_null(), "{r}");
    }
    // 201 fragments are past GRAPHQL_MAX_FRAGMENTS before anything is expanded.
    let r = app.gql(&t, &doubling_fragments(200), json!({})).await;
    assert_code(&r, "BAD_USER_INPUT");
    assert!(message(&r).contains("GRAPHQL_MAX_FRAGMENTS"), "{r}");
    // Fragment cycles never reach the engine (whose depth check would recurse 2^64 times).
    let r = app
        .gql(&t, "{...A} fragment A on Query {...A ...A}", json!({}))
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    assert!(message(&r).contains("spreads itself"), "{r}");
    // The cap is configurable and counts every expanded field.
    let app = TestApp::with(Options {
        env: [("GRAPHQL_MAX_FIELDS".to_string(), "5".to_string())].into(),
    })
    .await;
    let t = app.user("frag@example.com");
    let at_cap = "{ viewer { id email name } a: __typename }";
    assert_ok(&app.gql(&t, at_cap, json!({})).await);
    let over = "{ viewer { id email name } a: __typename b: __typename }";
    assert_code(&app.gql(&t, over, json!({})).await, "BAD_USER_INPUT");
}

#[tokio::test]
async fn deeply_nested_text_is_refused_before_parsing() {
    let app = TestApp::spawn().await;
    let t = app.user("deep@example.com");
    // The parser recurses on lists and objects: 100,000 `[` would overflow its stack.
    let q = format!("{{ workspace(id: {}) {{ id }} }}", "[".repeat(100_000));
    let r = app.gql(&t, &q, json!({})).await;
    assert_code(&r, "BAD_USER_INPUT");
    assert!(message(&r).contains("nested more than"), "{r}");
}

#[tokio::test]
async fn a_body_is_not_read_before_the_token_is_checked() {
    let app = TestApp::spawn().await;
    // Announce 500 MB and send a few bytes: a server that reads the body first would wait
    // for the rest; this one answers 401 at once.
    let head = post_head("Content-Length: 500000000\r\n");
    let raw = raw_exchange(&app, &head, b"{\"query\":", Duration::from_secs(10)).await;
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw:?}");
    assert_code(&json_body_of(&raw), "UNAUTHENTICATED");
}

#[tokio::test]
async fn bodies_are_capped_and_answered_with_413() {
    let app = TestApp::with(Options {
        env: [("GRAPHQL_MAX_BODY_BYTES".to_string(), "65536".to_string())].into(),
    })
    .await;
    let t = app.user("big@example.com");
    // Declared too large: refused before a byte of it is read.
    let head = post_head(&format!(
        "Authorization: Bearer {t}\r\nContent-Length: 500000000\r\n"
    ));
    let raw = raw_exchange(&app, &head, b"{", Duration::from_secs(10)).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw:?}");
    let body = json_body_of(&raw);
    assert_code(&body, "BAD_USER_INPUT");
    assert!(message(&body).contains("GRAPHQL_MAX_BODY_BYTES"), "{body}");
    // Chunked without a length: refused once the cap is passed.
    let head = post_head(&format!(
        "Authorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\n"
    ));
    let chunk = format!("{:x}\r\n{}\r\n", 16_384, " ".repeat(16_384));
    let raw = raw_exchange(
        &app,
        &head,
        chunk.repeat(8).as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw:?}");
    // At the cap is fine.
    let query = format!("{{ viewer {{ email }} }}{}", " ".repeat(60_000));
    let (status, body) = app.gql_raw(Some(&t), json!({"query": query})).await;
    assert_eq!(status, 200, "{body}");
    assert_ok(&body);
}

#[tokio::test]
async fn batches_and_variables_are_bounded_while_parsing() {
    let app = TestApp::spawn().await;
    let t = app.user("batch@example.com");
    // A million empty objects would take gigabytes as values: refused at the 11th.
    let many = format!("[{}]", vec!["{}"; 300_000].join(","));
    let (status, body) = app
        .gql_raw(Some(&t), serde_json::from_str(&many).expect("json"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("at most 10 operations"), "{body}");
    // Eleven real operations: refused; ten: answered.
    let op = json!({"query": "{ viewer { email } }"});
    let (status, _) = app
        .gql_raw(Some(&t), Value::Array(vec![op.clone(); 11]))
        .await;
    assert_eq!(status, 400);
    let (status, body) = app
        .gql_raw(Some(&t), Value::Array(vec![op.clone(); 10]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(10));
    // Variables nested past 64 levels.
    let mut deep = json!(1);
    for _ in 0..70 {
        deep = json!([deep]);
    }
    let (status, body) = app
        .gql_raw(
            Some(&t),
            json!({"query": "{ viewer { email } }", "variables": {"x": deep}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("nested more than 64"), "{body}");
}

#[tokio::test]
async fn malformed_requests_get_messages_without_internal_names() {
    let app = TestApp::spawn().await;
    let t = app.user("shape@example.com");
    for (body, expect) in [
        (json!({"query": null}), "`query` must be a string"),
        (json!({}), "`query` must be a string"),
        (json!({"query": 5}), "`query` must be a string"),
        (json!([]), "empty batch"),
        (json!("{ viewer { id } }"), "JSON object"),
        (
            json!({"query": "{ viewer { id } }", "variables": "x"}),
            "`variables` must be an object",
        ),
    ] {
        let (status, r) = app.gql_raw(Some(&t), body.clone()).await;
        assert_eq!(status, 400, "{body} -> {r}");
        assert_code(&r, "BAD_USER_INPUT");
        assert!(message(&r).contains(expect), "{body} -> {r}");
        let text = r.to_string();
        for internal in ["untagged", "BatchRequest", "enum", "serde"] {
            assert!(!text.contains(internal), "{body} leaks {internal}: {r}");
        }
    }
    // A syntax error in a 400 KB document is described in a few words, not echoed back.
    let huge = format!("{{ workspace(id: \"{}\") {{ id ", "x".repeat(400_000));
    let (status, r) = app.gql_raw(Some(&t), json!({"query": huge})).await;
    assert_eq!(status, 200);
    assert_code(&r, "BAD_USER_INPUT");
    assert!(message(&r).starts_with("syntax error"), "{}", message(&r));
    assert!(
        r.to_string().len() < 1_000,
        "error of {} bytes",
        r.to_string().len()
    );
    assert!(r["errors"][0]["locations"][0]["line"].is_number(), "{r}");
}

#[tokio::test]
async fn headers_are_bounded_with_a_json_answer() {
    let app = TestApp::spawn().await;
    let t = app.user("hdr@example.com");
    // Two Authorization headers: which one wins is a guess, so neither does.
    let other = app.user("other@example.com");
    let r = app
        .http
        .post(format!("{}/graphql", app.base))
        .header("authorization", format!("Bearer {t}"))
        .header("authorization", format!("Bearer {other}"))
        .json(&json!({"query": "{ viewer { email } }"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert_code(&body, "BAD_USER_INPUT");
    // An oversized header gets the usual JSON error and code, not an empty 431.
    for size in [40_000, 300_000] {
        let r = app
            .http
            .post(format!("{}/graphql", app.base))
            .bearer_auth(&t)
            .header("x-padding", "a".repeat(size))
            .json(&json!({"query": "{ viewer { email } }"}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 431);
        let body: Value = r.json().await.expect("JSON body with a 431");
        assert_code(&body, "BAD_USER_INPUT");
        assert!(message(&body).contains("HTTP_MAX_HEADER_BYTES"), "{body}");
    }
}

fn sign_with_header(header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).expect("header")),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims"))
    );
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(tests::HS256_SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .expect("sign");
    format!("{input}.{sig}")
}

#[tokio::test]
async fn tokens_with_critical_headers_or_control_characters_are_refused() {
    let app = TestApp::spawn().await;
    let claims = Tokens::claims("auth0|crit", "crit@example.com", true);
    // The same header without `crit` is accepted: the signature is fine.
    let plain = sign_with_header(&json!({"alg": "HS256", "typ": "JWT"}), &claims);
    let (status, body) = app
        .gql_raw(Some(&plain), json!({"query": "{ viewer { email } }"}))
        .await;
    assert_eq!(status, 200, "{body}");
    for crit in [json!(["x-unknown"]), json!(["exp"]), json!([])] {
        let token = sign_with_header(
            &json!({"alg": "HS256", "typ": "JWT", "crit": crit, "x-unknown": 1}),
            &claims,
        );
        let (status, body) = app
            .gql_raw(Some(&token), json!({"query": "{ viewer { email } }"}))
            .await;
        assert_eq!(status, 401, "crit {crit}: {body}");
        assert_code(&body, "UNAUTHENTICATED");
    }
    // NUL or other control characters in identity claims: 401, and the user's other
    // requests keep working.
    for (claim, value) in [
        ("name", "Eve\u{0}"),
        ("email", "e\u{0}ve@example.com"),
        ("sub", "auth0|e\u{0}"),
        ("name", "Eve\u{1b}[31m"),
    ] {
        let mut c = Tokens::claims("auth0|eve", "eve@example.com", true);
        c[claim] = json!(value);
        let (status, body) = app
            .gql_raw(
                Some(&app.tokens.hs256_claims(&c)),
                json!({"query": "{ viewer { email } }"}),
            )
            .await;
        assert_eq!(status, 401, "{claim}: {body}");
    }
    let good = app.tokens.hs256("auth0|eve", "eve@example.com", true);
    assert_ok(&app.gql(&good, "{ viewer { email } }", json!({})).await);
}

#[tokio::test]
async fn token_errors_do_not_describe_the_key_configuration() {
    let app = TestApp::spawn().await;
    let claims = Tokens::claims("auth0|cfg", "cfg@example.com", true);
    let header = |alg: &str| {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json!({"alg": alg, "kid": "k"})).expect("h"))
    };
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("c"));
    for alg in ["ES256", "PS512", "RS384", "HS512"] {
        let token = format!("{}.{payload}.c2ln", header(alg));
        let (status, body) = app
            .gql_raw(Some(&token), json!({"query": "{ viewer { email } }"}))
            .await;
        assert_eq!(status, 401);
        let text = body.to_string();
        for hint in ["accepted by this server", "RS256", "HS256", "kid", "key"] {
            assert!(
                !text.contains(hint),
                "{alg}: message reveals {hint}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn a_request_past_its_deadline_is_stopped() {
    let app = TestApp::with(Options {
        env: [("GRAPHQL_TIMEOUT_MS".to_string(), "1000".to_string())].into(),
    })
    .await;
    let t = app.user("slow@example.com");
    // A body that never arrives: the deadline covers reading it too.
    let head = post_head(&format!(
        "Authorization: Bearer {t}\r\nContent-Length: 100\r\n"
    ));
    let raw = raw_exchange(&app, &head, b"{\"query\":", Duration::from_secs(15)).await;
    assert!(raw.starts_with("HTTP/1.1 504"), "{raw:?}");
    let body = json_body_of(&raw);
    assert_code(&body, "TIMEOUT");
    assert!(message(&body).contains("GRAPHQL_TIMEOUT_MS"), "{body}");
    // Requests within the deadline are unaffected.
    assert_ok(&app.gql(&t, "{ viewer { email } }", json!({})).await);
}

#[tokio::test]
async fn shutdown_gives_up_on_stuck_connections_at_its_deadline() {
    let app = TestApp::spawn().await;
    let config = app.config_for(&[]);
    let state = api::AppState::new(config, app.pool.clone(), Default::default()).expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::http::server::serve(
        listener,
        api::router(state),
        async move {
            let _ = stop_rx.await;
        },
        Duration::from_millis(500),
    ));
    // A request whose body never comes holds its connection open.
    let t = app.user("stuck@example.com");
    let mut stuck = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Length: 100\r\n\r\n{{"
    );
    stuck.write_all(head.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop_tx.send(());
    let stopped = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops at its shutdown deadline")
        .expect("server task");
    assert_eq!(stopped, api::http::server::Stopped::DeadlinePassed(1));
    drop(stuck);
}

/// An owner with a workspace, a root and a child organization with usage, and an outsider
/// with an organization of their own.
async fn two_tenants(app: &TestApp) -> (String, String, String, String) {
    let owner = app.user("order-owner@example.com");
    let ws = app.create_workspace(&owner, "Ordered").await;
    let root = app.create_org(&owner, &ws, None, "Root").await;
    let child = app.create_org(&owner, &ws, Some(&root), "Child").await;
    assert_ok(&app.record(&owner, &child, "users", 3).await);
    let outsider = app.user("order-outsider@example.com");
    let their_ws = app.create_workspace(&outsider, "Theirs").await;
    let theirs = app.create_org(&outsider, &their_ws, None, "Secret").await;
    (owner, child, theirs, ws)
}

#[tokio::test]
async fn response_keys_follow_the_selection_and_never_tell_foreign_from_missing() {
    let app = TestApp::spawn().await;
    let (owner, own, foreign, _) = two_tenants(&app).await;
    let missing = api::ids::OrganizationId(uuid::Uuid::now_v7()).encode();
    let q = "query($own: ID!, $x: ID!) { mine: organization(id: $own) { id } theirs: organization(id: $x) { id } }";
    let swapped = "query($own: ID!, $x: ID!) { theirs: organization(id: $x) { id } mine: organization(id: $own) { id } }";
    let mut bodies = Vec::new();
    for _ in 0..10 {
        for x in [&missing, &foreign] {
            let text = app.gql_text(&owner, q, json!({"own": own, "x": x})).await;
            assert_eq!(
                Ordered::parse(&text).keys(&["data"]),
                ["mine", "theirs"],
                "{text}"
            );
            bodies.push(text);
            let text = app
                .gql_text(&owner, swapped, json!({"own": own, "x": x}))
                .await;
            assert_eq!(
                Ordered::parse(&text).keys(&["data"]),
                ["theirs", "mine"],
                "{text}"
            );
        }
    }
    // A foreign id and a missing one read exactly alike.
    assert!(bodies.iter().all(|b| b == &bodies[0]), "{bodies:?}");
}

#[tokio::test]
async fn nested_keys_follow_the_selection_whatever_finishes_first() {
    let app = TestApp::spawn().await;
    let (owner, child, _, ws) = two_tenants(&app).await;
    let q = "query($o: ID!) { organization(id: $o) { usage { resource } parent { id name } name
        h3: usageHistory(resource: \"users\") { subtree } ancestors { id } h1: usageHistory(resource: \"locations\") { subtree }
        depth workspace { name id } children { edges { node { id } } } h2: usageHistory(resource: \"sso_connections\") { direct } id } }";
    let expected = [
        "usage",
        "parent",
        "name",
        "h3",
        "ancestors",
        "h1",
        "depth",
        "workspace",
        "children",
        "h2",
        "id",
    ];
    for _ in 0..20 {
        let text = app.gql_text(&owner, q, json!({"o": child})).await;
        let body = Ordered::parse(&text);
        assert_eq!(body.keys(&["data", "organization"]), expected, "{text}");
        assert_eq!(
            body.keys(&["data", "organization", "workspace"]),
            ["name", "id"]
        );
        assert_eq!(
            body.keys(&["data", "organization", "parent"]),
            ["id", "name"]
        );
    }
    // Fragments apply in place, by their type condition, through an interface too.
    let doc = "query($o: ID!, $w: ID!) { node(id: $o) { ... on Workspace { name } id ...F __typename } w: node(id: $w) { ...F ... on Workspace { id name } __typename } } fragment F on Organization { depth name }";
    for _ in 0..5 {
        let text = app
            .gql_text(&owner, doc, json!({"o": child, "w": ws}))
            .await;
        let body = Ordered::parse(&text);
        assert_eq!(
            body.keys(&["data", "node"]),
            ["id", "depth", "name", "__typename"],
            "{text}"
        );
        assert_eq!(
            body.keys(&["data", "w"]),
            ["id", "name", "__typename"],
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_refused_field_is_null_with_its_error_and_non_null_errors_propagate() {
    let app = TestApp::spawn().await;
    let (owner, child, _, ws) = two_tenants(&app).await;
    let viewer = app.user("order-viewer@example.com");
    app.add_member(&owner, &ws, "order-viewer@example.com", "VIEWER")
        .await;
    // A nullable field refused to a viewer keeps its key, as null, with the error's path.
    let q = "query($w: ID!) { workspace(id: $w) { name auditLog { edges { node { id } } } id } }";
    let text = app.gql_text(&viewer, q, json!({"w": ws})).await;
    let ordered = Ordered::parse(&text);
    assert_eq!(
        ordered.keys(&["data", "workspace"]),
        ["name", "auditLog", "id"],
        "{text}"
    );
    let body: Value = serde_json::from_str(&text).expect("json");
    assert!(body["data"]["workspace"]["auditLog"].is_null(), "{body}");
    assert_code(&body, "FORBIDDEN");
    assert_eq!(body["errors"][0]["path"], json!(["workspace", "auditLog"]));
    // A non-null field that fails makes its parent null, up to the nearest nullable one.
    let q = "query($o: ID!) { organization(id: $o) { id usageHistory(resource: \"users\", last: 0) { direct } } other: organization(id: $o) { id } }";
    let text = app.gql_text(&owner, q, json!({"o": child})).await;
    let body: Value = serde_json::from_str(&text).expect("json");
    assert!(body["data"]["organization"].is_null(), "{body}");
    assert_eq!(body["data"]["other"]["id"], json!(child), "{body}");
    assert_eq!(
        body["errors"][0]["path"],
        json!(["organization", "usageHistory"])
    );
    assert_eq!(
        Ordered::parse(&text).keys(&["data"]),
        ["organization", "other"]
    );
    // Errors are listed in document order, the same on every run.
    let q = "query($o: ID!) { b: organization(id: $o) { usageHistory(resource: \"users\", last: 0) { direct } } a: organization(id: $o) { usageHistory(resource: \"users\", last: 400) { direct } } }";
    let first = app.gql_text(&owner, q, json!({"o": child})).await;
    for _ in 0..10 {
        let body: Value = serde_json::from_str(&app.gql_text(&owner, q, json!({"o": child})).await)
            .expect("json");
        assert_eq!(body["errors"][0]["path"][0], "b", "{body}");
        assert_eq!(body["errors"][1]["path"][0], "a", "{body}");
        assert_eq!(
            body.to_string(),
            serde_json::from_str::<Value>(&first)
                .expect("j")
                .to_string()
        );
    }
}

const RENAME_SEEING_MEMBERS: &str = "mutation($w: ID!, $k: String) { renameWorkspace(input: {workspaceId: $w, name: \"Named by M\", idempotencyKey: $k}) { workspace { id name viewerRole members(first: 100) { edges { node { role user { email } } } } } } }";

async fn remove(app: &TestApp, token: &str, member: &str) {
    let r = app
        .gql(
            token,
            "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }",
            json!({"m": member}),
        )
        .await;
    assert_ok(&r);
}

#[tokio::test]
async fn a_replay_returns_what_the_first_request_returned_and_nothing_newer() {
    let app = TestApp::spawn().await;
    let owner = app.user("replay-owner@example.com");
    let ws = app.create_workspace(&owner, "Replayed").await;
    let m = app.user("replay-m@example.com");
    let m_id = app
        .add_member(&owner, &ws, "replay-m@example.com", "ADMIN")
        .await;
    let vars = json!({"w": ws, "k": "rename-1"});
    let first = app.gql_text(&m, RENAME_SEEING_MEMBERS, vars.clone()).await;
    assert_ok(&serde_json::from_str(&first).expect("json"));
    // M is removed; afterwards someone joins and the workspace is renamed.
    remove(&app, &owner, &m_id).await;
    app.add_member(&owner, &ws, "joined-later@example.com", "VIEWER")
        .await;
    let r = app
        .gql(
            &owner,
            "mutation($w: ID!) { renameWorkspace(input: {workspaceId: $w, name: \"Renamed later\"}) { workspace { id } } }",
            json!({"w": ws}),
        )
        .await;
    assert_ok(&r);
    // The replay is the first response, byte for byte: nothing created or changed since.
    let replay = app.gql_text(&m, RENAME_SEEING_MEMBERS, vars.clone()).await;
    assert_eq!(replay, first);
    assert!(!replay.contains("joined-later") && !replay.contains("Renamed later"));
    // A richer selection under the same key is a reuse, not a way to read more.
    let richer = RENAME_SEEING_MEMBERS.replace(
        "viewerRole",
        "viewerRole description auditLog { edges { node { action } } }",
    );
    let r = app.gql(&m, &richer, vars.clone()).await;
    assert_code(&r, "IDEMPOTENCY_KEY_REUSED");
    // So is the same selection with other aliases or arguments.
    let other_page = RENAME_SEEING_MEMBERS.replace("members(first: 100)", "members(first: 1)");
    assert_code(
        &app.gql(&m, &other_page, vars.clone()).await,
        "IDEMPOTENCY_KEY_REUSED",
    );
    // A named fragment and the same inline fragment are the same selection.
    let named = "mutation($w: ID!, $k: String) { renameWorkspace(input: {workspaceId: $w, name: \"Named again\", idempotencyKey: $k}) { ...P } } fragment P on RenameWorkspacePayload { workspace { id name } }";
    let inline = "mutation($w: ID!, $k: String) { renameWorkspace(input: {workspaceId: $w, name: \"Named again\", idempotencyKey: $k}) { ... on RenameWorkspacePayload { workspace { id name } } } }";
    let first = app
        .gql_text(&owner, named, json!({"w": ws, "k": "frag"}))
        .await;
    assert_ok(&serde_json::from_str(&first).expect("json"));
    assert_eq!(
        app.gql_text(&owner, inline, json!({"w": ws, "k": "frag"}))
            .await,
        first
    );
}

#[tokio::test]
async fn a_replay_without_a_stored_rendering_reads_with_todays_access() {
    let app = TestApp::spawn().await;
    let owner = app.user("fallback-owner@example.com");
    let ws = app.create_workspace(&owner, "Fallback").await;
    let m = app.user("fallback-m@example.com");
    let m_id = app
        .add_member(&owner, &ws, "fallback-m@example.com", "ADMIN")
        .await;
    let stays = app.user("fallback-stays@example.com");
    app.add_member(&owner, &ws, "fallback-stays@example.com", "ADMIN")
        .await;
    for (token, key) in [(&m, "k-m"), (&stays, "k-stays")] {
        let r = app
            .gql(token, RENAME_SEEING_MEMBERS, json!({"w": ws, "k": key}))
            .await;
        assert_ok(&r);
    }
    // As if the first responses had held errors (or their process had died after COMMIT
    // and the wait had passed): no rendering to send back.
    let changed = app
        .sql_count("WITH u AS (UPDATE idempotency_keys SET rendered = NULL WHERE key IN ('k-m', 'k-stays') RETURNING 1) SELECT count(*) AS n FROM u")
        .await;
    assert_eq!(changed, 2);
    remove(&app, &owner, &m_id).await;
    app.add_member(&owner, &ws, "fallback-later@example.com", "VIEWER")
        .await;
    // The removed member's replay shows nothing: the workspace is not theirs to read now.
    let r = app
        .gql(&m, RENAME_SEEING_MEMBERS, json!({"w": ws, "k": "k-m"}))
        .await;
    assert_code(&r, "NOT_FOUND");
    assert!(r["data"].is_null(), "{r}");
    assert!(!r.to_string().contains("fallback-later"), "{r}");
    // A member who still belongs reads today's data, as a fresh query would show it.
    let r = app
        .gql(
            &stays,
            RENAME_SEEING_MEMBERS,
            json!({"w": ws, "k": "k-stays"}),
        )
        .await;
    assert_ok(&r);
    assert!(r.to_string().contains("fallback-later"), "{r}");
    // Still one effect per key.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events WHERE action = 'workspace.update'")
            .await,
        2
    );
}

#[tokio::test]
async fn concurrent_repeats_wait_for_the_first_and_return_its_exact_body() {
    let app = TestApp::spawn().await;
    let owner = app.user("burst-owner@example.com");
    let ws = app.create_workspace(&owner, "Burst").await;
    let root = app.create_org(&owner, &ws, None, "Root").await;
    let q = "mutation($o: ID!, $k: String) { recordUsage(input: {organizationId: $o, resource: \"users\", delta: 2, idempotencyKey: $k}) { organization { id name usage { resource direct subtree } parent { id } } } }";
    let sends = (0..12).map(|_| app.gql_text(&owner, q, json!({"o": root, "k": "burst-1"})));
    let bodies = futures::future::join_all(sends).await;
    assert_ok(&serde_json::from_str(&bodies[0]).expect("json"));
    for b in &bodies {
        assert_eq!(b, &bodies[0]);
    }
    assert_eq!(app.numbers(&owner, &root, "users").await, (2, 2));
    // Later repeats too, whatever happened since.
    assert_ok(&app.record(&owner, &root, "users", 5).await);
    let again = app
        .gql_text(&owner, q, json!({"o": root, "k": "burst-1"}))
        .await;
    assert_eq!(again, bodies[0]);
}

/// SQL statements a request costs, and its body.
async fn cost(app: &TestApp, token: &str, query: &str, variables: Value) -> (u64, String) {
    let before = app.statements().await;
    let text = app.gql_text(token, query, variables).await;
    (app.statements().await - before, text)
}

#[tokio::test]
async fn a_foreign_id_costs_exactly_what_a_missing_one_costs() {
    let app = TestApp::spawn().await;
    let (owner, _, foreign_org, _) = two_tenants(&app).await;
    let outsider = app.user("order-outsider@example.com");
    let r = app
        .gql(
            &outsider,
            "{ workspaces { edges { node { id members { edges { node { id } } } auditLog(first: 1) { edges { node { id } } } } } } }",
            json!({}),
        )
        .await;
    let theirs = &r["data"]["workspaces"]["edges"][0]["node"];
    let foreign_ws = theirs["id"].as_str().expect("ws").to_string();
    let foreign_member = theirs["members"]["edges"][0]["node"]["id"]
        .as_str()
        .expect("member")
        .to_string();
    let foreign_audit = theirs["auditLog"]["edges"][0]["node"]["id"]
        .as_str()
        .expect("audit")
        .to_string();
    let fresh = uuid::Uuid::now_v7;
    let cases = [
        (
            foreign_org.clone(),
            api::ids::OrganizationId(fresh()).encode(),
        ),
        (foreign_ws, api::ids::WorkspaceId(fresh()).encode()),
        (foreign_member, api::ids::MemberId(fresh()).encode()),
        (foreign_audit, api::ids::AuditEventId(fresh()).encode()),
    ];
    // Warm up: the caller's identity is cached after the first request.
    assert_ok(&app.gql(&owner, "{ viewer { id } }", json!({})).await);
    for (foreign, missing) in &cases {
        let q = "query($id: ID!) { node(id: $id) { id } }";
        let (f_cost, f_body) = cost(&app, &owner, q, json!({"id": foreign})).await;
        let (m_cost, m_body) = cost(&app, &owner, q, json!({"id": missing})).await;
        assert_eq!(f_cost, m_cost, "node({foreign}) vs node({missing})");
        assert_eq!(f_body, m_body);
        assert!(f_cost >= 1, "the lookup reaches the database");
    }
    let q = "query($id: ID!) { organization(id: $id) { id name } }";
    let (f_cost, f_body) = cost(&app, &owner, q, json!({"id": foreign_org})).await;
    let (m_cost, m_body) = cost(&app, &owner, q, json!({"id": cases[0].1})).await;
    assert_eq!((f_cost, f_body), (m_cost, m_body));
}

#[tokio::test]
async fn audit_events_refetch_by_id_for_owners_and_admins_only() {
    let app = TestApp::spawn().await;
    let owner = app.user("aud-owner@example.com");
    let ws = app.create_workspace(&owner, "Audited").await;
    let viewer = app.user("aud-viewer@example.com");
    app.add_member(&owner, &ws, "aud-viewer@example.com", "VIEWER")
        .await;
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { auditLog(first: 1) { edges { node { id action } } } } }",
            json!({"w": ws}),
        )
        .await;
    let event = &r["data"]["workspace"]["auditLog"]["edges"][0]["node"];
    let id = event["id"].as_str().expect("audit id");
    let q = "query($id: ID!) { node(id: $id) { __typename id ... on AuditEvent { action } } }";
    let r = app.gql(&owner, q, json!({"id": id})).await;
    assert_ok(&r);
    assert_eq!(r["data"]["node"]["__typename"], "AuditEvent");
    assert_eq!(r["data"]["node"]["id"], json!(id));
    assert_eq!(r["data"]["node"]["action"], event["action"]);
    // A viewer may not read the log: the event is as absent as a missing one.
    let r = app.gql(&viewer, q, json!({"id": id})).await;
    assert_ok(&r);
    assert!(r["data"]["node"].is_null(), "{r}");
}

#[tokio::test]
async fn control_characters_in_any_string_input_are_bad_input_naming_the_field() {
    let app = TestApp::spawn().await;
    let owner = app.user("nul@example.com");
    let ws = app.create_workspace(&owner, "Clean").await;
    let org = app.create_org(&owner, &ws, None, "Root").await;
    let update = "mutation($w: ID!, $d: String, $k: String) { updateWorkspace(input: {workspaceId: $w, description: $d, idempotencyKey: $k}) { workspace { description } } }";
    for (vars, field) in [
        (json!({"w": ws, "d": "a\u{0}b"}), "description"),
        (json!({"w": ws, "d": "bell\u{7}"}), "description"),
        (
            json!({"w": ws, "d": "ok", "k": "key\u{0}"}),
            "idempotencyKey",
        ),
        (json!({"w": ws, "d": "c1\u{85}"}), "description"),
    ] {
        let r = app.gql(&owner, update, vars.clone()).await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(
            r["errors"][0]["extensions"]["field"], field,
            "{vars} -> {r}"
        );
    }
    // Written in the document instead of a variable: the same.
    let r = app
        .gql(
            &owner,
            "query($o: ID!) { organization(id: $o) { usageHistory(resource: \"us\\u0000ers\") { direct } } }",
            json!({"o": org}),
        )
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    assert_eq!(r["errors"][0]["extensions"]["field"], "resource");
    // Tabs and line breaks are text; nothing was changed by the refused requests.
    let r = app
        .gql(&owner, update, json!({"w": ws, "d": "two\nlines\tok"}))
        .await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["updateWorkspace"]["workspace"]["description"],
        "two\nlines\tok"
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events WHERE action = 'workspace.update'")
            .await,
        1
    );
}

#[tokio::test]
async fn numbers_are_32_bit_ints_and_counters_never_pass_the_largest() {
    let app = TestApp::spawn().await;
    let owner = app.user("int@example.com");
    let ws = app.create_workspace(&owner, "Counted").await;
    let root = app.create_org(&owner, &ws, None, "Root").await;
    let leaf = app.create_org(&owner, &ws, Some(&root), "Leaf").await;
    for delta in [
        json!(9_223_372_036_854_775_807i64),
        json!(-9_223_372_036_854_775_807i64 - 1),
        json!(2_147_483_648i64),
        json!(1.5),
    ] {
        let r = app
            .gql(
                &owner,
                "mutation($o: ID!, $d: Int!) { recordUsage(input: {organizationId: $o, resource: \"users\", delta: $d}) { organization { id } } }",
                json!({"o": leaf, "d": delta}),
            )
            .await;
        assert_code(&r, "BAD_USER_INPUT");
    }
    let r = app
        .set_limit(&owner, &root, "users", Some(2_147_483_648))
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    // The largest Int fits once; one more would pass what any counter can show.
    assert_ok(&app.record(&owner, &leaf, "users", 2_147_483_647).await);
    let r = app.record(&owner, &root, "users", 1).await;
    assert_code(&r, "LIMIT_EXCEEDED");
    assert_eq!(
        r["errors"][0]["extensions"]["limit"], 2_147_483_647i64,
        "{r}"
    );
    assert_eq!(
        app.numbers(&owner, &root, "users").await,
        (0, 2_147_483_647)
    );
    // Releases still work, and the numbers stay exact.
    assert_ok(&app.record(&owner, &leaf, "users", -2_147_483_647).await);
    assert_eq!(app.numbers(&owner, &root, "users").await, (0, 0));
    app.assert_usage_invariant().await;
}

#[tokio::test]
async fn aliases_cannot_multiply_statements() {
    let app = TestApp::spawn().await;
    let owner = app.user("alias@example.com");
    let ws = app.create_workspace(&owner, "Aliased").await;
    let org = app.create_org(&owner, &ws, None, "Root").await;
    assert_ok(&app.record(&owner, &org, "users", 4).await);
    let history = |n: usize| {
        let fields: String = (0..n)
            .map(|i| {
                format!(
                    " h{i}: usageHistory(resource: \"users\", last: {}) {{ subtree }}",
                    1 + i % 3
                )
            })
            .collect();
        format!("query($o: ID!) {{ organization(id: $o) {{{fields} }} }}")
    };
    assert_ok(&app.gql(&owner, "{ viewer { id } }", json!({})).await);
    // One alias and thirty (the cap) cost the same statements: the histories are batched.
    let (one, body) = cost(&app, &owner, &history(1), json!({"o": org})).await;
    assert_ok(&serde_json::from_str(&body).expect("json"));
    let (thirty, body) = cost(&app, &owner, &history(30), json!({"o": org})).await;
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_ok(&body);
    assert_eq!(one, thirty, "statements for 1 vs 30 aliases");
    assert_eq!(body["data"]["organization"]["h29"][0]["subtree"], 4);
    // A batch multiplies by its length at most (each operation batches its own).
    let before = app.statements().await;
    let batch: Vec<Value> = (0..10)
        .map(|_| json!({"query": history(30), "variables": {"o": org}}))
        .collect();
    let (status, _) = app.gql_raw(Some(&owner), Value::Array(batch)).await;
    assert_eq!(status, 200);
    assert!(app.statements().await - before <= 10 * thirty);
    // The 31st alias is refused before anything runs.
    let r = app.gql(&owner, &history(31), json!({"o": org})).await;
    assert_code(&r, "BAD_USER_INPUT");
    assert!(message(&r).contains("aliases"), "{r}");
}

#[tokio::test]
async fn large_documents_run_beside_the_runtime_and_answer_correctly() {
    let app = TestApp::spawn().await;
    let (owner, child, _, ws) = two_tenants(&app).await;
    // 800 KB of comments around a real query: parsed, checked and run on
    // the blocking pool, a few at a time, while /healthz keeps answering.
    let padding = format!("# {}\n", "x".repeat(200)).repeat(2_000);
    let q = format!(
        "{padding}query($o: ID!, $w: ID!) {{ organization(id: $o) {{ name parent {{ name }} }} workspace(id: $w) {{ name }} }}{padding}"
    );
    let sends: Vec<_> = (0..6)
        .map(|_| app.gql(&owner, &q, json!({"o": child, "w": ws})))
        .collect();
    let health = async {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            app.http.get(format!("{}/healthz", app.base)).send(),
        )
        .await;
        r.is_ok_and(|r| r.is_ok_and(|r| r.status() == 200))
    };
    let (results, healthy) = tokio::join!(futures::future::join_all(sends), health);
    assert!(healthy);
    for r in results {
        assert_ok(&r);
        assert_eq!(r["data"]["organization"]["name"], "Child");
        assert_eq!(r["data"]["organization"]["parent"]["name"], "Root");
        assert_eq!(r["data"]["workspace"]["name"], "Ordered");
    }
}

#[tokio::test]
async fn many_unused_fragments_over_a_wide_one_cost_linear_time() {
    // The token, spread and fragment caps would refuse this document first: lifted here
    // to show that the fields of all fragment definitions are capped too.
    let app = TestApp::with(Options {
        env: [
            ("GRAPHQL_MAX_TOKENS", "10000000"),
            ("GRAPHQL_MAX_SPREADS", "100000"),
            ("GRAPHQL_MAX_FRAGMENTS", "100000"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
    })
    .await;
    let t = app.user("wide@example.com");
    // 25,000 fragments that each spread one of 500 fields: the document analysis that
    // looks for keys to merge compared every key with every other (500² per fragment).
    let wide: String = (0..500).map(|i| format!(" a{i}: __typename")).collect();
    let mut q = format!("{{ viewer {{ id }} }} fragment G on Query {{{wide} }}");
    for i in 0..25_000 {
        q.push_str(&format!(" fragment F{i} on Query {{...G}}"));
    }
    let r = tokio::time::timeout(Duration::from_secs(60), app.gql(&t, &q, json!({})))
        .await
        .expect("answered in linear time");
    // Validation would walk each definition with its spreads expanded: 12.5 million fields.
    assert_code(&r, "BAD_USER_INPUT");
    assert!(message(&r).contains("fragment definitions select"), "{r}");
}

#[tokio::test]
async fn every_document_limit_passes_at_its_cap_and_refuses_one_past_it_before_execution() {
    let app = TestApp::with(Options {
        env: [
            ("GRAPHQL_MAX_TOKENS", "40"),
            ("GRAPHQL_MAX_DIRECTIVES", "3"),
            ("GRAPHQL_MAX_ROOT_FIELDS", "4"),
            ("GRAPHQL_MAX_FRAGMENTS", "2"),
            ("GRAPHQL_MAX_SPREADS", "3"),
            ("GRAPHQL_MAX_ALIASES", "2"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
    })
    .await;
    let t = app.user("caps@example.com");
    assert_ok(&app.gql(&t, "{ viewer { id } }", json!({})).await);
    let cases = [
        (
            "GRAPHQL_MAX_TOKENS",
            // `{ viewer {` + 35 × `id` + `} }`: 40 tokens (commas and comments are none).
            format!("{{ viewer {{{} }} }} # {}", " id,".repeat(35), "x ".repeat(100)),
            format!("{{ viewer {{{} }} }}", " id".repeat(36)),
        ),
        (
            "GRAPHQL_MAX_DIRECTIVES",
            "{ a: __typename @include(if: true) b: __typename @skip(if: false) viewer @include(if: true) { id } }".to_string(),
            "{ a: __typename @include(if: true) b: __typename @skip(if: false) viewer @include(if: true) { id @skip(if: false) } }".to_string(),
        ),
        (
            "GRAPHQL_MAX_ROOT_FIELDS",
            "{ viewer { id email name } __typename ...F } fragment F on Query { x: __typename y: __typename }".to_string(),
            "{ viewer { id } __typename ...F workspaces { edges { cursor } } } fragment F on Query { x: __typename y: __typename }".to_string(),
        ),
        (
            "GRAPHQL_MAX_FRAGMENTS",
            "{ ...F ...G } fragment F on Query { viewer { id } } fragment G on Query { __typename }".to_string(),
            "{ ...F ...G ...H } fragment F on Query { viewer { id } } fragment G on Query { __typename } fragment H on Query { __typename }".to_string(),
        ),
        (
            "GRAPHQL_MAX_SPREADS",
            "{ ...F ...F ... on Query { ...F } } fragment F on Query { __typename }".to_string(),
            "{ ...F ...F ...F ... on Query { ...F } } fragment F on Query { __typename }".to_string(),
        ),
        (
            "GRAPHQL_MAX_ALIASES",
            "{ a: __typename b: __typename }".to_string(),
            "{ a: __typename b: __typename c: __typename }".to_string(),
        ),
    ];
    for (limit, at, over) in cases {
        let r = app.gql(&t, &at, json!({})).await;
        assert_ok(&r);
        // Refused before execution: not a statement is sent.
        let (statements, text) = cost(&app, &t, &over, json!({})).await;
        let r: Value = serde_json::from_str(&text).expect("json");
        assert_code(&r, "BAD_USER_INPUT");
        assert!(message(&r).contains(limit), "{limit}: {r}");
        assert!(r["data"].is_null(), "{r}");
        assert_eq!(statements, 0, "{limit}");
    }
}

/// Stripe webhooks: ambiguous signature headers, oversized bodies and floods of signatures.
#[tokio::test]
async fn stripe_webhook_deliveries_are_refused_before_any_work() {
    let app = webhooks::app().await;
    let t = webhooks::now();
    // Two signature headers: ambiguous, refused.
    let body = webhooks::event("evt_two", "customer.created");
    let good = format!("t={t},v1={}", webhooks::sign(webhooks::SECRET, t, &body));
    let r = app
        .http
        .post(format!("{}/webhooks/stripe", app.base))
        .header("stripe-signature", &good)
        .header("stripe-signature", &good)
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
    // A body over 1 MiB is refused unread past the limit (413), signed or not.
    let big = format!(
        r#"{{"id":"evt_big","type":"x","created":{t},"pad":"{}"}}"#,
        "a".repeat(1 << 20)
    );
    let header = format!("t={t},v1={}", webhooks::sign(webhooks::SECRET, t, &big));
    let (status, r) = webhooks::deliver(&app, Some(&header), &big).await;
    assert_eq!(
        (status, tests::error_code(&r)),
        (413, Some("PAYLOAD_TOO_LARGE"))
    );
    // Thousands of signatures in one header cost no more than a few (at most 16 are read).
    let many = std::iter::repeat_n(format!("v1={}", "0".repeat(64)), 400)
        .collect::<Vec<_>>()
        .join(",");
    let (status, r) = webhooks::deliver(&app, Some(&format!("t={t},{many}")), &body).await;
    assert_eq!(
        (status, tests::error_code(&r)),
        (400, Some("WEBHOOK_SIGNATURE_INVALID"))
    );
    assert_eq!(webhooks::stored(&app).await, 0);
}
