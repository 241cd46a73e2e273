//! Membership by consent: `addMember` invites, and only the invitee's acceptance (signed in
//! with the invited address, verified) makes a member.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tests::smtp::SmtpSink;
use tests::tokens::Tokens;
use tests::{Options, TestApp, assert_code, assert_ok};

use super::webhooks::Worker;

const ADD: &str = "mutation($w: ID!, $e: String!, $r: Role!) { addMember(input: {workspaceId: $w, email: $e, role: $r}) {
    invitation { id email role sends createdAt expiresAt lastSentAt } approvalRequest { id } } }";
const RECEIVED: &str = "{ viewer { invitations { id workspaceId workspaceName role expiresAt } } }";
const DECLINE: &str =
    "mutation($i: ID!) { declineInvitation(input: {invitationId: $i}) { invitationId } }";
const REVOKE: &str =
    "mutation($i: ID!) { revokeInvitation(input: {invitationId: $i}) { invitationId } }";
const RESEND: &str = "mutation($i: ID!) { resendInvitation(input: {invitationId: $i}) { invitation { id sends expiresAt } } }";
const LIST: &str = "query($w: ID!) { workspace(id: $w) { invitations(first: 10) { edges { node { id email role sends } } } } }";
const WORKSPACE: &str = "query($w: ID!) { workspace(id: $w) { id viewerRole } }";

/// A token for `email` whose claims lack `email_verified`.
fn unverified_claimless(app: &TestApp, subject: &str, email: &str) -> String {
    let mut claims = Tokens::claims(subject, email, true);
    claims
        .as_object_mut()
        .expect("claims")
        .remove("email_verified");
    app.tokens.hs256_claims(&claims)
}

fn invitation_id(r: &Value) -> String {
    r["data"]["addMember"]["invitation"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("addMember: {r}"))
        .to_string()
}

/// `v` with every value of the named keys replaced, so that two answers can be compared by
/// shape.
fn masked(mut v: Value, keys: &[&str]) -> Value {
    fn walk(v: &mut Value, keys: &[&str]) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if keys.contains(&k.as_str()) {
                        *x = json!("…");
                    } else {
                        walk(x, keys);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, keys)),
            _ => {}
        }
    }
    walk(&mut v, keys);
    v
}

#[tokio::test]
async fn signing_in_joins_nothing_and_the_invitee_accepts_by_consent() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Acme").await;
    let r = app
        .gql(
            &owner,
            ADD,
            json!({"w": ws, "e": "New.Person@Example.com", "r": "ADMIN"}),
        )
        .await;
    assert_ok(&r);
    let invitation = &r["data"]["addMember"]["invitation"];
    assert_eq!(invitation["email"], "new.person@example.com");
    assert_eq!(
        (&invitation["role"], &invitation["sends"]),
        (&json!("ADMIN"), &json!(1))
    );
    let id = invitation_id(&r);
    // Nobody is a member yet: the owner alone.
    let members = "SELECT count(*) AS n FROM members";
    assert_eq!(app.sql_count(members).await, 1);

    // Signing in with the address joins nothing.
    let person = app
        .tokens
        .hs256("auth0|new", "new.person@example.com", true);
    let r = app.gql(&person, WORKSPACE, json!({"w": ws})).await;
    assert!(r["data"]["workspace"].is_null(), "{r}");
    // The person sees the invitation.
    let r = app.gql(&person, RECEIVED, json!({})).await;
    assert_eq!(
        r["data"]["viewer"]["invitations"],
        json!([{"id": id, "workspaceId": ws, "workspaceName": "Acme", "role": "ADMIN",
                "expiresAt": r["data"]["viewer"]["invitations"][0]["expiresAt"]}])
    );
    // An unverified address, or a token that says nothing of it, answers nothing.
    for token in [
        app.tokens
            .hs256("auth0|impostor", "new.person@example.com", false),
        unverified_claimless(&app, "auth0|claimless", "new.person@example.com"),
    ] {
        let r = app.gql(&token, RECEIVED, json!({})).await;
        assert_eq!(r["data"]["viewer"]["invitations"], json!([]), "{r}");
        assert_code(&app.accept_invitation(&token, &id).await, "FORBIDDEN");
        assert_code(
            &app.gql(&token, DECLINE, json!({"i": id})).await,
            "FORBIDDEN",
        );
    }
    assert_eq!(app.sql_count(members).await, 1);

    // The verified owner of the address accepts, with the role invited.
    let r = app.accept_invitation(&person, &id).await;
    assert_ok(&r);
    assert_eq!(r["data"]["acceptInvitation"]["member"]["role"], "ADMIN");
    let r = app.gql(&person, WORKSPACE, json!({"w": ws})).await;
    assert_eq!(r["data"]["workspace"]["viewerRole"], "ADMIN", "{r}");
    assert_eq!(
        app.gql(&person, RECEIVED, json!({})).await["data"]["viewer"]["invitations"],
        json!([])
    );
    // Once: the invitation is gone.
    assert_code(&app.accept_invitation(&person, &id).await, "NOT_FOUND");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events WHERE action IN ('member.invite', 'member.join')")
            .await,
        2
    );
    // Only the person reads their invitations.
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { members { edges { node { user { invitations { id } } } } } } }",
            json!({"w": ws}),
        )
        .await;
    assert_code(&r, "FORBIDDEN");
}

#[tokio::test]
async fn an_address_with_an_account_is_invited_like_any_other_and_cannot_be_erased() {
    let app = TestApp::spawn().await;
    let owner = app.user("hostile-owner@example.com");
    let ws = app.create_workspace(&owner, "Hostile").await;
    // A verified account that belongs to no workspace.
    let victim = app.tokens.hs256("auth0|victim", "victim@example.com", true);
    let mut claims = Tokens::claims("auth0|victim", "victim@example.com", true);
    claims["name"] = json!("Victor Victim");
    let victim_named = app.tokens.hs256_claims(&claims);
    let r = app.gql(&victim_named, "{ viewer { id } }", json!({})).await;
    let victim_id = r["data"]["viewer"]["id"].as_str().expect("id").to_string();

    let known = app
        .gql(
            &owner,
            ADD,
            json!({"w": ws, "e": "victim@example.com", "r": "VIEWER"}),
        )
        .await;
    let unknown = app
        .gql(
            &owner,
            ADD,
            json!({"w": ws, "e": "nobody-yet@example.com", "r": "VIEWER"}),
        )
        .await;
    assert_ok(&known);
    assert_ok(&unknown);
    // The same answer, key for key: nothing tells an account from a stranger.
    let keys = ["id", "email", "createdAt", "expiresAt", "lastSentAt"];
    assert_eq!(masked(known.clone(), &keys), masked(unknown, &keys));
    assert!(!known.to_string().contains("Victor"), "{known}");
    // The account holder is no member, so the owner cannot erase them (what a missing
    // person answers), and they keep signing in.
    let missing = format!("usr_{}", "f".repeat(32));
    let erase = "mutation($u: ID!) { eraseUser(input: {userId: $u}) { pseudonym } }";
    let theirs = app.gql(&owner, erase, json!({"u": victim_id})).await;
    assert_code(&theirs, "NOT_FOUND");
    assert_eq!(theirs, app.gql(&owner, erase, json!({"u": missing})).await);
    let (status, body) = app
        .gql_raw(Some(&victim), json!({"query": "{ viewer { email } }"}))
        .await;
    assert_eq!(
        (status, &body["data"]["viewer"]["email"]),
        (200, &json!("victim@example.com"))
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM user_erasures")
            .await,
        0
    );
}

#[tokio::test]
async fn look_alike_addresses_never_claim_an_invitation() {
    let app = TestApp::spawn().await;
    let owner = app.user("kelvin-owner@example.com");
    let ws = app.create_workspace(&owner, "Kelvin").await;
    let id = app.invite(&owner, &ws, "kate@corp.example", "ADMIN").await;
    // U+212A KELVIN SIGN lower-cases to `k` under Unicode: not under our rule.
    for email in [
        "\u{212A}ate@corp.example",
        "kate@corp.example.evil",
        "kate@corp.exampl",
    ] {
        let t = app.tokens.hs256(&format!("auth0|{email}"), email, true);
        let r = app.gql(&t, RECEIVED, json!({})).await;
        assert_eq!(
            r["data"]["viewer"]["invitations"],
            json!([]),
            "{email}: {r}"
        );
        assert_code(&app.accept_invitation(&t, &id).await, "NOT_FOUND");
    }
    // ASCII case is not a different mailbox.
    let kate = app.tokens.hs256("auth0|kate", "KATE@Corp.Example", true);
    assert_ok(&app.accept_invitation(&kate, &id).await);
}

#[tokio::test]
async fn invitations_are_listed_resent_revoked_declined_and_expire() {
    let app = TestApp::spawn().await;
    let owner = app.user("inv-owner@example.com");
    let ws = app.create_workspace(&owner, "Lifecycle").await;
    let viewer = app
        .member_token(&owner, &ws, "inv-viewer@example.com", "VIEWER")
        .await;
    let admin = app
        .member_token(&owner, &ws, "inv-admin@example.com", "ADMIN")
        .await;
    let a = app.invite(&owner, &ws, "a@example.com", "VIEWER").await;
    let b = app.invite(&owner, &ws, "b@example.com", "OWNER").await;
    let c = app.invite(&admin, &ws, "c@example.com", "ADMIN").await;
    // A second invitation of the same address is a conflict; so is a member's address.
    assert_code(
        &app.try_add_member(&owner, &ws, "a@example.com", "ADMIN")
            .await,
        "CONFLICT",
    );
    assert_code(
        &app.try_add_member(&owner, &ws, "inv-viewer@example.com", "ADMIN")
            .await,
        "CONFLICT",
    );
    // Managers list them; viewers may not.
    let r = app.gql(&admin, LIST, json!({"w": ws})).await;
    let ids: Vec<&str> = r["data"]["workspace"]["invitations"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["id"].as_str())
        .collect();
    assert_eq!(ids, vec![c.as_str(), b.as_str(), a.as_str()], "{r}");
    assert_code(&app.gql(&viewer, LIST, json!({"w": ws})).await, "FORBIDDEN");

    // Resend: at most once a minute, at most five e-mails.
    assert_code(
        &app.gql(&owner, RESEND, json!({"i": a})).await,
        "LIMIT_EXCEEDED",
    );
    for sends in 2..=5 {
        app.sql_exec("UPDATE invitations SET last_sent_at = now() - interval '2 minutes'")
            .await;
        let r = app.gql(&admin, RESEND, json!({"i": a})).await;
        assert_eq!(
            r["data"]["resendInvitation"]["invitation"]["sends"], sends,
            "{r}"
        );
    }
    app.sql_exec("UPDATE invitations SET last_sent_at = now() - interval '2 minutes'")
        .await;
    assert_code(
        &app.gql(&owner, RESEND, json!({"i": a})).await,
        "LIMIT_EXCEEDED",
    );
    // An owner's invitation is the owners' to manage; viewers manage none.
    assert_code(&app.gql(&admin, REVOKE, json!({"i": b})).await, "FORBIDDEN");
    assert_code(
        &app.gql(&viewer, REVOKE, json!({"i": c})).await,
        "FORBIDDEN",
    );

    // Revoked: the invitee finds nothing.
    assert_ok(&app.gql(&owner, REVOKE, json!({"i": b})).await);
    let b_person = app.user("b@example.com");
    assert_code(&app.accept_invitation(&b_person, &b).await, "NOT_FOUND");
    // Declined by the invitee: gone, audited.
    let c_person = app.user("c@example.com");
    assert_ok(&app.gql(&c_person, DECLINE, json!({"i": c})).await);
    assert_code(&app.accept_invitation(&c_person, &c).await, "NOT_FOUND");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events WHERE action IN ('invitation.revoke', 'invitation.decline', 'invitation.resend')").await,
        6
    );
    // Expired: no longer listed or accepted; the periodic job deletes it.
    app.sql_exec("UPDATE invitations SET expires_at = now() - interval '1 second'")
        .await;
    let a_person = app.user("a@example.com");
    assert_code(&app.accept_invitation(&a_person, &a).await, "NOT_FOUND");
    let r = app.gql(&owner, LIST, json!({"w": ws})).await;
    assert_eq!(r["data"]["workspace"]["invitations"]["edges"], json!([]));
    let deleted = api::domain::invitations::expire_due(&app.pool)
        .await
        .expect("expiry");
    assert_eq!(deleted, 1);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM invitations").await,
        0
    );
}

#[tokio::test]
async fn another_workspace_s_invitation_reads_like_a_missing_one() {
    let app = TestApp::spawn().await;
    let owner = app.user("iso-owner@example.com");
    let stranger = app.user("iso-stranger@example.com");
    let ws = app.create_workspace(&owner, "Iso").await;
    app.create_workspace(&stranger, "Theirs").await;
    let id = app
        .invite(&owner, &ws, "someone@example.com", "VIEWER")
        .await;
    let missing = format!("invt_{}", "0".repeat(32));
    for q in [REVOKE, RESEND, DECLINE] {
        let foreign = app.gql(&stranger, q, json!({"i": id})).await;
        let absent = app.gql(&stranger, q, json!({"i": missing})).await;
        assert_code(&foreign, "NOT_FOUND");
        assert_eq!(foreign, absent, "{q}");
    }
    let foreign = app.accept_invitation(&stranger, &id).await;
    assert_code(&foreign, "NOT_FOUND");
    assert_eq!(foreign, app.accept_invitation(&stranger, &missing).await);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM invitations").await,
        1
    );
}

#[tokio::test]
async fn accepting_passes_the_workspace_s_policies() {
    // Settings written with SQL apply at once (no cached copy).
    let app = TestApp::with(Options {
        env: [("GOVERNANCE_CACHE_MS".to_string(), "0".to_string())].into(),
    })
    .await;
    let owner = app.user("mfa-owner@example.com");
    let ws = app.create_workspace(&owner, "Strict").await;
    let id = app
        .invite(&owner, &ws, "joiner@example.com", "VIEWER")
        .await;
    app.set_workspace_settings(&ws, "mfa_required", "true")
        .await;
    let plain = app.user("joiner@example.com");
    let r = app.accept_invitation(&plain, &id).await;
    assert_code(&r, "FORBIDDEN");
    assert_eq!(r["errors"][0]["extensions"]["reason"], "MFA_REQUIRED");
    let with_mfa = app.user_with_claims("joiner@example.com", json!({"amr": ["pwd", "mfa"]}));
    assert_ok(&app.accept_invitation(&with_mfa, &id).await);
}

#[tokio::test]
async fn the_invitee_gets_an_e_mail_whose_signed_link_accepts() {
    let smtp = SmtpSink::start().await;
    let env = HashMap::from([
        ("SMTP_URL".to_string(), smtp.url()),
        (
            "SMTP_FROM".to_string(),
            "Workspaces <notifications@example.com>".to_string(),
        ),
        (
            "INVITATION_ACCEPT_URL".to_string(),
            "https://app.example.com/join".to_string(),
        ),
    ]);
    let app = TestApp::with(Options { env }).await;
    let worker = Worker::start(&app);
    let owner = app.user("mail-owner@example.com");
    let ws = app.create_workspace(&owner, "Mailed").await;
    app.invite(&owner, &ws, "mailed@example.com", "ADMIN").await;
    let mails = smtp.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(mails[0].to, vec!["mailed@example.com"]);
    let data = mails[0].data.replace("=\r\n", "").replace("=3D", "=");
    assert!(data.contains("Mailed"), "{data}");
    let start = data
        .find("https://app.example.com/join?invitation=")
        .unwrap_or_else(|| panic!("no link: {data}"))
        + "https://app.example.com/join?invitation=".len();
    let token: String = data[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let accept =
        "mutation($t: String!) { acceptInvitation(input: {token: $t}) { member { role } } }";
    // The link is the invitee's alone, and any change voids it.
    let other = app.user("not-mailed@example.com");
    assert_code(
        &app.gql(&other, accept, json!({"t": token})).await,
        "NOT_FOUND",
    );
    let mut tampered = token.clone();
    tampered.replace_range(0..1, if token.starts_with('A') { "B" } else { "A" });
    let invitee = app.user("mailed@example.com");
    assert_code(
        &app.gql(&invitee, accept, json!({"t": tampered})).await,
        "NOT_FOUND",
    );
    assert_code(
        &app.gql(&invitee, accept, json!({"t": "x".repeat(100_000)}))
            .await,
        "NOT_FOUND",
    );
    let r = app.gql(&invitee, accept, json!({"t": token})).await;
    assert_eq!(
        r["data"]["acceptInvitation"]["member"]["role"], "ADMIN",
        "{r}"
    );
    worker.stop().await;
}
