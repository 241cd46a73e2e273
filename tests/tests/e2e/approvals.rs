//! Approval workflows over HTTP: sensitive mutations held as pending requests when the
//! workspace requires approval for their action, approved by a different owner or admin
//! (executed exactly once, even when approved twice at the same time), rejected, withdrawn or
//! expired, and read by owners and admins only.
//!
//! The policy (`approval_required_for`) is written with SQL: its mutation has tests of its
//! own, and is itself held once approvals are on.

use serde_json::{Value, json};
use tests::fake_stripe::FakeStripe;
use tests::{TestApp, assert_code, assert_ok, error_code, id_uuid};

const DELETE_ORG: &str = "mutation($o: ID!, $k: String) {
    deleteOrganization(input: {organizationId: $o, idempotencyKey: $k}) {
        deletedOrganizationId approvalRequest { id status action operation targetType targetId } } }";
const APPROVE: &str = "mutation($id: ID!, $k: String) {
    approveRequest(input: {approvalRequestId: $id, idempotencyKey: $k}) {
        approvalRequest { id status reason result decidedAt requestedBy { email } decidedBy { email } } } }";
const REJECT: &str = "mutation($id: ID!, $r: String) {
    rejectRequest(input: {approvalRequestId: $id, reason: $r}) {
        approvalRequest { id status reason decidedBy { email } } } }";
const READ: &str = "query($id: ID!) { approvalRequest(id: $id) {
    id status action operation targetType targetId reason result expiresAt
    requestedBy { email } decidedBy { email } } }";
const LIST: &str = "query($w: ID!, $s: ApprovalStatus, $f: Int, $a: String) { workspace(id: $w) {
    approvalRequests(status: $s, first: $f, after: $a) {
        pageInfo { hasNextPage endCursor } edges { node { id status operation } } } } }";
const ORG: &str = "query($o: ID!) { organization(id: $o) { id } }";
const AUDIT: &str = "query($w: ID!) { workspace(id: $w) { auditLog(first: 100) {
    edges { node { action targetId summary actor { email } } } } } }";

/// Requires approval in `ws` for `actions` (SQL).
async fn require(app: &TestApp, ws: &str, actions: &[&str]) {
    let list = actions
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(",");
    app.set_workspace_settings(
        ws,
        "approval_required_for",
        &format!("ARRAY[{list}]::text[]"),
    )
    .await;
}

/// Makes approval request `id` expire `ago` (an SQL interval) in the past.
async fn expire(app: &TestApp, id: &str, ago: &str) {
    app.sql_exec(&format!(
        "UPDATE approval_requests SET expires_at = now() - interval '{ago}' WHERE id = '{}'",
        id_uuid(id)
    ))
    .await;
}

/// A workspace with an owner, a second owner, two admins and a viewer, all signed in.
struct Team {
    ws: String,
    owner: String,
    owner2: String,
    admin: String,
    admin2: String,
    viewer: String,
}

async fn team(app: &TestApp, name: &str) -> Team {
    let e = |who: &str| format!("{who}@{name}.example.com");
    let owner = app.user(&e("owner"));
    let ws = app.create_workspace(&owner, name).await;
    for (who, role) in [
        ("owner2", "OWNER"),
        ("admin", "ADMIN"),
        ("admin2", "ADMIN"),
        ("viewer", "VIEWER"),
    ] {
        app.add_member(&owner, &ws, &e(who), role).await;
    }
    Team {
        owner,
        owner2: app.user(&e("owner2")),
        admin: app.user(&e("admin")),
        admin2: app.user(&e("admin2")),
        viewer: app.user(&e("viewer")),
        ws,
    }
}

async fn approve(app: &TestApp, token: &str, id: &str) -> Value {
    app.gql(token, APPROVE, json!({"id": id})).await
}

async fn reject(app: &TestApp, token: &str, id: &str, reason: Option<&str>) -> Value {
    app.gql(token, REJECT, json!({"id": id, "r": reason})).await
}

/// Asks to delete `org` as `token`; the pending request's id.
async fn held_delete(app: &TestApp, token: &str, org: &str) -> String {
    let r = app.gql(token, DELETE_ORG, json!({"o": org})).await;
    assert_ok(&r);
    let p = &r["data"]["deleteOrganization"];
    assert!(p["deletedOrganizationId"].is_null(), "{r}");
    assert_eq!(p["approvalRequest"]["status"], "PENDING", "{r}");
    p["approvalRequest"]["id"]
        .as_str()
        .expect("request id")
        .to_string()
}

async fn org_exists(app: &TestApp, token: &str, org: &str) -> bool {
    let r = app.gql(token, ORG, json!({"o": org})).await;
    assert_ok(&r);
    !r["data"]["organization"].is_null()
}

/// The audit events of `ws` with `action` (as the owner reads them).
async fn audit(app: &TestApp, token: &str, ws: &str, action: &str) -> Vec<Value> {
    let r = app.gql(token, AUDIT, json!({"w": ws})).await;
    assert_ok(&r);
    r["data"]["workspace"]["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"].clone())
        .filter(|n| n["action"] == action)
        .collect()
}

fn status(r: &Value, field: &str) -> String {
    r["data"][field]["approvalRequest"]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("no status in {r}"))
        .to_string()
}

#[tokio::test]
async fn a_held_deletion_waits_for_another_manager_and_runs_once_when_approved_twice_at_once() {
    let app = TestApp::spawn().await;
    let t = team(&app, "held").await;
    let org = app.create_org(&t.owner, &t.ws, None, "Doomed").await;
    require(&app, &t.ws, &["DELETE_ORGANIZATION"]).await;
    // A viewer is refused by the role check before anything is held.
    assert_code(
        &app.gql(&t.viewer, DELETE_ORG, json!({"o": org})).await,
        "FORBIDDEN",
    );
    let r = app.gql(&t.admin, DELETE_ORG, json!({"o": org})).await;
    assert_ok(&r);
    let req = &r["data"]["deleteOrganization"]["approvalRequest"];
    assert_eq!(
        (
            &req["action"],
            &req["operation"],
            &req["targetType"],
            &req["targetId"]
        ),
        (
            &json!("DELETE_ORGANIZATION"),
            &json!("deleteOrganization"),
            &json!("Organization"),
            &json!(org)
        ),
        "{r}"
    );
    assert!(
        r["data"]["deleteOrganization"]["deletedOrganizationId"].is_null(),
        "{r}"
    );
    let id = req["id"].as_str().expect("id").to_string();
    assert!(
        org_exists(&app, &t.owner, &org).await,
        "nothing deleted yet"
    );
    // The requester cannot approve; a viewer cannot approve; an outsider sees nothing.
    let own = approve(&app, &t.admin, &id).await;
    assert_code(&own, "FORBIDDEN");
    assert!(
        own["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("different owner or admin")),
        "{own}"
    );
    assert_code(&approve(&app, &t.viewer, &id).await, "FORBIDDEN");
    let outsider = app.user("outsider@example.com");
    app.create_workspace(&outsider, "Elsewhere").await;
    assert_code(&approve(&app, &outsider, &id).await, "NOT_FOUND");
    assert_code(&reject(&app, &outsider, &id, None).await, "NOT_FOUND");
    for token in [&outsider, &t.viewer] {
        let r = app.gql(token, READ, json!({"id": id})).await;
        assert_ok(&r);
        assert!(r["data"]["approvalRequest"].is_null(), "{r}");
    }
    // Owners and admins read it, and list it.
    let r = app.gql(&t.admin2, READ, json!({"id": id})).await;
    assert_eq!(r["data"]["approvalRequest"]["status"], "PENDING", "{r}");
    assert_eq!(
        r["data"]["approvalRequest"]["requestedBy"]["email"],
        "admin@held.example.com"
    );
    assert!(r["data"]["approvalRequest"]["decidedBy"].is_null());
    let r = app
        .gql(&t.owner, LIST, json!({"w": t.ws, "s": "PENDING"}))
        .await;
    assert_eq!(
        r["data"]["workspace"]["approvalRequests"]["edges"][0]["node"]["id"],
        id.as_str(),
        "{r}"
    );
    assert_code(
        &app.gql(&t.viewer, LIST, json!({"w": t.ws})).await,
        "FORBIDDEN",
    );
    // Two managers approve at the same moment: one executes, the other is told it is done.
    let (a, b) = tokio::join!(approve(&app, &t.owner, &id), approve(&app, &t.admin2, &id));
    let (won, lost) = if a["errors"].is_null() {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(status(&won, "approveRequest"), "APPROVED", "{won}");
    assert_code(&lost, "CONFLICT");
    let decided = &won["data"]["approveRequest"]["approvalRequest"];
    assert_eq!(decided["result"]["deletedOrganizationId"], org.as_str());
    assert_eq!(decided["requestedBy"]["email"], "admin@held.example.com");
    let approver = decided["decidedBy"]["email"]
        .as_str()
        .expect("decided by")
        .to_string();
    assert!(!org_exists(&app, &t.owner, &org).await, "deleted");
    // Both people are in the audit log, and the deletion happened once.
    let deletes = audit(&app, &t.owner, &t.ws, "organization.delete").await;
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0]["actor"]["email"], "admin@held.example.com");
    let approvals = audit(&app, &t.owner, &t.ws, "approval.approve").await;
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    assert_eq!(approvals[0]["actor"]["email"], approver.as_str());
    let summary = &approvals[0]["summary"];
    let requester = app.gql(&t.admin, "{ viewer { id } }", json!({})).await;
    assert_eq!(
        (
            &summary["requestedBy"],
            &summary["action"],
            &summary["operation"],
            &summary["targetId"],
            &summary["status"],
        ),
        (
            &requester["data"]["viewer"]["id"],
            &json!("DELETE_ORGANIZATION"),
            &json!("deleteOrganization"),
            &json!(org),
            &json!("APPROVED"),
        ),
        "{summary}"
    );
    assert_eq!(
        audit(&app, &t.owner, &t.ws, "approval.request").await.len(),
        1
    );
    // Decided: approving or rejecting again conflicts.
    assert_code(&approve(&app, &t.owner2, &id).await, "CONFLICT");
    assert_code(&reject(&app, &t.owner2, &id, None).await, "CONFLICT");
    let r = app
        .gql(&t.owner, LIST, json!({"w": t.ws, "s": "APPROVED"}))
        .await;
    assert_eq!(
        r["data"]["workspace"]["approvalRequests"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{r}"
    );
}

#[tokio::test]
async fn rejection_withdrawal_and_expiry_end_a_request_without_executing_it() {
    let app = TestApp::spawn().await;
    let t = team(&app, "ends").await;
    let mut orgs = Vec::new();
    for name in ["O1", "O2", "O3", "O4"] {
        orgs.push(app.create_org(&t.owner, &t.ws, None, name).await);
    }
    require(&app, &t.ws, &["DELETE_ORGANIZATION"]).await;
    // Rejected by another manager, with a reason: nothing happens, and it stays rejected.
    let id = held_delete(&app, &t.admin, &orgs[0]).await;
    assert_code(
        &reject(&app, &t.owner, &id, Some(&"x".repeat(501))).await,
        "BAD_USER_INPUT",
    );
    let r = reject(&app, &t.owner, &id, Some("not this one")).await;
    assert_eq!(status(&r, "rejectRequest"), "REJECTED", "{r}");
    assert_eq!(
        r["data"]["rejectRequest"]["approvalRequest"]["reason"],
        "not this one"
    );
    assert!(org_exists(&app, &t.owner, &orgs[0]).await);
    assert_code(&approve(&app, &t.admin2, &id).await, "CONFLICT");
    assert!(org_exists(&app, &t.owner, &orgs[0]).await);
    let rejections = audit(&app, &t.owner, &t.ws, "approval.reject").await;
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0]["actor"]["email"], "owner@ends.example.com");
    // Withdrawn by the requester (a rejection of their own request).
    let id = held_delete(&app, &t.admin, &orgs[1]).await;
    let r = reject(&app, &t.admin, &id, None).await;
    assert_eq!(status(&r, "rejectRequest"), "REJECTED", "{r}");
    assert_eq!(
        audit(&app, &t.owner, &t.ws, "approval.withdraw")
            .await
            .len(),
        1
    );
    assert!(org_exists(&app, &t.owner, &orgs[1]).await);
    // Expired: read as EXPIRED at once, marked so by the first decision attempt.
    let id = held_delete(&app, &t.admin, &orgs[2]).await;
    expire(&app, &id, "1 hour").await;
    let r = app.gql(&t.owner, READ, json!({"id": id})).await;
    assert_eq!(r["data"]["approvalRequest"]["status"], "EXPIRED", "{r}");
    let r = approve(&app, &t.owner, &id).await;
    assert_code(&r, "CONFLICT");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{r}"
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM approval_requests WHERE id = '{}' AND status = 'EXPIRED'",
            id_uuid(&id)
        ))
        .await,
        1
    );
    assert_code(&reject(&app, &t.owner, &id, None).await, "CONFLICT");
    assert!(org_exists(&app, &t.owner, &orgs[2]).await);
    // The periodic expiry marks the others.
    let id = held_delete(&app, &t.admin, &orgs[3]).await;
    expire(&app, &id, "1 minute").await;
    let n = api::domain::governance::approvals::expire_due(&app.pool)
        .await
        .expect("expiry");
    assert_eq!(n, 1);
    assert_code(&approve(&app, &t.owner, &id).await, "CONFLICT");
    let r = app
        .gql(&t.owner, LIST, json!({"w": t.ws, "s": "EXPIRED", "f": 1}))
        .await;
    let page = &r["data"]["workspace"]["approvalRequests"];
    assert_eq!(
        page["edges"][0]["node"]["id"],
        id.as_str(),
        "newest first: {r}"
    );
    assert_eq!(page["pageInfo"]["hasNextPage"], true, "{r}");
    let after = page["pageInfo"]["endCursor"].as_str().expect("cursor");
    let r = app
        .gql(
            &t.owner,
            LIST,
            json!({"w": t.ws, "s": "EXPIRED", "f": 100, "a": after}),
        )
        .await;
    assert_eq!(
        r["data"]["workspace"]["approvalRequests"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{r}"
    );
    assert_code(
        &app.gql(&t.owner, LIST, json!({"w": t.ws, "f": 101})).await,
        "BAD_USER_INPUT",
    );
    assert!(org_exists(&app, &t.owner, &orgs[3]).await);
    assert!(
        audit(&app, &t.owner, &t.ws, "organization.delete")
            .await
            .is_empty()
    );
    // Ids that are not requests, or other workspaces' requests, are not found.
    assert_code(&approve(&app, &t.owner, "apr_nope").await, "NOT_FOUND");
    assert_code(&approve(&app, &t.owner, &orgs[0]).await, "NOT_FOUND");
    let other = team(&app, "other").await;
    let o = app
        .create_org(&other.owner, &other.ws, None, "Theirs")
        .await;
    require(&app, &other.ws, &["DELETE_ORGANIZATION"]).await;
    let foreign = held_delete(&app, &other.admin, &o).await;
    assert_code(&approve(&app, &t.owner, &foreign).await, "NOT_FOUND");
    let r = app.gql(&t.owner, READ, json!({"id": foreign})).await;
    assert!(r["data"]["approvalRequest"].is_null(), "{r}");
}

const ROLE: &str =
    "mutation($m: ID!, $r: Role!) { updateMemberRole(input: {memberId: $m, role: $r}) {
    member { id role } approvalRequest { id status action } } }";
/// Promotes `member` to OWNER as `token` (`ROLE`); the whole body.
async fn promote(app: &TestApp, token: &str, member: &str) -> Value {
    app.gql(token, ROLE, json!({"m": member, "r": "OWNER"}))
        .await
}

const ADD: &str = "mutation($w: ID!, $e: String!, $r: Role!) { addMember(input: {workspaceId: $w, email: $e, role: $r}) {
    invitation { id role } approvalRequest { id status action } } }";

#[tokio::test]
async fn promotions_to_owner_need_another_owner_s_approval() {
    let app = TestApp::spawn().await;
    let t = team(&app, "promo").await;
    let admin_member = app
        .member_id(&t.owner, &t.ws, "admin@promo.example.com")
        .await;
    require(&app, &t.ws, &["PROMOTE_TO_OWNER"]).await;
    let r = promote(&app, &t.owner, &admin_member).await;
    assert_ok(&r);
    let p = &r["data"]["updateMemberRole"];
    assert_eq!(p["member"]["role"], "ADMIN", "unchanged while held: {r}");
    assert_eq!(p["approvalRequest"]["status"], "PENDING");
    assert_eq!(p["approvalRequest"]["action"], "PROMOTE_TO_OWNER");
    let id = p["approvalRequest"]["id"].as_str().expect("id").to_string();
    // Only owners decide a promotion to owner (and the promoted admin is no exception).
    assert_code(&approve(&app, &t.admin2, &id).await, "FORBIDDEN");
    assert_code(&approve(&app, &t.admin, &id).await, "FORBIDDEN");
    // Approved with an idempotency key: a retry replays the answer, not a conflict.
    let once = app
        .gql(&t.owner2, APPROVE, json!({"id": id, "k": "approve-1"}))
        .await;
    assert_eq!(status(&once, "approveRequest"), "APPROVED", "{once}");
    let again = app
        .gql(&t.owner2, APPROVE, json!({"id": id, "k": "approve-1"}))
        .await;
    assert_eq!(again["data"], once["data"]);
    let role = app
        .gql(
            &t.owner,
            "query($m: ID!) { node(id: $m) { ... on Member { role } } }",
            json!({"m": admin_member}),
        )
        .await;
    assert_eq!(role["data"]["node"]["role"], "OWNER", "{role}");
    let changes = audit(&app, &t.owner, &t.ws, "member.update_role").await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["actor"]["email"], "owner@promo.example.com");
    // Adding an owner is held too (nobody is added meanwhile); adding an admin is not.
    let r = app
        .gql(
            &t.owner,
            ADD,
            json!({"w": t.ws, "e": "new-owner@promo.example.com", "r": "OWNER"}),
        )
        .await;
    assert_ok(&r);
    assert!(r["data"]["addMember"]["invitation"].is_null(), "{r}");
    let id = r["data"]["addMember"]["approvalRequest"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM invitations WHERE email = 'new-owner@promo.example.com'"
        )
        .await,
        0
    );
    let r = approve(&app, &t.owner2, &id).await;
    assert_eq!(status(&r, "approveRequest"), "APPROVED", "{r}");
    // Approved, the invitation goes out; the person becomes an owner by accepting it.
    let invitation = r["data"]["approveRequest"]["approvalRequest"]["result"]["invitationId"]
        .as_str()
        .unwrap_or_else(|| panic!("approved addMember invites: {r}"))
        .to_string();
    let accepted = app
        .accept_invitation(&app.user("new-owner@promo.example.com"), &invitation)
        .await;
    assert_eq!(
        accepted["data"]["acceptInvitation"]["member"]["role"], "OWNER",
        "{accepted}"
    );
    let added = app
        .member_id(&t.owner, &t.ws, "new-owner@promo.example.com")
        .await;
    assert_eq!(
        accepted["data"]["acceptInvitation"]["member"]["id"],
        added.as_str()
    );
    let r = app
        .gql(
            &t.owner,
            ADD,
            json!({"w": t.ws, "e": "new-admin@promo.example.com", "r": "ADMIN"}),
        )
        .await;
    assert_eq!(r["data"]["addMember"]["invitation"]["role"], "ADMIN", "{r}");
    assert!(r["data"]["addMember"]["approvalRequest"].is_null());
    // An action that can no longer be done is a FAILED decision, not an error: the member
    // to promote left meanwhile.
    let viewer_member = app
        .member_id(&t.owner, &t.ws, "viewer@promo.example.com")
        .await;
    let r = promote(&app, &t.owner, &viewer_member).await;
    let id = r["data"]["updateMemberRole"]["approvalRequest"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("held: {r}"))
        .to_string();
    assert_ok(
        &app.gql(
            &t.viewer,
            "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }",
            json!({"m": viewer_member}),
        )
        .await,
    );
    let r = approve(&app, &t.owner2, &id).await;
    assert_eq!(status(&r, "approveRequest"), "FAILED", "{r}");
    assert!(
        r["data"]["approveRequest"]["approvalRequest"]["reason"]
            .as_str()
            .is_some_and(|m| m.contains("not found")),
        "{r}"
    );
    // (The admin promoted above is an owner now.)
    assert_code(&approve(&app, &t.admin, &id).await, "CONFLICT");
}

#[tokio::test]
async fn api_keys_cannot_decide_and_workspaces_without_the_policy_act_at_once() {
    let app = TestApp::spawn().await;
    let t = team(&app, "plain").await;
    // No policy: everything acts at once, with no request.
    let org = app.create_org(&t.owner, &t.ws, None, "Gone").await;
    let r = app.gql(&t.admin, DELETE_ORG, json!({"o": org})).await;
    assert_eq!(
        r["data"]["deleteOrganization"]["deletedOrganizationId"],
        org.as_str(),
        "{r}"
    );
    assert!(r["data"]["deleteOrganization"]["approvalRequest"].is_null());
    let admin_member = app
        .member_id(&t.owner, &t.ws, "admin@plain.example.com")
        .await;
    let r = promote(&app, &t.owner, &admin_member).await;
    assert_eq!(
        r["data"]["updateMemberRole"]["member"]["role"], "OWNER",
        "{r}"
    );
    assert!(r["data"]["updateMemberRole"]["approvalRequest"].is_null());
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM approval_requests")
            .await,
        0
    );
    // An API key may not approve (people only), even an owner's key.
    let r = app
        .gql(
            &t.owner,
            "mutation($w: ID!) { createApiKey(input: {workspaceId: $w, name: \"bot\", role: OWNER}) { secret } }",
            json!({"w": t.ws}),
        )
        .await;
    let secret = r["data"]["createApiKey"]["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("createApiKey: {r}"))
        .to_string();
    require(&app, &t.ws, &["DELETE_ORGANIZATION"]).await;
    let org = app.create_org(&t.owner, &t.ws, None, "Kept").await;
    let id = held_delete(&app, &t.admin2, &org).await;
    let r = approve(&app, &secret, &id).await;
    assert_code(&r, "FORBIDDEN");
    assert!(org_exists(&app, &t.owner, &org).await);
    // A key's own held request: it may withdraw it, never approve it.
    let org2 = app.create_org(&t.owner, &t.ws, None, "Kept too").await;
    let r = app.gql(&secret, DELETE_ORG, json!({"o": org2})).await;
    let mine = r["data"]["deleteOrganization"]["approvalRequest"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("held: {r}"))
        .to_string();
    assert_code(&approve(&app, &secret, &mine).await, "FORBIDDEN");
    assert_eq!(
        status(&reject(&app, &secret, &mine, None).await, "rejectRequest"),
        "REJECTED"
    );
    assert!(error_code(&approve(&app, &t.owner, &id).await).is_none());
    assert!(!org_exists(&app, &t.owner, &org).await);
}

const CANCEL: &str = "mutation($s: ID!) { cancelSubscription(input: {subscriptionId: $s}) {
    subscription { id cancelAtPeriodEnd } approvalRequest { id status action } } }";
const UPDATE: &str = "mutation($s: ID!, $q: Int!) { updateSubscription(input: {subscriptionId: $s, quantities: [{resource: \"users\", quantity: $q}]}) {
    subscription { id quantities { resource quantity } } approvalRequest { id status action } } }";
const SUBSCRIPTIONS: &str = "query($w: ID!) { workspace(id: $w) { billingAccounts { subscriptions { id cancelAtPeriodEnd quantities { resource quantity } } } } }";

#[tokio::test]
async fn held_subscription_changes_reach_stripe_once_when_approved() {
    let fake = FakeStripe::start().await;
    let app = super::billing::app_with(&fake).await;
    let owner = app.user("owner@subs.example.com");
    let ws = super::billing::workspace(&app, &owner, "SINGLE").await;
    app.add_member(&owner, &ws, "owner2@subs.example.com", "OWNER")
        .await;
    let owner2 = app.user("owner2@subs.example.com");
    app.add_member(&owner, &ws, "admin@subs.example.com", "ADMIN")
        .await;
    let admin = app.user("admin@subs.example.com");
    let account = super::billing::account(&app, &owner, &ws, "Main").await;
    let sub = super::billing::subscribe(
        &app,
        &owner,
        &account,
        "STARTER",
        json!([{"resource": "users", "quantity": 10}]),
    )
    .await;
    let sub_id = sub["id"].as_str().expect("id").to_string();
    let stripe_id = sub["stripeSubscriptionId"]
        .as_str()
        .expect("stripe id")
        .to_string();
    let path = format!("/v1/subscriptions/{stripe_id}");
    require(&app, &ws, &["CANCEL_SUBSCRIPTION", "CHANGE_SUBSCRIPTION"]).await;
    // Held: Stripe is not called, the subscription is shown unchanged.
    let before = fake.count("POST", &path);
    let r = app.gql(&owner, CANCEL, json!({"s": sub_id})).await;
    assert_ok(&r);
    let p = &r["data"]["cancelSubscription"];
    assert_eq!(p["subscription"]["cancelAtPeriodEnd"], false, "{r}");
    assert_eq!(p["approvalRequest"]["action"], "CANCEL_SUBSCRIPTION");
    let id = p["approvalRequest"]["id"].as_str().expect("id").to_string();
    assert_eq!(fake.count("POST", &path), before);
    // Billing is for owners: an admin may not approve it.
    assert_code(&approve(&app, &admin, &id).await, "FORBIDDEN");
    // Approved twice at once: one call to Stripe, with a key derived from the request.
    let (a, b) = tokio::join!(approve(&app, &owner2, &id), approve(&app, &owner2, &id));
    let (won, lost) = if a["errors"].is_null() {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(status(&won, "approveRequest"), "APPROVED", "{won}");
    assert_code(&lost, "CONFLICT");
    assert_eq!(
        won["data"]["approveRequest"]["approvalRequest"]["result"]["subscriptionId"],
        sub_id.as_str()
    );
    assert_eq!(fake.count("POST", &path), before + 1);
    let call = fake
        .requests()
        .into_iter()
        .rfind(|r| r.method == "POST" && r.path == path)
        .expect("the cancellation");
    assert_eq!(call.field("cancel_at_period_end"), Some("true"));
    let key = format!("ws-apr-{}", id_uuid(&id).simple());
    assert_eq!(call.idempotency_key.as_deref(), Some(key.as_str()));
    assert_code(&approve(&app, &owner2, &id).await, "CONFLICT");
    assert_eq!(fake.count("POST", &path), before + 1);
    let r = app.gql(&owner, SUBSCRIPTIONS, json!({"w": ws})).await;
    assert_eq!(
        r["data"]["workspace"]["billingAccounts"][0]["subscriptions"][0]["cancelAtPeriodEnd"], true,
        "{r}"
    );
    let cancels = audit(&app, &owner, &ws, "subscription.cancel").await;
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    assert_eq!(cancels[0]["actor"]["email"], "owner@subs.example.com");
    let approvals = audit(&app, &owner, &ws, "approval.approve").await;
    assert_eq!(approvals[0]["actor"]["email"], "owner2@subs.example.com");
    // A change that Stripe refuses after the approval: the request is FAILED with the reason.
    let r = app.gql(&owner, UPDATE, json!({"s": sub_id, "q": 20})).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["updateSubscription"]["approvalRequest"]["action"], "CHANGE_SUBSCRIPTION",
        "{r}"
    );
    let id = r["data"]["updateSubscription"]["approvalRequest"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    fake.fail_next(1, 400);
    let r = approve(&app, &owner2, &id).await;
    assert_eq!(status(&r, "approveRequest"), "FAILED", "{r}");
    assert!(
        r["data"]["approveRequest"]["approvalRequest"]["reason"]
            .as_str()
            .is_some_and(|m| m.contains("Stripe refused")),
        "{r}"
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM stripe_intents WHERE stripe_key LIKE 'ws-apr-%' AND state = 'PENDING'")
            .await,
        0
    );
}
