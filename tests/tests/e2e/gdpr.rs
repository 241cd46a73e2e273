//! Privacy (GDPR): consents, data exports (through the real worker, downloaded through the
//! signed link) and erasure, after which no table of the database names the person.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use sha2::Digest as _;
use tests::{TestApp, assert_code, assert_ok, error_code};

use super::webhooks::Worker;

const RECORD: &str = "mutation($p: String!, $v: String!, $g: Boolean!, $k: String) {
    recordConsent(input: {purpose: $p, version: $v, granted: $g, idempotencyKey: $k}) {
        consent { purpose version granted recordedAt } } }";

const CONSENTS: &str = "{ viewer { id consents { purpose version granted recordedAt } } }";

const EXPORT: &str = "mutation($u: ID!, $w: ID, $k: String) {
    requestDataExport(input: {userId: $u, workspaceId: $w, idempotencyKey: $k}) {
        job { id kind status } dataExport { id status userId workspaceId } } }";

const EXPORT_BY_ID: &str = "query($id: ID!) { dataExport(id: $id) {
    id status workspaceId byteSize sha256 truncated createdAt completedAt expiresAt downloadUrl } }";

const ERASE: &str = "mutation($u: ID!, $k: String) {
    eraseUser(input: {userId: $u, idempotencyKey: $k}) { job { id kind status } pseudonym } }";

const ADD_WITH_KEY: &str = "mutation($w: ID!, $e: String!) {
    addMember(input: {workspaceId: $w, email: $e, role: ADMIN, idempotencyKey: \"add-zelda\"}) {
        invitation { id email } } }";

const JOB: &str = "query($id: ID!) { job(id: $id) { id kind status lastError } }";

/// A signed-in token for `email` with the display name `name`.
fn named(app: &TestApp, email: &str, name: &str) -> String {
    let mut claims = tests::tokens::Tokens::claims(&format!("auth0|{email}"), email, true);
    claims["name"] = json!(name);
    app.tokens.hs256_claims(&claims)
}

/// The caller's `usr_…` id (signing them in).
async fn viewer_id(app: &TestApp, token: &str) -> String {
    let r = app.gql(token, "{ viewer { id } }", json!({})).await;
    r["data"]["viewer"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("viewer: {r}"))
        .to_string()
}

/// The UUID behind an external id (`usr_…`, `ws_…`, `dex_…`).
fn uuid_of(id: &str) -> String {
    let hex = id.split_once('_').map_or(id, |(_, h)| h);
    uuid::Uuid::parse_str(hex)
        .unwrap_or_else(|e| panic!("{id}: {e}"))
        .to_string()
}

async fn db(app: &TestApp) -> AsyncPgConnection {
    AsyncPgConnection::establish(&app.db.url)
        .await
        .expect("connect")
}

/// The text `sql` selects as `t`.
async fn text(app: &TestApp, sql: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let r: T = diesel::sql_query(sql)
        .get_result(&mut db(app).await)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    r.t
}

/// Waits until `sql` counts `n`.
async fn eventually(app: &TestApp, sql: &str, n: i64) {
    let start = Instant::now();
    while app.sql_count(sql).await != n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{sql} never reached {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests an export as `token`; the payload.
async fn export(app: &TestApp, token: &str, user: &str, ws: Option<&str>) -> Value {
    let r = app
        .gql(token, EXPORT, json!({"u": user, "w": ws, "k": null}))
        .await;
    assert_ok(&r);
    r["data"]["requestDataExport"].clone()
}

/// Requests an export as `token`, waits for its job, and downloads it through its link;
/// the export as `dataExport(id)` shows it and the document.
async fn export_and_download(
    app: &TestApp,
    token: &str,
    user: &str,
    ws: Option<&str>,
) -> (Value, Value, String) {
    let p = export(app, token, user, ws).await;
    assert_eq!(p["job"]["kind"], "gdpr.export", "{p}");
    assert_eq!(p["dataExport"]["status"], "PENDING", "{p}");
    let job = p["job"]["id"].as_str().expect("job id").to_string();
    app.job_succeeded(token, &job).await;
    let id = p["dataExport"]["id"].as_str().expect("export id");
    let r = app.gql(token, EXPORT_BY_ID, json!({"id": id})).await;
    let e = r["data"]["dataExport"].clone();
    assert_eq!(e["status"], "READY", "{r}");
    let url = e["downloadUrl"].as_str().expect("download url");
    assert!(url.starts_with("/downloads/"), "{url}");
    let resp = app
        .http
        .get(format!("{}{url}", app.base))
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status().as_u16(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    assert!(
        h["content-disposition"]
            .to_str()
            .expect("ascii")
            .starts_with("attachment; filename=\"data-export-dex_"),
        "{h:?}"
    );
    assert_eq!(h["cache-control"], "no-store");
    let body = resp.bytes().await.expect("body");
    assert_eq!(e["byteSize"], json!(body.len()));
    assert_eq!(e["sha256"], json!(hex::encode(sha2::Sha256::digest(&body))));
    let doc: Value = serde_json::from_slice(&body).expect("the export is JSON");
    assert_eq!(doc["format"], "workspaces.data-export");
    assert_eq!(doc["export"]["id"], e["id"]);
    (e, doc, job)
}

#[tokio::test]
async fn consents_keep_their_history_and_show_the_latest_per_purpose() {
    let app = TestApp::spawn().await;
    let alice = app.user("consent-alice@example.com");
    let owner = app.user("consent-owner@example.com");
    for (p, v, g) in [
        ("marketing.email", "v1", true),
        ("analytics", "2024-01", true),
        ("marketing.email", "v2", false),
    ] {
        let r = app
            .gql(&alice, RECORD, json!({"p": p, "v": v, "g": g, "k": null}))
            .await;
        assert_ok(&r);
        assert_eq!(r["data"]["recordConsent"]["consent"]["purpose"], p);
        assert_eq!(r["data"]["recordConsent"]["consent"]["granted"], g);
    }
    let r = app.gql(&alice, CONSENTS, json!({})).await;
    assert_ok(&r);
    let latest: Vec<(String, String, bool)> = r["data"]["viewer"]["consents"]
        .as_array()
        .expect("consents")
        .iter()
        .map(|c| {
            (
                c["purpose"].as_str().unwrap_or_default().to_string(),
                c["version"].as_str().unwrap_or_default().to_string(),
                c["granted"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        latest,
        vec![
            ("analytics".into(), "2024-01".into(), true),
            ("marketing.email".into(), "v2".into(), false),
        ]
    );
    let alice_uuid = uuid_of(r["data"]["viewer"]["id"].as_str().expect("id"));
    let rows = format!("SELECT count(*) AS n FROM consents WHERE user_id = '{alice_uuid}'");
    assert_eq!(app.sql_count(&rows).await, 3, "the whole history is kept");
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM consents WHERE user_id = '{alice_uuid}' AND request_id IS NOT NULL"
        ))
        .await,
        3
    );
    // An idempotency key: a repeat records nothing more; another input under it is refused.
    let vars = json!({"p": "terms", "v": "3", "g": true, "k": "consent-key-1"});
    let first = app.gql(&alice, RECORD, vars.clone()).await;
    let again = app.gql(&alice, RECORD, vars).await;
    assert_ok(&first);
    assert_eq!(first, again);
    assert_eq!(app.sql_count(&rows).await, 4);
    let reused = app
        .gql(
            &alice,
            RECORD,
            json!({"p": "terms", "v": "3", "g": false, "k": "consent-key-1"}),
        )
        .await;
    assert_code(&reused, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.sql_count(&rows).await, 4);
    // History is append-only, in the database too.
    let update = diesel::sql_query("UPDATE consents SET granted = true")
        .execute(&mut db(&app).await)
        .await;
    assert!(update.is_err(), "consents can be rewritten");
    // Only the person reads their consents: their owner sees the member, not the consents.
    let ws = app.create_workspace(&owner, "Consent Co").await;
    app.add_member(&owner, &ws, "consent-alice@example.com", "VIEWER")
        .await;
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { members(first: 10) { edges { node { user { email consents { purpose } } } } } } }",
            json!({"w": ws}),
        )
        .await;
    assert_code(&r, "FORBIDDEN");
    assert!(!r.to_string().contains("marketing"), "{r}");
}

#[tokio::test]
async fn a_person_exports_everything_about_them_and_nobody_else() {
    let app = TestApp::spawn().await;
    let worker = Worker::start(&app);
    let owner = app.user("export-owner@example.com");
    let alice = named(&app, "export-alice@example.com", "Alice Exportable");
    let bob = app.user("export-bob@example.com");
    let ws = app.create_workspace(&owner, "Export Co").await;
    app.add_member(&owner, &ws, "export-alice@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &ws, "export-bob@example.com", "ADMIN")
        .await;
    let alice_id = viewer_id(&app, &alice).await;
    let org = app.create_org(&alice, &ws, None, "Alice's unit").await;
    assert_ok(&app.record(&alice, &org, "users", 3).await);
    assert_ok(
        &app.gql(
            &alice,
            RECORD,
            json!({"p": "marketing.email", "v": "v1", "g": true, "k": null}),
        )
        .await,
    );
    // Bob's doings must not show in Alice's export.
    let bob_org = app.create_org(&bob, &ws, None, "Bob's unit").await;
    assert_ok(&app.record(&bob, &bob_org, "users", 2).await);
    assert_ok(
        &app.gql(
            &bob,
            RECORD,
            json!({"p": "bob.only.purpose", "v": "v9", "g": true, "k": null}),
        )
        .await,
    );

    let (e, doc, job) = export_and_download(&app, &alice, &alice_id, None).await;
    assert_eq!(
        e["workspaceId"],
        Value::Null,
        "her own export covers everything"
    );
    assert_eq!(e["truncated"], false);
    assert_eq!(doc["export"]["scope"]["kind"], "EVERYTHING");
    let profile = &doc["profile"];
    assert_eq!(profile["id"], json!(alice_id));
    assert_eq!(profile["email"], "export-alice@example.com");
    assert_eq!(profile["name"], "Alice Exportable");
    assert_eq!(profile["subject"], "auth0|export-alice@example.com");
    let memberships = doc["memberships"].as_array().expect("memberships");
    assert_eq!(memberships.len(), 1, "{doc}");
    assert_eq!(memberships[0]["role"], "ADMIN");
    assert_eq!(memberships[0]["workspace"]["id"], json!(ws));
    assert_eq!(memberships[0]["workspace"]["name"], "Export Co");
    let consents = doc["consents"].as_array().expect("consents");
    assert_eq!(consents.len(), 1);
    assert_eq!(consents[0]["purpose"], "marketing.email");
    let audit = doc["auditEvents"]["items"].as_array().expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a["action"] == "organization.create" && a["targetId"] == json!(org)),
        "{doc}"
    );
    assert_eq!(doc["auditEvents"]["truncated"], false);
    let usage = doc["usageEvents"]["items"].as_array().expect("usage");
    assert_eq!(usage.len(), 1, "{doc}");
    assert_eq!(usage[0]["delta"], 3);
    assert_eq!(usage[0]["organization"], json!(org));
    let text = doc.to_string();
    for absent in [
        "export-bob@example.com",
        "export-owner@example.com",
        "bob.only.purpose",
        "Bob's unit",
    ] {
        assert!(!text.contains(absent), "{absent} is in Alice's export");
    }
    // The job is hers alone; the export too: Bob gets what a missing id gets.
    let listed = app
        .gql(
            &alice,
            "{ viewer { dataExports { id status } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        listed["data"]["viewer"]["dataExports"][0]["id"], e["id"],
        "{listed}"
    );
    assert_eq!(
        listed["data"]["viewer"]["dataExports"][0]["status"],
        "READY"
    );
    let hers = app.gql(&alice, JOB, json!({"id": job})).await;
    assert_eq!(hers["data"]["job"]["kind"], "gdpr.export", "{hers}");
    let seen = app.gql(&bob, JOB, json!({"id": job})).await;
    let unknown = app
        .gql(&bob, JOB, json!({"id": "job_01KB2ZJ0R5V8Y3T6W9X2M4N7PQ"}))
        .await;
    assert_eq!(seen, unknown);
    assert_eq!(seen["data"]["job"], Value::Null);
    let exports = app.gql(&bob, EXPORT_BY_ID, json!({"id": e["id"]})).await;
    assert_ok(&exports);
    assert_eq!(exports["data"]["dataExport"], Value::Null);
    let missing = app
        .gql(
            &bob,
            EXPORT_BY_ID,
            json!({"id": format!("dex_{}", "0".repeat(32))}),
        )
        .await;
    assert_eq!(exports, missing);
    // A changed link is refused like any unknown one.
    let url = e["downloadUrl"].as_str().expect("url");
    let forged = format!("{}{}x", app.base, url);
    let r = app.http.get(forged).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 404);
    worker.stop().await;
}

#[tokio::test]
async fn an_owner_exports_what_relates_to_their_workspace_and_a_stranger_learns_nothing() {
    let app = TestApp::spawn().await;
    let worker = Worker::start(&app);
    let one = app.user("scope-owner1@example.com");
    let two = app.user("scope-owner2@example.com");
    let admin = app.user("scope-admin@example.com");
    let stranger = app.user("scope-stranger@example.com");
    let alice = app.user("scope-alice@example.com");
    let ws1 = app.create_workspace(&one, "Scope One").await;
    let ws2 = app.create_workspace(&two, "Scope Two").await;
    app.add_member(&one, &ws1, "scope-alice@example.com", "ADMIN")
        .await;
    app.add_member(&one, &ws1, "scope-admin@example.com", "ADMIN")
        .await;
    app.add_member(&two, &ws2, "scope-alice@example.com", "ADMIN")
        .await;
    let _ = viewer_id(&app, &stranger).await;
    let alice_id = viewer_id(&app, &alice).await;
    let org1 = app.create_org(&alice, &ws1, None, "In one").await;
    let org2 = app.create_org(&alice, &ws2, None, "In two").await;
    assert_ok(
        &app.gql(
            &alice,
            RECORD,
            json!({"p": "private.choice", "v": "1", "g": true, "k": null}),
        )
        .await,
    );

    let (e, doc, _) = export_and_download(&app, &one, &alice_id, None).await;
    assert_eq!(e["workspaceId"], json!(ws1));
    assert_eq!(doc["export"]["scope"]["kind"], "WORKSPACE");
    assert_eq!(doc["profile"]["email"], "scope-alice@example.com");
    assert_eq!(doc["profile"]["subject"], Value::Null);
    assert_eq!(
        doc["consents"],
        Value::Null,
        "consents are not the workspace's"
    );
    let memberships = doc["memberships"].as_array().expect("memberships");
    assert_eq!(memberships.len(), 1);
    assert_eq!(memberships[0]["workspace"]["id"], json!(ws1));
    let audit = doc["auditEvents"]["items"].as_array().expect("audit");
    assert!(audit.iter().any(|a| a["targetId"] == json!(org1)));
    assert!(audit.iter().all(|a| a["workspace"] == json!(ws1)), "{doc}");
    let text = doc.to_string();
    for absent in [org2.as_str(), ws2.as_str(), "Scope Two", "private.choice"] {
        assert!(!text.contains(absent), "{absent} is in the owner's export");
    }
    // The owner's request is audited in their workspace; the job is the workspace's.
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM audit_events WHERE action = 'user.export' AND workspace_id = '{}'",
            uuid_of(&ws1)
        ))
        .await,
        1
    );

    // A stranger is told exactly what a missing id tells; an admin is not an owner.
    let missing = format!("usr_{}", "0".repeat(32));
    let theirs = app
        .gql(
            &stranger,
            EXPORT,
            json!({"u": alice_id, "w": null, "k": null}),
        )
        .await;
    let none = app
        .gql(
            &stranger,
            EXPORT,
            json!({"u": missing, "w": null, "k": null}),
        )
        .await;
    assert_code(&theirs, "NOT_FOUND");
    assert_eq!(theirs["errors"][0]["message"], none["errors"][0]["message"]);
    assert_eq!(theirs["data"], none["data"]);
    let r = app
        .gql(&admin, EXPORT, json!({"u": alice_id, "w": null, "k": null}))
        .await;
    assert_code(&r, "FORBIDDEN");
    // What the owner asked for stays the owner's.
    for token in [&stranger, &admin, &alice, &two] {
        let r = app.gql(token, EXPORT_BY_ID, json!({"id": e["id"]})).await;
        assert_eq!(r["data"]["dataExport"], Value::Null, "{r}");
    }
    let exports = app
        .sql_count("SELECT count(*) AS n FROM data_exports")
        .await;
    assert_eq!(exports, 1, "refused requests leave nothing");
    // An owner who is an owner no more reads it no more, nor downloads it through a link
    // issued before.
    const ROLE: &str = "mutation($m: ID!, $r: Role!) { updateMemberRole(input: {memberId: $m, role: $r}) { member { id } } }";
    let admin_member = app.member_id(&one, &ws1, "scope-admin@example.com").await;
    assert_ok(
        &app.gql(&one, ROLE, json!({"m": admin_member, "r": "OWNER"}))
            .await,
    );
    let one_member = app
        .member_id(&admin, &ws1, "scope-owner1@example.com")
        .await;
    assert_ok(
        &app.gql(&admin, ROLE, json!({"m": one_member, "r": "ADMIN"}))
            .await,
    );
    let r = app.gql(&one, EXPORT_BY_ID, json!({"id": e["id"]})).await;
    assert_eq!(r["data"]["dataExport"], Value::Null, "{r}");
    let url = e["downloadUrl"].as_str().expect("url");
    let resp = app
        .http
        .get(format!("{}{url}", app.base))
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status().as_u16(), 404);
    worker.stop().await;
}

/// The columns of every table (all schemas but the system's) whose text, JSON or text
/// array holds any of `needles` (case-insensitively): one statement generated from
/// `information_schema`.
async fn columns_naming(app: &TestApp, needles: &[&str]) -> Vec<String> {
    app.columns_containing(needles).await
}

#[tokio::test]
async fn erasure_leaves_no_personal_data_behind() {
    let app = TestApp::spawn().await;
    let worker = Worker::start(&app);
    const EMAIL: &str = "zelda.erasure-7f3@example.com";
    const NAME: &str = "Zelda Quixote-Erasure";
    let owner = app.user("erasure-owner@example.com");
    let zelda = named(&app, EMAIL, NAME);
    let ws = app.create_workspace(&owner, "Erasure Co").await;
    // Her e-mail in another workspace's text, and in renderings of the owner's responses.
    let r = app
        .gql(
            &owner,
            "mutation($d: String) { createWorkspace(input: {name: \"Elsewhere\", billingMode: SINGLE, description: $d}) { workspace { id } } }",
            json!({"d": format!("ask {EMAIL} about it")}),
        )
        .await;
    assert_ok(&r);
    let r = app
        .gql(&owner, ADD_WITH_KEY, json!({"w": ws, "e": EMAIL}))
        .await;
    assert_ok(&r);
    let invitation = r["data"]["addMember"]["invitation"]["id"]
        .as_str()
        .expect("invitation")
        .to_string();
    let accepted = app.accept_invitation(&zelda, &invitation).await;
    let member = accepted["data"]["acceptInvitation"]["member"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("accept: {accepted}"))
        .to_string();
    let zelda_id = viewer_id(&app, &zelda).await;
    let zelda_uuid = uuid_of(&zelda_id);
    let r = app
        .gql(
            &owner,
            "mutation($m: ID!) { updateMemberRole(input: {memberId: $m, role: ADMIN, idempotencyKey: \"role-zelda\"}) { member { user { email name } } } }",
            json!({"m": member}),
        )
        .await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["updateMemberRole"]["member"]["user"]["name"],
        NAME
    );
    // Her own doings: an organization, usage, consents, an idempotent request, exports.
    let org = app.create_org(&zelda, &ws, None, "Desk").await;
    assert_ok(&app.record(&zelda, &org, "users", 4).await);
    assert_ok(&app.record(&zelda, &org, "users", -1).await);
    for (p, g, k) in [
        ("marketing.email", true, "c-1"),
        ("marketing.email", false, "c-2"),
    ] {
        assert_ok(
            &app.gql(&zelda, RECORD, json!({"p": p, "v": "v1", "g": g, "k": k}))
                .await,
        );
    }
    let (mine, _, _) = export_and_download(&app, &zelda, &zelda_id, None).await;
    let (owners, _, _) = export_and_download(&app, &owner, &zelda_id, None).await;
    // Data of features that name people by e-mail, when those tables exist.
    let ws_uuid = uuid_of(&ws);
    if app
        .sql_count("SELECT count(*) AS n FROM pg_class WHERE relname = 'notification_recipients'")
        .await
        == 1
    {
        app.sql_count(&format!(
            "WITH a AS (INSERT INTO notification_recipients (workspace_id, category, addresses)
                        VALUES ('{ws_uuid}', 'SECURITY_ALERTS', ARRAY['keep@example.com', '{EMAIL}']),
                               ('{ws_uuid}', 'BILLING_NOTIFICATIONS', ARRAY['{EMAIL}'])
                        RETURNING 1),
                  n AS (INSERT INTO notifications (id, workspace_id, type, category, data, dedupe_key)
                        VALUES (gen_random_uuid(), '{ws_uuid}', 'owner.added', 'SECURITY_ALERTS',
                                '{{\"who\": \"{NAME} <{EMAIL}>\", \"role\": \"ADMIN\"}}', 'gdpr-test')
                        RETURNING 1)
             SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM n) AS n"
        ))
        .await;
    }
    // A pending invitation to her address, to another workspace.
    let elsewhere = text(
        &app,
        "SELECT 'ws_' || replace(id::text, '-', '') AS t FROM workspaces WHERE name = 'Elsewhere'",
    )
    .await;
    app.invite(&owner, &elsewhere, EMAIL, "VIEWER").await;
    let before = columns_naming(&app, &[EMAIL, NAME]).await;
    assert!(
        before.contains(&"public.users.email".to_string())
            && before.contains(&"public.audit_events.summary".to_string())
            && before.contains(&"public.idempotency_keys.rendered".to_string()),
        "the fixture names her: {before:?}"
    );
    assert!(before.contains(&"public.workspaces.description".to_string()));
    let app_ref = &app;
    let count = |sql: String| async move { app_ref.sql_count(&sql).await };
    let audit_total = "SELECT count(*) AS n FROM audit_events".to_string();
    let audit_hers =
        format!("SELECT count(*) AS n FROM audit_events WHERE actor_id = '{zelda_uuid}'");
    let usage_total = "SELECT count(*) AS n FROM usage_events".to_string();
    let usage_hers =
        format!("SELECT count(*) AS n FROM usage_events WHERE actor_id = '{zelda_uuid}'");
    let usage_sum = format!(
        "SELECT coalesce(sum(delta), 0)::bigint AS n FROM usage_events WHERE actor_id = '{zelda_uuid}'"
    );
    let (a0, ah0, u0, uh0, us0) = (
        count(audit_total.clone()).await,
        count(audit_hers.clone()).await,
        count(usage_total.clone()).await,
        count(usage_hers.clone()).await,
        count(usage_sum.clone()).await,
    );
    assert!(ah0 >= 1 && uh0 == 2 && us0 == 3);

    // She erases herself: signed out for good at once; the worker does the rest.
    let r = app
        .gql(&zelda, ERASE, json!({"u": zelda_id, "k": null}))
        .await;
    assert_ok(&r);
    let pseudonym = r["data"]["eraseUser"]["pseudonym"]
        .as_str()
        .expect("pseudonym")
        .to_string();
    assert!(
        pseudonym.starts_with("erased_") && pseudonym.len() == 23,
        "{pseudonym}"
    );
    assert_eq!(r["data"]["eraseUser"]["job"]["kind"], "gdpr.erase");
    let (status, again) = app
        .gql_raw(Some(&zelda), json!({"query": "{ viewer { id email } }"}))
        .await;
    assert_eq!(
        (status, error_code(&again)),
        (401, Some("UNAUTHENTICATED")),
        "{again}"
    );
    eventually(
        &app,
        &format!(
            "SELECT count(*) AS n FROM user_erasures WHERE user_id = '{zelda_uuid}' AND completed_at IS NOT NULL"
        ),
        1,
    )
    .await;

    // Nothing in any table names her any more.
    let after = columns_naming(&app, &[EMAIL, NAME, "auth0|zelda"]).await;
    assert!(after.is_empty(), "still naming her: {after:?}");
    // A repeat of the owner's keyed request shows her as she is now.
    let replay = app
        .gql(&owner, ADD_WITH_KEY, json!({"w": ws, "e": EMAIL}))
        .await;
    assert_ok(&replay);
    assert_eq!(
        replay["data"]["addMember"]["invitation"]["email"],
        json!(pseudonym)
    );
    // The tombstone: same id, the pseudonym instead of the e-mail, no name.
    assert_eq!(
        text(&app, &format!("SELECT email || '|' || coalesce(name, '-') AS t FROM users WHERE id = '{zelda_uuid}'")).await,
        format!("{pseudonym}|-")
    );
    // The audit trail and the usage ledger keep every row and every count; where they named
    // her they name the pseudonym, and the erasure itself is audited without her data.
    let erase_events = count(format!(
        "SELECT count(*) AS n FROM audit_events WHERE action = 'user.erase' AND target_id = '{pseudonym}'"
    ))
    .await;
    assert_eq!(erase_events, 1, "one event in her one workspace");
    assert_eq!(count(audit_total).await, a0 + erase_events);
    assert_eq!(count(audit_hers).await, ah0 + erase_events);
    assert_eq!(count(usage_total).await, u0);
    assert_eq!(count(usage_hers).await, uh0);
    assert_eq!(count(usage_sum).await, us0);
    assert!(
        count(format!(
            "SELECT count(*) AS n FROM audit_events WHERE action = 'member.invite' AND summary->>'email' = '{pseudonym}'"
        ))
        .await
            == 2
    );
    // What was hers is gone: memberships, consents, keys, exports (rows, objects and the
    // key that sealed them).
    for table in [
        format!("members WHERE user_id = '{zelda_uuid}'"),
        format!("consents WHERE user_id = '{zelda_uuid}'"),
        format!("idempotency_keys WHERE caller_id = '{zelda_uuid}'"),
        format!("data_exports WHERE user_id = '{zelda_uuid}'"),
        format!("data_keys WHERE owner_id = '{zelda_uuid}'"),
    ] {
        assert_eq!(
            count(format!("SELECT count(*) AS n FROM {table}")).await,
            0,
            "{table}"
        );
    }
    let dir = std::env::temp_dir()
        .join("workspaces-test-archives")
        .join(&app.db.name)
        .join("exports")
        .join(&zelda_uuid);
    let left = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    assert_eq!(left, 0, "export objects left in {}", dir.display());
    for e in [&mine, &owners] {
        let r = app.gql(&owner, EXPORT_BY_ID, json!({"id": e["id"]})).await;
        assert_eq!(r["data"]["dataExport"], Value::Null);
    }
    if app
        .sql_count("SELECT count(*) AS n FROM pg_class WHERE relname = 'notification_recipients'")
        .await
        == 1
    {
        assert_eq!(
            text(&app, "SELECT string_agg(array_to_string(addresses, ','), ';') AS t FROM notification_recipients").await,
            "keep@example.com"
        );
    }
    // Her identity cannot come back: not as herself, nor as a new user with that subject.
    let other_email = app
        .tokens
        .hs256(&format!("auth0|{EMAIL}"), "new-address@example.com", true);
    let (status, _) = app
        .gql_raw(Some(&other_email), json!({"query": "{ viewer { id } }"}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        count("SELECT count(*) AS n FROM users WHERE email = 'new-address@example.com'".into())
            .await,
        0
    );
    // The owner sees a pseudonym where she was.
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { members(first: 10) { edges { node { user { email } } } } auditLog(first: 1) { edges { node { action targetId } } } } }",
            json!({"w": ws}),
        )
        .await;
    assert!(!r.to_string().contains(EMAIL), "{r}");
    worker.stop().await;
}

#[tokio::test]
async fn an_owner_erases_a_member_from_their_workspace_only_and_the_account_stays() {
    let app = TestApp::spawn().await;
    let worker = Worker::start(&app);
    let owner = app.user("once-owner@example.com");
    let other_owner = app.user("once-owner2@example.com");
    let admin = app.user("once-admin@example.com");
    let stranger = app.user("once-stranger@example.com");
    let ws = app.create_workspace(&owner, "Once Co").await;
    let other = app.create_workspace(&other_owner, "Other Co").await;
    app.add_member(&owner, &ws, "once-admin@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &ws, "once-member@example.com", "VIEWER")
        .await;
    app.add_member(&owner, &ws, "once-shared@example.com", "VIEWER")
        .await;
    app.add_member(&other_owner, &other, "once-shared@example.com", "VIEWER")
        .await;
    let shared = app.user("once-shared@example.com");
    let member = app.user("once-member@example.com");
    let member_id = viewer_id(&app, &member).await;
    let shared_id = viewer_id(&app, &shared).await;
    let _ = viewer_id(&app, &stranger).await;
    let erasures = "SELECT count(*) AS n FROM user_erasures";

    // An admin is not an owner; a stranger learns what a missing id tells.
    assert_code(
        &app.gql(&admin, ERASE, json!({"u": member_id, "k": null}))
            .await,
        "FORBIDDEN",
    );
    let theirs = app
        .gql(&stranger, ERASE, json!({"u": member_id, "k": null}))
        .await;
    let missing = app
        .gql(
            &stranger,
            ERASE,
            json!({"u": format!("usr_{}", "f".repeat(32)), "k": null}),
        )
        .await;
    assert_code(&theirs, "NOT_FOUND");
    assert_eq!(theirs, missing);
    // The last owner of a workspace cannot erase themself.
    assert_code(
        &app.gql(
            &other_owner,
            ERASE,
            json!({"u": viewer_id(&app, &other_owner).await, "k": null}),
        )
        .await,
        "FAILED_PRECONDITION",
    );
    assert_eq!(app.sql_count(erasures).await, 0, "refusals erase nothing");

    // Someone who also belongs to another workspace is erased from the owner's only: they
    // keep their account, their sign-in and their other workspace.
    let r = app
        .gql(&owner, ERASE, json!({"u": shared_id, "k": "erase-shared"}))
        .await;
    assert_ok(&r);
    let job = r["data"]["eraseUser"]["job"]["id"]
        .as_str()
        .expect("job")
        .to_string();
    app.job_succeeded(&owner, &job).await;
    let r = app
        .gql(
            &shared,
            "query($w: ID!, $o: ID!) { viewer { email } mine: workspace(id: $w) { id } other: workspace(id: $o) { name viewerRole } }",
            json!({"w": ws, "o": other}),
        )
        .await;
    assert_ok(&r);
    assert_eq!(r["data"]["viewer"]["email"], "once-shared@example.com");
    assert!(
        r["data"]["mine"].is_null(),
        "removed from the owner's workspace: {r}"
    );
    assert_eq!(r["data"]["other"]["viewerRole"], "VIEWER", "{r}");
    assert_eq!(
        app.sql_count(erasures).await,
        0,
        "the account is not erased"
    );
    // In the owner's workspace her address is gone from its rows (its audit log named it).
    let ws_uuid = uuid_of(&ws);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM audit_events WHERE workspace_id = '{ws_uuid}' AND summary::text LIKE '%once-shared@%'"
        ))
        .await,
        0
    );
    // The other workspace's rows are untouched.
    let other_uuid = uuid_of(&other);
    assert!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM audit_events WHERE workspace_id = '{other_uuid}' AND summary::text LIKE '%once-shared@%'"
        ))
        .await
            > 0
    );

    // A member of the owner's workspace only: the same, their account stays too.
    let r = app
        .gql(&owner, ERASE, json!({"u": member_id, "k": "erase-1"}))
        .await;
    assert_ok(&r);
    let first = r["data"]["eraseUser"].clone();
    let job = first["job"]["id"].as_str().expect("job").to_string();
    app.job_succeeded(&owner, &job).await;
    let (status, body) = app
        .gql_raw(Some(&member), json!({"query": "{ viewer { id } }"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["viewer"]["id"], json!(member_id));
    // A keyed repeat replays; an unkeyed one finds nobody to erase (once).
    let again = app
        .gql(&owner, ERASE, json!({"u": member_id, "k": "erase-1"}))
        .await;
    assert_eq!(again["data"]["eraseUser"], first);
    assert_code(
        &app.gql(&owner, ERASE, json!({"u": member_id, "k": null}))
            .await,
        "NOT_FOUND",
    );
    assert_eq!(app.sql_count(erasures).await, 0);
    // Its job is the workspace's: others see nothing of it.
    for token in [&stranger, &other_owner] {
        let r = app.gql(token, JOB, json!({"id": job})).await;
        assert_eq!(r["data"]["job"], Value::Null, "{r}");
    }
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { members(first: 10) { edges { node { user { id } } } } } }",
            json!({"w": ws}),
        )
        .await;
    assert!(!r.to_string().contains(&member_id), "{r}");
    worker.stop().await;
}

#[tokio::test]
async fn erasure_rewrites_archived_rows_so_a_restore_brings_no_personal_data_back() {
    let app = TestApp::spawn().await;
    let worker = Worker::start(&app);
    const EMAIL: &str = "archived-person@example.com";
    let owner = app.user("archive-owner@example.com");
    let ws = app.create_workspace(&owner, "Archive Co").await;
    app.add_member(&owner, &ws, EMAIL, "VIEWER").await;
    let person = app.user(EMAIL);
    let person_id = viewer_id(&app, &person).await;
    // Cleanup archives (and deletes) every audit event of the workspace, her invitation too.
    let ws_uuid = uuid::Uuid::parse_str(&uuid_of(&ws)).expect("uuid");
    let vault = api::storage::Vault::open(
        &app.config.archive_url,
        &app.config.archive_options,
        app.config.archive_master_key,
    )
    .expect("vault");
    let retired = app.archive_audit_events(ws_uuid).await;
    assert_eq!(retired.archives, 1);
    let archived =
        format!("SELECT count(*) AS n FROM audit_events WHERE workspace_id = '{ws_uuid}'");
    assert_eq!(app.sql_count(&archived).await, 0);
    let open = |path: String| {
        let app = &app;
        async move { app.archive_text(ws_uuid, &path).await }
    };
    let path_sql = "SELECT path AS t FROM archives";
    let old_path = text(&app, path_sql).await;
    assert!(open(old_path.clone()).await.contains(EMAIL));

    let r = app
        .gql(&owner, ERASE, json!({"u": person_id, "k": null}))
        .await;
    assert_ok(&r);
    let pseudonym = r["data"]["eraseUser"]["pseudonym"]
        .as_str()
        .expect("pseudonym")
        .to_string();
    app.job_succeeded(
        &owner,
        r["data"]["eraseUser"]["job"]["id"].as_str().expect("job"),
    )
    .await;
    let new_path = text(&app, path_sql).await;
    assert_ne!(new_path, old_path);
    let redacted = open(new_path.clone()).await;
    assert!(!redacted.to_lowercase().contains(EMAIL), "{redacted}");
    assert!(redacted.contains(&pseudonym));
    assert!(matches!(
        vault.get_raw(&old_path).await,
        Err(api::storage::OpenError::Missing)
    ));
    // The manifest matches the redacted object: a restore verifies it and puts the rows
    // back, without her.
    let id = uuid::Uuid::parse_str(&text(&app, "SELECT id::text AS t FROM archives").await)
        .expect("archive id");
    api::domain::archives::run_restore(&app.pool, &vault, id, chrono::Utc::now())
        .await
        .expect("restore");
    assert!(app.sql_count(&archived).await > 0);
    // Only her account names her: an owner's erasure is of the workspace's copy.
    let after = columns_naming(&app, &[EMAIL]).await;
    assert_eq!(
        after,
        vec![
            "public.users.email".to_string(),
            "public.users.subject".to_string()
        ],
        "still naming her"
    );
    worker.stop().await;
}

#[tokio::test]
async fn self_erasure_reaches_the_archives_of_workspaces_the_person_left() {
    let app = TestApp::spawn().await;
    let worker = Worker::start(&app);
    const EMAIL: &str = "former-member-4c1@example.com";
    const NAME: &str = "Ottilie Formerly-Here";
    let owner = app.user("former-owner@example.com");
    let ws = app.create_workspace(&owner, "Former Co").await;
    let member = app.add_member(&owner, &ws, EMAIL, "ADMIN").await;
    // Signing in with her named token stores her name.
    let person = named(&app, EMAIL, NAME);
    let person_id = viewer_id(&app, &person).await;
    let person_uuid = uuid_of(&person_id);
    assert_eq!(
        text(
            &app,
            &format!("SELECT coalesce(name, '-') AS t FROM users WHERE id = '{person_uuid}'")
        )
        .await,
        NAME
    );
    // She acts: an organization named after her, renamed since (its row no longer names
    // her; the audit events of its creation and renaming do).
    const RENAME: &str = "mutation($o: ID!, $n: String!) { renameOrganization(input: {organizationId: $o, name: $n}) { organization { id name } } }";
    let org = app
        .create_org(&person, &ws, None, &format!("Desk of {NAME}"))
        .await;
    assert_ok(
        &app.gql(&person, RENAME, json!({"o": org, "n": "Desk"}))
            .await,
    );
    // The owner removes her; cleanup then archives (and deletes) every audit event of the
    // workspace.
    assert_ok(
        &app.gql(
            &owner,
            "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }",
            json!({"m": member}),
        )
        .await,
    );
    let ws_uuid = uuid::Uuid::parse_str(&uuid_of(&ws)).expect("uuid");
    let vault = api::storage::Vault::open(
        &app.config.archive_url,
        &app.config.archive_options,
        app.config.archive_master_key,
    )
    .expect("vault");
    let retire = || app.archive_audit_events(ws_uuid);
    assert_eq!(retire().await.archives, 1);
    // Later the owner names her in the workspace, in rows that do not hold her id: events
    // archived apart (a second archive), and a notification.
    assert_ok(
        &app.gql(
            &owner,
            RENAME,
            json!({"o": org, "n": format!("Was {NAME}'s desk")}),
        )
        .await,
    );
    assert_ok(
        &app.gql(&owner, RENAME, json!({"o": org, "n": "Desk"}))
            .await,
    );
    assert_eq!(retire().await.archives, 1);
    let notified = app
        .sql_exec(&format!(
            "INSERT INTO notifications (id, workspace_id, type, category, data, dedupe_key, fanned_out_at)
             VALUES (gen_random_uuid(), '{ws_uuid}', 'desk.cleared', 'SECURITY_ALERTS',
                     '{{\"note\": \"{NAME}''s desk was cleared\"}}', 'former-desk', now())"
        ))
        .await;
    assert_eq!(notified, 1);
    let archived =
        format!("SELECT count(*) AS n FROM audit_events WHERE workspace_id = '{ws_uuid}'");
    assert_eq!(app.sql_count(&archived).await, 0);
    // Nothing live ties her to the workspace any more: only its archives.
    for tie in [
        format!("members WHERE user_id = '{person_uuid}'"),
        format!("audit_events WHERE actor_id = '{person_uuid}'"),
        format!("removed_member_scrubs WHERE user_id = '{person_uuid}'"),
    ] {
        assert_eq!(
            app.sql_count(&format!("SELECT count(*) AS n FROM {tie}"))
                .await,
            0,
            "{tie}"
        );
    }
    let open = |path: String| {
        let app = &app;
        async move { app.archive_text(ws_uuid, &path).await }
    };
    let paths_sql = "SELECT string_agg(path, ' ' ORDER BY range_start) AS t FROM archives";
    let old_paths = text(&app, paths_sql).await;
    let old: Vec<String> = old_paths.split(' ').map(str::to_string).collect();
    assert_eq!(old.len(), 2, "{old_paths}");
    let hers = open(old[0].clone()).await;
    assert!(hers.contains(EMAIL) && hers.contains(NAME), "{hers}");
    let owners = open(old[1].clone()).await;
    assert!(
        owners.contains(NAME) && !owners.contains(&person_uuid) && !owners.contains(&person_id),
        "{owners}"
    );

    // She erases herself (signed out at once: the erasure's record tells when it is done).
    let r = app
        .gql(&person, ERASE, json!({"u": person_id, "k": null}))
        .await;
    assert_ok(&r);
    let pseudonym = r["data"]["eraseUser"]["pseudonym"]
        .as_str()
        .expect("pseudonym")
        .to_string();
    eventually(
        &app,
        &format!(
            "SELECT count(*) AS n FROM user_erasures WHERE user_id = '{person_uuid}' AND completed_at IS NOT NULL"
        ),
        1,
    )
    .await;
    let new_paths = text(&app, paths_sql).await;
    for (path, old_path) in new_paths.split(' ').zip(&old) {
        assert_ne!(path, old_path);
        let redacted = open(path.to_string()).await;
        assert!(!redacted.to_lowercase().contains(EMAIL), "{redacted}");
        assert!(
            !redacted.to_lowercase().contains(&NAME.to_lowercase()),
            "{redacted}"
        );
        assert!(redacted.contains(&pseudonym), "{redacted}");
    }
    // Her id stays (the rows keep their actor), so the archive is still found to be hers.
    assert!(
        open(new_paths.split(' ').next().expect("path").to_string())
            .await
            .contains(&person_uuid)
    );

    // A restore brings the rows back without her.
    let ids = text(&app, "SELECT string_agg(id::text, ' ') AS t FROM archives").await;
    for id in ids.split(' ') {
        let id = uuid::Uuid::parse_str(id).expect("archive id");
        api::domain::archives::run_restore(&app.pool, &vault, id, chrono::Utc::now())
            .await
            .expect("restore");
    }
    assert!(app.sql_count(&archived).await > 0);
    let after = columns_naming(&app, &[EMAIL, NAME]).await;
    assert!(after.is_empty(), "still naming her: {after:?}");
    worker.stop().await;
}

#[tokio::test]
async fn privacy_operations_and_their_downloads_pass_the_workspace_s_policies() {
    // Settings written with SQL apply at once.
    let app = TestApp::with(tests::Options {
        env: [("GOVERNANCE_CACHE_MS".to_string(), "0".to_string())].into(),
    })
    .await;
    let worker = Worker::start(&app);
    let owner = app.user("privacy-gate-owner@example.com");
    let ws = app.create_workspace(&owner, "Guarded").await;
    app.add_member(&owner, &ws, "privacy-gate-m@example.com", "VIEWER")
        .await;
    let member = app.user("privacy-gate-m@example.com");
    let member_id = viewer_id(&app, &member).await;
    // Exports asked for while the policies allow it: the owner's of the member, the member's own.
    let (owners, _, _) = export_and_download(&app, &owner, &member_id, None).await;
    let (mine, _, _) = export_and_download(&app, &member, &member_id, None).await;
    let links: Vec<String> = [&owners, &mine]
        .iter()
        .map(|e| e["downloadUrl"].as_str().expect("link").to_string())
        .collect();
    // Then the workspace accepts requests from 10.0.0.0/8 only (the tests come from
    // 127.0.0.1), and then it requires MFA.
    for (column, value, why) in [
        ("ip_allow_list", "ARRAY['10.0.0.0/8']", "IP_NOT_ALLOWED"),
        ("mfa_required", "true", "MFA_REQUIRED"),
    ] {
        app.set_workspace_settings(&ws, column, value).await;
        for (who, token) in [("owner", &owner), ("member", &member)] {
            // Asking for an export (scoped to the workspace, or the person's own of
            // everything), reading one, and erasing are refused with the reason.
            for r in [
                app.gql(token, EXPORT, json!({"u": member_id, "w": ws, "k": null}))
                    .await,
                app.gql(token, EXPORT, json!({"u": member_id, "w": null, "k": null}))
                    .await,
                app.gql(
                    token,
                    EXPORT_BY_ID,
                    json!({"id": if who == "owner" { &owners["id"] } else { &mine["id"] }}),
                )
                .await,
                app.gql(token, ERASE, json!({"u": member_id, "k": null}))
                    .await,
            ] {
                let e = &r["errors"][0]["extensions"];
                assert!(
                    e["code"] == "FORBIDDEN" && e["reason"] == why,
                    "{who} under {why}: {r}"
                );
            }
        }
        // The links carry no token: the IP allow-list holds them (404, nothing told).
        if why == "IP_NOT_ALLOWED" {
            for url in &links {
                let resp = app
                    .http
                    .get(format!("{}{url}", app.base))
                    .send()
                    .await
                    .expect("download");
                assert_eq!(resp.status().as_u16(), 404, "{url}");
            }
        }
        let off = if column == "ip_allow_list" {
            "'{}'"
        } else {
            "false"
        };
        app.set_workspace_settings(&ws, column, off).await;
    }
    // Nothing was erased, and the links work again.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM user_erasures")
            .await,
        0
    );
    let resp = app
        .http
        .get(format!("{}{}", app.base, links[0]))
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status().as_u16(), 200);
    worker.stop().await;
}
