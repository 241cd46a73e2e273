//! Workspace quotas (`updateQuotas`, `Workspace.quotaStatus`) and their enforcement: on
//! `recordUsage` (exact under concurrency, across processes), on `addMember` (people only),
//! and `api_requests_per_minute` as the workspace's rate limit.

use std::collections::HashMap;

use chrono::{Datelike, TimeZone, Utc};
use serde_json::{Value, json};
use tests::{Options, TestApp, assert_code, assert_ok, error_code, workspace_uuid};

const UPDATE: &str = "mutation($i: UpdateQuotasInput!) { updateQuotas(input: $i) {
  quotas { resource limit } settings { security { rateLimitPerMinute } } approvalRequest { id status action } } }";

const STATUS: &str = "query($w: ID!) { workspace(id: $w) {
  quotaStatus { resource usage limit percentage status periodStart } } }";

/// `updateQuotas` of `quotas` (a JSON list of `{resource, limit}`) as `token`.
async fn update(app: &TestApp, token: &str, ws: &str, quotas: Value) -> Value {
    update_keyed(app, token, ws, quotas, None).await
}

async fn update_keyed(
    app: &TestApp,
    token: &str,
    ws: &str,
    quotas: Value,
    key: Option<&str>,
) -> Value {
    app.gql(
        token,
        UPDATE,
        json!({"i": {"workspaceId": ws, "quotas": quotas, "idempotencyKey": key}}),
    )
    .await
}

/// Sets (or with `None` removes) the quota of one `resource` as `token`; the whole body.
async fn try_set_quota(
    app: &TestApp,
    token: &str,
    ws: &str,
    resource: &str,
    limit: Option<i64>,
) -> Value {
    update(
        app,
        token,
        ws,
        json!([{"resource": resource, "limit": limit}]),
    )
    .await
}

/// [`try_set_quota`], and it succeeded.
async fn set_quota(app: &TestApp, token: &str, ws: &str, resource: &str, limit: Option<i64>) {
    assert_ok(&try_set_quota(app, token, ws, resource, limit).await);
}

/// The quota status of `ws` as `token` (which must be allowed to read it).
async fn status(app: &TestApp, token: &str, ws: &str) -> Vec<Value> {
    let r = app.gql(token, STATUS, json!({"w": ws})).await;
    assert_ok(&r);
    r["data"]["workspace"]["quotaStatus"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no quotaStatus: {r}"))
}

/// The status entry of `resource`.
async fn status_of(app: &TestApp, token: &str, ws: &str, resource: &str) -> Value {
    status(app, token, ws)
        .await
        .into_iter()
        .find(|s| s["resource"] == resource)
        .unwrap_or_else(|| panic!("no quota status of {resource}"))
}

/// (usage, limit, percentage, status) of a status entry.
fn numbers(s: &Value) -> (i64, i64, f64, &str) {
    (
        s["usage"].as_i64().expect("usage"),
        s["limit"].as_i64().expect("limit"),
        s["percentage"].as_f64().expect("percentage"),
        s["status"].as_str().expect("status"),
    )
}

/// Defines a custom resource (`reset`: `None` for an allocated one).
async fn define(app: &TestApp, token: &str, ws: &str, key: &str, reset: Option<&str>) {
    let kind = if reset.is_some() {
        "METERED"
    } else {
        "ALLOCATED"
    };
    let r = app
        .gql(
            token,
            "mutation($w: ID!, $k: String!, $kind: ResourceKind!, $p: ResetPeriod) {
               defineResource(input: {workspaceId: $w, key: $k, name: $k, unit: \"units\", kind: $kind, resetPeriod: $p}) { resource { key } } }",
            json!({"w": ws, "k": key, "kind": kind, "p": reset}),
        )
        .await;
    assert_ok(&r);
}

/// Every quota counter of `ws` for `resource`, summed over windows.
async fn counter(app: &TestApp, ws: &str, resource: &str) -> i64 {
    app.sql_count(&format!(
        "SELECT COALESCE(sum(used), 0)::int8 AS n FROM quota_counters
          WHERE workspace_id = '{}' AND resource = '{resource}'",
        workspace_uuid(ws)
    ))
    .await
}

/// The workspace's total usage of `resource` from its roots' counters (current windows).
async fn roots_total(app: &TestApp, ws: &str, resource: &str) -> i64 {
    app.sql_count(&format!(
        "SELECT COALESCE(sum(u.subtree), 0)::int8 AS n FROM usage_counters u
           JOIN organizations o ON o.id = u.organization_id AND o.parent_id IS NULL
          WHERE o.workspace_id = '{}' AND u.resource = '{resource}'",
        workspace_uuid(ws)
    ))
    .await
}

/// A second `api` process on the test's database (its own settings cache), with `extra`.
async fn replica(app: &TestApp, extra: &[(&str, &str)]) -> String {
    let config = app.config_for(extra);
    let state = api::AppState::new(config, app.pool.clone(), Default::default()).expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(api::http::server::serve(
        listener,
        api::router(state),
        std::future::pending(),
        std::time::Duration::from_secs(1),
    ));
    format!("http://{addr}")
}

/// `recordUsage` through the server at `base`.
async fn record_at(
    app: &TestApp,
    base: &str,
    token: &str,
    org: &str,
    resource: &str,
    delta: i64,
) -> Value {
    app.http
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({
            "query": "mutation($o: ID!, $r: String!, $d: Int!) { recordUsage(input: {organizationId: $o, resource: $r, delta: $d}) { organization { id } } }",
            "variables": {"o": org, "r": resource, "d": delta},
        }))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json body")
}

#[tokio::test]
async fn quotas_are_set_read_and_removed_idempotently_and_audited() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Quotas").await;
    define(&app, &owner, &ws, "executions", Some("DAY")).await;
    // No quotas at first.
    assert!(status(&app, &owner, &ws).await.is_empty());
    let quotas = json!([
        {"resource": "users", "limit": 10},
        {"resource": "executions", "limit": 1000},
        {"resource": "members", "limit": 25},
        {"resource": "api_requests_per_minute", "limit": 600},
    ]);
    let r = update_keyed(&app, &owner, &ws, quotas.clone(), Some("q-1")).await;
    assert_ok(&r);
    let payload = &r["data"]["updateQuotas"];
    assert_eq!(
        payload["quotas"],
        json!([
            {"resource": "api_requests_per_minute", "limit": 600},
            {"resource": "executions", "limit": 1000},
            {"resource": "members", "limit": 25},
            {"resource": "users", "limit": 10},
        ])
    );
    // The rate limit quota is the security setting.
    assert_eq!(payload["settings"]["security"]["rateLimitPerMinute"], 600);
    assert!(payload["approvalRequest"].is_null());
    // A repeat with the same key replays it (one audit event); another input is refused.
    let again = update_keyed(&app, &owner, &ws, quotas, Some("q-1")).await;
    assert_eq!(again, r);
    assert_code(
        &update_keyed(
            &app,
            &owner,
            &ws,
            json!([{"resource": "users", "limit": 11}]),
            Some("q-1"),
        )
        .await,
        "IDEMPOTENCY_KEY_REUSED",
    );
    let audited = |filter: &str| {
        format!(
            "SELECT count(*) AS n FROM audit_events WHERE action = 'quota.update' AND workspace_id = '{}' {filter}",
            workspace_uuid(&ws)
        )
    };
    assert_eq!(app.sql_count(&audited("")).await, 1);
    assert_eq!(
        app.sql_count(&audited(
            r#"AND summary->'changes' @> '[{"resource": "users", "before": null, "after": 10}]'"#
        ))
        .await,
        1
    );
    // Every quota shows in the status, sorted, with its window.
    let all = status(&app, &owner, &ws).await;
    let keys: Vec<&str> = all.iter().filter_map(|s| s["resource"].as_str()).collect();
    assert_eq!(
        keys,
        ["api_requests_per_minute", "executions", "members", "users"]
    );
    let now = Utc::now();
    let today = Utc
        .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
        .single()
        .expect("midnight");
    let executions = &all[1];
    let start = chrono::DateTime::parse_from_rfc3339(
        executions["periodStart"]
            .as_str()
            .expect("a metered quota has a window"),
    )
    .expect("rfc3339");
    assert_eq!(start, today);
    assert!(all[3]["periodStart"].is_null(), "users has no window");
    assert!(all[2]["periodStart"].is_null(), "members has no window");
    assert!(all[0]["periodStart"].is_string(), "the rate limit window");
    // The owner is one person of 25.
    assert_eq!(numbers(&all[2]), (1, 25, 4.0, "OK"));
    // Change one, remove two (null), keep the rest.
    let r = update(
        &app,
        &owner,
        &ws,
        json!([
            {"resource": "users", "limit": 12},
            {"resource": "executions", "limit": null},
            {"resource": "api_requests_per_minute", "limit": null},
        ]),
    )
    .await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["updateQuotas"]["quotas"],
        json!([{"resource": "members", "limit": 25}, {"resource": "users", "limit": 12}])
    );
    assert!(r["data"]["updateQuotas"]["settings"]["security"]["rateLimitPerMinute"].is_null());
    assert_eq!(
        app.sql_count(&audited(
            r#"AND summary->'changes' @> '[{"resource": "users", "before": 10, "after": 12}, {"resource": "executions", "before": 1000, "after": null}]'"#
        ))
        .await,
        1
    );
    // Removing a quota that is not set is a no-op, still audited.
    set_quota(&app, &owner, &ws, "locations", None).await;
    assert_eq!(app.sql_count(&audited("")).await, 3);
}

#[tokio::test]
async fn invalid_changes_and_callers_are_refused() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Checked").await;
    let field = |r: &Value| {
        r["errors"][0]["extensions"]["field"]
            .as_str()
            .map(String::from)
    };
    let message = |r: &Value| {
        r["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // An unknown resource is named.
    let r = update(
        &app,
        &owner,
        &ws,
        json!([{"resource": "users", "limit": 1}, {"resource": "widgets", "limit": 5}]),
    )
    .await;
    assert_code(&r, "BAD_USER_INPUT");
    assert!(message(&r).contains("`widgets`"), "{r}");
    // Nothing of a refused change is stored.
    assert!(status(&app, &owner, &ws).await.is_empty());
    let r = try_set_quota(&app, &owner, &ws, "users", Some(-1)).await;
    assert_code(&r, "BAD_USER_INPUT");
    assert_eq!(field(&r).as_deref(), Some("limit"));
    let r = try_set_quota(&app, &owner, &ws, "api_requests_per_minute", Some(0)).await;
    assert_code(&r, "BAD_USER_INPUT");
    let r = update(
        &app,
        &owner,
        &ws,
        json!([{"resource": "users", "limit": 1}, {"resource": "users", "limit": 2}]),
    )
    .await;
    assert_code(&r, "BAD_USER_INPUT");
    assert_code(
        &update(&app, &owner, &ws, json!([])).await,
        "BAD_USER_INPUT",
    );
    // Hostile input: a huge key is refused and quoted short; more than 50 entries too.
    let r = update(
        &app,
        &owner,
        &ws,
        json!([{"resource": "x".repeat(100_000), "limit": 1}]),
    )
    .await;
    assert_code(&r, "BAD_USER_INPUT");
    assert!(message(&r).len() < 400, "{}", message(&r).len());
    let many: Vec<Value> = (0..51)
        .map(|i| json!({"resource": format!("r{i}"), "limit": 1}))
        .collect();
    let r = update(&app, &owner, &ws, json!(many)).await;
    assert_code(&r, "BAD_USER_INPUT");
    assert_eq!(field(&r).as_deref(), Some("quotas"));
    // Owners only change quotas; owners and admins read their status.
    set_quota(&app, &owner, &ws, "users", Some(5)).await;
    let admin = app
        .member_token(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    let viewer = app
        .member_token(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    assert_code(
        &try_set_quota(&app, &admin, &ws, "users", Some(50)).await,
        "FORBIDDEN",
    );
    assert_eq!(status(&app, &admin, &ws).await.len(), 1);
    assert_code(
        &app.gql(&viewer, STATUS, json!({"w": ws})).await,
        "FORBIDDEN",
    );
    assert_code(
        &try_set_quota(&app, &viewer, &ws, "users", Some(50)).await,
        "FORBIDDEN",
    );
    // Another workspace's quotas do not exist for an outsider.
    let stranger = app.user("stranger@example.com");
    app.create_workspace(&stranger, "Elsewhere").await;
    assert_code(
        &try_set_quota(&app, &stranger, &ws, "users", Some(50)).await,
        "NOT_FOUND",
    );
    let r = app.gql(&stranger, STATUS, json!({"w": ws})).await;
    assert!(r["data"]["workspace"].is_null(), "{r}");
    assert_code(
        &try_set_quota(&app, &owner, "ws_nonsense", "users", Some(1)).await,
        "NOT_FOUND",
    );
    // The quota is unchanged by all of it.
    assert_eq!(numbers(&status(&app, &owner, &ws).await[0]).1, 5);
}

#[tokio::test]
async fn status_goes_ok_warning_exceeded_and_allocations_past_the_quota_are_refused() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Status").await;
    // Two trees: the quota binds the workspace as a whole.
    let a = app.create_org(&owner, &ws, None, "A").await;
    let b = app.create_org(&owner, &ws, None, "B").await;
    let a1 = app.create_org(&owner, &ws, Some(&a), "A1").await;
    // Usage before the quota counts: the quota starts from it.
    assert_ok(&app.record(&owner, &a1, "users", 3).await);
    set_quota(&app, &owner, &ws, "users", Some(10)).await;
    assert_eq!(
        numbers(&status_of(&app, &owner, &ws, "users").await),
        (3, 10, 30.0, "OK")
    );
    assert_ok(&app.record(&owner, &b, "users", 4).await);
    assert_eq!(
        numbers(&status_of(&app, &owner, &ws, "users").await),
        (7, 10, 70.0, "OK")
    );
    assert_ok(&app.record(&owner, &a, "users", 1).await);
    assert_eq!(
        numbers(&status_of(&app, &owner, &ws, "users").await),
        (8, 10, 80.0, "WARNING")
    );
    assert_ok(&app.record(&owner, &a1, "users", 2).await);
    assert_eq!(
        numbers(&status_of(&app, &owner, &ws, "users").await),
        (10, 10, 100.0, "EXCEEDED")
    );
    // One more is refused, with the numbers, and nothing of it is recorded.
    let events = "SELECT count(*) AS n FROM usage_events";
    let before = app.sql_count(events).await;
    let r = app.record(&owner, &b, "users", 1).await;
    assert_code(&r, "LIMIT_EXCEEDED");
    let ext = &r["errors"][0]["extensions"];
    assert_eq!(
        (
            &ext["resource"],
            &ext["quota"],
            &ext["used"],
            &ext["requested"]
        ),
        (&json!("users"), &json!(10), &json!(10), &json!(1))
    );
    assert_eq!(app.sql_count(events).await, before);
    assert_eq!(app.numbers(&owner, &b, "users").await, (4, 4));
    assert_eq!(counter(&app, &ws, "users").await, 10);
    // Other resources are not limited by it.
    assert_ok(&app.record(&owner, &b, "locations", 50).await);
    // Releases free room.
    assert_ok(&app.record(&owner, &a1, "users", -3).await);
    assert_eq!(
        numbers(&status_of(&app, &owner, &ws, "users").await),
        (7, 10, 70.0, "OK")
    );
    assert_eq!(counter(&app, &ws, "users").await, 7);
    assert_ok(&app.record(&owner, &b, "users", 3).await);
    assert_code(&app.record(&owner, &b, "users", 1).await, "LIMIT_EXCEEDED");
    // A quota set below usage: EXCEEDED, increases refused, releases still work.
    set_quota(&app, &owner, &ws, "users", Some(8)).await;
    assert_eq!(
        numbers(&status_of(&app, &owner, &ws, "users").await),
        (10, 8, 125.0, "EXCEEDED")
    );
    assert_code(&app.record(&owner, &a, "users", 1).await, "LIMIT_EXCEEDED");
    assert_ok(&app.record(&owner, &b, "users", -1).await);
    assert_eq!(counter(&app, &ws, "users").await, 9);
    // Removed: no limit, no counter; set again: counted afresh from the organizations.
    set_quota(&app, &owner, &ws, "users", None).await;
    assert_eq!(counter(&app, &ws, "users").await, 0);
    assert_ok(&app.record(&owner, &a, "users", 5).await);
    set_quota(&app, &owner, &ws, "users", Some(20)).await;
    assert_eq!(numbers(&status_of(&app, &owner, &ws, "users").await).0, 14);
    assert_ok(&app.record(&owner, &a, "users", 6).await);
    assert_eq!(counter(&app, &ws, "users").await, 20);
    assert_eq!(roots_total(&app, &ws, "users").await, 20);
    assert_code(&app.record(&owner, &a, "users", 1).await, "LIMIT_EXCEEDED");
    app.assert_usage_invariant().await;
}

#[tokio::test]
async fn metered_quotas_count_per_window() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Metered").await;
    define(&app, &owner, &ws, "executions", Some("DAY")).await;
    let org = app.create_org(&owner, &ws, None, "Ops").await;
    set_quota(&app, &owner, &ws, "executions", Some(5)).await;
    assert_ok(&app.record(&owner, &org, "executions", 5).await);
    assert_code(
        &app.record(&owner, &org, "executions", 1).await,
        "LIMIT_EXCEEDED",
    );
    // Yesterday's window does not count today: move today's counters a day back.
    let id = workspace_uuid(&ws);
    app.sql_exec(&format!(
        "UPDATE usage_counters SET period_start = period_start - interval '1 day' WHERE workspace_id = '{id}' AND resource = 'executions'"
    ))
    .await;
    app.sql_exec(&format!(
        "UPDATE quota_counters SET period_start = period_start - interval '1 day' WHERE workspace_id = '{id}' AND resource = 'executions'"
    ))
    .await;
    assert_eq!(
        numbers(&status_of(&app, &owner, &ws, "executions").await),
        (0, 5, 0.0, "OK")
    );
    assert_ok(&app.record(&owner, &org, "executions", 4).await);
    let s = status_of(&app, &owner, &ws, "executions").await;
    assert_eq!(numbers(&s), (4, 5, 80.0, "WARNING"));
    assert_code(
        &app.record(&owner, &org, "executions", 2).await,
        "LIMIT_EXCEEDED",
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM quota_counters WHERE workspace_id = '{id}'"
        ))
        .await,
        2,
        "one counter per window"
    );
}

#[tokio::test]
async fn concurrent_allocations_from_two_processes_admit_exactly_the_quota() {
    let app = TestApp::spawn().await;
    let second = replica(&app, &[]).await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Burst").await;
    let mut roots = Vec::new();
    for i in 0..4 {
        roots.push(app.create_org(&owner, &ws, None, &format!("R{i}")).await);
    }
    // Some usage first: the quota starts from it.
    assert_ok(&app.record(&owner, &roots[0], "users", 2).await);
    set_quota(&app, &owner, &ws, "users", Some(20)).await;
    let bases = [app.base.clone(), second];
    let calls = (0..60).map(|i| {
        let (app, owner, base) = (&app, &owner, bases[i % 2].clone());
        let org = roots[i % 4].clone();
        async move { record_at(app, &base, owner, &org, "users", 1).await }
    });
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.get("errors").is_none()).count();
    let refused = results
        .iter()
        .filter(|r| error_code(r) == Some("LIMIT_EXCEEDED"))
        .count();
    assert_eq!(
        (ok, refused),
        (18, 42),
        "{:?}",
        results
            .iter()
            .find(|r| r.get("errors").is_some() && error_code(r) != Some("LIMIT_EXCEEDED"))
    );
    assert_eq!(counter(&app, &ws, "users").await, 20);
    assert_eq!(roots_total(&app, &ws, "users").await, 20);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM usage_events")
            .await,
        19
    );
    // Releases and allocations racing: the counter stays the roots' total, within the quota.
    let work = (0..40).map(|i| {
        let (app, owner, base) = (&app, &owner, bases[i % 2].clone());
        let org = roots[i % 4].clone();
        let delta = if i % 4 == 0 { -1 } else { 1 };
        async move { record_at(app, &base, owner, &org, "users", delta).await }
    });
    let results = futures::future::join_all(work).await;
    for r in &results {
        if r.get("errors").is_some() {
            // A release where an organization has nothing left, or an allocation past the quota.
            assert!(
                matches!(error_code(r), Some("LIMIT_EXCEEDED" | "CONFLICT")),
                "{r}"
            );
        }
    }
    let used = counter(&app, &ws, "users").await;
    assert_eq!(used, roots_total(&app, &ws, "users").await);
    assert!(used <= 20, "{used}");
    app.assert_usage_invariant().await;
}

#[tokio::test]
async fn another_process_applies_changed_and_removed_quotas_at_once() {
    let app = TestApp::spawn().await;
    // The replica trusts its cached settings for a minute.
    let second = replica(&app, &[("GOVERNANCE_CACHE_MS", "60000")]).await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Stale").await;
    let org = app.create_org(&owner, &ws, None, "Org").await;
    // `users` recorded through the replica.
    let on_replica = |delta: i64| record_at(&app, &second, &owner, &org, "users", delta);
    set_quota(&app, &owner, &ws, "users", Some(2)).await;
    assert_ok(&on_replica(2).await);
    assert_code(&on_replica(1).await, "LIMIT_EXCEEDED");
    // Raised elsewhere: the replica's counter upsert reads the new quota.
    set_quota(&app, &owner, &ws, "users", Some(4)).await;
    assert_ok(&on_replica(2).await);
    assert_code(&on_replica(1).await, "LIMIT_EXCEEDED");
    // Removed elsewhere: it never blocks, though the replica still thinks it exists.
    set_quota(&app, &owner, &ws, "users", None).await;
    assert_ok(&on_replica(5).await);
    assert_eq!(app.numbers(&owner, &org, "users").await, (9, 9));
}

#[tokio::test]
async fn the_members_quota_counts_people_and_refuses_add_member() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Team").await;
    set_quota(&app, &owner, &ws, "members", Some(3)).await;
    app.add_member(&owner, &ws, "a@example.com", "ADMIN").await;
    // A pending invitation counts.
    app.add_member(&owner, &ws, "b@example.com", "VIEWER").await;
    let r = app
        .try_add_member(&owner, &ws, "c@example.com", "VIEWER")
        .await;
    assert_code(&r, "LIMIT_EXCEEDED");
    let ext = &r["errors"][0]["extensions"];
    assert_eq!(
        (&ext["resource"], &ext["quota"], &ext["used"]),
        (&json!("members"), &json!(3), &json!(3))
    );
    // API keys are service accounts, not people: they do not count.
    let key = app
        .gql(
            &owner,
            "mutation($w: ID!) { createApiKey(input: {workspaceId: $w, name: \"ci\", role: VIEWER}) { apiKey { id } secret } }",
            json!({"w": ws}),
        )
        .await;
    assert_ok(&key);
    let s = status_of(&app, &owner, &ws, "members").await;
    assert_eq!(numbers(&s), (3, 3, 100.0, "EXCEEDED"));
    let members = format!(
        "SELECT count(*) AS n FROM members WHERE workspace_id = '{}'",
        workspace_uuid(&ws)
    );
    assert_eq!(app.sql_count(&members).await, 4, "three people and a key");
    assert_code(
        &app.try_add_member(&owner, &ws, "c@example.com", "VIEWER")
            .await,
        "LIMIT_EXCEEDED",
    );
    // Raised: one more fits.
    set_quota(&app, &owner, &ws, "members", Some(4)).await;
    app.add_member(&owner, &ws, "c@example.com", "VIEWER").await;
    assert_code(
        &app.try_add_member(&owner, &ws, "d@example.com", "VIEWER")
            .await,
        "LIMIT_EXCEEDED",
    );
    assert_eq!(
        numbers(&status_of(&app, &owner, &ws, "members").await),
        (4, 4, 100.0, "EXCEEDED")
    );
}

#[tokio::test]
async fn api_requests_per_minute_is_the_security_rate_limit() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Limited").await;
    // Set through the security settings, it shows as a quota (and back).
    let r = app
        .gql(
            &owner,
            "mutation($w: ID!) { updateSecuritySettings(input: {workspaceId: $w, rateLimitPerMinute: 1000}) { settings { security { rateLimitPerMinute } } } }",
            json!({"w": ws}),
        )
        .await;
    assert_ok(&r);
    for _ in 0..3 {
        assert_ok(
            &app.gql(
                &owner,
                "query($w: ID!) { workspace(id: $w) { name } }",
                json!({"w": ws}),
            )
            .await,
        );
    }
    let s = status_of(&app, &owner, &ws, "api_requests_per_minute").await;
    let (usage, limit, _, state) = numbers(&s);
    assert_eq!((limit, state), (1000, "OK"));
    // What the window handed out to this process (a lease ahead of the requests).
    assert!(usage >= 4, "{s}");
    assert!(s["periodStart"].is_string());
    // Set as a quota, it is the setting the gate enforces.
    let other = app.create_workspace(&owner, "Tight").await;
    let r = try_set_quota(&app, &owner, &other, "api_requests_per_minute", Some(2)).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["updateQuotas"]["settings"]["security"]["rateLimitPerMinute"],
        2
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT rate_limit_per_minute::int8 AS n FROM workspace_settings WHERE workspace_id = '{}'",
            workspace_uuid(&other)
        ))
        .await,
        2
    );
    let mut admitted = 0;
    let mut limited = 0;
    for _ in 0..6 {
        let r = app
            .gql(
                &owner,
                "query($w: ID!) { workspace(id: $w) { name } }",
                json!({"w": other}),
            )
            .await;
        match error_code(&r) {
            None => admitted += 1,
            Some("RATE_LIMITED") => limited += 1,
            Some(c) => panic!("unexpected {c}: {r}"),
        }
    }
    // Two per window (four if a window ended meanwhile).
    assert!(
        limited >= 2 && admitted <= 4,
        "{admitted} admitted, {limited} limited"
    );
}

#[tokio::test]
async fn a_rate_limit_change_is_held_for_approval_like_security_settings() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let second = app.user("second@example.com");
    let ws = app.create_workspace(&owner, "Held").await;
    app.add_member(&owner, &ws, "second@example.com", "OWNER")
        .await;
    app.set_workspace_settings(&ws, "approval_required_for", "'{CHANGE_SECURITY_SETTINGS}'")
        .await;
    // Other quotas are not security settings: made at once.
    let r = try_set_quota(&app, &owner, &ws, "users", Some(9)).await;
    assert_ok(&r);
    assert!(r["data"]["updateQuotas"]["approvalRequest"].is_null());
    let r = update(
        &app,
        &owner,
        &ws,
        json!([{"resource": "api_requests_per_minute", "limit": 500}, {"resource": "users", "limit": 7}]),
    )
    .await;
    assert_ok(&r);
    let held = &r["data"]["updateQuotas"];
    assert_eq!(held["approvalRequest"]["status"], "PENDING");
    assert_eq!(
        held["approvalRequest"]["action"],
        "CHANGE_SECURITY_SETTINGS"
    );
    // Nothing changed yet.
    assert_eq!(held["quotas"], json!([{"resource": "users", "limit": 9}]));
    assert!(held["settings"]["security"]["rateLimitPerMinute"].is_null());
    let id = held["approvalRequest"]["id"].as_str().expect("request id");
    let approve = "mutation($i: ID!) { approveRequest(input: {approvalRequestId: $i}) { approvalRequest { id status } } }";
    let r = app.gql(&second, approve, json!({"i": id})).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["approveRequest"]["approvalRequest"]["status"],
        "APPROVED"
    );
    let quotas: HashMap<String, i64> = status(&app, &owner, &ws)
        .await
        .iter()
        .map(|s| {
            (
                s["resource"].as_str().unwrap_or_default().to_string(),
                numbers(s).1,
            )
        })
        .collect();
    assert_eq!(
        quotas,
        HashMap::from([("api_requests_per_minute".into(), 500), ("users".into(), 7)])
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM audit_events WHERE action = 'quota.update' AND workspace_id = '{}' AND summary ? 'approvalRequestId'",
            workspace_uuid(&ws)
        ))
        .await,
        1
    );
}

#[tokio::test]
async fn record_usage_costs_no_statement_more_without_a_quota_on_its_resource() {
    // Settings stay cached for the whole test: only the allocation's statements count.
    let app = TestApp::with(Options {
        env: HashMap::from([("GOVERNANCE_CACHE_MS".into(), "60000".into())]),
    })
    .await;
    let owner = app.user("owner@example.com");
    let plain = app.create_workspace(&owner, "Plain").await;
    let other = app.create_workspace(&owner, "Quota elsewhere").await;
    let quota = app.create_workspace(&owner, "Quota here").await;
    set_quota(&app, &owner, &other, "locations", Some(100)).await;
    set_quota(&app, &owner, &quota, "users", Some(100)).await;
    let mut costs = Vec::new();
    for ws in [&plain, &other, &quota] {
        let org = app.create_org(&owner, ws, None, "Org").await;
        // Warm the caches (identity, settings, quotas, prepared statements).
        for _ in 0..2 {
            assert_ok(&app.record(&owner, &org, "users", 1).await);
        }
        let mut least = u64::MAX;
        for _ in 0..3 {
            let before = app.statements().await;
            assert_ok(&app.record(&owner, &org, "users", 1).await);
            least = least.min(app.statements().await - before);
        }
        costs.push(least);
    }
    assert_eq!(
        costs[0], costs[1],
        "a quota on another resource costs nothing: {costs:?}"
    );
    assert_eq!(
        costs[2],
        costs[0] + 1,
        "a quota on the resource costs one statement: {costs:?}"
    );
}

#[tokio::test]
async fn quota_status_statements_do_not_grow_with_the_number_of_quotas() {
    let app = TestApp::with(Options {
        env: HashMap::from([("GOVERNANCE_CACHE_MS".into(), "60000".into())]),
    })
    .await;
    let owner = app.user("owner@example.com");
    let few = app.create_workspace(&owner, "Few").await;
    let many = app.create_workspace(&owner, "Many").await;
    set_quota(&app, &owner, &few, "users", Some(10)).await;
    let mut quotas = vec![
        json!({"resource": "users", "limit": 10}),
        json!({"resource": "members", "limit": 10}),
        json!({"resource": "api_requests_per_minute", "limit": 100000}),
    ];
    for (key, reset) in [
        ("workflows", None),
        ("executions", Some("DAY")),
        ("compute_units", Some("MONTH")),
    ] {
        define(&app, &owner, &many, key, reset).await;
        quotas.push(json!({"resource": key, "limit": 10}));
    }
    assert_ok(&update(&app, &owner, &many, json!(quotas)).await);
    let org = app.create_org(&owner, &many, None, "Org").await;
    assert_ok(&app.record(&owner, &org, "workflows", 3).await);
    let mut costs = Vec::new();
    for ws in [&few, &many] {
        // Warm the caches.
        status(&app, &owner, ws).await;
        let mut least = u64::MAX;
        for _ in 0..3 {
            let before = app.statements().await;
            let s = status(&app, &owner, ws).await;
            least = least.min(app.statements().await - before);
            assert!(!s.is_empty());
        }
        costs.push(least);
    }
    assert_eq!(costs[0], costs[1], "statements per quotaStatus: {costs:?}");
    // Two statements more than reading the workspace alone: the role check, the quotas.
    let mut plain = u64::MAX;
    for _ in 0..3 {
        let before = app.statements().await;
        let r = app
            .gql(
                &owner,
                "query($w: ID!) { workspace(id: $w) { name } }",
                json!({"w": many}),
            )
            .await;
        plain = plain.min(app.statements().await - before);
        assert_ok(&r);
    }
    assert_eq!(costs[0], plain + 2, "statements per quotaStatus: {costs:?}");
    let all = status(&app, &owner, &many).await;
    assert_eq!(all.len(), 6);
    let workflows = all
        .iter()
        .find(|s| s["resource"] == "workflows")
        .expect("workflows");
    assert_eq!(numbers(workflows), (3, 10, 30.0, "OK"));
}

#[tokio::test]
async fn workspace_quotas_notify_at_80_and_100_percent_once_per_window() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Quota warnings").await;
    let a = app.create_org(&owner, &ws, None, "A").await;
    let b = app.create_org(&owner, &ws, None, "B").await;
    set_quota(&app, &owner, &ws, "users", Some(10)).await;
    let uuid = workspace_uuid(&ws);
    let count = |kind: &'static str| {
        let app = &app;
        async move {
            app.sql_count(&format!(
                "SELECT count(*) AS n FROM notifications
                  WHERE workspace_id = '{uuid}' AND type = '{kind}'"
            ))
            .await
        }
    };
    // Below 80 %: nothing.
    assert_ok(&app.record(&owner, &a, "users", 5).await);
    assert_eq!(count("quota.warning").await, 0);
    // Across 80 % of the workspace's quota (the two trees together): one warning.
    assert_ok(&app.record(&owner, &b, "users", 3).await);
    assert_eq!(count("quota.warning").await, 1);
    assert_eq!(count("quota.reached").await, 0);
    // Above 80 % in the same window, and down and across again: no new one.
    assert_ok(&app.record(&owner, &a, "users", 1).await);
    assert_ok(&app.record(&owner, &a, "users", -2).await);
    assert_ok(&app.record(&owner, &b, "users", 1).await);
    assert_eq!(count("quota.warning").await, 1);
    // Across 100 %: one `quota.reached`.
    assert_ok(&app.record(&owner, &a, "users", 2).await);
    assert_eq!(counter(&app, &ws, "users").await, 10);
    assert_eq!(count("quota.warning").await, 1);
    assert_eq!(count("quota.reached").await, 1);
    // A refused allocation notifies nothing.
    assert_code(&app.record(&owner, &b, "users", 1).await, "LIMIT_EXCEEDED");
    assert_eq!(count("quota.reached").await, 1);
    // The data says it is the workspace's quota (no organization, no pool).
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM notifications
              WHERE workspace_id = '{uuid}' AND category = 'QUOTA_WARNINGS'
                AND data->>'scope' = 'workspace' AND data->>'workspaceId' = '{ws}'
                AND data->>'resource' = 'users' AND (data->>'quota')::int = 10
                AND data->'windowStart' = 'null'::jsonb
                AND NOT data ? 'organizationId' AND NOT data ? 'pool'
                AND ((type = 'quota.warning' AND (data->>'used')::int = 8 AND (data->>'percent')::int = 80
                      AND dedupe_key = 'quota:ws:users:month:' || to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM') || ':10:80')
                  OR (type = 'quota.reached' AND (data->>'used')::int = 10 AND (data->>'percent')::int = 100))"
        ))
        .await,
        2
    );
    // Each with the job that fans it out, in the same transaction.
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM apalis.jobs j JOIN notifications n
                ON j.idempotency_key = 'notification:' || n.id
              WHERE j.job_type = 'notifications' AND n.workspace_id = '{uuid}'"
        ))
        .await,
        2
    );
    // A metered quota's warning names its window; both thresholds at once record both.
    define(&app, &owner, &ws, "executions", Some("DAY")).await;
    set_quota(&app, &owner, &ws, "executions", Some(5)).await;
    assert_ok(&app.record(&owner, &a, "executions", 5).await);
    let today = Utc::now().date_naive();
    let day = format!(
        "{:04}-{:02}-{:02}T00:00:00Z",
        today.year(),
        today.month(),
        today.day()
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM notifications
              WHERE workspace_id = '{uuid}' AND data->>'scope' = 'workspace'
                AND data->>'resource' = 'executions' AND data->>'windowStart' = '{day}'"
        ))
        .await,
        2
    );
    // A workspace without quotas is told nothing.
    let plain = app.create_workspace(&owner, "No quotas").await;
    let org = app.create_org(&owner, &plain, None, "Org").await;
    assert_ok(&app.record(&owner, &org, "users", 10).await);
    assert_ok(&app.record(&owner, &org, "users", 100).await);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM notifications WHERE workspace_id = '{}'",
            workspace_uuid(&plain)
        ))
        .await,
        0
    );
    app.assert_usage_invariant().await;
}
