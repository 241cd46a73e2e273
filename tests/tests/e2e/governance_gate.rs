//! The gate: workspace policies and security settings enforced on every request that acts
//! in a workspace (MFA, session age, IP allow-list, TLS, rate limits), over HTTP.
//!
//! Settings are written with SQL here (their mutations have tests of their own), on servers
//! that cache them for 0 ms, so each request sees the row as it is.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tests::tokens::{Tokens, now};
use tests::{Options, TestApp, assert_code, assert_ok, workspace_uuid};

/// A server that reads workspace settings on every request (no caching), with `extra`.
async fn app_with(extra: &[(&str, &str)]) -> TestApp {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("GOVERNANCE_CACHE_MS".into(), "0".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    TestApp::with(Options { env }).await
}

fn reason(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["reason"].as_str()
}

fn assert_refused(body: &Value, why: &str) {
    assert_code(body, "FORBIDDEN");
    assert_eq!(reason(body), Some(why), "{body}");
}

const READ: &str =
    "query($w: ID!) { workspace(id: $w) { name organizations(first: 5) { nodes { id } } } }";
const CREATE_ORG: &str = "mutation($w: ID!) { createOrganization(input: {workspaceId: $w, name: \"Team\"}) { organization { id } } }";
const LIST: &str = "{ viewer { id } workspaces(first: 50) { nodes { id } } }";

/// POSTs `query` with `headers` as `token`; returns (status, headers, body).
async fn post(
    app: &TestApp,
    token: &str,
    headers: &[(&str, &str)],
    query: &str,
    variables: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = app
        .http
        .post(format!("{}/graphql", app.base))
        .bearer_auth(token)
        .json(&json!({"query": query, "variables": variables}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    (status, h, resp.json().await.expect("json"))
}

fn listed(body: &Value, ws: &str) -> bool {
    body["data"]["workspaces"]["nodes"]
        .as_array()
        .is_some_and(|n| n.iter().any(|w| w["id"] == ws))
}

#[tokio::test]
async fn mfa_required_refuses_tokens_without_mfa_everywhere_in_the_workspace() {
    let app = app_with(&[]).await;
    let owner = app.user("mfa-owner@example.com");
    let ws = app.create_workspace(&owner, "Guarded").await;
    let org = app.create_org(&owner, &ws, None, "Existing").await;
    let other = app.create_workspace(&owner, "Open").await;
    app.set_workspace_settings(&ws, "mfa_required", "true")
        .await;

    let plain = app.gql(&owner, READ, json!({"w": ws})).await;
    assert_refused(&plain, "MFA_REQUIRED");
    let created = app.gql(&owner, CREATE_ORG, json!({"w": ws})).await;
    assert_refused(&created, "MFA_REQUIRED");
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM organizations WHERE workspace_id = '{}'",
            workspace_uuid(&ws)
        ))
        .await,
        1,
        "a refused mutation changes nothing"
    );
    let by_id = app
        .gql(
            &owner,
            "query($o: ID!) { organization(id: $o) { name } }",
            json!({"o": org}),
        )
        .await;
    assert_refused(&by_id, "MFA_REQUIRED");
    let node = app
        .gql(
            &owner,
            "query($o: ID!) { node(id: $o) { id } }",
            json!({"o": org}),
        )
        .await;
    assert_refused(&node, "MFA_REQUIRED");
    // Lists leave the workspace out; the other workspace is untouched.
    let list = app.gql(&owner, LIST, json!({})).await;
    assert_ok(&list);
    assert!(!listed(&list, &ws) && listed(&list, &other), "{list}");
    assert_ok(&app.gql(&owner, READ, json!({"w": other})).await);

    // The same person, signed in with MFA (`amr` as a list, as OpenID Connect has it).
    let mfa = app.user_with_claims("mfa-owner@example.com", json!({"amr": ["pwd", "mfa"]}));
    assert_ok(&app.gql(&mfa, READ, json!({"w": ws})).await);
    assert_ok(&app.gql(&mfa, CREATE_ORG, json!({"w": ws})).await);
    assert!(listed(&app.gql(&mfa, LIST, json!({})).await, &ws));
    // `amr` without mfa is no better than none.
    let pwd = app.user_with_claims("mfa-owner@example.com", json!({"amr": ["pwd"]}));
    assert_refused(&app.gql(&pwd, READ, json!({"w": ws})).await, "MFA_REQUIRED");

    // A non-member learns nothing about the policy: the workspace is simply not there.
    let outsider = app.user("mfa-outsider@example.com");
    let seen = app.gql(&outsider, READ, json!({"w": ws})).await;
    assert_ok(&seen);
    assert_eq!(seen["data"]["workspace"], Value::Null);
    let foreign = app.gql(&outsider, CREATE_ORG, json!({"w": ws})).await;
    assert_code(&foreign, "NOT_FOUND");
}

#[tokio::test]
async fn session_timeout_refuses_old_sign_ins() {
    let app = app_with(&[]).await;
    let email = "session-owner@example.com";
    let owner = app.user(email);
    let ws = app.create_workspace(&owner, "Short sessions").await;
    app.set_workspace_settings(&ws, "session_timeout_minutes", "15")
        .await;

    // `auth_time` decides when present…
    let old = app.user_with_claims(email, json!({"auth_time": now() - 16 * 60}));
    assert_refused(
        &app.gql(&old, READ, json!({"w": ws})).await,
        "SESSION_EXPIRED",
    );
    let fresh = app.user_with_claims(email, json!({"auth_time": now() - 60}));
    assert_ok(&app.gql(&fresh, READ, json!({"w": ws})).await);
    // … even over a fresh `iat` (a refreshed token of an old sign-in).
    let refreshed = app.user_with_claims(email, json!({"auth_time": now() - 3600, "iat": now()}));
    assert_refused(
        &app.gql(&refreshed, READ, json!({"w": ws})).await,
        "SESSION_EXPIRED",
    );
    // Without `auth_time`, `iat` is the sign-in time.
    let old_iat = app.user_with_claims(email, json!({"iat": now() - 20 * 60}));
    assert_refused(
        &app.gql(&old_iat, READ, json!({"w": ws})).await,
        "SESSION_EXPIRED",
    );
    // A token that says nothing of its sign-in cannot prove it is recent.
    let mut bare = Tokens::claims(&format!("auth0|{email}"), email, true);
    bare.as_object_mut().expect("claims").remove("iat");
    let bare = app.tokens.hs256_claims(&bare);
    assert_refused(
        &app.gql(&bare, READ, json!({"w": ws})).await,
        "SESSION_EXPIRED",
    );
}

#[tokio::test]
async fn ip_allow_list_uses_the_socket_and_ignores_forwarded_headers_of_strangers() {
    let app = app_with(&[]).await;
    let owner = app.user("ip-owner@example.com");
    let ws = app.create_workspace(&owner, "Office only").await;
    app.set_workspace_settings(&ws, "ip_allow_list", "ARRAY['10.0.0.0/8', '2001:db8::/32']")
        .await;

    // The test client connects from 127.0.0.1.
    let (_, _, direct) = post(&app, &owner, &[], READ, json!({"w": ws})).await;
    assert_refused(&direct, "IP_NOT_ALLOWED");
    assert!(
        direct["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("127.0.0.1")),
        "{direct}"
    );
    // No trusted proxy is configured: a forwarded address is anyone's claim.
    for spoof in ["10.1.2.3", "2001:db8::1", "10.1.2.3, 10.4.5.6"] {
        let (_, _, b) = post(
            &app,
            &owner,
            &[("x-forwarded-for", spoof), ("forwarded", "for=10.1.2.3")],
            READ,
            json!({"w": ws}),
        )
        .await;
        assert_refused(&b, "IP_NOT_ALLOWED");
    }
    // One alert per address and hour, however many refusals.
    let mut alerts = 0;
    for _ in 0..50 {
        alerts = app
            .sql_count(&format!(
                "SELECT count(*) AS n FROM notifications
                  WHERE workspace_id = '{}' AND type = 'security.ip_refused'",
                workspace_uuid(&ws)
            ))
            .await;
        if alerts > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(alerts, 1);

    // Adding the loopback address lets the request in.
    app.set_workspace_settings(&ws, "ip_allow_list", "ARRAY['10.0.0.0/8', '127.0.0.1/32']")
        .await;
    assert_ok(&post(&app, &owner, &[], READ, json!({"w": ws})).await.2);
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let app = app_with(&[("TRUSTED_PROXIES", "127.0.0.1/32, ::1")]).await;
    let owner = app.user("proxy-owner@example.com");
    let ws = app.create_workspace(&owner, "Behind a proxy").await;
    app.set_workspace_settings(&ws, "ip_allow_list", "ARRAY['10.0.0.0/8', '2001:db8::/32']")
        .await;
    let read = |xff: &'static str| {
        let (app, owner, ws) = (&app, owner.clone(), ws.clone());
        async move {
            post(
                app,
                &owner,
                &[("x-forwarded-for", xff)],
                READ,
                json!({"w": ws}),
            )
            .await
            .2
        }
    };
    assert_ok(&read("10.1.2.3").await);
    assert_ok(&read("[2001:db8::7]:443").await);
    assert_refused(&read("192.0.2.1").await, "IP_NOT_ALLOWED");
    // The right-most untrusted hop is the client: a client cannot prepend its way in.
    assert_refused(&read("10.1.2.3, 192.0.2.1").await, "IP_NOT_ALLOWED");
    assert_ok(&read("192.0.2.1, 10.1.2.3").await);
    // Garbage in the header is not an address.
    assert_refused(&read("not-an-ip").await, "IP_NOT_ALLOWED");
    // Without the header, the proxy itself is the client.
    assert_refused(
        &post(&app, &owner, &[], READ, json!({"w": ws})).await.2,
        "IP_NOT_ALLOWED",
    );
}

#[tokio::test]
async fn require_tls_trusts_forwarded_proto_only_from_trusted_proxies() {
    let stranger = app_with(&[]).await;
    let owner = stranger.user("tls-owner@example.com");
    let ws = stranger.create_workspace(&owner, "TLS").await;
    stranger
        .set_workspace_settings(&ws, "require_tls", "true")
        .await;
    for headers in [vec![], vec![("x-forwarded-proto", "https")]] {
        let (_, _, b) = post(&stranger, &owner, &headers, READ, json!({"w": ws})).await;
        assert_refused(&b, "TLS_REQUIRED");
    }

    let proxied = app_with(&[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let owner = proxied.user("tls-owner2@example.com");
    let ws = proxied.create_workspace(&owner, "TLS").await;
    proxied
        .set_workspace_settings(&ws, "require_tls", "true")
        .await;
    let https = [("x-forwarded-proto", "https")];
    assert_ok(
        &post(&proxied, &owner, &https, READ, json!({"w": ws}))
            .await
            .2,
    );
    let http = [("x-forwarded-proto", "http")];
    assert_refused(
        &post(&proxied, &owner, &http, READ, json!({"w": ws}))
            .await
            .2,
        "TLS_REQUIRED",
    );
    assert_refused(
        &post(&proxied, &owner, &[], READ, json!({"w": ws})).await.2,
        "TLS_REQUIRED",
    );
}

/// Sleeps until at least `margin` remains of the current rate-limit window of `secs`.
async fn fresh_window(secs: i64, margin: f64) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let left = secs as f64 - t.rem_euclid(secs as f64);
    if left < margin {
        tokio::time::sleep(Duration::from_secs_f64(left + 0.05)).await;
    }
}

#[tokio::test]
async fn rate_limit_trips_with_retry_after_and_resets_in_the_next_window() {
    // Windows of 4 s: 60 requests per minute is a budget of 4 per window.
    let app = app_with(&[("RATE_LIMIT_WINDOW_SECS", "4")]).await;
    let owner = app.user("rate-owner@example.com");
    let ws = app.create_workspace(&owner, "Limited").await;
    let other = app.create_workspace(&owner, "Unlimited").await;
    let admin = app.user("rate-admin@example.com");
    app.add_member(&owner, &ws, "rate-admin@example.com", "ADMIN")
        .await;
    app.set_workspace_settings(&ws, "rate_limit_per_minute", "60")
        .await;

    fresh_window(4, 3.0).await;
    // The budget is the workspace's: two people share it.
    for who in [&owner, &admin, &owner, &admin] {
        let (status, _, b) = post(&app, who, &[], READ, json!({"w": ws})).await;
        assert_eq!(status, 200, "{b}");
        assert_ok(&b);
    }
    let (status, headers, b) = post(&app, &admin, &[], READ, json!({"w": ws})).await;
    assert_eq!(status, 429, "{b}");
    assert_code(&b, "RATE_LIMITED");
    let retry: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=4).contains(&retry), "{retry}");
    assert_eq!(b["errors"][0]["extensions"]["retryAfter"], json!(retry));
    // Mutations are refused too, and change nothing.
    let (status, _, b) = post(&app, &owner, &[], CREATE_ORG, json!({"w": ws})).await;
    assert_eq!(status, 429);
    assert_code(&b, "RATE_LIMITED");
    // Other workspaces, and requests that touch no workspace, are not limited.
    assert_ok(&post(&app, &owner, &[], READ, json!({"w": other})).await.2);
    assert_ok(&app.gql(&owner, "{ viewer { email } }", json!({})).await);

    tokio::time::sleep(Duration::from_secs(retry) + Duration::from_millis(100)).await;
    let (status, _, b) = post(&app, &owner, &[], READ, json!({"w": ws})).await;
    assert_eq!(status, 200, "{b}");
    assert_ok(&b);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM organizations WHERE workspace_id = '{}'",
            workspace_uuid(&ws)
        ))
        .await,
        0
    );
}

#[tokio::test]
async fn rate_limit_is_shared_by_every_api_process() {
    let app = app_with(&[("RATE_LIMIT_WINDOW_SECS", "6")]).await;
    let owner = app.user("shared-owner@example.com");
    let ws = app.create_workspace(&owner, "Two replicas").await;
    app.set_workspace_settings(&ws, "rate_limit_per_minute", "60")
        .await;
    let second = tests::processes::spawn_api_without_worker(
        "api-2",
        &app.db.url,
        &[
            ("GOVERNANCE_CACHE_MS", "0"),
            ("RATE_LIMIT_WINDOW_SECS", "6"),
        ],
    )
    .await;
    let bases = [app.base.clone(), second.base.clone()];

    fresh_window(6, 4.5).await;
    let mut admitted = 0;
    for i in 0..12 {
        let resp = app
            .http
            .post(format!("{}/graphql", bases[i % 2]))
            .bearer_auth(&owner)
            .json(&json!({"query": READ, "variables": {"w": ws}}))
            .send()
            .await
            .expect("request");
        if resp.status().as_u16() == 200 {
            admitted += 1;
        } else {
            assert_eq!(resp.status().as_u16(), 429);
        }
    }
    // 60 per minute over 6 s is 6, across both processes together.
    assert_eq!(admitted, 6);
}

#[tokio::test]
async fn an_idempotent_replay_is_held_to_the_policies_of_now() {
    let app = app_with(&[]).await;
    let email = "replay-owner@example.com";
    let owner = app.user(email);
    let ws = app.create_workspace(&owner, "Replays").await;
    let q = "mutation($w: ID!) { createOrganization(input: {workspaceId: $w, name: \"Once\", idempotencyKey: \"replay-1\"}) { organization { id name } } }";
    let first = app.gql(&owner, q, json!({"w": ws})).await;
    assert_ok(&first);
    // The same request again is a replay of the stored answer…
    assert_eq!(app.gql(&owner, q, json!({"w": ws})).await, first);
    // … until the workspace requires MFA: the replay shows its data, so the gate decides.
    app.set_workspace_settings(&ws, "mfa_required", "true")
        .await;
    assert_refused(&app.gql(&owner, q, json!({"w": ws})).await, "MFA_REQUIRED");
    let mfa = app.user_with_claims(email, json!({"amr": ["mfa"]}));
    assert_eq!(app.gql(&mfa, q, json!({"w": ws})).await, first);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM organizations WHERE workspace_id = '{}'",
            workspace_uuid(&ws)
        ))
        .await,
        1
    );
}

#[tokio::test]
async fn the_rate_limit_counts_operations_and_mutation_fields_not_http_requests() {
    // Windows of 6 s: 60 requests per minute is a budget of 6 per window.
    let app = app_with(&[("RATE_LIMIT_WINDOW_SECS", "6")]).await;
    let owner = app.user("ops-owner@example.com");
    let ws = app.create_workspace(&owner, "Counted").await;
    let org = app.create_org(&owner, &ws, None, "Root").await;
    app.set_workspace_settings(&ws, "rate_limit_per_minute", "60")
        .await;
    fresh_window(6, 4.0).await;
    // One request carrying a batch of 8 operations: 6 are served, 2 refused.
    let batch: Vec<Value> = (0..8)
        .map(|_| json!({"query": READ, "variables": {"w": ws}}))
        .collect();
    let (status, r) = app.gql_raw(Some(&owner), Value::Array(batch)).await;
    assert_eq!(status, 429, "{r}");
    let answers = r.as_array().expect("a batch answer");
    let served = answers.iter().filter(|a| a.get("errors").is_none()).count();
    let limited = answers
        .iter()
        .filter(|a| a["errors"][0]["extensions"]["code"] == "RATE_LIMITED")
        .count();
    assert_eq!((served, limited), (6, 2), "{r}");

    // In a fresh window: an aliased mutation costs one unit per field. Seven fields over a
    // budget of six are refused whole; three fit, then three more, then nothing.
    let fields = |n: usize| {
        let f: String = (0..n)
            .map(|i| format!("a{i}: recordUsage(input: {{organizationId: $o, resource: \"users\", delta: 1}}) {{ organization {{ id }} }} "))
            .collect();
        format!("mutation($o: ID!) {{ {f} }}")
    };
    fresh_window(6, 6.0).await;
    assert_code(
        &app.gql(&owner, &fields(7), json!({"o": org})).await,
        "RATE_LIMITED",
    );
    assert_ok(&app.gql(&owner, &fields(3), json!({"o": org})).await);
    assert_ok(&app.gql(&owner, &fields(3), json!({"o": org})).await);
    assert_code(
        &app.gql(&owner, &fields(3), json!({"o": org})).await,
        "RATE_LIMITED",
    );
    // The refused ones recorded nothing.
    fresh_window(6, 6.0).await;
    assert_eq!(app.numbers(&owner, &org, "users").await.0, 6);
}

#[tokio::test]
async fn listing_workspaces_charges_each_and_leaves_out_those_whose_budget_is_spent() {
    let app = app_with(&[("RATE_LIMIT_WINDOW_SECS", "6")]).await;
    let owner = app.user("list-owner@example.com");
    let ws = app.create_workspace(&owner, "Listed").await;
    let other = app.create_workspace(&owner, "Unlimited").await;
    app.set_workspace_settings(&ws, "rate_limit_per_minute", "60")
        .await;
    fresh_window(6, 4.0).await;
    let nested = "{ workspaces(first: 50) { nodes { id members { edges { node { id } } } organizations(first: 5) { nodes { id } } } } }";
    let listed = |r: &Value, id: &str| {
        r["data"]["workspaces"]["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|w| w["id"] == id))
    };
    // Each listing is an operation acting in each workspace it shows: six are served…
    for _ in 0..6 {
        let r = app.gql(&owner, nested, json!({})).await;
        assert_ok(&r);
        assert!(listed(&r, &ws) && listed(&r, &other), "{r}");
    }
    // …then the spent workspace is left out, fields and all, and by id it is refused.
    let r = app.gql(&owner, nested, json!({})).await;
    assert_ok(&r);
    assert!(!listed(&r, &ws) && listed(&r, &other), "{r}");
    assert_code(
        &app.gql(&owner, READ, json!({"w": ws})).await,
        "RATE_LIMITED",
    );
}

#[tokio::test]
async fn a_removed_member_s_replays_charge_nothing_and_reveal_no_policy() {
    let app = app_with(&[]).await;
    let owner = app.user("replay-gate-owner@example.com");
    let ws = app.create_workspace(&owner, "Replayed").await;
    let m = app.user("replay-gate-m@example.com");
    let member = app
        .add_member(&owner, &ws, "replay-gate-m@example.com", "ADMIN")
        .await;
    let keyed = "mutation($w: ID!) { createOrganization(input: {workspaceId: $w, name: \"Kept\", idempotencyKey: \"org-1\"}) { organization { id name } } }";
    assert_ok(&app.gql(&m, keyed, json!({"w": ws})).await);
    assert_ok(
        &app.gql(
            &owner,
            "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }",
            json!({"m": member}),
        )
        .await,
    );
    // Now the workspace requires MFA and allows 5 requests a minute.
    app.set_workspace_settings(&ws, "rate_limit_per_minute, mfa_required", "5, true")
        .await;
    fresh_window(60, 20.0).await;
    for _ in 0..20 {
        let r = app.gql(&m, keyed, json!({"w": ws})).await;
        assert_code(&r, "NOT_FOUND");
        assert!(!r.to_string().contains("multi-factor"), "{r}");
    }
    // The owner's budget is whole: five requests are served.
    let owner_mfa = app.user_with_claims(
        "replay-gate-owner@example.com",
        json!({"amr": ["pwd", "mfa"]}),
    );
    for _ in 0..5 {
        assert_ok(&post(&app, &owner_mfa, &[], READ, json!({"w": ws})).await.2);
    }
}
