//! Workspace templates over HTTP: the built-ins, `applyTemplate` (what it changes, its one
//! audit event, its enforcement, who may), custom templates and their isolation.
//!
//! The servers trust 127.0.0.1 as a proxy, and requests say `X-Forwarded-Proto: https`
//! (HEALTHCARE requires TLS; a plain request may not turn that on).

use std::collections::HashMap;

use serde_json::{Value, json};
use tests::{Options, TestApp, assert_code, assert_ok, workspace_uuid};

const BUILT_INS: [(&str, &str); 4] = [
    ("ENTERPRISE_STARTER", "tpl_00000000000070008000000000000001"),
    ("FINANCIAL_SERVICES", "tpl_00000000000070008000000000000002"),
    ("HEALTHCARE", "tpl_00000000000070008000000000000003"),
    ("GOVERNMENT", "tpl_00000000000070008000000000000004"),
];
const HEALTHCARE: &str = "tpl_00000000000070008000000000000003";
const FINANCIAL: &str = "tpl_00000000000070008000000000000002";

const LIST: &str = "query($p: Boolean, $w: ID) { templates(publicOnly: $p, workspaceId: $w) { id key name description builtIn public settings createdAt } }";
const APPLY: &str = "mutation($w: ID!, $t: ID!, $k: String) { applyTemplate(input: {workspaceId: $w, templateId: $t, idempotencyKey: $k}) { changes { field from to } approvalRequest { id status operation } settings { policy { mfaRequired sessionTimeoutMinutes externalIntegrationsAllowed approvalRequiredFor } security { requireTls ipAllowList encryptionAtRestRequired } retention { auditLogsDays executionLogsDays } } } }";
const SAVE: &str = "mutation($w: ID!, $k: String!, $n: String!, $d: String) { saveWorkspaceTemplate(input: {workspaceId: $w, key: $k, name: $n, description: $d}) { template { id key name description builtIn public settings createdAt } } }";
const DELETE: &str =
    "mutation($t: ID!) { deleteWorkspaceTemplate(input: {templateId: $t}) { deletedTemplateId } }";
const READ: &str = "query($w: ID!) { workspace(id: $w) { name } }";

/// A server that believes 127.0.0.1's `X-Forwarded-Proto`.
async fn app() -> TestApp {
    let env = HashMap::from([("TRUSTED_PROXIES".to_string(), "127.0.0.1".to_string())]);
    TestApp::with(Options { env }).await
}

/// POSTs an operation as `token`, over TLS as the trusted proxy reports it (or not).
async fn send(app: &TestApp, token: &str, tls: bool, query: &str, variables: Value) -> Value {
    let mut req = app
        .http
        .post(format!("{}/graphql", app.base))
        .bearer_auth(token)
        .json(&json!({"query": query, "variables": variables}));
    if tls {
        req = req.header("x-forwarded-proto", "https");
    }
    req.send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json body")
}

/// `send` over TLS.
async fn gql(app: &TestApp, token: &str, query: &str, variables: Value) -> Value {
    send(app, token, true, query, variables).await
}

fn keys(r: &Value) -> Vec<String> {
    r["data"]["templates"]
        .as_array()
        .unwrap_or_else(|| panic!("templates failed: {r}"))
        .iter()
        .map(|t| t["key"].as_str().expect("key").to_string())
        .collect()
}

fn change<'a>(changes: &'a Value, field: &str) -> &'a Value {
    changes
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["field"] == field)
        .unwrap_or_else(|| panic!("{field} did not change: {changes}"))
}

#[tokio::test]
async fn templates_lists_the_four_built_ins_with_fixed_ids() {
    let app = app().await;
    let owner = app.user("list-owner@example.com");
    let ws = app.create_workspace(&owner, "Listed").await;
    for vars in [
        json!({}),
        json!({"p": true}),
        json!({"p": false}),
        json!({"w": ws}),
    ] {
        let r = gql(&app, &owner, LIST, vars).await;
        assert_ok(&r);
        let list = r["data"]["templates"].as_array().expect("list");
        assert_eq!(list.len(), 4, "{r}");
        for (t, (key, id)) in list.iter().zip(BUILT_INS) {
            assert_eq!(t["key"], key);
            assert_eq!(t["id"], id);
            assert_eq!(t["builtIn"], true);
            assert_eq!(t["public"], true);
            assert!(t["createdAt"].is_null());
            assert!(t["name"].as_str().is_some_and(|n| !n.is_empty()));
            assert!(t["description"].as_str().is_some_and(|d| d.len() > 40));
            // No built-in carries an IP allow-list (it could lock the workspace out).
            assert!(
                t["settings"]["security"].get("ipAllowList").is_none(),
                "{t}"
            );
        }
        let hc = &list[2]["settings"];
        assert_eq!(hc["policy"]["mfaRequired"], true);
        assert_eq!(hc["policy"]["sessionTimeoutMinutes"], 15);
        assert_eq!(hc["policy"]["externalIntegrationsAllowed"], false);
        assert_eq!(hc["retention"]["auditLogsDays"], 2555);
        assert_eq!(hc["security"]["requireTls"], true);
        assert_eq!(
            list[3]["settings"]["policy"]["approvalRequiredFor"]
                .as_array()
                .map(Vec::len),
            Some(6)
        );
    }
}

#[tokio::test]
async fn applying_healthcare_changes_settings_once_audited_and_enforced() {
    let app = app().await;
    let owner = app.user("hc-owner@example.com");
    let ws = app.create_workspace(&owner, "Clinic").await;
    let id = workspace_uuid(&ws);
    app.add_member(&owner, &ws, "hc-admin@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &ws, "hc-viewer@example.com", "VIEWER")
        .await;
    // An IP allow-list the template must leave as it is (the test client is 127.0.0.1).
    app.set_workspace_settings(&ws, "ip_allow_list", "'{127.0.0.0/8}'")
        .await;
    let vars = json!({"w": ws, "t": HEALTHCARE});

    // Only owners apply templates; strangers do not see the workspace.
    for (who, code) in [
        ("hc-admin@example.com", "FORBIDDEN"),
        ("hc-viewer@example.com", "FORBIDDEN"),
        ("stranger@example.com", "NOT_FOUND"),
    ] {
        assert_code(&gql(&app, &app.user(who), APPLY, vars.clone()).await, code);
    }
    // HEALTHCARE requires TLS: a plain request may not turn it on (it would lock everyone out).
    let r = send(&app, &owner, false, APPLY, vars.clone()).await;
    assert_code(&r, "FAILED_PRECONDITION");
    let applied = "SELECT count(*) AS n FROM audit_events WHERE action = 'template.apply'";
    assert_eq!(app.sql_count(applied).await, 0);

    let r = gql(&app, &owner, APPLY, vars.clone()).await;
    assert_ok(&r);
    let out = &r["data"]["applyTemplate"];
    assert!(out["approvalRequest"].is_null(), "{r}");
    let changes = &out["changes"];
    assert_eq!(
        change(changes, "policy.mfaRequired"),
        &json!({"field": "policy.mfaRequired", "from": "false", "to": "true"})
    );
    assert_eq!(
        change(changes, "policy.sessionTimeoutMinutes"),
        &json!({"field": "policy.sessionTimeoutMinutes", "from": null, "to": "15"})
    );
    assert_eq!(
        change(changes, "policy.externalIntegrationsAllowed")["to"],
        "false"
    );
    assert_eq!(change(changes, "security.requireTls")["to"], "true");
    assert_eq!(change(changes, "quotas.members")["to"], "2000");
    assert_eq!(
        change(changes, "retention.executionLogsDays"),
        &json!({"field": "retention.executionLogsDays", "from": "365", "to": "2190"})
    );
    // Audit events were already kept seven years: not a change.
    assert!(
        changes
            .as_array()
            .expect("changes")
            .iter()
            .all(|c| c["field"] != "retention.auditLogsDays"
                && !c["field"].as_str().unwrap_or("").contains("ipAllowList")),
        "{changes}"
    );
    let s = &out["settings"];
    assert_eq!(s["policy"]["mfaRequired"], true);
    assert_eq!(s["policy"]["sessionTimeoutMinutes"], 15);
    assert_eq!(s["security"]["ipAllowList"], json!(["127.0.0.0/8"]));
    assert_eq!(s["security"]["encryptionAtRestRequired"], true);
    assert_eq!(
        s["retention"],
        json!({"auditLogsDays": 2555, "executionLogsDays": 2190})
    );
    assert_eq!(
        s["policy"]["approvalRequiredFor"],
        json!([
            "DELETE_ORGANIZATION",
            "PROMOTE_TO_OWNER",
            "CREATE_API_KEY",
            "CHANGE_SECURITY_SETTINGS"
        ])
    );
    // Stored as shown.
    let stored = format!(
        "SELECT count(*) AS n FROM workspace_settings WHERE workspace_id = '{id}' AND mfa_required
            AND session_timeout_minutes = 15 AND NOT external_integrations_allowed AND require_tls
            AND ip_allow_list = '{{127.0.0.0/8}}' AND 'application/dicom' = ANY(allowed_upload_types)"
    );
    assert_eq!(app.sql_count(&stored).await, 1);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM workspace_quotas WHERE workspace_id = '{id}' AND resource = 'members' AND quota = 2000"
        ))
        .await,
        1
    );
    // Exactly one event, naming the template and every change with before and after.
    assert_eq!(app.sql_count(applied).await, 1);
    let n = changes.as_array().map_or(0, Vec::len);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM audit_events WHERE action = 'template.apply'
                AND workspace_id = '{id}' AND summary->'template'->>'key' = 'HEALTHCARE'
                AND summary->'template'->>'id' = '{HEALTHCARE}'
                AND jsonb_array_length(summary->'changes') = {n}
                AND summary->'changes' @> '[{{\"field\": \"policy.mfaRequired\", \"from\": \"false\", \"to\": \"true\"}}]'"
        ))
        .await,
        1
    );

    // MFA is now required: a token without it is refused, one with it passes.
    let r = gql(&app, &owner, READ, json!({"w": ws})).await;
    assert_code(&r, "FORBIDDEN");
    assert_eq!(
        r["errors"][0]["extensions"]["reason"], "MFA_REQUIRED",
        "{r}"
    );
    let owner_mfa = app.user_with_claims("hc-owner@example.com", json!({"amr": ["pwd", "mfa"]}));
    assert_ok(&gql(&app, &owner_mfa, READ, json!({"w": ws})).await);

    // Applying it again changes nothing (and is audited with no changes).
    let r = gql(&app, &owner_mfa, APPLY, vars.clone()).await;
    assert_ok(&r);
    assert_eq!(r["data"]["applyTemplate"]["changes"], json!([]));
    assert!(r["data"]["applyTemplate"]["approvalRequest"].is_null());
    assert_eq!(app.sql_count(applied).await, 2);
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM audit_events WHERE action = 'template.apply' AND summary->'changes' = '[]'"
        )
        .await,
        1
    );

    // Unknown and malformed template ids are not found.
    for t in [
        "tpl_00000000000070008000000000000009",
        "nope",
        "ws_00000000000070008000000000000003",
    ] {
        assert_code(
            &gql(&app, &owner_mfa, APPLY, json!({"w": ws, "t": t})).await,
            "NOT_FOUND",
        );
    }
}

#[tokio::test]
async fn an_apply_with_an_idempotency_key_happens_once() {
    let app = app().await;
    let owner = app.user("idem-owner@example.com");
    let ws = app.create_workspace(&owner, "Once").await;
    let starter = BUILT_INS[0].1;
    let vars = json!({"w": ws, "t": starter, "k": "apply-1"});
    let first = gql(&app, &owner, APPLY, vars.clone()).await;
    assert_ok(&first);
    assert!(
        first["data"]["applyTemplate"]["changes"]
            .as_array()
            .is_some_and(|c| c.len() > 5),
        "{first}"
    );
    let again = gql(&app, &owner, APPLY, vars).await;
    assert_eq!(again, first);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events WHERE action = 'template.apply'")
            .await,
        1
    );
}

#[tokio::test]
async fn custom_templates_are_private_to_their_workspace() {
    let app = app().await;
    let owner_a = app.user("a-owner@example.com");
    let owner_b = app.user("b-owner@example.com");
    let ws_a = app.create_workspace(&owner_a, "A").await;
    let ws_b = app.create_workspace(&owner_b, "B").await;
    let (a, b) = (workspace_uuid(&ws_a), workspace_uuid(&ws_b));
    app.add_member(&owner_a, &ws_a, "a-admin@example.com", "ADMIN")
        .await;
    app.add_member(&owner_a, &ws_a, "a-viewer@example.com", "VIEWER")
        .await;
    let admin_a = app.user("a-admin@example.com");
    let viewer_a = app.user("a-viewer@example.com");
    app.set_workspace_settings(
        &ws_a,
        "session_timeout_minutes, blocked_email_domains, ip_allow_list",
        "60, '{spam.example}', '{127.0.0.1/32}'",
    )
    .await;
    app.sql_exec(&format!(
        "INSERT INTO workspace_quotas (workspace_id, resource, quota) VALUES ('{a}', 'locations', 7)"
    ))
    .await;

    // Validation.
    let save = |token: String, ws: String, key: &str, name: String| {
        let app = &app;
        let key = key.to_string();
        async move {
            gql(
                app,
                &token,
                SAVE,
                json!({"w": ws, "k": key, "n": name, "d": "Our baseline"}),
            )
            .await
        }
    };
    for bad in ["lower", "1ABC", "A-B", "", &"A".repeat(41)] {
        let r = save(owner_a.clone(), ws_a.clone(), bad, "Baseline".into()).await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], "key", "{r}");
    }
    let r = save(owner_a.clone(), ws_a.clone(), "GOOD", "x".repeat(101)).await;
    assert_code(&r, "BAD_USER_INPUT");
    assert_eq!(r["errors"][0]["extensions"]["field"], "name", "{r}");
    let r = gql(
        &app,
        &owner_a,
        SAVE,
        json!({"w": ws_a, "k": "GOOD", "n": "Good", "d": "d".repeat(501)}),
    )
    .await;
    assert_code(&r, "BAD_USER_INPUT");
    assert_eq!(r["errors"][0]["extensions"]["field"], "description", "{r}");
    assert_code(
        &save(owner_a.clone(), ws_a.clone(), "HEALTHCARE", "Mine".into()).await,
        "CONFLICT",
    );
    assert_code(
        &save(
            admin_a.clone(),
            ws_a.clone(),
            "ACME_BASELINE",
            "Baseline".into(),
        )
        .await,
        "FORBIDDEN",
    );
    assert_code(
        &save(
            owner_b.clone(),
            ws_a.clone(),
            "ACME_BASELINE",
            "Baseline".into(),
        )
        .await,
        "NOT_FOUND",
    );

    // Saved: a snapshot of the settings without the IP allow-list.
    let r = save(
        owner_a.clone(),
        ws_a.clone(),
        "ACME_BASELINE",
        "Baseline".into(),
    )
    .await;
    assert_ok(&r);
    let t = &r["data"]["saveWorkspaceTemplate"]["template"];
    let tpl = t["id"].as_str().expect("id").to_string();
    assert!(tpl.starts_with("tpl_"));
    assert_eq!(t["builtIn"], false);
    assert_eq!(t["public"], false);
    assert_eq!(t["description"], "Our baseline");
    assert!(t["createdAt"].is_string());
    assert_eq!(t["settings"]["policy"]["sessionTimeoutMinutes"], 60);
    assert_eq!(
        t["settings"]["policy"]["blockedEmailDomains"],
        json!(["spam.example"])
    );
    assert_eq!(t["settings"]["quotas"], json!({"locations": 7}));
    assert_eq!(t["settings"]["retention"]["auditLogsDays"], 2555);
    assert!(
        t["settings"]["security"].get("ipAllowList").is_none(),
        "{t}"
    );
    assert!(!t["settings"].to_string().contains("127.0.0.1"));
    assert_code(
        &save(
            owner_a.clone(),
            ws_a.clone(),
            "ACME_BASELINE",
            "Again".into(),
        )
        .await,
        "CONFLICT",
    );

    // Listed for the workspace's owners and admins only, never with publicOnly.
    let with_custom = vec![
        "ENTERPRISE_STARTER",
        "FINANCIAL_SERVICES",
        "HEALTHCARE",
        "GOVERNMENT",
        "ACME_BASELINE",
    ];
    for token in [&owner_a, &admin_a] {
        assert_eq!(
            keys(&gql(&app, token, LIST, json!({"w": ws_a})).await),
            with_custom
        );
    }
    let only_built_ins = &with_custom[..4];
    for (token, vars) in [
        (&owner_a, json!({"w": ws_a, "p": true})),
        (&owner_a, json!({})),
        (&viewer_a, json!({"w": ws_a})),
        (&owner_b, json!({"w": ws_a})),
        (&owner_b, json!({"w": ws_b})),
        (
            &owner_b,
            json!({"w": "ws_00000000000070008000000000000001"}),
        ),
        (&owner_b, json!({"w": "garbage"})),
    ] {
        assert_eq!(
            keys(&gql(&app, token, LIST, vars.clone()).await),
            only_built_ins,
            "{vars}"
        );
    }

    // Applied to its own workspace: back to what it saved.
    app.set_workspace_settings(&ws_a, "session_timeout_minutes", "120")
        .await;
    let r = gql(&app, &owner_a, APPLY, json!({"w": ws_a, "t": tpl})).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["applyTemplate"]["changes"],
        json!([{"field": "policy.sessionTimeoutMinutes", "from": "120", "to": "60"}])
    );
    assert_eq!(
        r["data"]["applyTemplate"]["settings"]["security"]["ipAllowList"],
        json!(["127.0.0.1/32"])
    );

    // Never to another workspace, whoever asks.
    assert_code(
        &gql(&app, &owner_b, APPLY, json!({"w": ws_b, "t": tpl})).await,
        "NOT_FOUND",
    );
    assert_code(
        &gql(&app, &owner_b, APPLY, json!({"w": ws_a, "t": tpl})).await,
        "NOT_FOUND",
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM audit_events WHERE workspace_id = '{b}' AND action LIKE 'template.%'"
        ))
        .await,
        0
    );

    // Deleted by its workspace's owner only; built-ins cannot be.
    assert_code(
        &gql(&app, &owner_b, DELETE, json!({"t": tpl})).await,
        "NOT_FOUND",
    );
    assert_code(
        &gql(&app, &admin_a, DELETE, json!({"t": tpl})).await,
        "FORBIDDEN",
    );
    assert_code(
        &gql(&app, &owner_a, DELETE, json!({"t": HEALTHCARE})).await,
        "BAD_USER_INPUT",
    );
    let r = gql(&app, &owner_a, DELETE, json!({"t": tpl})).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["deleteWorkspaceTemplate"]["deletedTemplateId"],
        tpl
    );
    assert_code(
        &gql(&app, &owner_a, DELETE, json!({"t": tpl})).await,
        "NOT_FOUND",
    );
    assert_code(
        &gql(&app, &owner_a, APPLY, json!({"w": ws_a, "t": tpl})).await,
        "NOT_FOUND",
    );
    for action in ["template.save", "template.delete", "template.apply"] {
        assert_eq!(
            app.sql_count(&format!(
                "SELECT count(*) AS n FROM audit_events WHERE workspace_id = '{a}' AND action = '{action}'"
            ))
            .await,
            1,
            "{action}"
        );
    }
}

#[tokio::test]
async fn a_workspace_has_at_most_fifty_custom_templates() {
    let app = app().await;
    let owner = app.user("many-owner@example.com");
    let ws = app.create_workspace(&owner, "Many").await;
    let id = workspace_uuid(&ws);
    app.sql_exec(&format!(
        "INSERT INTO workspace_templates (id, workspace_id, key, name, settings)
         SELECT gen_random_uuid(), '{id}', 'T' || i, 'Template ' || i, '{{}}'
           FROM generate_series(1, 50) AS i"
    ))
    .await;
    let r = gql(
        &app,
        &owner,
        SAVE,
        json!({"w": ws, "k": "ONE_MORE", "n": "One more"}),
    )
    .await;
    assert_code(&r, "LIMIT_EXCEEDED");
    assert_eq!(
        keys(&gql(&app, &owner, LIST, json!({"w": ws})).await).len(),
        54
    );
}

#[tokio::test]
async fn a_template_that_changes_security_settings_waits_for_approval() {
    let app = app().await;
    let owner = app.user("apr-owner@example.com");
    let ws = app.create_workspace(&owner, "Held").await;
    let id = workspace_uuid(&ws);
    app.add_member(&owner, &ws, "apr-owner2@example.com", "OWNER")
        .await;
    app.set_workspace_settings(&ws, "approval_required_for", "'{CHANGE_SECURITY_SETTINGS}'")
        .await;
    let r = gql(&app, &owner, APPLY, json!({"w": ws, "t": FINANCIAL})).await;
    assert_ok(&r);
    let out = &r["data"]["applyTemplate"];
    assert_eq!(out["changes"], json!([]));
    assert_eq!(out["approvalRequest"]["status"], "PENDING");
    assert_eq!(out["approvalRequest"]["operation"], "applyTemplate");
    assert_eq!(out["settings"]["policy"]["mfaRequired"], false);
    assert_eq!(out["settings"]["security"]["requireTls"], false);
    let request = out["approvalRequest"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let applied = "SELECT count(*) AS n FROM audit_events WHERE action = 'template.apply'";
    assert_eq!(app.sql_count(applied).await, 0);

    // A second owner approves: the template is applied once, as the requester saw it.
    let approve = "mutation($r: ID!) { approveRequest(input: {approvalRequestId: $r}) { approvalRequest { id status } } }";
    assert_code(
        &gql(&app, &owner, approve, json!({"r": request})).await,
        "FORBIDDEN",
    );
    let r = gql(
        &app,
        &app.user("apr-owner2@example.com"),
        approve,
        json!({"r": request}),
    )
    .await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["approveRequest"]["approvalRequest"]["status"],
        "APPROVED"
    );
    assert_eq!(app.sql_count(applied).await, 1);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM workspace_settings WHERE workspace_id = '{id}'
                AND mfa_required AND require_tls AND session_timeout_minutes = 30
                AND 'CHANGE_SUBSCRIPTION' = ANY(approval_required_for)"
        ))
        .await,
        1
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM audit_events WHERE action = 'template.apply'
                AND summary->>'approvalRequestId' = '{request}'
                AND summary->'template'->>'key' = 'FINANCIAL_SERVICES'
                AND jsonb_array_length(summary->'changes') > 10"
        ))
        .await,
        1
    );
}
