//! API keys (service accounts) over HTTP: created by owners and admins with a role at most
//! theirs, used with `Authorization: Bearer <secret>` in their own workspace and nowhere
//! else, refused once revoked, expired, mistyped or disallowed by the policy, listed
//! without secrets, and never mistaken for people (members, owners, sign-ins).
//!
//! Policy settings are written with SQL (their mutation has tests of its own), on servers
//! that cache settings and keys for 0 ms, so each request sees the rows as they are.

use std::collections::HashMap;

use serde_json::{Value, json};
use tests::{Options, TestApp, assert_code, assert_ok, id_uuid, workspace_uuid};

const CREATE: &str = "mutation($w: ID!, $n: String!, $r: Role!, $e: DateTime, $k: String) {
    createApiKey(input: {workspaceId: $w, name: $n, role: $r, expiresAt: $e, idempotencyKey: $k}) {
        apiKey { id prefix name role status expiresAt }
        secret
        approvalRequest { id status operation }
    } }";
const REVOKE: &str = "mutation($id: ID!) {
    revokeApiKey(input: {apiKeyId: $id}) { apiKey { id prefix status revokedAt } } }";
const LIST: &str = "query($w: ID!, $f: Int, $a: String) { workspace(id: $w) {
    apiKeys(first: $f, after: $a) {
        pageInfo { hasNextPage endCursor }
        edges { node { id prefix name role status createdAt createdBy { email }
                       expiresAt lastUsedAt revokedAt } } } } }";
const READ: &str = "query($w: ID!) { workspace(id: $w) { id name } }";
const CREATE_ORG: &str = "mutation($w: ID!) {
    createOrganization(input: {workspaceId: $w, name: \"By key\"}) { organization { id } } }";
const REMOVE_MEMBER: &str =
    "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }";
const SET_ROLE: &str = "mutation($m: ID!, $r: Role!) {
    updateMemberRole(input: {memberId: $m, role: $r}) { member { role } } }";
const CREATE_WS: &str = "mutation { createWorkspace(input: {name: \"Mine\", billingMode: SINGLE}) { workspace { id } } }";

/// A server that reads settings and keys on every request (no caching).
async fn app() -> TestApp {
    let env = HashMap::from([("GOVERNANCE_CACHE_MS".to_string(), "0".to_string())]);
    TestApp::with(Options { env }).await
}

async fn try_create(
    app: &TestApp,
    token: &str,
    ws: &str,
    name: &str,
    role: &str,
    expires: Option<String>,
) -> Value {
    app.gql(
        token,
        CREATE,
        json!({"w": ws, "n": name, "r": role, "e": expires}),
    )
    .await
}

/// Creates a key; (its id, prefix, secret).
async fn create(app: &TestApp, token: &str, ws: &str, role: &str) -> (String, String, String) {
    let r = try_create(app, token, ws, "CI", role, None).await;
    assert_ok(&r);
    let k = &r["data"]["createApiKey"];
    (
        k["apiKey"]["id"].as_str().expect("id").to_string(),
        k["apiKey"]["prefix"].as_str().expect("prefix").to_string(),
        k["secret"].as_str().expect("secret").to_string(),
    )
}

fn reason(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["reason"].as_str()
}

#[track_caller]
fn assert_bad(body: &Value, field: &str) {
    assert_code(body, "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
}

/// Sends `query` with `token` and expects the request refused as unauthenticated (401).
async fn assert_401(app: &TestApp, token: &str, ws: &str) {
    let (status, body) = app
        .gql_raw(Some(token), json!({"query": READ, "variables": {"w": ws}}))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_code(&body, "UNAUTHENTICATED");
}

fn in_future(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339()
}

#[tokio::test]
async fn a_key_acts_in_its_workspace_with_its_role_and_nowhere_else() {
    let app = app().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Home").await;
    let other = app.create_workspace(&owner, "Elsewhere").await;
    let (_, prefix, admin_key) = create(&app, &owner, &ws, "ADMIN").await;
    assert!(admin_key.starts_with(&format!("{prefix}_")), "{admin_key}");
    assert!(prefix.starts_with("wsk_") && prefix.len() == 16, "{prefix}");

    // Reads and acts in its workspace, with its role.
    let r = app.gql(&admin_key, READ, json!({"w": ws})).await;
    assert_ok(&r);
    assert_eq!(r["data"]["workspace"]["name"], "Home");
    let r = app.gql(&admin_key, CREATE_ORG, json!({"w": ws})).await;
    assert_ok(&r);
    let org = r["data"]["createOrganization"]["organization"]["id"]
        .as_str()
        .expect("org")
        .to_string();
    assert_ok(&app.record(&admin_key, &org, "users", 2).await);
    let (_, _, viewer_key) = create(&app, &owner, &ws, "VIEWER").await;
    assert_ok(&app.gql(&viewer_key, READ, json!({"w": ws})).await);
    assert_code(
        &app.gql(&viewer_key, CREATE_ORG, json!({"w": ws})).await,
        "FORBIDDEN",
    );
    assert_code(
        &app.record(&viewer_key, &org, "users", 1).await,
        "FORBIDDEN",
    );

    // Another workspace of its creator is exactly like a missing one.
    let missing = api::ids::WorkspaceId::new().encode();
    for w in [&other, &missing] {
        let r = app.gql(&admin_key, READ, json!({"w": w})).await;
        assert_ok(&r);
        assert!(r["data"]["workspace"].is_null(), "{r}");
        let r = app
            .gql(
                &admin_key,
                "query($id: ID!) { node(id: $id) { id } }",
                json!({"id": w}),
            )
            .await;
        assert!(r["data"]["node"].is_null(), "{r}");
    }
    let a = app.gql(&admin_key, CREATE_ORG, json!({"w": other})).await;
    let b = app.gql(&admin_key, CREATE_ORG, json!({"w": missing})).await;
    assert_code(&a, "NOT_FOUND");
    assert_eq!(a["errors"][0]["message"], b["errors"][0]["message"]);
    let r = app
        .gql(
            &admin_key,
            "{ workspaces(first: 10) { nodes { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(r["data"]["workspaces"]["nodes"], json!([{"id": ws}]), "{r}");

    // Nor may it do what only people do.
    assert_code(
        &app.gql(&admin_key, CREATE_WS, json!({})).await,
        "FORBIDDEN",
    );
    assert_code(
        &try_create(&app, &admin_key, &ws, "Child", "VIEWER", None).await,
        "FORBIDDEN",
    );
    let (viewer_key_id, _, _) = create(&app, &owner, &ws, "VIEWER").await;
    assert_code(
        &app.gql(&admin_key, REVOKE, json!({"id": viewer_key_id}))
            .await,
        "FORBIDDEN",
    );
    let r = app
        .gql(
            &admin_key,
            "mutation { recordConsent(input: {purpose: \"marketing\", version: \"1\", granted: true}) { consent { purpose } } }",
            json!({}),
        )
        .await;
    assert_code(&r, "FORBIDDEN");
    let r = app.gql(&admin_key, "{ viewer { id } }", json!({})).await;
    let me = r["data"]["viewer"]["id"].as_str().expect("viewer");
    let r = app
        .gql(
            &admin_key,
            "mutation($u: ID!) { requestDataExport(input: {userId: $u}) { dataExport { id } } }",
            json!({"u": me}),
        )
        .await;
    assert_code(&r, "FORBIDDEN");
    let r = app
        .gql(
            &admin_key,
            "mutation($u: ID!) { eraseUser(input: {userId: $u}) { pseudonym } }",
            json!({"u": me}),
        )
        .await;
    assert_code(&r, "FORBIDDEN");
}

#[tokio::test]
async fn keys_are_listed_with_prefix_and_last_use_never_the_secret() {
    let app = app().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Home").await;
    let admin = app
        .member_token(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    let viewer = app
        .member_token(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    let r = app
        .gql(
            &owner,
            CREATE,
            json!({"w": ws, "n": "Deploy bot", "r": "VIEWER", "k": "key-1"}),
        )
        .await;
    assert_ok(&r);
    let first = &r["data"]["createApiKey"];
    let secret = first["secret"].as_str().expect("secret").to_string();
    let id = first["apiKey"]["id"].as_str().expect("id").to_string();
    let prefix = first["apiKey"]["prefix"]
        .as_str()
        .expect("prefix")
        .to_string();
    assert_eq!(first["apiKey"]["status"], "ACTIVE");
    assert!(first["approvalRequest"].is_null());
    // A replay returns the same key, and no secret: it was shown once.
    let again = app
        .gql(
            &owner,
            CREATE,
            json!({"w": ws, "n": "Deploy bot", "r": "VIEWER", "k": "key-1"}),
        )
        .await;
    assert_ok(&again);
    assert_eq!(again["data"]["createApiKey"]["apiKey"]["id"], id);
    assert!(again["data"]["createApiKey"]["secret"].is_null(), "{again}");
    let (newer, _, _) = create(&app, &admin, &ws, "ADMIN").await;

    assert_ok(&app.gql(&secret, READ, json!({"w": ws})).await);
    app.flush_api_usage().await;

    let r = app.gql(&admin, LIST, json!({"w": ws})).await;
    assert_ok(&r);
    let edges = r["data"]["workspace"]["apiKeys"]["edges"]
        .as_array()
        .expect("edges")
        .clone();
    assert_eq!(edges.len(), 2, "{r}");
    assert_eq!(edges[0]["node"]["id"], newer, "newest first: {r}");
    let k = &edges[1]["node"];
    assert_eq!(k["id"], id);
    assert_eq!(k["prefix"], prefix);
    assert_eq!(k["name"], "Deploy bot");
    assert_eq!(k["role"], "VIEWER");
    assert_eq!(k["status"], "ACTIVE");
    assert_eq!(k["createdBy"]["email"], "owner@example.com");
    assert!(k["lastUsedAt"].is_string(), "{r}");
    assert!(edges[0]["node"]["lastUsedAt"].is_null(), "{r}");
    assert!(!r.to_string().contains(&secret[prefix.len()..]));
    // Pages of one.
    let p1 = app.gql(&owner, LIST, json!({"w": ws, "f": 1})).await;
    let page = &p1["data"]["workspace"]["apiKeys"];
    assert_eq!(page["pageInfo"]["hasNextPage"], true, "{p1}");
    let p2 = app
        .gql(
            &owner,
            LIST,
            json!({"w": ws, "f": 1, "a": page["pageInfo"]["endCursor"]}),
        )
        .await;
    let page2 = &p2["data"]["workspace"]["apiKeys"];
    assert_eq!(page2["edges"][0]["node"]["id"], id, "{p2}");
    assert_eq!(page2["pageInfo"]["hasNextPage"], false);
    assert_code(
        &app.gql(&owner, LIST, json!({"w": ws, "f": 101})).await,
        "BAD_USER_INPUT",
    );
    // Viewers (people or keys) may not list keys.
    assert_code(&app.gql(&viewer, LIST, json!({"w": ws})).await, "FORBIDDEN");
    assert_code(&app.gql(&secret, LIST, json!({"w": ws})).await, "FORBIDDEN");

    // Stored: a 32-byte hash, a service account, and the secret nowhere at all.
    let key = id_uuid(&id);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM api_keys k JOIN users u ON u.id = k.user_id
              WHERE k.id = '{key}' AND octet_length(k.secret_hash) = 32
                AND u.service_account AND u.subject = 'apikey|{key}'
                AND u.email = '{prefix}@api-keys.invalid' AND NOT u.email_verified"
        ))
        .await,
        1
    );
    // Every row of every table, as text: the key's prefix is found (the search works), the
    // secret part is not.
    let tables_holding = async |needle: &str| {
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM information_schema.tables t
              WHERE t.table_type = 'BASE TABLE' AND t.table_schema IN ('public', 'apalis')
                AND query_to_xml(format('SELECT 1 FROM %I.%I x WHERE x::text LIKE %L',
                                        t.table_schema, t.table_name, '%{needle}%'),
                                 false, true, '')::text <> ''"
        ))
        .await
    };
    assert!(
        tables_holding(&prefix).await >= 3,
        "the search finds nothing"
    );
    assert_eq!(
        tables_holding(&secret[prefix.len() + 1..]).await,
        0,
        "the secret is stored somewhere"
    );
    // The tables one would suspect do hold the key's traces, without the secret.
    for sql in [
        "SELECT count(*) AS n FROM idempotency_keys WHERE operation = 'createApiKey'",
        "SELECT count(*) AS n FROM audit_events WHERE action = 'api_key.create'",
        "SELECT count(*) AS n FROM notifications WHERE type = 'security.api_key_created'",
    ] {
        assert!(app.sql_count(sql).await >= 1, "{sql}");
    }
}

#[tokio::test]
async fn revoked_expired_and_mistyped_keys_are_refused() {
    let app = app().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Home").await;
    let (id, prefix, secret) = create(&app, &owner, &ws, "ADMIN").await;
    assert_ok(&app.gql(&secret, READ, json!({"w": ws})).await);

    // Wrong secret with a valid prefix, malformed keys.
    assert_401(&app, &format!("{prefix}_{}", "A".repeat(43)), &ws).await;
    assert_401(&app, &format!("{secret}x"), &ws).await;
    assert_401(&app, &prefix, &ws).await;
    assert_401(&app, &format!("wsk_000000000000_{}", &secret[17..]), &ws).await;
    assert_401(&app, &format!("{secret}{}", "x".repeat(5000)), &ws).await;

    // Revoked: refused at once; revoking again returns it as it is, audited once.
    let r = app.gql(&owner, REVOKE, json!({"id": id})).await;
    assert_ok(&r);
    let k = &r["data"]["revokeApiKey"]["apiKey"];
    assert_eq!(k["status"], "REVOKED");
    assert_401(&app, &secret, &ws).await;
    let again = app.gql(&owner, REVOKE, json!({"id": id})).await;
    assert_ok(&again);
    assert_eq!(
        again["data"]["revokeApiKey"]["apiKey"]["revokedAt"],
        k["revokedAt"]
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events WHERE action = 'api_key.revoke'")
            .await,
        1
    );
    // Its service account left the workspace.
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM members m JOIN api_keys k ON k.user_id = m.user_id
              WHERE k.id = '{}'",
            id_uuid(&id)
        ))
        .await,
        0
    );

    // Expired: by the clock, and by its stored expiry.
    let r = try_create(&app, &owner, &ws, "Short", "VIEWER", Some(in_future(2))).await;
    assert_ok(&r);
    let short = r["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    assert_ok(&app.gql(&short, READ, json!({"w": ws})).await);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_401(&app, &short, &ws).await;
    let (id2, _, secret2) = create(&app, &owner, &ws, "VIEWER").await;
    assert_ok(&app.gql(&secret2, READ, json!({"w": ws})).await);
    app.sql_exec(&format!(
        "UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = '{}'",
        id_uuid(&id2)
    ))
    .await;
    assert_401(&app, &secret2, &ws).await;
    let r = app.gql(&owner, LIST, json!({"w": ws})).await;
    let statuses: Vec<&str> = r["data"]["workspace"]["apiKeys"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["status"].as_str())
        .collect();
    assert_eq!(statuses, ["EXPIRED", "EXPIRED", "REVOKED"], "{r}");
}

#[tokio::test]
async fn who_may_create_and_revoke_which_keys() {
    let app = app().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Home").await;
    let outsider = app.user("outsider@example.com");
    let admin = app
        .member_token(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    let viewer = app
        .member_token(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;

    assert_code(
        &try_create(&app, &admin, &ws, "Boss", "OWNER", None).await,
        "FORBIDDEN",
    );
    let (admin_made, _, _) = create(&app, &admin, &ws, "ADMIN").await;
    assert_code(
        &try_create(&app, &viewer, &ws, "Peek", "VIEWER", None).await,
        "FORBIDDEN",
    );
    let a = try_create(&app, &outsider, &ws, "Nope", "VIEWER", None).await;
    let b = try_create(
        &app,
        &outsider,
        &api::ids::WorkspaceId::new().encode(),
        "Nope",
        "VIEWER",
        None,
    )
    .await;
    assert_code(&a, "NOT_FOUND");
    assert_eq!(a["errors"][0]["message"], b["errors"][0]["message"]);

    let (owner_key, _, _) = create(&app, &owner, &ws, "OWNER").await;
    assert_code(
        &app.gql(&admin, REVOKE, json!({"id": owner_key})).await,
        "FORBIDDEN",
    );
    assert_code(
        &app.gql(&viewer, REVOKE, json!({"id": admin_made})).await,
        "FORBIDDEN",
    );
    // A key of a workspace you are not in, and one that does not exist: the same NOT_FOUND.
    let a = app.gql(&outsider, REVOKE, json!({"id": admin_made})).await;
    let b = app
        .gql(
            &outsider,
            REVOKE,
            json!({"id": api::ids::ApiKeyId::new().encode()}),
        )
        .await;
    let c = app
        .gql(&outsider, REVOKE, json!({"id": "key_nonsense"}))
        .await;
    assert_code(&a, "NOT_FOUND");
    assert_eq!(a["errors"][0]["message"], b["errors"][0]["message"]);
    assert_eq!(a["errors"][0]["message"], c["errors"][0]["message"]);
    assert_ok(&app.gql(&admin, REVOKE, json!({"id": admin_made})).await);
    assert_ok(&app.gql(&owner, REVOKE, json!({"id": owner_key})).await);
}

#[tokio::test]
async fn the_policy_decides_whether_how_long_and_how_many() {
    let app = app().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Home").await;
    let (_, _, secret) = create(&app, &owner, &ws, "ADMIN").await;

    // Input checks.
    for name in [
        "",
        "   ",
        "tab\there",
        &"n".repeat(101),
        &"n".repeat(20_000),
    ] {
        assert_bad(
            &try_create(&app, &owner, &ws, name, "VIEWER", None).await,
            "name",
        );
    }
    assert_ok(&try_create(&app, &owner, &ws, &"n".repeat(100), "VIEWER", None).await);
    assert_bad(
        &try_create(&app, &owner, &ws, "Old", "VIEWER", Some(in_future(-60))).await,
        "expiresAt",
    );

    // Keys off: neither created nor used.
    app.set_workspace_settings(&ws, "api_keys_allowed", "false")
        .await;
    let r = try_create(&app, &owner, &ws, "Off", "VIEWER", None).await;
    assert_code(&r, "FORBIDDEN");
    assert_eq!(reason(&r), Some("API_KEYS_DISABLED"), "{r}");
    let r = app.gql(&secret, READ, json!({"w": ws})).await;
    assert_code(&r, "FORBIDDEN");
    assert_eq!(reason(&r), Some("API_KEYS_DISABLED"), "{r}");
    app.set_workspace_settings(&ws, "api_keys_allowed", "true")
        .await;
    assert_ok(&app.gql(&secret, READ, json!({"w": ws})).await);

    // Longest lifetime.
    app.set_workspace_settings(&ws, "api_key_max_lifetime_days", "30")
        .await;
    assert_bad(
        &try_create(&app, &owner, &ws, "Forever", "VIEWER", None).await,
        "expiresAt",
    );
    assert_bad(
        &try_create(
            &app,
            &owner,
            &ws,
            "Long",
            "VIEWER",
            Some(in_future(31 * 86_400)),
        )
        .await,
        "expiresAt",
    );
    assert_ok(
        &try_create(
            &app,
            &owner,
            &ws,
            "Month",
            "VIEWER",
            Some(in_future(29 * 86_400)),
        )
        .await,
    );
    app.set_workspace_settings(&ws, "api_key_max_lifetime_days", "NULL")
        .await;

    // Most live keys: 3 live now (revoked and expired ones do not count).
    app.set_workspace_settings(&ws, "api_key_max_count", "3")
        .await;
    let r = try_create(&app, &owner, &ws, "Fourth", "VIEWER", None).await;
    assert_code(&r, "LIMIT_EXCEEDED");
    let id = app.gql(&owner, LIST, json!({"w": ws, "f": 1})).await["data"]["workspace"]["apiKeys"]
        ["edges"][0]["node"]["id"]
        .as_str()
        .expect("a key")
        .to_string();
    assert_ok(&app.gql(&owner, REVOKE, json!({"id": id})).await);
    assert_ok(&try_create(&app, &owner, &ws, "Fourth", "VIEWER", None).await);
    assert_code(
        &try_create(&app, &owner, &ws, "Fifth", "VIEWER", None).await,
        "LIMIT_EXCEEDED",
    );
    app.sql_exec(&format!(
        "UPDATE api_keys SET expires_at = now() - interval '1 second'
          WHERE workspace_id = '{}' AND name = 'Fourth'",
        workspace_uuid(&ws)
    ))
    .await;
    assert_ok(&try_create(&app, &owner, &ws, "Fifth", "VIEWER", None).await);
}

#[tokio::test]
async fn service_accounts_are_not_people() {
    let app = app().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Home").await;
    let (id, prefix, secret) = create(&app, &owner, &ws, "OWNER").await;
    // The OWNER key acts as an owner…
    assert_ok(
        &app.gql(
            &secret,
            "mutation($w: ID!) { renameWorkspace(input: {workspaceId: $w, name: \"Renamed\"}) { workspace { name } } }",
            json!({"w": ws}),
        )
        .await,
    );
    // …but is no member in lists and counts, and no owner for the last-owner rule.
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { members(first: 100) { edges { node { id role user { email } } } } } }",
            json!({"w": ws}),
        )
        .await;
    let members = r["data"]["workspace"]["members"]["edges"]
        .as_array()
        .expect("members");
    assert_eq!(members.len(), 1, "{r}");
    assert_eq!(members[0]["node"]["user"]["email"], "owner@example.com");
    let mine = members[0]["node"]["id"].as_str().expect("member id");
    let r = app
        .gql(&owner, SET_ROLE, json!({"m": mine, "r": "ADMIN"}))
        .await;
    assert_code(&r, "CONFLICT");
    let r = app.gql(&owner, REMOVE_MEMBER, json!({"m": mine})).await;
    assert_code(&r, "CONFLICT");

    // The key's membership cannot be changed or removed as a member's.
    #[derive(diesel::QueryableByName)]
    struct M {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: uuid::Uuid,
    }
    let m: M = {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        let mut conn = diesel_async::AsyncPgConnection::establish(&app.db.url)
            .await
            .expect("connect");
        diesel::sql_query(format!(
            "SELECT m.id FROM members m JOIN api_keys k ON k.user_id = m.user_id WHERE k.id = '{}'",
            id_uuid(&id)
        ))
        .get_result(&mut conn)
        .await
        .expect("the key's membership")
    };
    let key_member = api::ids::MemberId(m.id).encode();
    for token in [&owner, &secret] {
        let r = app
            .gql(token, REMOVE_MEMBER, json!({"m": key_member}))
            .await;
        assert_code(&r, "NOT_FOUND");
        let r = app
            .gql(token, SET_ROLE, json!({"m": key_member, "r": "VIEWER"}))
            .await;
        assert_code(&r, "NOT_FOUND");
        let r = app
            .gql(
                token,
                "query($id: ID!) { node(id: $id) { id } }",
                json!({"id": key_member}),
            )
            .await;
        assert!(r["data"]["node"].is_null(), "{r}");
    }
    // Nor erased as a person.
    let r = app.gql(&secret, "{ viewer { id } }", json!({})).await;
    let service_user = r["data"]["viewer"]["id"].as_str().expect("viewer");
    let r = app
        .gql(
            &owner,
            "mutation($u: ID!) { eraseUser(input: {userId: $u}) { pseudonym } }",
            json!({"u": service_user}),
        )
        .await;
    assert_code(&r, "NOT_FOUND");

    // No token signs in as a service account: not by its subject…
    let key = id_uuid(&id);
    let email = format!("{prefix}@api-keys.invalid");
    let jwt = app.tokens.hs256(&format!("apikey|{key}"), &email, true);
    let (status, body) = app
        .gql_raw(Some(&jwt), json!({"query": READ, "variables": {"w": ws}}))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_code(&body, "UNAUTHENTICATED");
    // …nor by its e-mail address: that is a different, new user who belongs nowhere.
    let jwt = app.tokens.hs256("auth0|impostor", &email, true);
    let r = app.gql(&jwt, READ, json!({"w": ws})).await;
    assert_ok(&r);
    assert!(r["data"]["workspace"].is_null(), "{r}");
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM users WHERE service_account AND subject = 'apikey|{key}'"
        ))
        .await,
        1
    );
    assert_ok(&app.gql(&secret, READ, json!({"w": ws})).await);
}

#[tokio::test]
async fn a_key_under_approval_is_created_waiting_and_authenticates_nothing() {
    let app = app().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Home").await;
    let admin = app.user("admin@example.com");
    app.add_member(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    app.set_workspace_settings(&ws, "approval_required_for", "'{CREATE_API_KEY}'")
        .await;
    let r = try_create(&app, &owner, &ws, "Held", "ADMIN", None).await;
    assert_ok(&r);
    let c = &r["data"]["createApiKey"];
    let secret = c["secret"].as_str().expect("the secret is shown now");
    assert_eq!(c["apiKey"]["status"], "PENDING_APPROVAL");
    assert_eq!(c["approvalRequest"]["status"], "PENDING");
    assert_eq!(c["approvalRequest"]["operation"], "createApiKey");
    assert_401(&app, secret, &ws).await;
    // The request holds nothing secret.
    let hidden = &secret[17..];
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM approval_requests WHERE input::text LIKE '%{hidden}%'"
        ))
        .await,
        0
    );

    // Approved by a second person: it works from then on, audited as activated.
    let request = c["approvalRequest"]["id"].as_str().expect("request");
    let r = app
        .gql(
            &admin,
            "mutation($r: ID!) { approveRequest(input: {approvalRequestId: $r}) { approvalRequest { status } } }",
            json!({"r": request}),
        )
        .await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["approveRequest"]["approvalRequest"]["status"], "APPROVED",
        "{r}"
    );
    assert_ok(&app.gql(secret, READ, json!({"w": ws})).await);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events WHERE action = 'api_key.activate'")
            .await,
        1
    );

    // Rejected: the waiting key is revoked and never works.
    let r = try_create(&app, &admin, &ws, "Refused", "VIEWER", None).await;
    assert_ok(&r);
    let c = &r["data"]["createApiKey"];
    let refused = c["secret"].as_str().expect("secret");
    let r = app
        .gql(
            &owner,
            "mutation($r: ID!) { rejectRequest(input: {approvalRequestId: $r, reason: \"no\"}) { approvalRequest { status } } }",
            json!({"r": c["approvalRequest"]["id"]}),
        )
        .await;
    assert_ok(&r);
    assert_401(&app, refused, &ws).await;
    let r = app.gql(&owner, LIST, json!({"w": ws})).await;
    let statuses: Vec<&str> = r["data"]["workspace"]["apiKeys"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .filter_map(|e| e["node"]["status"].as_str())
        .collect();
    assert_eq!(statuses, ["REVOKED", "ACTIVE"], "{r}");
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM members m JOIN api_keys k ON k.user_id = m.user_id
              WHERE k.id = '{}'",
            id_uuid(c["apiKey"]["id"].as_str().expect("id"))
        ))
        .await,
        0
    );
}

#[tokio::test]
async fn concurrent_creations_never_exceed_the_maximum() {
    let app = app().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Home").await;
    app.set_workspace_settings(&ws, "api_key_max_count", "2")
        .await;
    let names: Vec<String> = (0..8).map(|i| format!("Key {i}")).collect();
    let results = futures::future::join_all(
        names
            .iter()
            .map(|n| try_create(&app, &owner, &ws, n, "VIEWER", None)),
    )
    .await;
    let created = results.iter().filter(|r| r["errors"].is_null()).count();
    assert_eq!(created, 2, "{results:?}");
    for r in results.iter().filter(|r| !r["errors"].is_null()) {
        assert_code(r, "LIMIT_EXCEEDED");
    }
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM api_keys WHERE workspace_id = '{}'",
            workspace_uuid(&ws)
        ))
        .await,
        2
    );
    // Failed attempts left no service account behind.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM users WHERE service_account")
            .await,
        2
    );
}
