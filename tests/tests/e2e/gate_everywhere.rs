//! Rules over the whole schema. Every root field and every mutation, read from the schema
//! itself (so a field added tomorrow fails here until it is classified), is run against a
//! workspace with one of each object:
//! - under a refused IP, a missing MFA and a spent rate limit budget: each must be refused;
//! - by a stranger, with the workspace's ids and with missing ids of the same kinds: the
//!   answers must be the same and cost the same statements.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tests::fake_stripe::FakeStripe;
use tests::{TestApp, assert_ok, workspace_uuid};

use super::billing::{account, app_with_env, attach, subscribe};

/// What a field must do when the workspace's policies refuse the request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Answer the refusal (`FORBIDDEN` with the reason, or `RATE_LIMITED`).
    Refused,
    /// Leave the workspace out of the list it answers.
    LeftOut,
    /// Acts in no workspace (why).
    Exempt(&'static str),
}

/// Who sends the document.
#[derive(Debug, Clone, Copy, PartialEq)]
enum As {
    Owner,
    Invitee,
}

/// Every root field and mutation: what it must do, as whom, and the document that reaches the
/// fixture workspace through it (variables: see `fixture`).
const FIELDS: &[(&str, Expect, As, &str)] = &[
    // Queries.
    (
        "viewer",
        Expect::Exempt("the caller's own account"),
        As::Owner,
        "",
    ),
    (
        "workspace",
        Expect::Refused,
        As::Owner,
        "query($w: ID!) { workspace(id: $w) { id } }",
    ),
    (
        "workspaces",
        Expect::LeftOut,
        As::Owner,
        "{ workspaces(first: 50) { nodes { id } } }",
    ),
    (
        "organization",
        Expect::Refused,
        As::Owner,
        "query($o: ID!) { organization(id: $o) { id } }",
    ),
    (
        "node",
        Expect::Refused,
        As::Owner,
        "query($o: ID!) { node(id: $o) { id } }",
    ),
    (
        "job",
        Expect::Refused,
        As::Owner,
        "query($job: ID!) { job(id: $job) { id } }",
    ),
    (
        "dataExport",
        Expect::Refused,
        As::Owner,
        "query($dex: ID!) { dataExport(id: $dex) { id } }",
    ),
    (
        "archive",
        Expect::Refused,
        As::Owner,
        "query($arc: ID!) { archive(id: $arc) { id } }",
    ),
    (
        "approvalRequest",
        Expect::Refused,
        As::Owner,
        "query($apr: ID!) { approvalRequest(id: $apr) { id } }",
    ),
    (
        "templates",
        Expect::Refused,
        As::Owner,
        "query($w: ID!) { templates(workspaceId: $w) { id } }",
    ),
    // Mutations.
    (
        "createWorkspace",
        Expect::Exempt("creates a new workspace, which has no policies yet"),
        As::Owner,
        "",
    ),
    (
        "renameWorkspace",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { renameWorkspace(input: {workspaceId: $w, name: \"Renamed\"}) { workspace { id } } }",
    ),
    (
        "updateWorkspace",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { updateWorkspace(input: {workspaceId: $w, description: \"x\"}) { workspace { id } } }",
    ),
    (
        "deleteWorkspace",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { deleteWorkspace(input: {workspaceId: $w}) { deletedWorkspaceId } }",
    ),
    (
        "addMember",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { addMember(input: {workspaceId: $w, email: \"late@example.com\", role: VIEWER}) { invitation { id } } }",
    ),
    (
        "updateMemberRole",
        Expect::Refused,
        As::Owner,
        "mutation($m: ID!) { updateMemberRole(input: {memberId: $m, role: VIEWER}) { member { id } } }",
    ),
    (
        "removeMember",
        Expect::Refused,
        As::Owner,
        "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }",
    ),
    (
        "acceptInvitation",
        Expect::Refused,
        As::Invitee,
        "mutation($i: ID!) { acceptInvitation(input: {invitationId: $i}) { member { id } } }",
    ),
    (
        "declineInvitation",
        Expect::Exempt(
            "an invitee, no member yet, may always say no: nothing of the workspace is read",
        ),
        As::Invitee,
        "",
    ),
    (
        "revokeInvitation",
        Expect::Refused,
        As::Owner,
        "mutation($i: ID!) { revokeInvitation(input: {invitationId: $i}) { invitationId } }",
    ),
    (
        "resendInvitation",
        Expect::Refused,
        As::Owner,
        "mutation($i: ID!) { resendInvitation(input: {invitationId: $i}) { invitation { id } } }",
    ),
    (
        "createOrganization",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { createOrganization(input: {workspaceId: $w, name: \"New\"}) { organization { id } } }",
    ),
    (
        "renameOrganization",
        Expect::Refused,
        As::Owner,
        "mutation($o: ID!) { renameOrganization(input: {organizationId: $o, name: \"Renamed\"}) { organization { id } } }",
    ),
    (
        "moveOrganization",
        Expect::Refused,
        As::Owner,
        "mutation($o2: ID!, $o: ID!) { moveOrganization(input: {organizationId: $o2, newParentId: $o}) { organization { id } } }",
    ),
    (
        "deleteOrganization",
        Expect::Refused,
        As::Owner,
        "mutation($o2: ID!) { deleteOrganization(input: {organizationId: $o2}) { deletedOrganizationId } }",
    ),
    (
        "recordUsage",
        Expect::Refused,
        As::Owner,
        "mutation($o: ID!) { recordUsage(input: {organizationId: $o, resource: \"users\", delta: 1}) { organization { id } } }",
    ),
    (
        "setOrganizationLimit",
        Expect::Refused,
        As::Owner,
        "mutation($o: ID!) { setOrganizationLimit(input: {organizationId: $o, resource: \"users\", limit: 5}) { organization { id } } }",
    ),
    (
        "defineResource",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { defineResource(input: {workspaceId: $w, key: \"seats\", name: \"Seats\", unit: \"seat\", kind: ALLOCATED}) { resource { key } } }",
    ),
    (
        "createBillingAccount",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { createBillingAccount(input: {workspaceId: $w, name: \"Second\", email: \"b@example.com\"}) { billingAccount { id } } }",
    ),
    (
        "updateBillingAccount",
        Expect::Refused,
        As::Owner,
        "mutation($ba: ID!) { updateBillingAccount(input: {billingAccountId: $ba, name: \"Renamed\"}) { billingAccount { id } } }",
    ),
    (
        "deleteBillingAccount",
        Expect::Refused,
        As::Owner,
        "mutation($ba: ID!) { deleteBillingAccount(input: {billingAccountId: $ba}) { deletedBillingAccountId } }",
    ),
    (
        "assignBillingAccount",
        Expect::Refused,
        As::Owner,
        "mutation($o: ID!, $ba: ID!) { assignBillingAccount(input: {organizationId: $o, billingAccountId: $ba}) { organization { id } } }",
    ),
    (
        "createSetupIntent",
        Expect::Refused,
        As::Owner,
        "mutation($ba: ID!) { createSetupIntent(input: {billingAccountId: $ba}) { clientSecret } }",
    ),
    (
        "attachPaymentMethod",
        Expect::Refused,
        As::Owner,
        "mutation($ba: ID!, $card: String!) { attachPaymentMethod(input: {billingAccountId: $ba, paymentMethodId: $card}) { billingAccount { id } } }",
    ),
    (
        "setDefaultPaymentMethod",
        Expect::Refused,
        As::Owner,
        "mutation($pm: ID!) { setDefaultPaymentMethod(input: {paymentMethodId: $pm}) { billingAccount { id } } }",
    ),
    (
        "detachPaymentMethod",
        Expect::Refused,
        As::Owner,
        "mutation($pm: ID!) { detachPaymentMethod(input: {paymentMethodId: $pm}) { billingAccount { id } } }",
    ),
    (
        "createSubscription",
        Expect::Refused,
        As::Owner,
        "mutation($ba: ID!) { createSubscription(input: {billingAccountId: $ba, plan: ENTERPRISE, quantities: [], metadata: []}) { subscription { id } } }",
    ),
    (
        "updateSubscription",
        Expect::Refused,
        As::Owner,
        "mutation($sub: ID!) { updateSubscription(input: {subscriptionId: $sub, quantities: [{resource: \"users\", quantity: 3}]}) { subscription { id } } }",
    ),
    (
        "cancelSubscription",
        Expect::Refused,
        As::Owner,
        "mutation($sub: ID!) { cancelSubscription(input: {subscriptionId: $sub}) { subscription { id } } }",
    ),
    (
        "retryJob",
        Expect::Refused,
        As::Owner,
        "mutation($job: ID!) { retryJob(input: {jobId: $job}) { job { id } } }",
    ),
    (
        "generateAnalytics",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { generateAnalytics(input: {workspaceId: $w, period: CURRENT_MONTH}) { job { id } } }",
    ),
    (
        "updateRetentionSettings",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { updateRetentionSettings(input: {workspaceId: $w, auditLogsDays: 400}) { retentionSettings { auditLogsDays } } }",
    ),
    (
        "recordConsent",
        Expect::Exempt("between the person and the service"),
        As::Owner,
        "",
    ),
    (
        "requestDataExport",
        Expect::Refused,
        As::Owner,
        "mutation($usr: ID!) { requestDataExport(input: {userId: $usr}) { job { id } } }",
    ),
    (
        "eraseUser",
        Expect::Refused,
        As::Owner,
        "mutation($usr: ID!) { eraseUser(input: {userId: $usr}) { pseudonym } }",
    ),
    (
        "createWebhookEndpoint",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { createWebhookEndpoint(input: {workspaceId: $w, url: \"https://hooks.example.com/b\", eventTypes: []}) { webhookEndpoint { id } } }",
    ),
    (
        "deleteWebhookEndpoint",
        Expect::Refused,
        As::Owner,
        "mutation($we: ID!) { deleteWebhookEndpoint(input: {webhookEndpointId: $we}) { deletedWebhookEndpointId } }",
    ),
    (
        "updateIntegrationSettings",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { updateIntegrationSettings(input: {workspaceId: $w, emailRecipients: []}) { integrations { slackWebhookConfigured } } }",
    ),
    (
        "restoreArchive",
        Expect::Refused,
        As::Owner,
        "mutation($arc: ID!) { restoreArchive(input: {archiveId: $arc}) { job { id } } }",
    ),
    (
        "approveRequest",
        Expect::Refused,
        As::Owner,
        "mutation($apr: ID!) { approveRequest(input: {approvalRequestId: $apr}) { approvalRequest { id } } }",
    ),
    (
        "rejectRequest",
        Expect::Refused,
        As::Owner,
        "mutation($apr: ID!) { rejectRequest(input: {approvalRequestId: $apr}) { approvalRequest { id } } }",
    ),
    (
        "updateWorkspacePolicy",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { updateWorkspacePolicy(input: {workspaceId: $w, auditRetentionDays: 400}) { settings { policy { mfaRequired } } } }",
    ),
    (
        "updateSecuritySettings",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { updateSecuritySettings(input: {workspaceId: $w, vpnRequired: true}) { settings { security { vpnRequired } } } }",
    ),
    (
        "createApiKey",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { createApiKey(input: {workspaceId: $w, name: \"Second\", role: VIEWER}) { apiKey { id } } }",
    ),
    (
        "revokeApiKey",
        Expect::Refused,
        As::Owner,
        "mutation($key: ID!) { revokeApiKey(input: {apiKeyId: $key}) { apiKey { id } } }",
    ),
    (
        "updateQuotas",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { updateQuotas(input: {workspaceId: $w, quotas: [{resource: \"users\", limit: 50}]}) { quotas { resource } } }",
    ),
    (
        "saveWorkspaceTemplate",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!) { saveWorkspaceTemplate(input: {workspaceId: $w, key: \"AGAIN\", name: \"Again\"}) { template { id } } }",
    ),
    (
        "deleteWorkspaceTemplate",
        Expect::Refused,
        As::Owner,
        "mutation($tpl: ID!) { deleteWorkspaceTemplate(input: {templateId: $tpl}) { deletedTemplateId } }",
    ),
    (
        "applyTemplate",
        Expect::Refused,
        As::Owner,
        "mutation($w: ID!, $tpl: ID!) { applyTemplate(input: {workspaceId: $w, templateId: $tpl}) { changes { field } } }",
    ),
];

/// The names of the root fields of `kind` (`queryType`, `mutationType`), from the schema.
async fn schema_fields(app: &TestApp, token: &str, kind: &str) -> BTreeSet<String> {
    let r = app
        .gql(
            token,
            &format!("{{ __schema {{ {kind} {{ fields {{ name }} }} }} }}"),
            json!({}),
        )
        .await;
    r["data"]["__schema"][kind]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("introspection: {r}"))
        .iter()
        .filter_map(|f| f["name"].as_str().map(str::to_string))
        .collect()
}

/// `id` of a payload at `path` of `r`.
fn id_at(r: &Value, path: &[&str]) -> String {
    let mut v = &r["data"];
    for p in path {
        v = &v[p];
    }
    v.as_str()
        .unwrap_or_else(|| panic!("no id at {path:?}: {r}"))
        .to_string()
}

/// A workspace with one of each object the fields reach; the variables naming them.
async fn fixture(app: &TestApp, fake: &FakeStripe, owner: &str) -> (String, Value) {
    let ws = super::billing::workspace(app, owner, "SINGLE").await;
    let admin = app
        .add_member(owner, &ws, "gate-admin@example.com", "ADMIN")
        .await;
    let usr = id_at(
        &app.gql(
            &app.user("gate-admin@example.com"),
            "{ viewer { id } }",
            json!({}),
        )
        .await,
        &["viewer", "id"],
    );
    let invitation = app
        .invite(owner, &ws, "gate-invitee@example.com", "VIEWER")
        .await;
    let o = app.create_org(owner, &ws, None, "Root").await;
    let o2 = app.create_org(owner, &ws, None, "Second root").await;
    let ba = account(app, owner, &ws, "Main").await;
    let r = attach(app, owner, &ba, &fake.create_card("visa", "4242", 12, 2030)).await;
    let pm = r["data"]["attachPaymentMethod"]["billingAccount"]["paymentMethods"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("attach: {r}"))
        .to_string();
    let sub = subscribe(app, owner, &ba, "STARTER", json!([])).await["id"]
        .as_str()
        .expect("subscription")
        .to_string();
    let job = id_at(
        &app.gql(owner, "mutation($w: ID!) { generateAnalytics(input: {workspaceId: $w, period: CURRENT_MONTH}) { job { id } } }", json!({"w": ws})).await,
        &["generateAnalytics", "job", "id"],
    );
    let dex = id_at(
        &app.gql(
            owner,
            "mutation($u: ID!) { requestDataExport(input: {userId: $u}) { dataExport { id } } }",
            json!({"u": usr}),
        )
        .await,
        &["requestDataExport", "dataExport", "id"],
    );
    let we = id_at(
        &app.gql(owner, "mutation($w: ID!) { createWebhookEndpoint(input: {workspaceId: $w, url: \"https://hooks.example.com/a\", eventTypes: []}) { webhookEndpoint { id } } }", json!({"w": ws})).await,
        &["createWebhookEndpoint", "webhookEndpoint", "id"],
    );
    let key = id_at(
        &app.gql(owner, "mutation($w: ID!) { createApiKey(input: {workspaceId: $w, name: \"Key\", role: VIEWER}) { apiKey { id } } }", json!({"w": ws})).await,
        &["createApiKey", "apiKey", "id"],
    );
    let tpl = id_at(
        &app.gql(owner, "mutation($w: ID!) { saveWorkspaceTemplate(input: {workspaceId: $w, key: \"MINE\", name: \"Mine\"}) { template { id } } }", json!({"w": ws})).await,
        &["saveWorkspaceTemplate", "template", "id"],
    );
    // A held request: deleting an organization needs a second person's approval.
    app.set_workspace_settings(&ws, "approval_required_for", "ARRAY['DELETE_ORGANIZATION']")
        .await;
    let apr = id_at(
        &app.gql(owner, "mutation($o: ID!) { deleteOrganization(input: {organizationId: $o}) { approvalRequest { id } } }", json!({"o": o2})).await,
        &["deleteOrganization", "approvalRequest", "id"],
    );
    app.set_workspace_settings(&ws, "approval_required_for", "'{}'")
        .await;
    // An archive of the workspace's audit events.
    app.archive_audit_events(workspace_uuid(&ws)).await;
    let r = app
        .gql(
            owner,
            "query($w: ID!) { workspace(id: $w) { archives(first: 1) { nodes { id } } } }",
            json!({"w": ws}),
        )
        .await;
    let arc = r["data"]["workspace"]["archives"]["nodes"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("archives: {r}"))
        .to_string();
    let vars = json!({
        "w": ws, "o": o, "o2": o2, "m": admin, "i": invitation, "ba": ba, "pm": pm, "sub": sub,
        "card": fake.create_card("mastercard", "4444", 11, 2031), "job": job, "dex": dex,
        "arc": arc, "apr": apr, "we": we, "key": key, "tpl": tpl, "usr": usr,
    });
    (ws, vars)
}

/// Only the variables `doc` declares (GraphQL refuses none, but keeps the request honest).
fn variables_of(doc: &str, all: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in all.as_object().expect("variables") {
        if doc.contains(&format!("${k}:")) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

#[tokio::test]
async fn every_root_field_and_mutation_passes_the_workspace_s_policies() {
    let fake = FakeStripe::start().await;
    // Settings written with SQL apply at once (no cached copy).
    let app = app_with_env(&fake, &[("GOVERNANCE_CACHE_MS", "0")]).await;
    let owner = app.user("gate-owner@example.com");
    let invitee = app.user("gate-invitee@example.com");

    // The table covers the schema, no more, no less: a new field fails here until it is
    // classified.
    let mut in_schema = schema_fields(&app, &owner, "queryType").await;
    in_schema.extend(schema_fields(&app, &owner, "mutationType").await);
    let in_table: BTreeSet<String> = FIELDS.iter().map(|(f, ..)| f.to_string()).collect();
    assert_eq!(
        in_schema.difference(&in_table).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "root fields the gate walk does not cover yet: add them to FIELDS"
    );
    assert_eq!(
        in_table.difference(&in_schema).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "FIELDS names fields the schema no longer has"
    );

    let (ws, vars) = fixture(&app, &fake, &owner).await;
    let ws_uuid = workspace_uuid(&ws);
    let fingerprint = format!(
        "SELECT (SELECT count(*) FROM organizations WHERE workspace_id = '{ws_uuid}')
              + (SELECT count(*) FROM members WHERE workspace_id = '{ws_uuid}') * 100
              + (SELECT count(*) FROM invitations WHERE workspace_id = '{ws_uuid}') * 10000 AS n"
    );
    let before = app.sql_count(&fingerprint).await;
    // Control: with no policy, every query reaches the fixture (so a refusal below is the
    // gate's, not a missing object's).
    for (field, expect, _, doc) in FIELDS {
        if *expect == Expect::Refused && doc.starts_with("query") {
            let r = app.gql(&owner, doc, variables_of(doc, &vars)).await;
            assert_ok(&r);
            assert!(
                r["data"]
                    .as_object()
                    .is_some_and(|d| d.values().all(|v| !v.is_null())),
                "{field} does not reach the fixture: {r}"
            );
        }
    }

    let scenarios: [(&str, &str, &str, &str); 3] = [
        (
            "ip_allow_list",
            "ARRAY['10.0.0.0/8']",
            "'{}'",
            "IP_NOT_ALLOWED",
        ),
        ("mfa_required", "true", "false", "MFA_REQUIRED"),
        ("rate_limit_per_minute", "1", "NULL", "RATE_LIMITED"),
    ];
    for (column, on, off, why) in scenarios {
        app.set_workspace_settings(&ws, column, on).await;
        if why == "RATE_LIMITED" {
            // The budget of this window and the next ten is spent already.
            app.sql_exec(&format!(
                "INSERT INTO rate_limit_windows (scope, window_start, used, granted)
                 SELECT '{ws_uuid}', to_timestamp((floor(extract(epoch FROM now()) / 60) + i) * 60), 1, 1
                   FROM generate_series(0, 10) AS i
                 ON CONFLICT (scope, window_start) DO UPDATE SET used = 1"
            ))
            .await;
        }
        for (field, expect, who, doc) in FIELDS {
            let token = match who {
                As::Owner => &owner,
                As::Invitee => &invitee,
            };
            match expect {
                Expect::Exempt(_) => continue,
                Expect::LeftOut => {
                    let r = app.gql(token, doc, json!({})).await;
                    assert_ok(&r);
                    assert!(
                        !r.to_string().contains(&ws),
                        "{field} under {why} shows it: {r}"
                    );
                }
                Expect::Refused => {
                    let r = app.gql(token, doc, variables_of(doc, &vars)).await;
                    let e = &r["errors"][0]["extensions"];
                    let refused = match why {
                        "RATE_LIMITED" => e["code"] == "RATE_LIMITED",
                        _ => e["code"] == "FORBIDDEN" && e["reason"] == why,
                    };
                    assert!(refused, "{field} under {why} was not refused: {r}");
                }
            }
        }
        app.set_workspace_settings(&ws, column, off).await;
    }
    assert_eq!(
        app.sql_count(&fingerprint).await,
        before,
        "refusals change nothing"
    );
}

/// `vars` with every id of ours replaced by a missing id of the same kind (same prefix).
fn missing_ids(vars: &Value) -> Value {
    let mut out = vars.clone();
    for v in out.as_object_mut().expect("variables").values_mut() {
        if let Some((prefix, hex)) = v.as_str().and_then(|s| s.split_once('_'))
            && hex.len() == 32
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            *v = json!(format!("{prefix}_{}", uuid::Uuid::now_v7().simple()));
        }
    }
    out
}

/// `r` with the values of `vars` (ids) replaced, and request ids dropped.
fn comparable(r: &Value, vars: &Value) -> String {
    let mut text = r.to_string();
    for v in vars.as_object().expect("variables").values() {
        if let Some(s) = v.as_str() {
            text = text.replace(s, "<id>");
        }
    }
    let mut v: Value = serde_json::from_str(&text).expect("json");
    if let Some(errors) = v.get_mut("errors").and_then(Value::as_array_mut) {
        for e in errors {
            if let Some(ext) = e.get_mut("extensions").and_then(Value::as_object_mut) {
                ext.remove("requestId");
            }
        }
    }
    v.to_string()
}

#[tokio::test]
async fn every_id_taking_field_answers_a_foreign_id_like_a_missing_one_at_the_same_cost() {
    let fake = FakeStripe::start().await;
    let app = app_with_env(&fake, &[]).await;
    let owner = app.user("cost-owner@example.com");
    let (_, vars) = fixture(&app, &fake, &owner).await;
    // A stranger with a workspace of their own, signed in once (provisioning is cached).
    let stranger = app.user("cost-stranger@example.com");
    app.create_workspace(&stranger, "Elsewhere").await;
    assert_ok(&app.gql(&stranger, "{ viewer { id } }", json!({})).await);
    let missing = missing_ids(&vars);
    let mut unequal = Vec::new();
    for (field, expect, _, doc) in FIELDS {
        if *expect != Expect::Refused {
            continue;
        }
        let (foreign_vars, missing_vars) = (variables_of(doc, &vars), variables_of(doc, &missing));
        // Twice each, alternating: the second round compares warm caches with warm caches.
        let mut costs = Vec::new();
        let mut answers = Vec::new();
        for round in 0..2 {
            for v in [&foreign_vars, &missing_vars] {
                let before = app.statements().await;
                let r = app.gql(&stranger, doc, v.clone()).await;
                let cost = app.statements().await - before;
                if round == 1 {
                    costs.push(cost);
                    answers.push(comparable(&r, v));
                }
            }
        }
        assert_eq!(
            answers[0], answers[1],
            "{field}: a foreign id answers differently"
        );
        if costs[0] != costs[1] {
            unequal.push(format!(
                "{field}: foreign {} statements, missing {}",
                costs[0], costs[1]
            ));
        }
    }
    assert!(unequal.is_empty(), "existence told by cost: {unequal:#?}");
}

/// The object and list fields of type `ty`, with their arguments: (name, [(arg, type kind,
/// type name, required, first enum value)]).
async fn object_fields(app: &TestApp, token: &str, ty: &str) -> Vec<(String, Vec<Value>, String)> {
    let r = app
        .gql(
            token,
            "query($t: String!) { __type(name: $t) { fields { name
                type { kind name ofType { kind name ofType { kind name ofType { kind name } } } }
                args { name defaultValue type { kind name ofType { kind name enumValues { name } } } } } } }",
            json!({"t": ty}),
        )
        .await;
    let fields = r["data"]["__type"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("introspection of {ty}: {r}"));
    let leaf = |mut t: &Value| {
        while matches!(t["kind"].as_str(), Some("NON_NULL" | "LIST")) {
            t = &t["ofType"];
        }
        (
            t["kind"].as_str().unwrap_or_default().to_string(),
            t["name"].as_str().unwrap_or_default().to_string(),
        )
    };
    fields
        .iter()
        .filter(|f| matches!(leaf(&f["type"]).0.as_str(), "OBJECT" | "INTERFACE"))
        .map(|f| {
            (
                f["name"].as_str().unwrap_or_default().to_string(),
                f["args"].as_array().cloned().unwrap_or_default(),
                leaf(&f["type"]).1,
            )
        })
        .collect()
}

/// A value for a required argument the fixture can answer.
fn argument(field: &str, arg: &Value) -> Option<String> {
    let required = arg["type"]["kind"] == "NON_NULL" && arg["defaultValue"].is_null();
    if !required {
        return None;
    }
    let inner = &arg["type"]["ofType"];
    Some(
        match (
            inner["kind"].as_str(),
            inner["name"].as_str(),
            arg["name"].as_str(),
        ) {
            (Some("ENUM"), _, _) => inner["enumValues"][0]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            (_, Some("Int"), _) => "1".into(),
            (_, _, Some("resource")) => "\"users\"".into(),
            (_, _, Some("fileName")) => "\"report.pdf\"".into(),
            (_, _, Some("mimeType")) => "\"application/pdf\"".into(),
            _ => panic!("{field}: no value for its required argument {arg}"),
        },
    )
}

/// The types whose fields the statement tests walk, and a document reaching the fixture's
/// object of each (`SEL`: the selection).
const PARENTS: [(&str, &str); 3] = [
    ("Workspace", "query($w: ID!) { workspace(id: $w) { SEL } }"),
    (
        "Organization",
        "query($o: ID!) { organization(id: $o) { SEL } }",
    ),
    ("User", "{ viewer { SEL } }"),
];

#[tokio::test]
async fn aliases_and_batches_never_multiply_the_statements_of_a_field() {
    let fake = FakeStripe::start().await;
    // Settings stay cached for the whole test: only the fields' own statements count.
    let app = app_with_env(&fake, &[("GOVERNANCE_CACHE_MS", "60000")]).await;
    let owner = app.user("alias-owner@example.com");
    let (_, vars) = fixture(&app, &fake, &owner).await;
    let mut multiplied = Vec::new();
    for (ty, shell) in PARENTS {
        for (field, args, _) in object_fields(&app, &owner, ty).await {
            let call = call_of(&field, &args);
            let aliased = |n: usize| {
                let sel: String = (0..n)
                    .map(|i| format!("a{i}: {call} {{ __typename }} "))
                    .collect();
                shell.replace("SEL", &sel)
            };
            let (one, thirty) = (aliased(1), aliased(30));
            let v_one = variables_of(&one, &vars);
            let cost = |body: Value| {
                let app = &app;
                let owner = &owner;
                async move {
                    let before = app.statements().await;
                    let (_, r) = app.gql_raw(Some(owner), body).await;
                    (app.statements().await - before, r)
                }
            };
            // Warm up (caches, leases), then measure.
            let _ = cost(json!({"query": one, "variables": v_one})).await;
            let (c1, r1) = cost(json!({"query": one, "variables": v_one})).await;
            assert!(r1.get("errors").is_none(), "{ty}.{field}: {r1}");
            let (c30, r30) = cost(json!({"query": thirty, "variables": v_one})).await;
            assert!(r30.get("errors").is_none(), "{ty}.{field} ×30: {r30}");
            let batch: Vec<Value> = (0..10)
                .map(|_| json!({"query": one, "variables": v_one}))
                .collect();
            let (c10, _) = cost(Value::Array(batch)).await;
            if c30 > c1 + 2 || c10 > 10 * c1 + 2 {
                multiplied.push(format!(
                    "{ty}.{field}: 1 alias {c1}, 30 aliases {c30}, a batch of 10 {c10}"
                ));
            }
        }
    }
    assert!(
        multiplied.is_empty(),
        "statements multiplied: {multiplied:#?}"
    );
}

/// `field(args)` as a selection, with the values the fixture answers.
fn call_of(field: &str, args: &[Value]) -> String {
    let args: Vec<String> = args
        .iter()
        .filter_map(|a| {
            argument(field, a).map(|v| format!("{}: {v}", a["name"].as_str().unwrap_or_default()))
        })
        .collect();
    if args.is_empty() {
        field.to_string()
    } else {
        format!("{field}({})", args.join(", "))
    }
}

#[tokio::test]
async fn aliases_one_level_down_never_multiply_the_statements_either() {
    let fake = FakeStripe::start().await;
    let app = app_with_env(&fake, &[("GOVERNANCE_CACHE_MS", "60000")]).await;
    let owner = app.user("alias2-owner@example.com");
    let (_, vars) = fixture(&app, &fake, &owner).await;
    let mut multiplied = Vec::new();
    for (ty, shell) in PARENTS {
        for (field, args, child_type) in object_fields(&app, &owner, ty).await {
            // A connection's children are its nodes'.
            let (via, child_type) = match child_type.strip_suffix("Connection") {
                Some(node) => ("nodes { SUB }", node.to_string()),
                None => ("SUB", child_type),
            };
            let outer = format!("{} {{ {via} }}", call_of(&field, &args));
            for (child, child_args, _) in object_fields(&app, &owner, &child_type).await {
                let call = call_of(&child, &child_args);
                let doc = |n: usize| {
                    let sub: String = (0..n)
                        .map(|i| format!("a{i}: {call} {{ __typename }} "))
                        .collect();
                    shell.replace("SEL", &outer.replace("SUB", &sub))
                };
                let (one, thirty) = (doc(1), doc(30));
                let v = variables_of(&one, &vars);
                let mut cost = Vec::new();
                for (round, q) in [&one, &one, &thirty].into_iter().enumerate() {
                    let before = app.statements().await;
                    let (_, r) = app
                        .gql_raw(Some(&owner), json!({"query": q, "variables": v}))
                        .await;
                    assert!(r.get("errors").is_none(), "{ty}.{field}.{child}: {r}");
                    if round > 0 {
                        cost.push(app.statements().await - before);
                    }
                }
                if cost[1] > cost[0] + 2 {
                    multiplied.push(format!(
                        "{ty}.{field} {{ {child} }}: 1 alias {}, 30 aliases {}",
                        cost[0], cost[1]
                    ));
                }
            }
        }
    }
    assert!(
        multiplied.is_empty(),
        "statements multiplied: {multiplied:#?}"
    );
}
