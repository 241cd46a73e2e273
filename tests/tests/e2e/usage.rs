//! Usage, cascading limits, concurrency and batching.

use serde_json::json;
use tests::{TestApp, assert_code, assert_ok, error_code};

/// A workspace with a root and a child, as its owner.
async fn pair(app: &TestApp) -> (String, String, String, String) {
    let t = app.user("limits@example.com");
    let ws = app.create_workspace(&t, "Limits").await;
    let root = app.create_org(&t, &ws, None, "Root").await;
    let child = app.create_org(&t, &ws, Some(&root), "Child").await;
    (t, ws, root, child)
}

#[tokio::test]
async fn a_tight_ancestor_limit_binds_a_child_with_a_loose_one() {
    let app = TestApp::spawn().await;
    let (t, _ws, root, child) = pair(&app).await;
    // The child's loose cap is set first; the root's tighter one later (caps are not
    // checked downwards).
    assert_ok(&app.set_limit(&t, &child, "users", Some(50)).await);
    assert_ok(&app.set_limit(&t, &root, "users", Some(10)).await);
    let u = app.usage(&t, &child, "users").await;
    assert_eq!(
        (
            u["limit"].as_i64(),
            u["effectiveLimit"].as_i64(),
            u["available"].as_i64()
        ),
        (Some(50), Some(10), Some(10))
    );
    assert_ok(&app.record(&t, &child, "users", 8).await);
    let r = app.record(&t, &child, "users", 3).await;
    assert_code(&r, "LIMIT_EXCEEDED");
    let ext = &r["errors"][0]["extensions"];
    assert_eq!(
        (
            ext["organizationId"].as_str(),
            ext["limit"].as_i64(),
            ext["used"].as_i64(),
            ext["requested"].as_i64()
        ),
        (Some(root.as_str()), Some(10), Some(8), Some(3))
    );
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Root"),
        "{r}"
    );
    // Nothing changed anywhere.
    assert_eq!(app.numbers(&t, &child, "users").await, (8, 8));
    assert_eq!(app.numbers(&t, &root, "users").await, (0, 8));
    assert_ok(&app.record(&t, &child, "users", 2).await);
    assert_eq!(app.usage(&t, &child, "users").await["available"], 0);
    app.assert_usage_invariant().await;
}

#[tokio::test]
async fn a_tight_child_limit_binds_under_a_loose_ancestor() {
    let app = TestApp::spawn().await;
    let (t, ws, root, child) = pair(&app).await;
    let sibling = app.create_org(&t, &ws, Some(&root), "Sibling").await;
    assert_ok(&app.set_limit(&t, &root, "locations", Some(50)).await);
    assert_ok(&app.set_limit(&t, &child, "locations", Some(5)).await);
    assert_ok(&app.record(&t, &child, "locations", 5).await);
    let r = app.record(&t, &child, "locations", 1).await;
    assert_code(&r, "LIMIT_EXCEEDED");
    assert_eq!(
        r["errors"][0]["extensions"]["organizationId"],
        child.as_str()
    );
    // The sibling still draws on the root's 50.
    assert_ok(&app.record(&t, &sibling, "locations", 45).await);
    assert_code(
        &app.record(&t, &sibling, "locations", 1).await,
        "LIMIT_EXCEEDED",
    );
    // Reference: a limit of 50 with 8 used leaves 42 (and 42 at the root's level here).
    let u = app.usage(&t, &root, "locations").await;
    assert_eq!(
        (
            u["subtree"].as_i64(),
            u["effectiveLimit"].as_i64(),
            u["available"].as_i64()
        ),
        (Some(50), Some(50), Some(0))
    );
    app.assert_usage_invariant().await;
}

#[tokio::test]
async fn limit_rules_zero_null_inherited_and_below_usage() {
    let app = TestApp::spawn().await;
    let (t, ws, root, child) = pair(&app).await;
    let grandchild = app.create_org(&t, &ws, Some(&child), "Grandchild").await;
    // Reference 3.5: R unlimited, A = 40, A1 = 0, A2 = 60 refused.
    assert_ok(&app.set_limit(&t, &child, "locations", Some(40)).await);
    let r = app.set_limit(&t, &grandchild, "locations", Some(60)).await;
    assert_code(&r, "BAD_USER_INPUT");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("40"),
        "{r}"
    );
    assert_ok(&app.set_limit(&t, &grandchild, "locations", Some(40)).await);
    assert_ok(&app.set_limit(&t, &grandchild, "locations", Some(0)).await);
    assert_code(
        &app.record(&t, &grandchild, "locations", 1).await,
        "LIMIT_EXCEEDED",
    );
    assert_eq!(
        app.usage(&t, &grandchild, "locations").await["available"],
        0
    );
    // Under a zero cap nothing positive may be set either.
    let deeper = app.create_org(&t, &ws, Some(&grandchild), "Deeper").await;
    assert_code(
        &app.set_limit(&t, &deeper, "locations", Some(1)).await,
        "BAD_USER_INPUT",
    );
    assert_code(
        &app.record(&t, &deeper, "locations", 1).await,
        "LIMIT_EXCEEDED",
    );
    // null removes the cap: the node inherits again.
    assert_ok(&app.set_limit(&t, &grandchild, "locations", None).await);
    let u = app.usage(&t, &grandchild, "locations").await;
    assert_eq!(
        (u["limit"].as_i64(), u["effectiveLimit"].as_i64()),
        (None, Some(40))
    );
    assert_ok(&app.record(&t, &deeper, "locations", 1).await);
    // A cap below usage is accepted; the entry reports it and allocations stop.
    assert_ok(&app.record(&t, &child, "locations", 9).await);
    assert_ok(&app.set_limit(&t, &child, "locations", Some(5)).await);
    let u = app.usage(&t, &child, "locations").await;
    assert_eq!(
        (
            u["subtree"].as_i64(),
            u["overLimit"].as_bool(),
            u["available"].as_i64()
        ),
        (Some(10), Some(true), Some(0))
    );
    assert_code(
        &app.record(&t, &deeper, "locations", 1).await,
        "LIMIT_EXCEEDED",
    );
    // Releases are still fine, and below the cap allocations resume.
    assert_ok(&app.record(&t, &child, "locations", -6).await);
    assert_ok(&app.record(&t, &deeper, "locations", 1).await);
    assert_eq!(app.usage(&t, &child, "locations").await["overLimit"], false);
    let _ = root;
    // Bad values.
    assert_code(
        &app.set_limit(&t, &child, "locations", Some(-1)).await,
        "BAD_USER_INPUT",
    );
    assert_code(
        &app.set_limit(&t, &child, "nope", Some(1)).await,
        "BAD_USER_INPUT",
    );
    assert_code(&app.record(&t, &child, "nope", 1).await, "BAD_USER_INPUT");
    assert_code(&app.record(&t, &child, "users", 0).await, "BAD_USER_INPUT");
    app.assert_usage_invariant().await;
}

#[tokio::test]
async fn release_below_zero_is_refused() {
    let app = TestApp::spawn().await;
    let (t, _ws, root, child) = pair(&app).await;
    assert_code(&app.record(&t, &child, "users", -1).await, "CONFLICT");
    assert_ok(&app.record(&t, &child, "users", 3).await);
    assert_ok(&app.record(&t, &root, "users", 2).await);
    // The root's subtree holds 5, but its own usage is 2.
    let r = app.record(&t, &root, "users", -3).await;
    assert_code(&r, "CONFLICT");
    assert_ok(&app.record(&t, &child, "users", -3).await);
    assert_eq!(app.numbers(&t, &child, "users").await, (0, 0));
    assert_eq!(app.numbers(&t, &root, "users").await, (2, 2));
    app.assert_usage_invariant().await;
}

#[tokio::test]
async fn two_hundred_concurrent_allocations_against_a_limit_of_fifty() {
    let app = TestApp::spawn().await;
    let t = app.user("burst@example.com");
    let ws = app.create_workspace(&t, "Burst").await;
    // A five-level chain with the cap at the top; allocations spread over two leaves.
    let mut chain = vec![app.create_org(&t, &ws, None, "L0").await];
    for i in 1..5 {
        let parent = chain[i - 1].clone();
        chain.push(
            app.create_org(&t, &ws, Some(&parent), &format!("L{i}"))
                .await,
        );
    }
    let other_leaf = app.create_org(&t, &ws, Some(&chain[3]), "Other").await;
    assert_ok(&app.set_limit(&t, &chain[0], "users", Some(50)).await);
    let leaves = [chain[4].clone(), other_leaf.clone()];
    let calls = (0..200).map(|i| {
        let (app, t, leaf) = (&app, &t, leaves[i % 2].clone());
        async move { app.record(t, &leaf, "users", 1).await }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.get("errors").is_none()).count();
    let refused = results
        .iter()
        .filter(|r| error_code(r) == Some("LIMIT_EXCEEDED"))
        .count();
    assert_eq!(
        (ok, refused),
        (50, 150),
        "{:?}",
        results
            .iter()
            .find(|r| error_code(r) != Some("LIMIT_EXCEEDED"))
    );
    assert_eq!(app.numbers(&t, &chain[0], "users").await.1, 50);
    let at_leaves =
        app.numbers(&t, &chain[4], "users").await.0 + app.numbers(&t, &other_leaf, "users").await.0;
    assert_eq!(at_leaves, 50);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM usage_events")
            .await,
        50
    );
    app.assert_usage_invariant().await;
}

#[tokio::test]
async fn concurrent_allocations_releases_and_moves_keep_the_sums_exact() {
    let app = TestApp::spawn().await;
    let t = app.user("mix@example.com");
    let ws = app.create_workspace(&t, "Mix").await;
    let a = app.create_org(&t, &ws, None, "A").await;
    let b = app.create_org(&t, &ws, None, "B").await;
    let a1 = app.create_org(&t, &ws, Some(&a), "A1").await;
    let a2 = app.create_org(&t, &ws, Some(&a1), "A2").await;
    let b1 = app.create_org(&t, &ws, Some(&b), "B1").await;
    assert_ok(&app.record(&t, &a2, "users", 100).await);
    let mv = "mutation($o: ID!, $p: ID) { moveOrganization(input: {organizationId: $o, newParentId: $p}) { organization { id } } }";
    let mut work = Vec::new();
    for i in 0..60 {
        let (app, t) = (&app, &t);
        let (a1, a2, b1, a, b) = (a1.clone(), a2.clone(), b1.clone(), a.clone(), b.clone());
        work.push(async move {
            match i % 6 {
                0 => app.record(t, &a2, "users", 2).await,
                1 => app.record(t, &a2, "users", -1).await,
                2 => app.record(t, &b1, "users", 3).await,
                3 => {
                    app.gql(
                        t,
                        mv,
                        json!({"o": a1, "p": if i % 12 == 3 { b.clone() } else { a.clone() }}),
                    )
                    .await
                }
                4 => app.record(t, &a1, "users", 1).await,
                _ => app.record(t, &b1, "locations", 1).await,
            }
        });
    }
    let results = futures::future::join_all(work).await;
    for r in &results {
        assert_ok(r);
    }
    app.assert_usage_invariant().await;
    let total = app.numbers(&t, &a, "users").await.1 + app.numbers(&t, &b, "users").await.1;
    assert_eq!(total, 100 + 10 * 2 - 10 + 10 * 3 + 10);
}

#[tokio::test]
async fn record_usage_replays_once() {
    let app = TestApp::spawn().await;
    let (t, _ws, root, child) = pair(&app).await;
    let q = "mutation($o: ID!) { recordUsage(input: {organizationId: $o, resource: \"users\", delta: 4, idempotencyKey: \"alloc-1\"}) { organization { id name } } }";
    let first = app.gql(&t, q, json!({"o": child})).await;
    assert_ok(&first);
    let again =
        futures::future::join_all((0..10).map(|_| app.gql(&t, q, json!({"o": child})))).await;
    for r in again {
        assert_eq!(r, first);
    }
    assert_eq!(app.numbers(&t, &root, "users").await, (0, 4));
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM usage_events")
            .await,
        1
    );
    let other = app
        .gql(&t, &q.replace("delta: 4", "delta: 5"), json!({"o": child}))
        .await;
    assert_code(&other, "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test]
async fn metered_resources_count_per_window() {
    let app = TestApp::spawn().await;
    let (t, ws, root, child) = pair(&app).await;
    let define = "mutation($w: ID!, $k: String!, $kind: ResourceKind!, $p: ResetPeriod) { defineResource(input: {workspaceId: $w, key: $k, name: \"Runs\", unit: \"runs\", kind: $kind, resetPeriod: $p}) { resource { key kind resetPeriod builtIn } } }";
    let r = app
        .gql(
            &t,
            define,
            json!({"w": ws, "k": "executions", "kind": "METERED", "p": "DAY"}),
        )
        .await;
    assert_eq!(
        r["data"]["defineResource"]["resource"],
        json!({"key": "executions", "kind": "METERED", "resetPeriod": "DAY", "builtIn": false})
    );
    assert_code(
        &app.gql(
            &t,
            define,
            json!({"w": ws, "k": "executions", "kind": "METERED", "p": "DAY"}),
        )
        .await,
        "CONFLICT",
    );
    assert_code(
        &app.gql(
            &t,
            define,
            json!({"w": ws, "k": "bad", "kind": "METERED", "p": null}),
        )
        .await,
        "BAD_USER_INPUT",
    );
    assert_code(
        &app.gql(
            &t,
            define,
            json!({"w": ws, "k": "bad", "kind": "ALLOCATED", "p": "MONTH"}),
        )
        .await,
        "BAD_USER_INPUT",
    );
    assert_code(
        &app.gql(
            &t,
            define,
            json!({"w": ws, "k": "Bad-Key", "kind": "ALLOCATED", "p": null}),
        )
        .await,
        "BAD_USER_INPUT",
    );

    assert_ok(&app.set_limit(&t, &root, "executions", Some(10)).await);
    assert_ok(&app.record(&t, &child, "executions", 7).await);
    assert_code(
        &app.record(&t, &child, "executions", 4).await,
        "LIMIT_EXCEEDED",
    );
    let u = app.usage(&t, &child, "executions").await;
    let today = chrono_today();
    assert!(
        u["windowStart"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&today),
        "{u}"
    );
    assert_eq!(
        (u["subtree"].as_i64(), u["available"].as_i64()),
        (Some(7), Some(3))
    );

    // Yesterday's window (written directly, as if time had passed) stays queryable and does
    // not count against today's cap.
    let mut conn = app.pool.get().await.expect("conn");
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE usage_counters SET period_start = period_start - interval '1 day' WHERE resource = 'executions'"),
        &mut conn,
    )
    .await
    .expect("age window");
    assert_ok(&app.record(&t, &child, "executions", 10).await);
    let r = app
        .gql(&t, "query($o: ID!) { organization(id: $o) { usageHistory(resource: \"executions\") { windowStart direct subtree } } }", json!({"o": child}))
        .await;
    let windows = r["data"]["organization"]["usageHistory"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(windows.len(), 2, "{r}");
    assert_eq!(
        (windows[0]["direct"].as_i64(), windows[1]["direct"].as_i64()),
        (Some(10), Some(7))
    );
    let r = app
        .gql(
            &t,
            "query($w: ID!) { workspace(id: $w) { resources { key } } }",
            json!({"w": ws}),
        )
        .await;
    assert_eq!(
        r["data"]["workspace"]["resources"],
        json!([{"key": "users"}, {"key": "locations"}, {"key": "sso_connections"}, {"key": "executions"}])
    );
    app.assert_usage_invariant().await;
}

fn chrono_today() -> String {
    let days = tests::tokens::now() / 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[tokio::test]
async fn nested_query_statement_count_does_not_grow_with_page_size() {
    let app = TestApp::spawn().await;
    let t = app.user("nested@example.com");
    let ws = app.create_workspace(&t, "Nested").await;
    // 100 organizations, five levels deep, with usage.
    let mut ids: Vec<String> = Vec::new();
    for i in 0..100 {
        let parent = if i < 5 {
            None
        } else {
            Some(ids[(i - 5) / 3].clone())
        };
        let id = app
            .create_org(&t, &ws, parent.as_deref(), &format!("O{i}"))
            .await;
        assert_ok(&app.record(&t, &id, "users", 1).await);
        ids.push(id);
    }
    let query = |n: usize| {
        format!(
            "query($w: ID!) {{ workspace(id: $w) {{ name organizations(first: {n}) {{ edges {{ node {{ id name depth
               parent {{ id name }} children(first: 10) {{ edges {{ node {{ id name }} }} }}
               ancestors {{ id name }} usage {{ resource direct subtree limit effectiveLimit available }} }} }} }} }} }}"
        )
    };
    let mut counts = Vec::new();
    for n in [1, 10, 100] {
        // Warm the token's user cache so that only the query's statements are counted.
        app.gql(&t, "{ viewer { id } }", json!({})).await;
        let before = app.statements().await;
        let r = app.gql(&t, &query(n), json!({"w": ws})).await;
        let after = app.statements().await;
        assert_ok(&r);
        let edges = r["data"]["workspace"]["organizations"]["edges"]
            .as_array()
            .map(Vec::len);
        assert_eq!(edges, Some(n));
        counts.push(after - before);
    }
    assert!(
        counts.iter().all(|c| *c <= 10),
        "statements per nested query: {counts:?}"
    );
    assert_eq!(
        counts[1], counts[2],
        "statements grew with the page size: {counts:?}"
    );
    // The totals are right, too: the five roots hold all 100 users.
    let r = app.gql(&t, &query(100), json!({"w": ws})).await;
    let total: i64 = r["data"]["workspace"]["organizations"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter(|e| e["node"]["depth"] == 0)
        .map(|e| {
            e["node"]["usage"][0]["subtree"]
                .as_i64()
                .unwrap_or_default()
        })
        .sum();
    assert_eq!(total, 100);
}
