//! Operations: schema snapshot, health, readiness, metrics, request ids, configuration.

use serde_json::json;
use tests::{TestApp, assert_code, assert_ok};

#[test]
fn schema_graphql_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema.graphql");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = api::graphql::sdl();
    assert!(
        committed == generated,
        "schema.graphql is stale: run `cargo run -q -p api -- print-schema > schema.graphql` (or `just schema`)"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn().await;
    let get = |p: &str| app.http.get(format!("{}{p}", app.base)).send();
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    assert_eq!(get("/readyz").await.expect("readyz").status(), 200);

    let t = app.user("m@example.com");
    app.gql(&t, "query Probe { viewer { email } }", json!({}))
        .await;
    let text = get("/metrics")
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for needle in [
        "graphql_operations_total{operation=\"Probe\",outcome=\"ok\"} 1",
        "graphql_operation_duration_seconds_bucket{operation=\"Probe\"",
        "http_requests_total{method=\"POST\",route=\"/graphql\",status=\"200\"}",
        "db_pool_connections_max 8",
        "db_pool_connections_in_use",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }

    // The database goes away: readiness fails, liveness does not, and errors do not leak.
    // A caller signed in before (whose identity is cached) and a new one both get 503 with
    // Retry-After and SERVICE_UNAVAILABLE, not 200 with an internal error.
    let known = app.user("known@example.com");
    assert_ok(&app.gql(&known, "{ viewer { email } }", json!({})).await);
    app.db.drop_now().await;
    let r = get("/readyz").await.expect("readyz");
    assert_eq!(r.status(), 503);
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    for token in [app.user("late@example.com"), known] {
        let r = app
            .http
            .post(format!("{}/graphql", app.base))
            .bearer_auth(&token)
            .json(&json!({"query": "{ viewer { email } workspaces { edges { node { id } } } }"}))
            .send()
            .await
            .expect("send");
        let status = r.status();
        let retry = r.headers().get("retry-after").cloned();
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(status, 503, "{body}");
        assert_eq!(retry.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
        assert_code(&body, "SERVICE_UNAVAILABLE");
        let text = body.to_string().to_lowercase();
        for leak in ["sql", "wst_", "postgres", "database", "connection", ".rs"] {
            assert!(!text.contains(leak), "error leaks {leak}: {body}");
        }
    }
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("get");
    assert!(r.headers()["x-request-id"].len() >= 16);
    // Audit events carry the request id of the mutation.
    let t = app.user("rid@example.com");
    let resp = app
        .http
        .post(format!("{}/graphql", app.base))
        .bearer_auth(&t)
        .header("x-request-id", "req-create-1")
        .json(&json!({"query": "mutation { createWorkspace(input: {name: \"R\", billingMode: SINGLE}) { workspace { auditLog { edges { node { requestId action } } } } } }"}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.headers()["x-request-id"], "req-create-1");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(
        body["data"]["createWorkspace"]["workspace"]["auditLog"]["edges"][0]["node"]["requestId"],
        "req-create-1",
        "{body}"
    );
}

#[test]
fn bad_configuration_names_the_variable() {
    let cases = [
        ("BIND_ADDR", "not-an-address"),
        ("DATABASE_URL", "mysql://x"),
        ("LOG_FORMAT", "xml"),
        ("DATABASE_POOL_SIZE", "1"),
        ("JWT_HS256_SECRET", "short"),
        ("GRAPHQL_INTROSPECTION", "maybe"),
        ("ARCHIVE_MASTER_KEY", "too-short"),
        ("ARCHIVE_URL", "not a url"),
    ];
    for (var, value) in cases {
        let err = api::config::Config::from_lookup(|k| (k == var).then(|| value.to_string()))
            .err()
            .unwrap_or_else(|| panic!("{var}={value} accepted"));
        assert_eq!(err.var, var);
        assert!(err.to_string().contains(var));
    }
    let err = api::config::Config::from_lookup(|k| {
        (k == "JWT_JWKS_URL").then(|| "https://x.example/jwks".to_string())
    })
    .expect_err("jwks without issuer accepted");
    assert_eq!(err.var, "JWT_ISSUER");
    // Production refuses the public development master key.
    let err = api::config::Config::from_lookup(|k| (k == "PRODUCTION").then(|| "true".to_string()))
        .expect_err("production without a master key accepted");
    assert_eq!(err.var, "ARCHIVE_MASTER_KEY");
    let ok = api::config::Config::from_lookup(|_| None).expect("defaults");
    assert_eq!(ok.database_url, api::config::DEFAULT_DATABASE_URL);
    assert!(ok.require_token_verification().is_err());
}

#[tokio::test]
async fn introspection_works_for_callers_and_can_be_switched_off() {
    let app = TestApp::spawn().await;
    let t = app.user("i@example.com");
    let r = app
        .gql(&t, "{ __schema { queryType { name } } }", json!({}))
        .await;
    assert_eq!(r["data"]["__schema"]["queryType"]["name"], "Query");
    let (s, _) = app
        .gql_raw(
            None,
            json!({"query": "{ __schema { queryType { name } } }"}),
        )
        .await;
    assert_eq!(s, 401);

    let off = TestApp::with(tests::Options {
        env: [("GRAPHQL_INTROSPECTION".to_string(), "false".to_string())].into(),
    })
    .await;
    let t = off.user("i@example.com");
    let r = off
        .gql(&t, "{ __schema { queryType { name } } }", json!({}))
        .await;
    assert!(
        r["data"]["__schema"].is_null() || r.get("errors").is_some(),
        "{r}"
    );
}

#[tokio::test]
async fn production_mode_gives_no_field_suggestions() {
    let dev = TestApp::spawn().await;
    let r = dev
        .gql(&dev.user("s@example.com"), "{ viewr { email } }", json!({}))
        .await;
    assert!(r.to_string().contains("Did you mean"), "{r}");
    let prod = TestApp::with(tests::Options {
        env: [
            ("PRODUCTION".to_string(), "true".to_string()),
            // Production refuses the public development master key.
            ("ARCHIVE_MASTER_KEY".to_string(), "11".repeat(32)),
        ]
        .into(),
    })
    .await;
    let r = prod
        .gql(
            &prod.user("s@example.com"),
            "{ viewr { email } }",
            json!({}),
        )
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    assert!(!r.to_string().contains("Did you mean"), "{r}");
}
