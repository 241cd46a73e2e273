//! Idempotent mutations.

use serde_json::json;
use tests::{TestApp, assert_code, assert_ok};

const CREATE: &str = "mutation($n: String!, $k: String) { createWorkspace(input: {name: $n, billingMode: POOLED, idempotencyKey: $k}) { workspace { id name billingMode createdAt viewerRole } } }";

#[tokio::test]
async fn replay_returns_the_same_body_and_creates_one_row() {
    let app = TestApp::spawn().await;
    let t = app.user("idem@example.com");
    let first = app
        .gql(&t, CREATE, json!({"n": "Once", "k": "create-1"}))
        .await;
    assert_ok(&first);
    // Renaming after the first request does not change what a replay returns.
    let ws = first["data"]["createWorkspace"]["workspace"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let again = app
        .gql(&t, CREATE, json!({"n": "Once", "k": "create-1"}))
        .await;
    assert_eq!(first, again);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM workspaces").await,
        1
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events")
            .await,
        1
    );

    let add = "mutation($w: ID!, $k: String) { addMember(input: {workspaceId: $w, email: \"m@example.com\", role: VIEWER, idempotencyKey: $k}) { invitation { id role createdAt } } }";
    let a1 = app.gql(&t, add, json!({"w": ws, "k": "add-1"})).await;
    let a2 = app.gql(&t, add, json!({"w": ws, "k": "add-1"})).await;
    assert_ok(&a1);
    assert_eq!(a1, a2);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM invitations").await,
        1
    );
    // Without a key the same request is a new request (and conflicts).
    let a3 = app.gql(&t, add, json!({"w": ws})).await;
    assert_code(&a3, "CONFLICT");
}

#[tokio::test]
async fn twenty_concurrent_identical_requests_have_one_effect() {
    let app = TestApp::spawn().await;
    let t = app.user("burst@example.com");
    let requests = (0..20).map(|_| app.gql(&t, CREATE, json!({"n": "Burst", "k": "burst-key"})));
    let results = futures::future::join_all(requests).await;
    for r in &results {
        assert_ok(r);
        assert_eq!(r, &results[0]);
    }
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM workspaces").await,
        1
    );
    assert_eq!(app.sql_count("SELECT count(*) AS n FROM members").await, 1);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events")
            .await,
        1
    );
}

#[tokio::test]
async fn a_key_reused_with_different_input_is_refused() {
    let app = TestApp::spawn().await;
    let t = app.user("reuse@example.com");
    assert_ok(&app.gql(&t, CREATE, json!({"n": "First", "k": "k"})).await);
    let r = app.gql(&t, CREATE, json!({"n": "Second", "k": "k"})).await;
    assert_code(&r, "IDEMPOTENCY_KEY_REUSED");
    // The same key on another operation is a reuse too.
    let ws = app.create_workspace(&t, "Other").await;
    let r = app
        .gql(&t, "mutation($w: ID!) { renameWorkspace(input: {workspaceId: $w, name: \"First\", idempotencyKey: \"k\"}) { workspace { id } } }", json!({"w": ws}))
        .await;
    assert_code(&r, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM workspaces WHERE name = 'Second'")
            .await,
        0
    );
}

#[tokio::test]
async fn keys_belong_to_their_caller() {
    let app = TestApp::spawn().await;
    let a = app.user("ka@example.com");
    let b = app.user("kb@example.com");
    let ra = app
        .gql(&a, CREATE, json!({"n": "Same", "k": "shared"}))
        .await;
    let rb = app
        .gql(&b, CREATE, json!({"n": "Same", "k": "shared"}))
        .await;
    assert_ok(&ra);
    assert_ok(&rb);
    assert_ne!(
        ra["data"]["createWorkspace"]["workspace"]["id"],
        rb["data"]["createWorkspace"]["workspace"]["id"]
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM workspaces").await,
        2
    );
}

#[tokio::test]
async fn a_failed_request_leaves_its_key_free() {
    let app = TestApp::spawn().await;
    let t = app.user("fail@example.com");
    let r = app.gql(&t, CREATE, json!({"n": "", "k": "retry-me"})).await;
    assert_code(&r, "BAD_USER_INPUT");
    let ws = app.create_workspace(&t, "W").await;
    let add = "mutation($w: ID!, $e: String!) { addMember(input: {workspaceId: $w, email: $e, role: OWNER, idempotencyKey: \"add\"}) { invitation { id } } }";
    // Refused by a rule inside the transaction: nothing is stored under the key...
    app.add_member(&t, &ws, "dup@example.com", "VIEWER").await;
    let r = app
        .gql(&t, add, json!({"w": ws, "e": "dup@example.com"}))
        .await;
    assert_code(&r, "CONFLICT");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM idempotency_keys WHERE key = 'add'")
            .await,
        0
    );
    // ...so the corrected request may use it.
    let r = app
        .gql(&t, add, json!({"w": ws, "e": "fresh@example.com"}))
        .await;
    assert_ok(&r);
}

#[tokio::test]
async fn expired_keys_are_purged_and_can_be_reused() {
    let app = TestApp::spawn().await;
    let t = app.user("exp@example.com");
    assert_ok(&app.gql(&t, CREATE, json!({"n": "Old", "k": "old"})).await);
    assert_ok(&app.gql(&t, CREATE, json!({"n": "Live", "k": "live"})).await);
    let mut conn = app.pool.get().await.expect("conn");
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'old'"),
        &mut conn,
    )
    .await
    .expect("expire");
    // An expired key that is not purged yet is treated as new.
    assert_ok(
        &app.gql(&t, CREATE, json!({"n": "Different", "k": "old"}))
            .await,
    );
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'old'"),
        &mut conn,
    )
    .await
    .expect("expire");
    let purged = api::jobs::purge_expired_idempotency_keys(&app.pool)
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM idempotency_keys")
            .await,
        1
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM workspaces").await,
        3
    );
}
