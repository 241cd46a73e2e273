//! Caps, validation and query limits.

use serde_json::json;
use tests::{TestApp, assert_code, assert_ok, error_code};

#[tokio::test]
async fn the_101st_member_is_refused() {
    let app = TestApp::spawn().await;
    let owner = app.user("cap-owner@example.com");
    let ws = app.create_workspace(&owner, "Cap").await;
    for i in 1..100 {
        app.add_member(&owner, &ws, &format!("m{i}@example.com"), "VIEWER")
            .await;
    }
    let r = app
        .try_add_member(&owner, &ws, "m100@example.com", "VIEWER")
        .await;
    assert_code(&r, "LIMIT_EXCEEDED");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("100"),
        "{r}"
    );
    assert_eq!(
        app.sql_count(
            "SELECT (SELECT count(*) FROM members) + (SELECT count(*) FROM invitations) AS n"
        )
        .await,
        100
    );
}

#[tokio::test]
async fn concurrent_additions_never_pass_the_member_cap() {
    let app = TestApp::spawn().await;
    let owner = app.user("race-owner@example.com");
    let ws = app.create_workspace(&owner, "Race").await;
    for i in 1..95 {
        app.add_member(&owner, &ws, &format!("r{i}@example.com"), "VIEWER")
            .await;
    }
    let futures = (0..20).map(|i| {
        let (app, owner, ws) = (&app, &owner, &ws);
        async move {
            app.try_add_member(owner, ws, &format!("late{i}@example.com"), "VIEWER")
                .await
        }
    });
    let results = futures::future::join_all(futures).await;
    let ok = results.iter().filter(|r| r.get("errors").is_none()).count();
    let refused = results
        .iter()
        .filter(|r| error_code(r) == Some("LIMIT_EXCEEDED"))
        .count();
    assert_eq!((ok, refused), (5, 15), "{results:?}");
    assert_eq!(
        app.sql_count(
            "SELECT (SELECT count(*) FROM members) + (SELECT count(*) FROM invitations) AS n"
        )
        .await,
        100
    );
}

#[tokio::test]
async fn invalid_input_is_refused_with_bad_user_input() {
    let app = TestApp::spawn().await;
    let t = app.user("v@example.com");
    let create = "mutation($n: String!, $d: String, $k: String) { createWorkspace(input: {name: $n, description: $d, billingMode: ASSIGNED, idempotencyKey: $k}) { workspace { id } } }";
    for (vars, field) in [
        (json!({"n": ""}), "name"),
        (json!({"n": "   "}), "name"),
        (json!({"n": "x".repeat(51)}), "name"),
        (json!({"n": "ok", "d": "d".repeat(201)}), "description"),
        (json!({"n": "ok", "k": ""}), "idempotencyKey"),
        (json!({"n": "ok", "k": "k".repeat(256)}), "idempotencyKey"),
    ] {
        let r = app.gql(&t, create, vars.clone()).await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], field, "{vars}: {r}");
    }
    // 50 characters (multi-byte ones count as one) and 200 are fine.
    let r = app
        .gql(
            &t,
            create,
            json!({"n": "é".repeat(50), "d": "d".repeat(200), "k": "k".repeat(255)}),
        )
        .await;
    assert_ok(&r);
    let ws = r["data"]["createWorkspace"]["workspace"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    for email in [
        "",
        "no-at-sign",
        "a@b",
        "two@@example.com",
        "sp ace@example.com",
    ] {
        let r = app.try_add_member(&t, &ws, email, "VIEWER").await;
        assert_code(&r, "BAD_USER_INPUT");
    }
    // An unknown enum value is refused by the engine, also as BAD_USER_INPUT.
    let r = app.gql(&t, "mutation { createWorkspace(input: {name: \"x\", billingMode: FREE}) { workspace { id } } }", json!({})).await;
    assert_code(&r, "BAD_USER_INPUT");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM workspaces").await,
        1
    );
}

#[tokio::test]
async fn page_size_depth_complexity_and_batch_limits() {
    let app = TestApp::spawn().await;
    let t = app.user("q@example.com");
    let r = app
        .gql(
            &t,
            "{ workspaces(first: 101) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    let r = app
        .gql(
            &t,
            "{ workspaces(first: -1) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    let r = app
        .gql(
            &t,
            "{ workspaces(first: 100) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_ok(&r);

    // Too deep: member → workspace → members → … nests past the depth limit.
    let deep = "{ workspaces(first: 1) { edges { node { members(first: 1) { edges { node { workspace { members(first: 1) { edges { node { workspace { members(first: 1) { edges { node { id } } } } } } } } } } } } } } }";
    let r = app.gql(&t, deep, json!({})).await;
    assert_code(&r, "BAD_USER_INPUT");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nested too deep"),
        "{r}"
    );

    // Too complex: many aliases of a large page each count.
    let aliases: String = (0..30).map(|i| format!("a{i}: workspaces(first: 100) {{ edges {{ node {{ id name members(first: 100) {{ edges {{ node {{ id }} }} }} }} }} }} ")).collect();
    let r = app.gql(&t, &format!("{{ {aliases} }}"), json!({})).await;
    assert_code(&r, "BAD_USER_INPUT");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("complex"),
        "{r}"
    );

    // Batches: up to 10 operations.
    let one = json!({"query": "{ viewer { email } }"});
    let (s, body) = app.gql_raw(Some(&t), json!([one, one])).await;
    assert_eq!(s, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
    let (s, body) = app
        .gql_raw(Some(&t), serde_json::Value::Array(vec![one.clone(); 11]))
        .await;
    assert_eq!(s, 400);
    assert_code(&body, "BAD_USER_INPUT");
}

#[tokio::test]
async fn mutations_over_get_are_refused() {
    let app = TestApp::spawn().await;
    let t = app.user("get@example.com");
    let url = format!("{}/graphql", app.base);
    let q = "mutation { createWorkspace(input: {name: \"x\", billingMode: SINGLE}) { workspace { id } } }";
    let r: serde_json::Value = app
        .http
        .get(&url)
        .query(&[("query", q)])
        .bearer_auth(&t)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_code(&r, "BAD_USER_INPUT");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM workspaces").await,
        0
    );
    let r: serde_json::Value = app
        .http
        .get(&url)
        .query(&[("query", "{ viewer { email } }")])
        .bearer_auth(&t)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(r["data"]["viewer"]["email"], "get@example.com");
}

#[tokio::test]
async fn pagination_walks_every_workspace_once() {
    let app = TestApp::spawn().await;
    let t = app.user("pages@example.com");
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(app.create_workspace(&t, &format!("W{i}")).await);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let r = app
            .gql(&t, "query($a: String) { workspaces(first: 3, after: $a) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }", json!({"a": after}))
            .await;
        assert_ok(&r);
        let c = &r["data"]["workspaces"];
        for e in c["edges"].as_array().expect("edges") {
            seen.push(e["node"]["id"].as_str().expect("id").to_string());
        }
        if c["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = c["pageInfo"]["endCursor"].as_str().map(String::from);
    }
    assert_eq!(seen, created);
    let r = app
        .gql(
            &t,
            "{ workspaces(after: \"!!\") { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert_code(&r, "BAD_USER_INPUT");
}
