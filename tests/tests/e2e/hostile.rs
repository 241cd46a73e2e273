//! The API as a hostile client uses it. Every finding of a review (or of our own) becomes a
//! test here: it failed on the code before the fix and must keep passing.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tests::fake_stripe::FakeStripe;
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
    // Afterwards someone joins and the workspace is renamed.
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
    // Once M is removed, the replay reads like a missing key: what a fresh request of
    // theirs gets, nothing of the workspace.
    remove(&app, &owner, &m_id).await;
    let gone = app.gql(&m, RENAME_SEEING_MEMBERS, vars.clone()).await;
    assert_code(&gone, "NOT_FOUND");
    assert!(
        gone["data"].is_null() || gone["data"]["renameWorkspace"].is_null(),
        "{gone}"
    );
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

// ---------------------------------------------------------------------------------------
// Billing mutations with huge, malformed and reserved inputs: each is refused with a clear
// code before anything happens (no Stripe request, no stored change, no internal detail).

/// What a refusal's message must never hold: SQL, the database's or the driver's words.
const INTERNAL_WORDS: [&str; 10] = [
    "sql",
    "diesel",
    "postgres",
    "constraint",
    "violates",
    "relation ",
    "syntax error at",
    "panicked",
    "deserializ",
    "serde",
];

/// A billing tenant whose sane requests would succeed: a POOLED workspace, an account with
/// a default payment method, a live subscription with `users` and `locations` add-ons, and
/// a root organization.
struct Tenant {
    owner: String,
    ws: String,
    account: String,
    customer: String,
    subscription: String,
    stripe_subscription: String,
    method: String,
    stripe_method: String,
    org: String,
}

async fn billing_tenant(app: &TestApp, fake: &FakeStripe) -> Tenant {
    let owner = app.user("hostile-billing@example.com");
    let ws = super::billing::workspace(app, &owner, "POOLED").await;
    let r = super::billing::try_account(app, &owner, &ws, "Main", None).await;
    let account = r["data"]["createBillingAccount"]["billingAccount"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("createBillingAccount: {r}"))
        .to_string();
    let customer = r["data"]["createBillingAccount"]["billingAccount"]["stripeCustomerId"]
        .as_str()
        .expect("customer")
        .to_string();
    let sub = super::billing::subscribe(
        app,
        &owner,
        &account,
        "STARTER",
        json!([{"resource": "users", "quantity": 2}, {"resource": "locations", "quantity": 2}]),
    )
    .await;
    let stripe_method = fake.create_card("visa", "4242", 12, 2030);
    let r = super::billing::attach(app, &owner, &account, &stripe_method).await;
    assert_ok(&r);
    let method = r["data"]["attachPaymentMethod"]["billingAccount"]["paymentMethods"][0]["id"]
        .as_str()
        .expect("payment method")
        .to_string();
    let org = app.create_org(&owner, &ws, None, "Root").await;
    Tenant {
        owner,
        ws,
        account,
        customer,
        subscription: sub["id"].as_str().expect("id").to_string(),
        stripe_subscription: sub["stripeSubscriptionId"]
            .as_str()
            .expect("stripe id")
            .to_string(),
        method,
        stripe_method,
        org,
    }
}

/// `base` with the keys of `patch` replaced.
fn with(base: &Value, patch: Value) -> Value {
    let mut v = base.clone();
    if let (Some(o), Some(p)) = (v.as_object_mut(), patch.as_object()) {
        for (k, x) in p {
            o.insert(k.clone(), x.clone());
        }
    }
    v
}

/// The start of a body, for assertion messages about bodies that may be huge.
fn head(v: &Value) -> String {
    v.to_string().chars().take(600).collect()
}

/// Sends `query` with `vars` as `token`: it must be refused with `code` (and name `field`,
/// when given) before anything happens: no Stripe request, no stored change, no internal
/// error or detail. Returns the HTTP status and the body.
#[allow(clippy::too_many_arguments)]
async fn refused(
    app: &TestApp,
    fake: &FakeStripe,
    what: &str,
    token: &str,
    query: &str,
    vars: Value,
    code: &str,
    field: Option<&str>,
) -> (u16, Value) {
    let requests = fake.requests().len();
    let state = super::isolation::db_state(app).await;
    let (status, r) = app
        .gql_raw(Some(token), json!({"query": query, "variables": vars}))
        .await;
    assert_eq!(tests::error_code(&r), Some(code), "{what}: {}", head(&r));
    if let Some(f) = field {
        assert_eq!(
            r["errors"][0]["extensions"]["field"],
            f,
            "{what}: {}",
            head(&r)
        );
    }
    assert!(r["data"].is_null(), "{what}: {}", head(&r));
    assert!(status < 500, "{what}: HTTP {status}");
    for e in r["errors"].as_array().into_iter().flatten() {
        assert_ne!(
            e["extensions"]["code"],
            "INTERNAL_SERVER_ERROR",
            "{what}: {}",
            head(&r)
        );
        let m = e["message"].as_str().unwrap_or_default().to_lowercase();
        for word in INTERNAL_WORDS {
            assert!(!m.contains(word), "{what}: {word:?} in {}", head(&r));
        }
    }
    let after = fake.requests();
    assert_eq!(
        after.len(),
        requests,
        "{what}: reached Stripe: {:?}",
        after[requests.min(after.len())..]
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        super::isolation::db_state(app).await,
        state,
        "{what}: stored data changed"
    );
    (status, r)
}

const CREATE_ACCOUNT: &str = "mutation($w: ID!, $n: String!, $e: String!, $c: String, $ph: String, $d: String, $addr: BillingAddressInput, $k: String) {
  createBillingAccount(input: {workspaceId: $w, name: $n, email: $e, currency: $c, phone: $ph, description: $d, address: $addr, idempotencyKey: $k}) {
    billingAccount { id name email currency phone description address { line1 line2 city state postalCode country } stripeCustomerId } } }";
const UPDATE_ACCOUNT: &str = "mutation($a: ID!, $n: String, $e: String, $ph: String, $d: String, $addr: BillingAddressInput, $k: String) {
  updateBillingAccount(input: {billingAccountId: $a, name: $n, email: $e, phone: $ph, description: $d, address: $addr, idempotencyKey: $k}) {
    billingAccount { id name email phone description address { line1 city postalCode country } } } }";
const CREATE_SUB: &str = "mutation($a: ID!, $p: Plan!, $q: [ResourceQuantityInput!]!, $m: [MetadataEntryInput!]!, $k: String) {
  createSubscription(input: {billingAccountId: $a, plan: $p, quantities: $q, metadata: $m, idempotencyKey: $k}) {
    subscription { id stripeSubscriptionId status quantities { resource quantity } metadata { key value } } } }";
const UPDATE_SUB: &str = "mutation($s: ID!, $q: [ResourceQuantityInput!]!, $k: String) {
  updateSubscription(input: {subscriptionId: $s, quantities: $q, idempotencyKey: $k}) { subscription { id quantities { resource quantity } } } }";
const ATTACH_PM: &str = "mutation($a: ID!, $p: String!, $k: String) {
  attachPaymentMethod(input: {billingAccountId: $a, paymentMethodId: $p, idempotencyKey: $k}) { billingAccount { id paymentMethods { id } } } }";

#[tokio::test]
async fn billing_account_fields_past_their_caps_are_refused_before_stripe() {
    let fake = FakeStripe::start().await;
    let app = super::billing::app_with(&fake).await;
    let t = billing_tenant(&app, &fake).await;
    let base = json!({"w": t.ws, "n": "Second payer", "e": "payer@example.com", "c": "usd"});
    let long_email = format!("{}@example.com", "a".repeat(139));
    assert_eq!(long_email.chars().count(), 151);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("empty name", json!({"n": ""}), "name"),
        ("blank name", json!({"n": "   \t "}), "name"),
        ("name of 101", json!({"n": "x".repeat(101)}), "name"),
        (
            "name of 101 two-byte characters",
            json!({"n": "é".repeat(101)}),
            "name",
        ),
        ("name of 900 kB", json!({"n": "x".repeat(900_000)}), "name"),
        ("NUL in name", json!({"n": "a\u{0}b"}), "name"),
        (
            "escape sequence in name",
            json!({"n": "\u{1b}[2Jcleared"}),
            "name",
        ),
        ("line feed in name", json!({"n": "two\nlines"}), "name"),
        ("C1 control in name", json!({"n": "next\u{85}line"}), "name"),
        ("empty e-mail", json!({"e": ""}), "email"),
        ("not an e-mail", json!({"e": "not-an-email"}), "email"),
        ("e-mail of 151", json!({"e": long_email}), "email"),
        (
            "e-mail of 312",
            json!({"e": format!("{}@example.com", "a".repeat(300))}),
            "email",
        ),
        (
            "bell in e-mail",
            json!({"e": "payer@example.com\u{7}"}),
            "email",
        ),
        ("phone of 51", json!({"ph": "1".repeat(51)}), "phone"),
        ("NUL in phone", json!({"ph": "555\u{0}"}), "phone"),
        (
            "description of 201",
            json!({"d": "d".repeat(201)}),
            "description",
        ),
        (
            "backspace in description",
            json!({"d": "bell\u{8}"}),
            "description",
        ),
        ("unknown currency", json!({"c": "JPY"}), "currency"),
        ("empty currency", json!({"c": ""}), "currency"),
        ("two-letter currency", json!({"c": "us"}), "currency"),
        ("four-letter currency", json!({"c": "usdd"}), "currency"),
        ("emoji currency", json!({"c": "💵"}), "currency"),
        (
            "SQL in currency",
            json!({"c": "usd'; DROP TABLE billing_accounts; --"}),
            "currency",
        ),
        (
            "currency of 10 kB",
            json!({"c": "u".repeat(10_000)}),
            "currency",
        ),
        ("NUL in currency", json!({"c": "us\u{0}d"}), "currency"),
        (
            "three-letter country",
            json!({"addr": {"country": "USA"}}),
            "address.country",
        ),
        (
            "one-letter country",
            json!({"addr": {"country": "U"}}),
            "address.country",
        ),
        (
            "digit in country",
            json!({"addr": {"country": "1A"}}),
            "address.country",
        ),
        (
            "non-ASCII country",
            json!({"addr": {"country": "ÜS"}}),
            "address.country",
        ),
        (
            "spaced country",
            json!({"addr": {"country": "u s"}}),
            "address.country",
        ),
        (
            "country of 10 kB",
            json!({"addr": {"country": "D".repeat(10_000)}}),
            "address.country",
        ),
        (
            "NUL in country",
            json!({"addr": {"country": "U\u{0}"}}),
            "country",
        ),
        (
            "address line of 201",
            json!({"addr": {"line1": "l".repeat(201)}}),
            "address.line1",
        ),
        (
            "city of 201",
            json!({"addr": {"city": "c".repeat(201)}}),
            "address.city",
        ),
        (
            "postal code of 21",
            json!({"addr": {"postalCode": "9".repeat(21)}}),
            "address.postalCode",
        ),
        ("empty idempotency key", json!({"k": ""}), "idempotencyKey"),
        (
            "idempotency key of 256",
            json!({"k": "k".repeat(256)}),
            "idempotencyKey",
        ),
    ];
    for (what, patch, field) in cases {
        let vars = with(&base, patch);
        refused(
            &app,
            &fake,
            &format!("createBillingAccount: {what}"),
            &t.owner,
            CREATE_ACCOUNT,
            vars,
            "BAD_USER_INPUT",
            Some(field),
        )
        .await;
    }
    // The same fields on updates, and nothing of the account changed.
    let base = json!({"a": t.account});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("empty name", json!({"n": ""}), "name"),
        ("name of 101", json!({"n": "x".repeat(101)}), "name"),
        ("name of 900 kB", json!({"n": "x".repeat(900_000)}), "name"),
        (
            "escape sequence in name",
            json!({"n": "\u{1b}]0;title\u{7}"}),
            "name",
        ),
        ("not an e-mail", json!({"e": "payer at example"}), "email"),
        ("e-mail of 151", json!({"e": long_email}), "email"),
        ("phone of 51", json!({"ph": "+".repeat(51)}), "phone"),
        (
            "description of 201",
            json!({"d": "é".repeat(201)}),
            "description",
        ),
        (
            "three-letter country",
            json!({"addr": {"country": "DEU"}}),
            "address.country",
        ),
        (
            "postal code of 21",
            json!({"addr": {"postalCode": "9".repeat(21)}}),
            "address.postalCode",
        ),
        (
            "idempotency key of 256",
            json!({"k": "k".repeat(256)}),
            "idempotencyKey",
        ),
    ];
    for (what, patch, field) in cases {
        refused(
            &app,
            &fake,
            &format!("updateBillingAccount: {what}"),
            &t.owner,
            UPDATE_ACCOUNT,
            with(&base, patch),
            "BAD_USER_INPUT",
            Some(field),
        )
        .await;
    }
    assert_eq!(
        fake.customer(&t.customer).expect("customer")["name"],
        "Main"
    );
    // Sane input passes: the refusals were about the input.
    let r = app.gql(&t.owner, CREATE_ACCOUNT, base_ok(&t)).await;
    assert_ok(&r);
}

fn base_ok(t: &Tenant) -> Value {
    json!({"w": t.ws, "n": "Second payer", "e": "payer@example.com", "c": "usd"})
}

#[tokio::test]
async fn subscription_metadata_past_its_caps_is_refused_before_stripe() {
    let fake = FakeStripe::start().await;
    let app = super::billing::app_with(&fake).await;
    let t = billing_tenant(&app, &fake).await;
    let base = json!({"a": t.account, "p": "STARTER", "q": [], "m": []});
    let pairs = |n: usize| -> Value {
        (0..n)
            .map(|i| json!({"key": format!("k{i}"), "value": "v"}))
            .collect()
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("11 pairs", pairs(11), "metadata"),
        ("10,000 pairs", pairs(10_000), "metadata"),
        (
            "key of 41",
            json!([{"key": "k".repeat(41), "value": "v"}]),
            "metadata",
        ),
        (
            "key of 41 two-byte characters",
            json!([{"key": "ü".repeat(41), "value": "v"}]),
            "metadata",
        ),
        (
            "key of 100 kB",
            json!([{"key": "k".repeat(100_000), "value": "v"}]),
            "metadata",
        ),
        ("empty key", json!([{"key": "", "value": "v"}]), "metadata"),
        (
            "value of 501",
            json!([{"key": "team", "value": "v".repeat(501)}]),
            "metadata",
        ),
        (
            "value of 500 kB",
            json!([{"key": "team", "value": "v".repeat(500_000)}]),
            "metadata",
        ),
        (
            "reserved workspace_id",
            json!([{"key": "workspace_id", "value": "ws_x"}]),
            "metadata",
        ),
        (
            "reserved subscription_id",
            json!([{"key": "subscription_id", "value": "subs_x"}]),
            "metadata",
        ),
        (
            "reserved billing_account_id",
            json!([{"key": "billing_account_id", "value": "ba_x"}]),
            "metadata",
        ),
        (
            "reserved key after sane ones",
            json!([{"key": "team", "value": "ops"}, {"key": "workspace_id", "value": "ws_x"}]),
            "metadata",
        ),
        (
            "duplicate keys",
            json!([{"key": "team", "value": "ops"}, {"key": "team", "value": "sales"}]),
            "metadata",
        ),
        (
            "brackets in key",
            json!([{"key": "a[b]", "value": "v"}]),
            "metadata",
        ),
        (
            "NUL in value",
            json!([{"key": "team", "value": "o\u{0}ps"}]),
            "value",
        ),
        (
            "escape in key",
            json!([{"key": "t\u{1b}eam", "value": "ops"}]),
            "key",
        ),
    ];
    for (what, m, field) in cases {
        refused(
            &app,
            &fake,
            &format!("createSubscription metadata: {what}"),
            &t.owner,
            CREATE_SUB,
            with(&base, json!({"m": m})),
            "BAD_USER_INPUT",
            Some(field),
        )
        .await;
    }
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM subscriptions")
            .await,
        1
    );
    // Sane metadata passes.
    let r = app
        .gql(
            &t.owner,
            CREATE_SUB,
            with(&base, json!({"m": [{"key": "team", "value": "ops"}]})),
        )
        .await;
    assert_ok(&r);
}

#[tokio::test]
async fn subscription_quantities_out_of_bounds_are_refused_before_stripe() {
    let fake = FakeStripe::start().await;
    let app = super::billing::app_with(&fake).await;
    let t = billing_tenant(&app, &fake).await;
    let base = json!({"a": t.account, "p": "STARTER", "q": [], "m": []});
    let users = |n: i64| json!([{"resource": "users", "quantity": n}]);
    let many_users: Value = (0..10_000)
        .map(|_| json!({"resource": "users", "quantity": 1}))
        .collect();
    let many_unknown: Value = (0..10_000)
        .map(|i| json!({"resource": format!("r{i}"), "quantity": 1}))
        .collect();
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        (
            "unknown resource",
            json!([{"resource": "widgets", "quantity": 1}]),
            Some("quantities"),
        ),
        (
            "empty resource",
            json!([{"resource": "", "quantity": 1}]),
            Some("quantities"),
        ),
        (
            "upper-case resource",
            json!([{"resource": "USERS", "quantity": 1}]),
            Some("quantities"),
        ),
        (
            "a metered or custom resource",
            json!([{"resource": "executions", "quantity": 1}]),
            Some("quantities"),
        ),
        ("negative", users(-1), Some("quantities")),
        ("zero on creation", users(0), Some("quantities")),
        ("over 100,000", users(100_001), Some("quantities")),
        ("largest Int", users(2_147_483_647), Some("quantities")),
        ("smallest Int", users(-2_147_483_648), Some("quantities")),
        ("past Int", users(2_147_483_648), None),
        (
            "a fraction",
            json!([{"resource": "users", "quantity": 1.5}]),
            None,
        ),
        (
            "a string",
            json!([{"resource": "users", "quantity": "3"}]),
            None,
        ),
        (
            "repeated resource",
            json!([{"resource": "users", "quantity": 1}, {"resource": "users", "quantity": 2}]),
            Some("quantities"),
        ),
        (
            "10,000 times the same resource",
            many_users.clone(),
            Some("quantities"),
        ),
        (
            "10,000 unknown resources",
            many_unknown.clone(),
            Some("quantities"),
        ),
    ];
    for (what, q, field) in cases {
        refused(
            &app,
            &fake,
            &format!("createSubscription quantities: {what}"),
            &t.owner,
            CREATE_SUB,
            with(&base, json!({"q": q})),
            "BAD_USER_INPUT",
            field,
        )
        .await;
    }
    for (what, patch, field) in [
        ("an unknown plan", json!({"p": "FREE"}), None),
        (
            "a CUSTOM plan without a price or add-ons",
            json!({"p": "CUSTOM"}),
            Some("quantities"),
        ),
    ] {
        refused(
            &app,
            &fake,
            &format!("createSubscription: {what}"),
            &t.owner,
            CREATE_SUB,
            with(&base, patch),
            "BAD_USER_INPUT",
            field,
        )
        .await;
    }
    // Updates: the subscription has 2 users and 2 locations as add-ons.
    let base = json!({"s": t.subscription});
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("no quantities", json!([]), Some("quantities")),
        (
            "unknown resource",
            json!([{"resource": "gadgets", "quantity": 1}]),
            Some("quantities"),
        ),
        ("negative", users(-1), Some("quantities")),
        ("over 100,000", users(100_001), Some("quantities")),
        ("smallest Int", users(-2_147_483_648), Some("quantities")),
        ("past Int", users(-2_147_483_649), None),
        (
            "repeated resource",
            json!([{"resource": "users", "quantity": 3}, {"resource": "users", "quantity": 4}]),
            Some("quantities"),
        ),
        (
            "10,000 times the same resource",
            many_users,
            Some("quantities"),
        ),
        ("10,000 unknown resources", many_unknown, Some("quantities")),
        (
            "raise and lower at once",
            json!([{"resource": "users", "quantity": 5}, {"resource": "locations", "quantity": 1}]),
            Some("quantities"),
        ),
        ("unchanged", users(2), Some("quantities")),
    ];
    for (what, q, field) in cases {
        refused(
            &app,
            &fake,
            &format!("updateSubscription: {what}"),
            &t.owner,
            UPDATE_SUB,
            with(&base, json!({"q": q})),
            "BAD_USER_INPUT",
            field,
        )
        .await;
    }
    let sub = fake
        .subscription(&t.stripe_subscription)
        .expect("subscription");
    let quantities: Vec<i64> = sub["items"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["quantity"].as_i64())
        .collect();
    assert!(quantities.iter().all(|q| *q <= 2), "{quantities:?}");
    // A sane raise passes.
    assert_ok(
        &app.gql(&t.owner, UPDATE_SUB, with(&base, json!({"q": users(3)})))
            .await,
    );
}

#[tokio::test]
async fn payment_method_ids_that_are_not_stripe_s_are_refused_before_stripe() {
    let fake = FakeStripe::start().await;
    let app = super::billing::app_with(&fake).await;
    let t = billing_tenant(&app, &fake).await;
    let longest = format!("pm_{}", "a".repeat(253));
    assert_eq!(longest.len(), 256);
    for pm in [
        "card_1234".to_string(),
        "seti_1234".to_string(),
        "PM_1234".to_string(),
        "pm_".to_string(),
        String::new(),
        " pm_1234".to_string(),
        "pm_1234 ".to_string(),
        "pm_12 34".to_string(),
        "pm_abc/../../v1/customers".to_string(),
        "pm_abc%2F..%2F..%2Fv1%2Fcustomers".to_string(),
        "pm_abc?expand[]=customer".to_string(),
        "pm_abc#frag".to_string(),
        "pm_abc&customer=cus_other".to_string(),
        "pm_ünïcödé".to_string(),
        "pm_١٢٣".to_string(),
        longest,
        format!("pm_{}", "a".repeat(10_000)),
    ] {
        refused(
            &app,
            &fake,
            &format!(
                "attachPaymentMethod {:?}",
                pm.chars().take(40).collect::<String>()
            ),
            &t.owner,
            ATTACH_PM,
            json!({"a": t.account, "p": pm}),
            "BAD_USER_INPUT",
            Some("paymentMethodId"),
        )
        .await;
    }
    refused(
        &app,
        &fake,
        "attachPaymentMethod with a NUL",
        &t.owner,
        ATTACH_PM,
        json!({"a": t.account, "p": "pm_abc\u{0}"}),
        "BAD_USER_INPUT",
        Some("paymentMethodId"),
    )
    .await;
    // setDefault and detach take our `pmt_…` ids: Stripe's, and anything else, are ids
    // that do not exist.
    for q in [
        "mutation($p: ID!) { setDefaultPaymentMethod(input: {paymentMethodId: $p}) { billingAccount { id } } }",
        "mutation($p: ID!) { detachPaymentMethod(input: {paymentMethodId: $p}) { billingAccount { id } } }",
    ] {
        for p in [
            t.stripe_method.clone(),
            format!("pmt_{}", "0".repeat(10_000)),
            t.account.clone(),
            t.method.to_uppercase(),
            String::new(),
        ] {
            refused(
                &app,
                &fake,
                &format!("{q} with {:?}", p.chars().take(40).collect::<String>()),
                &t.owner,
                q,
                json!({"p": p}),
                "NOT_FOUND",
                None,
            )
            .await;
        }
    }
    // A real card passes.
    let pm = fake.create_card("visa", "1881", 1, 2031);
    assert_ok(
        &app.gql(&t.owner, ATTACH_PM, json!({"a": t.account, "p": pm}))
            .await,
    );
}

#[tokio::test]
async fn billing_ids_with_wrong_prefixes_read_as_missing_and_reach_nothing() {
    let fake = FakeStripe::start().await;
    let app = super::billing::app_with(&fake).await;
    let t = billing_tenant(&app, &fake).await;
    let huge = |prefix: &str| format!("{prefix}_{}", "0".repeat(10_000));
    let non_hex = |prefix: &str| format!("{prefix}_{}", "g".repeat(32));
    let upper = |id: &str| id.to_uppercase();
    let cases: Vec<(&str, Value)> = vec![
        // createBillingAccount: workspaceId.
        (CREATE_ACCOUNT, with(&base_ok(&t), json!({"w": t.org}))),
        (CREATE_ACCOUNT, with(&base_ok(&t), json!({"w": t.account}))),
        (CREATE_ACCOUNT, with(&base_ok(&t), json!({"w": huge("ws")}))),
        (
            CREATE_ACCOUNT,
            with(&base_ok(&t), json!({"w": upper(&t.ws)})),
        ),
        (CREATE_ACCOUNT, with(&base_ok(&t), json!({"w": ""}))),
        // updateBillingAccount: billingAccountId.
        (UPDATE_ACCOUNT, json!({"a": t.ws, "n": "X"})),
        (UPDATE_ACCOUNT, json!({"a": t.subscription, "n": "X"})),
        (UPDATE_ACCOUNT, json!({"a": t.customer, "n": "X"})),
        (UPDATE_ACCOUNT, json!({"a": non_hex("ba"), "n": "X"})),
        (UPDATE_ACCOUNT, json!({"a": huge("ba"), "n": "X"})),
        (
            "mutation($a: ID!) { deleteBillingAccount(input: {billingAccountId: $a}) { deletedBillingAccountId } }",
            json!({"a": t.customer}),
        ),
        (
            "mutation($a: ID!) { deleteBillingAccount(input: {billingAccountId: $a}) { deletedBillingAccountId } }",
            json!({"a": t.method}),
        ),
        (
            "mutation($a: ID!) { createSetupIntent(input: {billingAccountId: $a}) { clientSecret } }",
            json!({"a": t.customer}),
        ),
        (
            "mutation($a: ID!) { createSetupIntent(input: {billingAccountId: $a}) { clientSecret } }",
            json!({"a": huge("ba")}),
        ),
        (ATTACH_PM, json!({"a": t.ws, "p": "pm_1234"})),
        (
            CREATE_SUB,
            json!({"a": t.stripe_subscription, "p": "STARTER", "q": [], "m": []}),
        ),
        (
            CREATE_SUB,
            json!({"a": t.ws, "p": "STARTER", "q": [], "m": []}),
        ),
        (
            UPDATE_SUB,
            json!({"s": t.stripe_subscription, "q": [{"resource": "users", "quantity": 3}]}),
        ),
        (
            UPDATE_SUB,
            json!({"s": t.account, "q": [{"resource": "users", "quantity": 3}]}),
        ),
        (
            "mutation($s: ID!) { cancelSubscription(input: {subscriptionId: $s}) { subscription { id } } }",
            json!({"s": t.stripe_subscription}),
        ),
        (
            "mutation($s: ID!) { cancelSubscription(input: {subscriptionId: $s}) { subscription { id } } }",
            json!({"s": non_hex("subs")}),
        ),
        (
            "mutation($o: ID!, $a: ID!) { assignBillingAccount(input: {organizationId: $o, billingAccountId: $a}) { billingAccountId } }",
            json!({"o": t.ws, "a": t.account}),
        ),
        (
            "mutation($o: ID!, $a: ID!) { assignBillingAccount(input: {organizationId: $o, billingAccountId: $a}) { billingAccountId } }",
            json!({"o": t.org, "a": t.customer}),
        ),
        (
            "mutation($w: ID!, $a: ID) { createOrganization(input: {workspaceId: $w, name: \"X\", billingAccountId: $a}) { organization { id } } }",
            json!({"w": t.ws, "a": t.subscription}),
        ),
    ];
    for (q, vars) in cases {
        let what = format!(
            "{} with {}",
            q.chars().take(60).collect::<String>(),
            head(&vars)
        );
        refused(&app, &fake, &what, &t.owner, q, vars, "NOT_FOUND", None).await;
    }
    // Keys are checked before anything is looked up.
    for (q, vars) in [
        (
            "mutation($a: ID!, $k: String) { createSetupIntent(input: {billingAccountId: $a, idempotencyKey: $k}) { clientSecret } }",
            json!({"a": t.account, "k": "k".repeat(256)}),
        ),
        (
            "mutation($a: ID!, $k: String) { createSetupIntent(input: {billingAccountId: $a, idempotencyKey: $k}) { clientSecret } }",
            json!({"a": t.account, "k": ""}),
        ),
        (
            CREATE_SUB,
            json!({"a": t.account, "p": "STARTER", "q": [], "m": [], "k": "k".repeat(256)}),
        ),
    ] {
        refused(
            &app,
            &fake,
            &format!("{} with a bad key", q.chars().take(60).collect::<String>()),
            &t.owner,
            q,
            vars,
            "BAD_USER_INPUT",
            Some("idempotencyKey"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_megabyte_billing_input_is_refused_by_the_body_cap() {
    let fake = FakeStripe::start().await;
    let app = super::billing::app_with(&fake).await;
    let t = billing_tenant(&app, &fake).await;
    let megabyte = "x".repeat(1 << 20);
    for (what, q, vars) in [
        (
            "createBillingAccount name",
            CREATE_ACCOUNT,
            with(&base_ok(&t), json!({"n": megabyte})),
        ),
        (
            "updateBillingAccount description",
            UPDATE_ACCOUNT,
            json!({"a": t.account, "d": megabyte}),
        ),
        (
            "createSubscription metadata value",
            CREATE_SUB,
            json!({"a": t.account, "p": "STARTER", "q": [], "m": [{"key": "team", "value": megabyte}]}),
        ),
    ] {
        let requests = fake.requests().len();
        let state = super::isolation::db_state(&app).await;
        let body = json!({"query": q, "variables": vars}).to_string();
        let head_ = post_head(&format!(
            "Authorization: Bearer {}\r\nContent-Length: {}\r\n",
            t.owner,
            body.len()
        ));
        let raw = raw_exchange(&app, &head_, body.as_bytes(), Duration::from_secs(10)).await;
        assert!(
            raw.starts_with("HTTP/1.1 413"),
            "{what}: {:?}",
            raw.chars().take(300).collect::<String>()
        );
        let r = json_body_of(&raw);
        assert_code(&r, "BAD_USER_INPUT");
        assert!(
            message(&r).contains("GRAPHQL_MAX_BODY_BYTES"),
            "{what}: {r}"
        );
        assert_eq!(fake.requests().len(), requests, "{what}: reached Stripe");
        assert_eq!(
            super::isolation::db_state(&app).await,
            state,
            "{what}: stored data changed"
        );
    }
}

#[tokio::test]
async fn billing_inputs_at_their_caps_and_with_form_metacharacters_are_accepted_as_written() {
    let fake = FakeStripe::start().await;
    let app = super::billing::app_with(&fake).await;
    let t = billing_tenant(&app, &fake).await;
    // An account with every field at its cap, in characters (not bytes).
    let email = format!("{}@example.com", "a".repeat(138));
    let vars = json!({
        "w": t.ws, "n": "é".repeat(100), "e": email, "c": " EUR ", "ph": format!("+{}", "1".repeat(49)),
        "d": "ü".repeat(200),
        "addr": {"line1": "l".repeat(200), "line2": "m".repeat(200), "city": "c".repeat(200), "state": "s".repeat(200), "postalCode": "9".repeat(20), "country": "de"},
    });
    let r = app.gql(&t.owner, CREATE_ACCOUNT, vars).await;
    assert_ok(&r);
    let a = &r["data"]["createBillingAccount"]["billingAccount"];
    assert_eq!(a["name"], "é".repeat(100));
    assert_eq!(a["email"], email);
    assert_eq!(a["currency"], "eur");
    assert_eq!(a["address"]["country"], "DE");
    let customer = fake
        .customer(a["stripeCustomerId"].as_str().expect("customer"))
        .expect("in Stripe");
    assert_eq!(customer["name"], "é".repeat(100));
    // A refused subscription leaves its key free for the corrected request.
    let bad = json!({"a": t.account, "p": "STARTER", "q": [], "m": [{"key": "workspace_id", "value": "mine"}], "k": "corrected-1"});
    refused(
        &app,
        &fake,
        "reserved metadata key under a key",
        &t.owner,
        CREATE_SUB,
        bad,
        "BAD_USER_INPUT",
        Some("metadata"),
    )
    .await;
    // Ten pairs at the caps, two of them full of form-encoding metacharacters: they reach
    // Stripe as written, never as extra parameters.
    let mut metadata: Vec<(String, String)> = (0..8)
        .map(|i| (format!("{i}{}", "k".repeat(39)), "v".repeat(500)))
        .collect();
    metadata.push((
        "a&b=c".to_string(),
        "x&trial_period_days=365&items[0][price]=price_free&metadata[workspace_id]=ws_evil"
            .to_string(),
    ));
    metadata.push(("100% sure?".to_string(), "a=b&c=d%26e+f".to_string()));
    let m: Value = metadata
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    let good = json!({"a": t.account, "p": "STARTER", "q": [{"resource": "users", "quantity": 100_000}], "m": m, "k": "corrected-1"});
    let r = app.gql(&t.owner, CREATE_SUB, good).await;
    assert_ok(&r);
    let sub = &r["data"]["createSubscription"]["subscription"];
    let mut got: Vec<(String, String)> = sub["metadata"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["key"].as_str().unwrap_or_default().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut sent = metadata.clone();
    sent.sort();
    assert_eq!(got, sent);
    let create = fake
        .requests()
        .into_iter()
        .rfind(|r| r.method == "POST" && r.path == "/v1/subscriptions")
        .expect("POST /v1/subscriptions");
    for (k, v) in &metadata {
        assert_eq!(
            create.field(&format!("metadata[{k}]")),
            Some(v.as_str()),
            "{k}"
        );
    }
    assert_eq!(create.field("trial_period_days"), None, "{:?}", create.form);
    assert!(
        create
            .form
            .iter()
            .all(|(_, v)| v != "price_free" && v != "ws_evil" || v.contains('&')),
        "{:?}",
        create.form
    );
    assert_eq!(
        create.field("metadata[workspace_id]"),
        Some(t.ws.as_str()),
        "{:?}",
        create.form
    );
    let in_stripe = fake
        .subscription(sub["stripeSubscriptionId"].as_str().expect("id"))
        .expect("in Stripe");
    assert_eq!(in_stripe["metadata"]["a&b=c"], metadata[8].1.as_str());
    let users = sub["quantities"]
        .as_array()
        .and_then(|q| q.iter().find(|e| e["resource"] == "users"))
        .and_then(|e| e["quantity"].as_i64());
    assert_eq!(users, Some(100_005), "{sub}");
}

#[tokio::test]
async fn billing_refusals_answer_in_bounded_messages_whatever_the_input_size() {
    let fake = FakeStripe::start().await;
    let app = super::billing::app_with(&fake).await;
    let t = billing_tenant(&app, &fake).await;
    let big = "z".repeat(500_000);
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "an invalid e-mail of 500 kB",
            CREATE_ACCOUNT,
            with(&base_ok(&t), json!({"e": big})),
            "email",
        ),
        (
            "an invalid e-mail of 500 kB on update",
            UPDATE_ACCOUNT,
            json!({"a": t.account, "e": big}),
            "email",
        ),
        (
            "an unknown resource of 500 kB",
            CREATE_SUB,
            json!({"a": t.account, "p": "STARTER", "q": [{"resource": big, "quantity": 1}], "m": []}),
            "quantities",
        ),
        (
            "an unknown resource of 500 kB on update",
            UPDATE_SUB,
            json!({"s": t.subscription, "q": [{"resource": big, "quantity": 1}]}),
            "quantities",
        ),
        (
            "a currency of 500 kB",
            CREATE_ACCOUNT,
            with(&base_ok(&t), json!({"c": big})),
            "currency",
        ),
        (
            "a metadata key of 500 kB",
            CREATE_SUB,
            json!({"a": t.account, "p": "STARTER", "q": [], "m": [{"key": big, "value": "v"}]}),
            "metadata",
        ),
        (
            "a payment method of 500 kB",
            ATTACH_PM,
            json!({"a": t.account, "p": format!("pm_{big}")}),
            "paymentMethodId",
        ),
    ];
    let mut echoed = Vec::new();
    for (what, q, vars, field) in cases {
        let (_, r) = refused(
            &app,
            &fake,
            what,
            &t.owner,
            q,
            vars,
            "BAD_USER_INPUT",
            Some(field),
        )
        .await;
        let len = message(&r).len();
        if len > 1_000 {
            echoed.push(format!(
                "{what}: a message of {len} bytes ({:?}…)",
                message(&r).chars().take(60).collect::<String>()
            ));
        }
    }
    assert!(
        echoed.is_empty(),
        "refusals that echo the input: {echoed:#?}"
    );
}

/// `GET` of a raw request target on a new connection; the status and the body.
async fn raw_get(app: &TestApp, target: &str) -> (u16, String) {
    let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let raw = raw_exchange(app, &head, b"", Duration::from_secs(10)).await;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn download_tokens_that_are_huge_malformed_or_traversals_are_refused_alike() {
    let app = TestApp::spawn().await;
    let (status, refusal) = raw_get(&app, "/downloads/nothing").await;
    assert_eq!(status, 404);
    // 100 KB: refused by the HTTP layer before routing (URI too long).
    let (status, _) = raw_get(&app, &format!("/downloads/{}", "A".repeat(100 * 1024))).await;
    assert_eq!(status, 414);
    let targets = [
        // 20 KB reaches the handler, which looks at no more than 256 characters.
        format!("/downloads/{}", "A".repeat(20 * 1024)),
        "/downloads/..%2F..%2F..%2Fetc%2Fpasswd".to_string(),
        "/downloads/%2e%2e".to_string(),
        "/downloads/..".to_string(),
        "/downloads/%ff%fe%00".to_string(),
        "/downloads/%00".to_string(),
        // A well-formed token of the right length signed with nothing.
        format!("/downloads/{}", URL_SAFE_NO_PAD.encode([0u8; 83])),
        format!("/downloads/{}", URL_SAFE_NO_PAD.encode([0xffu8; 200])),
    ];
    for target in &targets {
        let (status, body) = raw_get(&app, target).await;
        assert_eq!(
            (status, &body),
            (404, &refusal),
            "{}",
            &target[..target.len().min(80)]
        );
    }
    // Paths past the token are not downloads.
    let (status, _) = raw_get(&app, "/downloads/a/../../graphql").await;
    assert_ne!(status, 200);
    let health = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn thousands_of_operation_names_fold_into_other_and_strangers_count_for_nothing() {
    let app = TestApp::with(Options {
        env: [
            ("API_USAGE_FLUSH_SECS".to_string(), "3600".to_string()),
            ("GRAPHQL_MAX_BATCH".to_string(), "100".to_string()),
            ("GRAPHQL_LOADER_DELAY_MS".to_string(), "0".to_string()),
        ]
        .into(),
    })
    .await;
    let owner = app.user("ops-owner@example.com");
    let stranger = app.user("ops-stranger@example.com");
    let ws = app.create_workspace(&owner, "Many operations").await;
    let quiet = app.create_workspace(&owner, "Quiet").await;
    let batch = |from: usize, n: usize, w: &str| {
        let ops: Vec<Value> = (from..from + n)
            .map(|i| {
                json!({"query": format!("query Op{i}($w: ID!) {{ workspace(id: $w) {{ id }} }}"),
                       "variables": {"w": w}})
            })
            .collect();
        Value::Array(ops)
    };
    let send = |token: String, body: Value| {
        let app = &app;
        async move {
            let (status, r) = app.gql_raw(Some(&token), body).await;
            assert_eq!(status, 200, "{r}");
        }
    };
    // 1,200 distinct names: 200 kept, the rest `(other)`.
    futures::future::join_all((0..12).map(|b| send(owner.clone(), batch(b * 100, 100, &ws)))).await;
    // A stranger floods the other workspace with names of their own, and names thousands of
    // workspaces that do not exist (only the first few of a request are looked at).
    futures::future::join_all((0..3).map(|b| send(stranger.clone(), batch(b * 100, 100, &quiet))))
        .await;
    let invented: Vec<String> = (0..10_000)
        .map(|i| format!("ws_{}", uuid::Uuid::from_u128(i).simple()))
        .collect();
    let r = app
        .gql(
            &stranger,
            "query Invented($w: ID!) { workspace(id: $w) { id } }",
            json!({"w": invented}),
        )
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    app.flush_api_usage().await;
    let of = |name: &str, what: &str| {
        format!(
            "SELECT {what} AS n FROM api_request_counters c JOIN workspaces w ON w.id = c.workspace_id
              WHERE w.name = '{name}'"
        )
    };
    let rows = of("Many operations", "count(*)");
    let total = of("Many operations", "COALESCE(sum(requests), 0)::bigint");
    let other = format!(
        "{} AND operation = '(other)'",
        of("Many operations", "sum(requests)::bigint")
    );
    assert_eq!(app.sql_count(&rows).await, 201);
    assert_eq!(app.sql_count(&total).await, 1_200);
    assert_eq!(app.sql_count(&other).await, 1_000);
    assert_eq!(app.sql_count(&of("Quiet", "count(*)")).await, 0);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM api_request_counters")
            .await,
        201
    );
    // More new names the same day: the workspace holds its 200 already, so all `(other)`.
    futures::future::join_all(
        (0..3).map(|b| send(owner.clone(), batch(5_000 + b * 100, 100, &ws))),
    )
    .await;
    app.flush_api_usage().await;
    assert_eq!(app.sql_count(&rows).await, 201);
    assert_eq!(app.sql_count(&total).await, 1_500);
    assert_eq!(app.sql_count(&other).await, 1_300);
}

#[tokio::test]
async fn notification_destinations_refuse_hostile_input_without_echoing_it() {
    use super::notifications::{CREATE, UPDATE};
    // The development flag on: loopback is allowed, nothing else over http or private.
    let app = TestApp::with(Options {
        env: [(
            "INTEGRATIONS_ALLOW_HTTP_LOOPBACK".to_string(),
            "true".to_string(),
        )]
        .into(),
    })
    .await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Targets").await;
    let huge = format!("https://hooks.example.com/{}", "a".repeat(500_000));
    let many: Vec<String> = (0..5_000).map(|i| format!("p{i}@example.com")).collect();
    let long_address = format!("{}@example.com", "a".repeat(10_000));
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "a URL of 500 kB",
            CREATE,
            json!({"w": ws, "u": huge}),
            "url",
        ),
        (
            "a NUL in a URL",
            CREATE,
            json!({"w": ws, "u": "https://hooks.example.com/\u{0}x"}),
            "url",
        ),
        (
            "a header injected into a URL",
            CREATE,
            json!({"w": ws, "u": "https://hooks.example.com/\r\nX-Injected: 1"}),
            "url",
        ),
        (
            "http to a public address",
            CREATE,
            json!({"w": ws, "u": "http://203.0.113.7/hook"}),
            "url",
        ),
        (
            "http to a name that starts like localhost",
            CREATE,
            json!({"w": ws, "u": "http://localhost.attacker.example/hook"}),
            "url",
        ),
        (
            "https to a private address",
            CREATE,
            json!({"w": ws, "u": "https://192.168.1.1/hook"}),
            "url",
        ),
        (
            "https to the metadata service",
            CREATE,
            json!({"w": ws, "u": "http://169.254.169.254/latest/meta-data/"}),
            "url",
        ),
        (
            "a private address written as hex",
            CREATE,
            json!({"w": ws, "u": "https://0xa.0.0.1/hook"}),
            "url",
        ),
        (
            "a private address mapped into IPv6",
            CREATE,
            json!({"w": ws, "u": "https://[::ffff:a00:1]/hook"}),
            "url",
        ),
        (
            "five thousand event types",
            CREATE,
            json!({"w": ws, "u": "https://hooks.example.com/", "t": vec!["QUOTA_WARNING"; 5_000]}),
            "eventTypes",
        ),
        (
            "a Slack URL of 500 kB",
            UPDATE,
            json!({"w": ws, "s": format!("https://hooks.slack.com/{}", "a".repeat(500_000))}),
            "slackWebhookUrl",
        ),
        (
            "five thousand recipients",
            UPDATE,
            json!({"w": ws, "r": [{"category": "SECURITY_ALERTS", "addresses": many}]}),
            "emailRecipients",
        ),
        (
            "a recipient of 10 kB",
            UPDATE,
            json!({"w": ws, "r": [{"category": "SECURITY_ALERTS", "addresses": [long_address]}]}),
            "emailRecipients",
        ),
        (
            "a control character in a recipient",
            UPDATE,
            json!({"w": ws, "r": [{"category": "SECURITY_ALERTS", "addresses": ["a\u{7}@example.com"]}]}),
            "addresses",
        ),
    ];
    let mut echoed = Vec::new();
    for (what, q, vars, field) in cases {
        let r = app.gql(&owner, q, vars).await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], field, "{what}: {r}");
        if message(&r).len() > 300 {
            echoed.push(format!("{what}: a message of {} bytes", message(&r).len()));
        }
    }
    assert!(
        echoed.is_empty(),
        "refusals that echo the input: {echoed:#?}"
    );
    assert_eq!(
        app.sql_count(
            "SELECT (SELECT count(*) FROM webhook_endpoints) + (SELECT count(*) FROM notification_recipients)
                  + (SELECT count(*) FROM integration_settings) AS n"
        )
        .await,
        0
    );
}

// ---------------------------------------------------------------------------------------
// Privacy (GDPR): consents with hostile purposes and versions, and exports and erasures of
// people the caller has no say over. Each is refused with a clear code, in time linear in
// the input, with a bounded message, and changes nothing.

#[tokio::test]
async fn hostile_consents_are_refused_before_anything_is_stored() {
    const RECORD: &str = "mutation($p: String!, $v: String!) {
        recordConsent(input: {purpose: $p, version: $v, granted: true}) { consent { purpose } } }";
    let app = TestApp::spawn().await;
    let mallory = app.user("gdpr-hostile-consent@example.com");
    // A 1 MB purpose (and version).
    let huge = "a".repeat(1_000_000);
    for (p, v) in [(huge.as_str(), "1"), ("marketing", huge.as_str())] {
        let started = std::time::Instant::now();
        let (status, r) = app
            .gql_raw(
                Some(&mallory),
                json!({"query": RECORD, "variables": {"p": p, "v": v}}),
            )
            .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(status, 200, "{r}");
        assert_code(&r, "BAD_USER_INPUT");
        assert!(
            r.to_string().len() < 1_000,
            "the refusal grows with its input"
        );
    }
    // Control characters, bidi overrides, case, spaces, markup, SQL.
    for (p, v) in [
        ("mark\u{0}eting", "1"),
        ("marketing", "v\n1"),
        ("marketing\u{202e}", "1"),
        ("MARKETING", "1"),
        (" marketing", "1"),
        ("<script>", "1"),
        ("marketing'; DROP TABLE consents; --", "1"),
        ("marketing", ""),
        ("", "1"),
    ] {
        let r = app.gql(&mallory, RECORD, json!({"p": p, "v": v})).await;
        assert_code(&r, "BAD_USER_INPUT");
    }
    assert_eq!(app.sql_count("SELECT count(*) AS n FROM consents").await, 0);
}

#[tokio::test]
async fn exporting_or_erasing_another_workspaces_member_tells_nothing_and_does_nothing() {
    const EXPORT: &str = "mutation($u: ID!, $w: ID) {
        requestDataExport(input: {userId: $u, workspaceId: $w}) { job { id } } }";
    const ERASE: &str = "mutation($u: ID!) { eraseUser(input: {userId: $u}) { job { id } } }";
    let app = TestApp::spawn().await;
    let mallory = app.user("gdpr-hostile-mallory@example.com");
    let owner = app.user("gdpr-hostile-owner@example.com");
    let victim = app.user("gdpr-hostile-victim@example.com");
    let mine = app.create_workspace(&mallory, "Mallory's").await;
    let theirs = app.create_workspace(&owner, "Theirs").await;
    app.add_member(&owner, &theirs, "gdpr-hostile-victim@example.com", "VIEWER")
        .await;
    let r = app.gql(&victim, "{ viewer { id } }", json!({})).await;
    let victim_id = r["data"]["viewer"]["id"].as_str().expect("id").to_string();
    let missing = format!("usr_{}", "0".repeat(32));
    for query in [EXPORT, ERASE] {
        // Another workspace's member, named outright or through Mallory's own workspace,
        // answers exactly like an id that does not exist.
        let of_theirs = app
            .gql(&mallory, query, json!({"u": victim_id, "w": null}))
            .await;
        let of_nobody = app
            .gql(&mallory, query, json!({"u": missing, "w": null}))
            .await;
        assert_code(&of_theirs, "NOT_FOUND");
        assert_eq!(of_theirs, of_nobody);
        if query == EXPORT {
            for w in [&mine, &theirs] {
                let r = app
                    .gql(&mallory, query, json!({"u": victim_id, "w": w}))
                    .await;
                assert_code(&r, "NOT_FOUND");
            }
        }
        // Malformed ids: another kind's, not hex, huge.
        for bad in [
            theirs.clone(),
            "usr_nothex".to_string(),
            format!("usr_{}", "a".repeat(100_000)),
            "usr_00000000-0000-0000-0000-000000000000".to_string(),
        ] {
            let r = app.gql(&mallory, query, json!({"u": bad, "w": null})).await;
            assert_code(&r, "NOT_FOUND");
        }
    }
    for table in ["user_erasures", "data_exports", "workspace_jobs"] {
        assert_eq!(
            app.sql_count(&format!("SELECT count(*) AS n FROM {table}"))
                .await,
            0,
            "{table}"
        );
    }
    // The victim is untouched.
    assert_ok(&app.gql(&victim, "{ viewer { id email } }", json!({})).await);
}

#[tokio::test]
async fn archive_ids_and_restores_of_every_shape_read_as_missing_and_enqueue_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Mine").await;
    let restore = "mutation($a: ID!) { restoreArchive(input: {archiveId: $a}) { job { id } } }";
    let read = "query($a: ID!) { archive(id: $a) { id } }";
    let missing = app
        .gql(
            &owner,
            restore,
            json!({"a": "arc_0193a0a0a0a0a0a0a0a0a0a0a0a0a0a0"}),
        )
        .await;
    assert_code(&missing, "NOT_FOUND");
    for bad in [
        format!("arc_{}", "a".repeat(100_000)),
        "arc_' OR 1=1 --".to_string(),
        ws.clone(),
        "job_01KB2ZJ0R5V8Y3T6W9X2M4N7PQ".to_string(),
        String::new(),
    ] {
        let r = app.gql(&owner, restore, json!({"a": bad})).await;
        assert_code(&r, "NOT_FOUND");
        assert_eq!(r["errors"][0]["message"], missing["errors"][0]["message"]);
        let r = app.gql(&owner, read, json!({"a": bad})).await;
        assert_ok(&r);
        assert_eq!(r["data"]["archive"], Value::Null);
    }
    // Control characters are refused before anything runs, like in every text input.
    let r = app
        .gql(&owner, restore, json!({"a": "arc_\u{0}\u{1}"}))
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    // A page size out of bounds and a forged cursor are refused with the field named.
    for (first, after, field) in [
        (json!(101), Value::Null, "first"),
        (json!(-1), Value::Null, "first"),
        (json!(10), json!("not-a-cursor!"), "after"),
    ] {
        let r = app
            .gql(
                &owner,
                "query($w: ID!, $f: Int, $a: String) { workspace(id: $w) { archives(first: $f, after: $a) { edges { node { id } } } } }",
                json!({"w": ws, "f": first, "a": after}),
            )
            .await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], field, "{r}");
    }
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM workspace_jobs")
            .await,
        0
    );
}

#[tokio::test]
async fn forwarded_chains_and_claims_of_any_shape_cannot_break_the_gate() {
    let app = TestApp::with(Options {
        env: [
            ("GOVERNANCE_CACHE_MS".to_string(), "0".to_string()),
            ("TRUSTED_PROXIES".to_string(), "127.0.0.1".to_string()),
        ]
        .into(),
    })
    .await;
    let email = "gate-hostile@example.com";
    let owner = app.user(email);
    let ws = app.create_workspace(&owner, "Hostile").await;
    app.set_workspace_settings(
        &ws,
        "ip_allow_list, mfa_required, session_timeout_minutes",
        "ARRAY['10.0.0.0/8'], true, 30",
    )
    .await;
    let q = "query($w: ID!) { workspace(id: $w) { name } }";
    let claims = |extra: Value| app.user_with_claims(email, extra);
    let send = |token: String, xff: String| {
        let app = &app;
        let ws = ws.clone();
        async move {
            let r = app
                .http
                .post(format!("{}/graphql", app.base))
                .bearer_auth(token)
                .header("x-forwarded-for", xff)
                .json(&json!({"query": q, "variables": {"w": ws}}))
                .send()
                .await
                .expect("request");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    let good = claims(json!({"amr": ["mfa"], "auth_time": tests::tokens::now()}));
    // A chain of 2,000 hops (about 24 KB) is read in one bounded pass; the right-most one is
    // the client.
    let long = format!("{}10.9.9.9", "192.0.2.1, ".repeat(2_000));
    let (status, b) = send(good.clone(), long).await;
    assert_eq!(status, 200, "{b}");
    assert_ok(&b);
    // Garbage at the right end: the proxy itself is the client, and it is not allowed.
    let (_, b) = send(good.clone(), "10.9.9.9, nonsense".into()).await;
    assert_code(&b, "FORBIDDEN");
    assert_eq!(b["errors"][0]["extensions"]["reason"], "IP_NOT_ALLOWED");
    // Claims of the wrong type prove nothing, and break nothing.
    for (extra, reason) in [
        (
            json!({"amr": "mfa ", "auth_time": tests::tokens::now()}),
            "MFA_REQUIRED",
        ),
        (json!({"amr": {"mfa": true}}), "MFA_REQUIRED"),
        (json!({"amr": [1, null, ["mfa"]]}), "MFA_REQUIRED"),
        (json!({"amr": ["mfa"], "auth_time": "now"}), "OK"),
        (
            json!({"amr": ["mfa"], "auth_time": 1e300, "iat": tests::tokens::now() - 3600}),
            "SESSION_EXPIRED",
        ),
        // A sign-in in the future proves nothing either.
        (
            json!({"amr": ["mfa"], "auth_time": tests::tokens::now() + 86_400}),
            "SESSION_EXPIRED",
        ),
        // Out of range: ignored like an unreadable one, so `iat` (now) decides.
        (json!({"amr": ["mfa"], "auth_time": -5}), "OK"),
    ] {
        let (status, b) = send(claims(extra.clone()), "10.1.1.1".into()).await;
        if reason == "OK" {
            // `auth_time` unreadable: `iat` (now) decides.
            assert_ok(&b);
        } else {
            assert_eq!(status, 200, "{extra}: {b}");
            assert_eq!(
                b["errors"][0]["extensions"]["reason"], reason,
                "{extra}: {b}"
            );
        }
    }
}

#[tokio::test]
async fn api_key_shaped_tokens_are_refused_without_a_lookup_when_malformed() {
    let app = TestApp::spawn().await;
    let before = app.statements().await;
    for token in [
        "wsk_".to_string(),
        format!("wsk_{}", "a".repeat(5_000)),
        "wsk_0123456789ab_".to_string(),
        "wsk_ZZZZZZZZZZZZ_secret".to_string(),
    ] {
        let (status, b) = app
            .gql_raw(Some(&token), json!({"query": "{ viewer { id } }"}))
            .await;
        assert_eq!(status, 401, "{b}");
        assert_code(&b, "UNAUTHENTICATED");
        assert_eq!(b["errors"][0]["message"], "invalid API key");
    }
    // Bytes that are not visible ASCII do not make a bearer token at all.
    let (status, b) = app
        .gql_raw(
            Some(&format!("wsk_0123456789ab_{}", "é".repeat(10))),
            json!({"query": "{ viewer { id } }"}),
        )
        .await;
    assert_eq!(status, 401, "{b}");
    assert_code(&b, "UNAUTHENTICATED");
    // Malformed keys never reach the database.
    assert_eq!(app.statements().await, before);
    // A well-formed key that does not exist costs one lookup and gets the same answer.
    let (status, b) = app
        .gql_raw(
            Some("wsk_0123456789ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            json!({"query": "{ viewer { id } }"}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(b["errors"][0]["message"], "invalid API key");
}

#[tokio::test]
async fn governance_inputs_are_capped_with_short_errors_and_change_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.user("caps-owner@example.com");
    let ws = app.create_workspace(&owner, "Caps").await;
    let many = |n: usize, f: &dyn Fn(usize) -> String| -> Vec<String> { (0..n).map(f).collect() };
    let huge = "x".repeat(100_000);
    let cases: Vec<(&str, Value)> = vec![
        (
            "mutation($w: ID!, $l: [String!]) { updateSecuritySettings(input: {workspaceId: $w, ipAllowList: $l}) { settings { security { ipAllowList } } } }",
            json!({"w": ws, "l": many(5_000, &|i| format!("10.{}.{}.0/24", i / 256, i % 256))}),
        ),
        (
            "mutation($w: ID!, $l: [String!]) { updateSecuritySettings(input: {workspaceId: $w, ipAllowList: $l}) { settings { security { ipAllowList } } } }",
            json!({"w": ws, "l": [huge]}),
        ),
        (
            "mutation($w: ID!, $l: [String!]) { updateWorkspacePolicy(input: {workspaceId: $w, allowedEmailDomains: $l}) { settings { policy { allowedEmailDomains } } } }",
            json!({"w": ws, "l": many(5_000, &|i| format!("d{i}.example.com"))}),
        ),
        (
            "mutation($w: ID!, $l: [String!]) { updateWorkspacePolicy(input: {workspaceId: $w, blockedUploadTypes: $l}) { settings { policy { blockedUploadTypes } } } }",
            json!({"w": ws, "l": [format!("application/{huge}")]}),
        ),
        (
            "mutation($w: ID!, $q: [QuotaInput!]!) { updateQuotas(input: {workspaceId: $w, quotas: $q}) { quotas { resource } } }",
            json!({"w": ws, "q": (0..5_000).map(|i| json!({"resource": format!("r{i}"), "limit": 1})).collect::<Vec<_>>()}),
        ),
        (
            "mutation($w: ID!, $n: String!) { createApiKey(input: {workspaceId: $w, name: $n, role: VIEWER}) { secret } }",
            json!({"w": ws, "n": huge}),
        ),
        (
            "mutation($w: ID!, $d: String) { saveWorkspaceTemplate(input: {workspaceId: $w, key: \"MINE\", name: \"Mine\", description: $d}) { template { id } } }",
            json!({"w": ws, "d": huge}),
        ),
        (
            "query($w: ID!, $f: String!) { workspace(id: $w) { validateUpload(fileName: $f, mimeType: \"text/plain\") { allowed } } }",
            json!({"w": ws, "f": huge}),
        ),
    ];
    for (q, vars) in cases {
        let b = app.gql(&owner, q, vars).await;
        assert_code(&b, "BAD_USER_INPUT");
        let message = b["errors"][0]["message"].as_str().expect("message");
        assert!(message.len() < 500, "{q}: {message}");
    }
    // Nothing was stored: no settings row, no quota, no key, no template.
    for table in [
        "workspace_settings",
        "workspace_quotas",
        "api_keys",
        "workspace_templates",
    ] {
        assert_eq!(
            app.sql_count(&format!("SELECT count(*) AS n FROM {table}"))
                .await,
            0,
            "{table}"
        );
    }
}

/// The longest run of `c` in `text`.
fn longest_run(text: &str, c: char) -> usize {
    let (mut best, mut run) = (0, 0);
    for x in text.chars() {
        run = if x == c { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

#[tokio::test]
async fn refusals_never_echo_more_than_two_hundred_characters_of_their_input() {
    let app = TestApp::with(Options {
        env: [("GRAPHQL_MAX_BODY_BYTES".to_string(), (4 << 20).to_string())].into(),
    })
    .await;
    let t = app.user("echo@example.com");
    let ws = app.create_workspace(&t, "Echo").await;
    let org = app.create_org(&t, &ws, None, "Root").await;
    let big = "z".repeat(1 << 20);
    let bodies = [
        // A field, an argument, a type and an operation name of a megabyte.
        json!({"query": format!("{{ {big} }}")}),
        json!({"query": format!("{{ viewer {{ id({big}: 1) }} }}")}),
        json!({"query": format!("query($x: {big}) {{ viewer {{ id }} }}")}),
        json!({"query": "{ viewer { id } }", "operationName": big}),
        // Inputs: a resource key, an e-mail, a workspace name, an invitation token.
        json!({"query": "mutation($o: ID!, $r: String!) { recordUsage(input: {organizationId: $o, resource: $r, delta: 1}) { organization { id } } }",
               "variables": {"o": org, "r": big}}),
        json!({"query": "mutation($w: ID!, $e: String!) { addMember(input: {workspaceId: $w, email: $e, role: VIEWER}) { invitation { id } } }",
               "variables": {"w": ws, "e": format!("{big}@example.com")}}),
        json!({"query": "mutation($n: String!) { createWorkspace(input: {name: $n, billingMode: SINGLE}) { workspace { id } } }",
               "variables": {"n": big}}),
        json!({"query": "mutation($t: String!) { acceptInvitation(input: {token: $t}) { member { id } } }",
               "variables": {"t": big}}),
    ];
    for body in bodies {
        let (_, r) = app.gql_raw(Some(&t), body.clone()).await;
        let errors = r["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("refused: {r}"));
        assert!(!errors.is_empty());
        for e in errors {
            let m = e["message"].as_str().unwrap_or_default();
            assert!(
                longest_run(m, 'z') <= 200,
                "echoes its input: {}",
                &m[..m.len().min(300)]
            );
            assert!(m.chars().count() <= 301, "{}", &m[..m.len().min(300)]);
        }
        assert!(
            r.to_string().len() < 4_096,
            "a short answer: {}",
            r.to_string().len()
        );
    }
}

#[tokio::test]
async fn a_request_past_its_statement_ceiling_is_refused_and_the_next_one_is_not() {
    let app = TestApp::with(Options {
        env: [("GRAPHQL_MAX_STATEMENTS".to_string(), "10".to_string())].into(),
    })
    .await;
    let t = app.user("ceiling@example.com");
    let ws = app.create_workspace(&t, "Ceiling").await;
    // Thirty pages that differ (nothing to share): thirty reads, over a ceiling of ten.
    let fields: String = (1..=30)
        .map(|i| format!("k{i}: apiKeys(first: {i}) {{ __typename }} "))
        .collect();
    let q = format!("query($w: ID!) {{ workspace(id: $w) {{ {fields} }} }}");
    let before = app.statements().await;
    let r = app.gql(&t, &q, json!({"w": ws})).await;
    let used = app.statements().await - before;
    let refused = r["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["extensions"]["code"] == "LIMIT_EXCEEDED")
                .count()
        })
        .unwrap_or(0);
    assert!(refused > 0, "{used} statements: {r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("GRAPHQL_MAX_STATEMENTS")),
        "{r}"
    );
    // Connections already handed out finish their statement: at most a pool's worth past.
    assert!(used <= 10 + 8, "the request ran {used} statements");
    // The ceiling is per request.
    assert_ok(
        &app.gql(
            &t,
            "query($w: ID!) { workspace(id: $w) { name } }",
            json!({"w": ws}),
        )
        .await,
    );
}
