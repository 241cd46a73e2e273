//! Workspace policy and security settings (`Workspace.settings`, `updateWorkspacePolicy`,
//! `updateSecuritySettings`) and the policies enforced outside the per-request gate: e-mail
//! domains at `addMember`, external integrations, upload types, audited billing reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{Options, TestApp, assert_code, assert_ok};

use super::webhooks::Worker;

const SETTINGS: &str = "query($w: ID!) { workspace(id: $w) { settings {
  policy { mfaRequired sessionTimeoutMinutes allowedEmailDomains blockedEmailDomains apiKeysAllowed
           apiKeyMaxLifetimeDays apiKeyMaxCount externalIntegrationsAllowed allowedUploadTypes
           blockedUploadTypes approvalRequiredFor approvalExpiryHours auditBillingReads
           auditRetentionDays }
  security { ipAllowList requireTls rateLimitPerMinute apiKeyRateLimitPerMinute
             encryptionAtRestRequired vpnRequired updatedAt }
  quotas { resource limit }
  retention { auditLogsDays usageEventsDays }
  integrations { webhookEndpoints { id url } slackWebhookConfigured }
  updatedAt } } }";

const POLICY: &str =
    "mutation($i: UpdateWorkspacePolicyInput!) { updateWorkspacePolicy(input: $i) {
  settings { policy { mfaRequired sessionTimeoutMinutes allowedEmailDomains blockedEmailDomains
    apiKeysAllowed apiKeyMaxLifetimeDays apiKeyMaxCount externalIntegrationsAllowed
    allowedUploadTypes blockedUploadTypes approvalRequiredFor approvalExpiryHours
    auditBillingReads auditRetentionDays } retention { auditLogsDays } }
  approvalRequest { id status action operation } } }";

const SECURITY: &str =
    "mutation($i: UpdateSecuritySettingsInput!) { updateSecuritySettings(input: $i) {
  settings { security { ipAllowList requireTls rateLimitPerMinute apiKeyRateLimitPerMinute
    encryptionAtRestRequired vpnRequired updatedAt } }
  approvalRequest { id status action operation } } }";

const AUDIT: &str = "query($w: ID!) { workspace(id: $w) { auditLog(first: 100) { edges { node {
  action targetType targetId summary actor { email } } } } } }";

/// A server and the workspace "Governed" of owner@example.com: (app, the owner's token,
/// the workspace id).
async fn governed() -> (TestApp, String, String) {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Governed").await;
    (app, owner, ws)
}

/// `input` with the workspace id added.
fn with_ws(ws: &str, mut input: Value) -> Value {
    input["workspaceId"] = json!(ws);
    json!({ "i": input })
}

async fn policy(app: &TestApp, token: &str, ws: &str, input: Value) -> Value {
    app.gql(token, POLICY, with_ws(ws, input)).await
}

async fn security(app: &TestApp, token: &str, ws: &str, input: Value) -> Value {
    app.gql(token, SECURITY, with_ws(ws, input)).await
}

/// The audit events of `ws` with `action`, newest first.
async fn audit_events(app: &TestApp, owner: &str, ws: &str, action: &str) -> Vec<Value> {
    let r = app.gql(owner, AUDIT, json!({"w": ws})).await;
    assert_ok(&r);
    r["data"]["workspace"]["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"].clone())
        .filter(|n| n["action"] == action)
        .collect()
}

fn reason(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["reason"].as_str()
}

#[track_caller]
fn assert_bad_input(body: &Value, field: &str) {
    assert_code(body, "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
}

#[tokio::test]
async fn settings_show_their_defaults_to_owners_and_admins_only() {
    let (app, owner, ws) = governed().await;
    app.add_member(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    let r = app.gql(&owner, SETTINGS, json!({"w": ws})).await;
    assert_ok(&r);
    let s = &r["data"]["workspace"]["settings"];
    assert_eq!(
        s["policy"],
        json!({"mfaRequired": false, "sessionTimeoutMinutes": null, "allowedEmailDomains": [],
               "blockedEmailDomains": [], "apiKeysAllowed": true, "apiKeyMaxLifetimeDays": null,
               "apiKeyMaxCount": null, "externalIntegrationsAllowed": true,
               "allowedUploadTypes": [], "blockedUploadTypes": [], "approvalRequiredFor": [],
               "approvalExpiryHours": 72, "auditBillingReads": false, "auditRetentionDays": 2555})
    );
    assert_eq!(
        s["security"],
        json!({"ipAllowList": [], "requireTls": false, "rateLimitPerMinute": null,
               "apiKeyRateLimitPerMinute": null, "encryptionAtRestRequired": false,
               "vpnRequired": false, "updatedAt": null})
    );
    assert_eq!(
        s["retention"],
        json!({"auditLogsDays": 2555, "usageEventsDays": 730})
    );
    assert_eq!(s["quotas"], json!([]));
    assert_eq!(
        s["integrations"],
        json!({"webhookEndpoints": [], "slackWebhookConfigured": false})
    );
    assert_eq!(s["updatedAt"], Value::Null);
    let admin = app.user("admin@example.com");
    let r = app.gql(&admin, SETTINGS, json!({"w": ws})).await;
    assert_ok(&r);
    assert_eq!(r["data"]["workspace"]["settings"], *s);
    let viewer = app.user("viewer@example.com");
    assert_code(
        &app.gql(&viewer, SETTINGS, json!({"w": ws})).await,
        "FORBIDDEN",
    );
    // A stranger does not see the workspace at all (as for a missing one).
    let stranger = app.user("stranger@example.com");
    let r = app.gql(&stranger, SETTINGS, json!({"w": ws})).await;
    assert_eq!(r, json!({"data": {"workspace": null}}));
}

#[tokio::test]
async fn policy_and_security_changes_round_trip_and_are_audited() {
    let (app, owner, ws) = governed().await;
    let r = policy(
        &app,
        &owner,
        &ws,
        json!({
            "sessionTimeoutMinutes": 600,
            "allowedEmailDomains": ["Example.COM", "example.com", "eu.example.org."],
            "blockedEmailDomains": ["spam.example.com"],
            "apiKeysAllowed": false,
            "apiKeyMaxLifetimeDays": 90,
            "apiKeyMaxCount": 5,
            "externalIntegrationsAllowed": false,
            "allowedUploadTypes": ["IMAGE/*", ".PDF"],
            "blockedUploadTypes": [".exe"],
            "approvalRequiredFor": ["DELETE_ORGANIZATION", "DELETE_ORGANIZATION", "CREATE_API_KEY"],
            "approvalExpiryHours": 24,
            "auditBillingReads": true,
            "auditRetentionDays": 400
        }),
    )
    .await;
    assert_ok(&r);
    let p = &r["data"]["updateWorkspacePolicy"];
    assert_eq!(p["approvalRequest"], Value::Null);
    assert_eq!(
        p["settings"]["policy"],
        json!({"mfaRequired": false, "sessionTimeoutMinutes": 600,
               "allowedEmailDomains": ["example.com", "eu.example.org"],
               "blockedEmailDomains": ["spam.example.com"], "apiKeysAllowed": false,
               "apiKeyMaxLifetimeDays": 90, "apiKeyMaxCount": 5,
               "externalIntegrationsAllowed": false, "allowedUploadTypes": ["image/*", ".pdf"],
               "blockedUploadTypes": [".exe"],
               "approvalRequiredFor": ["DELETE_ORGANIZATION", "CREATE_API_KEY"],
               "approvalExpiryHours": 24, "auditBillingReads": true, "auditRetentionDays": 400})
    );
    // One source of truth: the retention settings' audit days are the policy's.
    assert_eq!(p["settings"]["retention"], json!({"auditLogsDays": 400}));
    // Fields left out keep their value; null clears a nullable one.
    let r = policy(
        &app,
        &owner,
        &ws,
        json!({"sessionTimeoutMinutes": null, "apiKeyMaxCount": 0, "blockedUploadTypes": []}),
    )
    .await;
    assert_ok(&r);
    let now = &r["data"]["updateWorkspacePolicy"]["settings"]["policy"];
    assert_eq!(now["sessionTimeoutMinutes"], Value::Null);
    assert_eq!(now["apiKeyMaxCount"], 0);
    assert_eq!(now["blockedUploadTypes"], json!([]));
    assert_eq!(now["apiKeyMaxLifetimeDays"], 90);
    assert_eq!(
        now["allowedEmailDomains"],
        json!(["example.com", "eu.example.org"])
    );
    assert_eq!(now["auditRetentionDays"], 400);

    let r = security(
        &app,
        &owner,
        &ws,
        json!({
            "ipAllowList": ["127.0.0.1", "2001:DB8::1/32", "10.1.2.3/8", "10.0.0.0/8"],
            "rateLimitPerMinute": 100000,
            "apiKeyRateLimitPerMinute": 50000,
            "encryptionAtRestRequired": true,
            "vpnRequired": true
        }),
    )
    .await;
    assert_ok(&r);
    let s = &r["data"]["updateSecuritySettings"]["settings"]["security"];
    assert_eq!(
        s["ipAllowList"],
        json!(["127.0.0.1/32", "2001:db8::/32", "10.0.0.0/8"])
    );
    assert_eq!(s["requireTls"], false);
    assert_eq!(s["rateLimitPerMinute"], 100000);
    assert_eq!(s["apiKeyRateLimitPerMinute"], 50000);
    assert_eq!(s["encryptionAtRestRequired"], true);
    assert_eq!(s["vpnRequired"], true);
    assert!(s["updatedAt"].is_string(), "{s}");
    // The caller's address is in the list: it keeps working, and reads what it set.
    let r = app.gql(&owner, SETTINGS, json!({"w": ws})).await;
    assert_ok(&r);
    assert_eq!(r["data"]["workspace"]["settings"]["security"], *s);
    assert_eq!(r["data"]["workspace"]["settings"]["policy"], *now);
    let r = security(
        &app,
        &owner,
        &ws,
        json!({"ipAllowList": [], "apiKeyRateLimitPerMinute": null}),
    )
    .await;
    assert_ok(&r);
    let s = &r["data"]["updateSecuritySettings"]["settings"]["security"];
    assert_eq!(s["ipAllowList"], json!([]));
    assert_eq!(s["apiKeyRateLimitPerMinute"], Value::Null);
    assert_eq!(s["rateLimitPerMinute"], 100000);

    // Each change is audited with the fields it changed, before and after.
    let events = audit_events(&app, &owner, &ws, "policy.update").await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(
        events[0]["summary"],
        json!({"before": {"sessionTimeoutMinutes": 600, "apiKeyMaxCount": 5, "blockedUploadTypes": [".exe"]},
               "after": {"sessionTimeoutMinutes": null, "apiKeyMaxCount": 0, "blockedUploadTypes": []}})
    );
    assert_eq!(events[1]["summary"]["before"]["auditRetentionDays"], 2555);
    assert_eq!(events[1]["summary"]["after"]["auditRetentionDays"], 400);
    assert_eq!(events[1]["summary"]["before"]["mfaRequired"], Value::Null);
    assert_eq!(events[1]["targetType"], "Workspace");
    assert_eq!(events[1]["targetId"], ws.as_str());
    assert_eq!(events[1]["actor"]["email"], "owner@example.com");
    let events = audit_events(&app, &owner, &ws, "security.update").await;
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0]["summary"],
        json!({"before": {"ipAllowList": ["127.0.0.1/32", "2001:db8::/32", "10.0.0.0/8"], "apiKeyRateLimitPerMinute": 50000},
               "after": {"ipAllowList": [], "apiKeyRateLimitPerMinute": null}})
    );
}

#[tokio::test]
async fn invalid_settings_are_refused_naming_their_field() {
    let (app, owner, ws) = governed().await;
    let many_cidrs: Vec<String> = (0..201)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    let many_domains: Vec<String> = (0..101).map(|i| format!("d{i}.example.com")).collect();
    let huge = "1".repeat(100_000);
    for (input, field) in [
        (json!({"ipAllowList": ["10.0.0.0/33"]}), "ipAllowList"),
        (json!({"ipAllowList": ["example.com"]}), "ipAllowList"),
        (json!({"ipAllowList": [huge]}), "ipAllowList"),
        (json!({"ipAllowList": many_cidrs}), "ipAllowList"),
        (json!({"rateLimitPerMinute": 0}), "rateLimitPerMinute"),
        (
            json!({"apiKeyRateLimitPerMinute": 1_000_001}),
            "apiKeyRateLimitPerMinute",
        ),
    ] {
        let r = security(&app, &owner, &ws, input).await;
        assert_bad_input(&r, field);
        let message = r["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.len() < 300,
            "an unbounded message: {}",
            message.len()
        );
    }
    for (input, field) in [
        (
            json!({"allowedEmailDomains": ["not a domain"]}),
            "allowedEmailDomains",
        ),
        (
            json!({"blockedEmailDomains": ["localhost"]}),
            "blockedEmailDomains",
        ),
        (
            json!({"blockedEmailDomains": ["192.168.0.1"]}),
            "blockedEmailDomains",
        ),
        (
            json!({"allowedEmailDomains": many_domains}),
            "allowedEmailDomains",
        ),
        (json!({"allowedUploadTypes": ["png"]}), "allowedUploadTypes"),
        (json!({"blockedUploadTypes": ["*/*"]}), "blockedUploadTypes"),
        (json!({"sessionTimeoutMinutes": 4}), "sessionTimeoutMinutes"),
        (
            json!({"sessionTimeoutMinutes": 525_601}),
            "sessionTimeoutMinutes",
        ),
        (
            json!({"apiKeyMaxLifetimeDays": 3651}),
            "apiKeyMaxLifetimeDays",
        ),
        (json!({"apiKeyMaxCount": -1}), "apiKeyMaxCount"),
        (json!({"approvalExpiryHours": 0}), "approvalExpiryHours"),
        (json!({"auditRetentionDays": 29}), "auditRetentionDays"),
    ] {
        assert_bad_input(&policy(&app, &owner, &ws, input).await, field);
    }
    // Lock-out protection: the caller's own address (127.0.0.1 here) must stay allowed, and
    // TLS cannot be required from a plain request.
    let r = security(&app, &owner, &ws, json!({"ipAllowList": ["10.0.0.0/8"]})).await;
    assert_bad_input(&r, "ipAllowList");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("127.0.0.1")),
        "{r}"
    );
    assert_bad_input(
        &security(&app, &owner, &ws, json!({"requireTls": true})).await,
        "requireTls",
    );
    // Nothing was stored, and the owner still gets in.
    let r = app.gql(&owner, SETTINGS, json!({"w": ws})).await;
    assert_ok(&r);
    assert_eq!(r["data"]["workspace"]["settings"]["updatedAt"], Value::Null);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM workspace_settings")
            .await,
        0
    );
    // Owners only; strangers do not see the workspace.
    app.add_member(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    let admin = app.user("admin@example.com");
    assert_code(
        &policy(&app, &admin, &ws, json!({"mfaRequired": true})).await,
        "FORBIDDEN",
    );
    assert_code(
        &security(&app, &admin, &ws, json!({"vpnRequired": true})).await,
        "FORBIDDEN",
    );
    let stranger = app.user("stranger@example.com");
    let r1 = security(&app, &stranger, &ws, json!({"vpnRequired": true})).await;
    let r2 = security(
        &app,
        &stranger,
        "ws_0193a0a0a0a0a0a0a0a0a0a0a0a0a0a0",
        json!({"vpnRequired": true}),
    )
    .await;
    assert_code(&r1, "NOT_FOUND");
    assert_eq!(r1["errors"][0]["message"], r2["errors"][0]["message"]);
}

#[tokio::test]
async fn settings_changes_are_idempotent() {
    let (app, owner, ws) = governed().await;
    let input = json!({"approvalExpiryHours": 48, "idempotencyKey": "policy-1"});
    let first = policy(&app, &owner, &ws, input.clone()).await;
    assert_ok(&first);
    let again = policy(&app, &owner, &ws, input).await;
    assert_eq!(first, again);
    assert_eq!(
        audit_events(&app, &owner, &ws, "policy.update").await.len(),
        1
    );
    assert_code(
        &policy(
            &app,
            &owner,
            &ws,
            json!({"approvalExpiryHours": 12, "idempotencyKey": "policy-1"}),
        )
        .await,
        "IDEMPOTENCY_KEY_REUSED",
    );
    let input = json!({"vpnRequired": true, "idempotencyKey": "security-1"});
    let first = security(&app, &owner, &ws, input.clone()).await;
    assert_ok(&first);
    assert_eq!(first, security(&app, &owner, &ws, input).await);
    assert_eq!(
        audit_events(&app, &owner, &ws, "security.update")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn security_changes_and_weaker_approval_rules_wait_for_approval() {
    let (app, owner, ws) = governed().await;
    // Adding rules is never held.
    let r = policy(
        &app,
        &owner,
        &ws,
        json!({"approvalRequiredFor": ["CHANGE_SECURITY_SETTINGS", "CREATE_API_KEY"]}),
    )
    .await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["updateWorkspacePolicy"]["approvalRequest"],
        Value::Null
    );
    let r = security(&app, &owner, &ws, json!({"rateLimitPerMinute": 500})).await;
    assert_ok(&r);
    let security_held = r["data"]["updateSecuritySettings"].clone();
    let held = &security_held;
    assert_eq!(held["approvalRequest"]["status"], "PENDING");
    assert_eq!(
        held["approvalRequest"]["action"],
        "CHANGE_SECURITY_SETTINGS"
    );
    assert_eq!(
        held["approvalRequest"]["operation"],
        "updateSecuritySettings"
    );
    assert_eq!(
        held["settings"]["security"]["rateLimitPerMinute"],
        Value::Null
    );
    // Removing a rule is held too (else the rule could go first and security change alone).
    let r = policy(
        &app,
        &owner,
        &ws,
        json!({"approvalRequiredFor": ["CHANGE_SECURITY_SETTINGS"], "approvalExpiryHours": 5}),
    )
    .await;
    assert_ok(&r);
    let policy_held = r["data"]["updateWorkspacePolicy"].clone();
    let held = &policy_held;
    assert_eq!(held["approvalRequest"]["status"], "PENDING");
    assert_eq!(
        held["approvalRequest"]["operation"],
        "updateWorkspacePolicy"
    );
    assert_eq!(
        held["settings"]["policy"]["approvalRequiredFor"],
        json!(["CHANGE_SECURITY_SETTINGS", "CREATE_API_KEY"])
    );
    assert_eq!(held["settings"]["policy"]["approvalExpiryHours"], 72);
    // Other policy changes go through.
    let r = policy(
        &app,
        &owner,
        &ws,
        json!({"approvalRequiredFor": ["CHANGE_SECURITY_SETTINGS", "CREATE_API_KEY", "DELETE_ORGANIZATION"]}),
    )
    .await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["updateWorkspacePolicy"]["approvalRequest"],
        Value::Null
    );
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM approval_requests WHERE status = 'PENDING' AND action = 'CHANGE_SECURITY_SETTINGS'"
        )
        .await,
        2
    );
    assert_eq!(
        audit_events(&app, &owner, &ws, "security.update")
            .await
            .len(),
        0
    );
    // A second owner approves: each change is made once, as the requester asked it.
    app.add_member(&owner, &ws, "second@example.com", "OWNER")
        .await;
    let second = app.user("second@example.com");
    let approve = "mutation($r: ID!) { approveRequest(input: {approvalRequestId: $r}) { approvalRequest { status } } }";
    for held in [&security_held, &policy_held] {
        let r = app
            .gql(
                &second,
                approve,
                json!({"r": held["approvalRequest"]["id"]}),
            )
            .await;
        assert_ok(&r);
        assert_eq!(
            r["data"]["approveRequest"]["approvalRequest"]["status"],
            "APPROVED"
        );
    }
    let r = app.gql(&owner, SETTINGS, json!({"w": ws})).await;
    assert_ok(&r);
    let s = &r["data"]["workspace"]["settings"];
    assert_eq!(s["security"]["rateLimitPerMinute"], 500);
    assert_eq!(
        s["policy"]["approvalRequiredFor"],
        json!(["CHANGE_SECURITY_SETTINGS"])
    );
    assert_eq!(s["policy"]["approvalExpiryHours"], 5);
    let events = audit_events(&app, &owner, &ws, "security.update").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["actor"]["email"], "owner@example.com");
    assert_eq!(
        events[0]["summary"],
        json!({"before": {"rateLimitPerMinute": null}, "after": {"rateLimitPerMinute": 500}})
    );
}

#[tokio::test]
async fn add_member_accepts_only_allowed_e_mail_domains() {
    let (app, owner, ws) = governed().await;
    assert_ok(
        &policy(
            &app,
            &owner,
            &ws,
            json!({"allowedEmailDomains": ["example.com"], "blockedEmailDomains": ["contractors.example.com"]}),
        )
        .await,
    );
    for ok in ["a@example.com", "B@EU.Example.com"] {
        assert_ok(&app.try_add_member(&owner, &ws, ok, "VIEWER").await);
    }
    for refused in [
        "c@other.org",
        "d@notexample.com",
        "e@example.com.evil.org",
        "f@contractors.example.com",
        "g@x.contractors.example.com",
    ] {
        let r = app.try_add_member(&owner, &ws, refused, "VIEWER").await;
        assert_code(&r, "FORBIDDEN");
        assert_eq!(reason(&r), Some("DOMAIN_NOT_ALLOWED"), "{refused}: {r}");
    }
    // Only the blocked list: everyone else is welcome.
    assert_ok(&policy(&app, &owner, &ws, json!({"allowedEmailDomains": []})).await);
    assert_ok(
        &app.try_add_member(&owner, &ws, "h@other.org", "VIEWER")
            .await,
    );
    let r = app
        .try_add_member(&owner, &ws, "i@contractors.example.com", "VIEWER")
        .await;
    assert_eq!(reason(&r), Some("DOMAIN_NOT_ALLOWED"));
    // The owner and three invitations (nobody joins before accepting).
    assert_eq!(
        app.sql_count(
            "SELECT (SELECT count(*) FROM members) + (SELECT count(*) FROM invitations) AS n"
        )
        .await,
        4
    );
}

type Hits = Arc<Mutex<Vec<Value>>>;

/// A webhook receiver on loopback that accepts everything and keeps the bodies.
async fn receiver() -> (String, Hits) {
    let hits: Hits = Arc::default();
    let router = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(hits): axum::extract::State<Hits>,
                 body: axum::body::Bytes| async move {
                    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    hits.lock().expect("hits").push(v);
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a receiver");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}/hook"), hits)
}

const DELIVERIES: &str = "query($w: ID!, $s: NotificationDeliveryStatus) { workspace(id: $w) {
  notificationDeliveries(first: 50, status: $s) { edges { node {
    status attempts lastError event { type data } } } } } }";

async fn deliveries(app: &TestApp, token: &str, ws: &str, status: &str) -> Vec<Value> {
    let r = app
        .gql(token, DELIVERIES, json!({"w": ws, "s": status}))
        .await;
    assert_ok(&r);
    r["data"]["workspace"]["notificationDeliveries"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

async fn wait_for_deliveries(
    app: &TestApp,
    token: &str,
    ws: &str,
    status: &str,
    n: usize,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = deliveries(app, token, ws, status).await;
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{n} {status} deliveries never came: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn integrations_off_refuses_new_destinations_keeps_stored_ones_and_skips_deliveries() {
    let app = TestApp::with(Options {
        env: HashMap::from([(
            "INTEGRATIONS_ALLOW_HTTP_LOOPBACK".to_string(),
            "true".to_string(),
        )]),
    })
    .await;
    let (url, hits) = receiver().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Governed").await;
    let create = "mutation($w: ID!, $u: String!) { createWebhookEndpoint(input: {workspaceId: $w, url: $u}) { webhookEndpoint { id } } }";
    let r = app.gql(&owner, create, json!({"w": ws, "u": url})).await;
    assert_ok(&r);
    let endpoint = r["data"]["createWebhookEndpoint"]["webhookEndpoint"]["id"].clone();
    let update = "mutation($w: ID!, $s: String, $r: [EmailRecipientsInput!]) { updateIntegrationSettings(input: {workspaceId: $w, slackWebhookUrl: $s, emailRecipients: $r}) { integrations { slackWebhookConfigured } } }";
    assert_ok(
        &app.gql(
            &owner,
            update,
            json!({"w": ws, "r": [{"category": "QUOTA_WARNINGS", "addresses": ["ops@example.com"]}]}),
        )
        .await,
    );

    assert_ok(
        &policy(
            &app,
            &owner,
            &ws,
            json!({"externalIntegrationsAllowed": false}),
        )
        .await,
    );
    let r = app
        .gql(
            &owner,
            create,
            json!({"w": ws, "u": format!("{url}?second")}),
        )
        .await;
    assert_code(&r, "FORBIDDEN");
    assert_eq!(reason(&r), Some("INTEGRATIONS_DISABLED"));
    for vars in [
        json!({"w": ws, "s": "https://hooks.slack.com/services/T0/B0/abcd"}),
        json!({"w": ws, "r": [{"category": "SECURITY_ALERTS", "addresses": ["sec@example.com"]}]}),
    ] {
        let r = app.gql(&owner, update, vars).await;
        assert_eq!(reason(&r), Some("INTEGRATIONS_DISABLED"), "{r}");
    }
    // Removing stays possible; what was stored stays stored.
    assert_ok(
        &app.gql(
            &owner,
            update,
            json!({"w": ws, "r": [{"category": "QUOTA_WARNINGS", "addresses": []}]}),
        )
        .await,
    );
    let r = app.gql(&owner, SETTINGS, json!({"w": ws})).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["workspace"]["settings"]["integrations"]["webhookEndpoints"],
        json!([{"id": endpoint, "url": url}])
    );

    // A notification while it is off: its delivery is skipped and says why; nothing is sent.
    let worker = Worker::start(&app);
    app.add_member(&owner, &ws, "second@example.com", "OWNER")
        .await;
    let skipped = wait_for_deliveries(&app, &owner, &ws, "SKIPPED", 1).await;
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["attempts"], 0);
    assert!(
        skipped[0]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("externalIntegrationsAllowed")),
        "{skipped:#?}"
    );
    assert_eq!(skipped[0]["event"]["data"]["email"], "second@example.com");
    // Back on: the same endpoint receives the next one.
    assert_ok(
        &policy(
            &app,
            &owner,
            &ws,
            json!({"externalIntegrationsAllowed": true}),
        )
        .await,
    );
    app.add_member(&owner, &ws, "third@example.com", "OWNER")
        .await;
    let delivered = wait_for_deliveries(&app, &owner, &ws, "DELIVERED", 1).await;
    assert_eq!(delivered[0]["event"]["data"]["email"], "third@example.com");
    worker.stop().await;
    let got = hits.lock().expect("hits").clone();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["data"]["email"], "third@example.com");
    assert_eq!(deliveries(&app, &owner, &ws, "SKIPPED").await.len(), 1);
}

#[tokio::test]
async fn validate_upload_answers_by_type_wildcard_and_extension() {
    let (app, owner, ws) = governed().await;
    app.add_member(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    let viewer = app.user("viewer@example.com");
    let q = "query($w: ID!, $f: String!, $m: String!) { workspace(id: $w) { validateUpload(fileName: $f, mimeType: $m) { allowed reason } } }";
    let check = async |f: &str, m: &str| {
        let r = app.gql(&viewer, q, json!({"w": ws, "f": f, "m": m})).await;
        assert_ok(&r);
        r["data"]["workspace"]["validateUpload"].clone()
    };
    // No policy: anything goes.
    assert_eq!(
        check("setup.exe", "application/x-msdownload").await,
        json!({"allowed": true, "reason": null})
    );
    assert_ok(
        &policy(
            &app,
            &owner,
            &ws,
            json!({"allowedUploadTypes": ["image/*", ".pdf", "text/csv"],
                   "blockedUploadTypes": [".exe", "image/svg+xml"]}),
        )
        .await,
    );
    for (f, m) in [
        ("cat.png", "image/png"),
        ("paper.PDF", "application/octet-stream"),
        ("data.csv", "text/csv; charset=utf-8"),
    ] {
        assert_eq!(check(f, m).await["allowed"], true, "{f} {m}");
    }
    for (f, m, why) in [
        ("setup.exe", "application/x-msdownload", ".exe"),
        ("photo.exe", "image/png", ".exe"),
        ("setup.exe. ", "image/png", ".exe"),
        ("logo.svg", "image/svg+xml", "image/svg+xml"),
        ("notes.txt", "text/plain", "accepts only"),
        ("evil\t.pdf", "application/pdf", "control"),
    ] {
        let v = check(f, m).await;
        assert_eq!(v["allowed"], false, "{f} {m}");
        assert!(
            v["reason"].as_str().is_some_and(|r| r.contains(why)),
            "{f}: {v}"
        );
    }
    let long = "a".repeat(256);
    for (f, m, field) in [
        ("evil\u{0}.pdf", "application/pdf", "fileName"),
        (long.as_str(), "image/png", "fileName"),
        ("a.png", long.as_str(), "mimeType"),
    ] {
        let r = app.gql(&viewer, q, json!({"w": ws, "f": f, "m": m})).await;
        assert_bad_input(&r, field);
    }
    let stranger = app.user("stranger@example.com");
    assert_eq!(
        app.gql(
            &stranger,
            q,
            json!({"w": ws, "f": "a.png", "m": "image/png"}),
        )
        .await,
        json!({"data": {"workspace": null}})
    );
}

#[tokio::test]
async fn billing_reads_are_audited_once_per_request_when_the_policy_says_so() {
    let app = TestApp::with(Options {
        env: HashMap::from([("GOVERNANCE_CACHE_MS".to_string(), "60000".to_string())]),
    })
    .await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Governed").await;
    app.add_member(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    let admin = app.user("admin@example.com");
    let read =
        "query($w: ID!) { workspace(id: $w) { a: billingAccounts { id } b: billingAccounts { id }
      billingSummary { currentPeriodCents } } }";
    let count = async || {
        app.sql_count("SELECT count(*) AS n FROM audit_events WHERE action = 'billing.read'")
            .await
    };
    // Off (the default): no event, and no statement for it.
    assert_ok(&app.gql(&admin, read, json!({"w": ws})).await);
    let before = app.statements().await;
    assert_ok(&app.gql(&admin, read, json!({"w": ws})).await);
    let off = app.statements().await - before;
    assert_eq!(count().await, 0);

    assert_ok(&policy(&app, &owner, &ws, json!({"auditBillingReads": true})).await);
    assert_ok(&app.gql(&admin, read, json!({"w": ws})).await);
    assert_eq!(count().await, 1);
    let before = app.statements().await;
    assert_ok(&app.gql(&admin, read, json!({"w": ws})).await);
    let on = app.statements().await - before;
    assert_eq!(count().await, 2);
    assert_eq!(on, off + 1, "one statement (the event) per audited request");
    // Reads of other data are not billing reads.
    assert_ok(
        &app.gql(
            &admin,
            "query($w: ID!) { workspace(id: $w) { name } }",
            json!({"w": ws}),
        )
        .await,
    );
    assert_eq!(count().await, 2);
    let events = audit_events(&app, &owner, &ws, "billing.read").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["actor"]["email"], "admin@example.com");
    assert_eq!(events[0]["targetId"], ws.as_str());
    // Off again: no more events.
    assert_ok(&policy(&app, &owner, &ws, json!({"auditBillingReads": false})).await);
    assert_ok(&app.gql(&admin, read, json!({"w": ws})).await);
    assert_eq!(count().await, 2);
}
