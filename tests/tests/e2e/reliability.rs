//! Reliability: nothing stays locked when a client hangs up or a request passes its
//! deadline inside a transaction.

use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use serde_json::json;
use tests::{Options, TestApp, assert_ok, id_uuid};
use tokio::io::AsyncWriteExt;

const RECORD: &str = "mutation($o: ID!, $k: String) { recordUsage(input: {organizationId: $o, resource: \"users\", delta: 1, idempotencyKey: $k}) { organization { id } } }";

/// Sessions of the test's database left inside a transaction (other than `except`).
async fn idle_in_transaction(app: &TestApp) -> i64 {
    app.sql_count(&format!(
        "SELECT count(*) AS n FROM pg_stat_activity
          WHERE datname = '{}' AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
        app.db.name
    ))
    .await
}

/// A session holding the row lock of `org`'s usage counters until dropped or rolled back.
async fn hold_counters(app: &TestApp, org: &str) -> AsyncPgConnection {
    let mut blocker = AsyncPgConnection::establish(&app.db.url)
        .await
        .expect("connect");
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM usage_counters WHERE organization_id = '{}' FOR UPDATE",
            id_uuid(org)
        ))
        .await
        .expect("lock the counters");
    blocker
}

#[tokio::test]
async fn requests_dropped_inside_their_transaction_leave_nothing_locked() {
    // A deadline far shorter than a lock wait.
    let app = TestApp::with(Options {
        env: [
            ("GRAPHQL_TIMEOUT_MS".to_string(), "400".to_string()),
            ("DATABASE_LOCK_TIMEOUT_MS".to_string(), "10000".to_string()),
        ]
        .into(),
    })
    .await;
    let t = app.user("dropped@example.com");
    let ws = app.create_workspace(&t, "Dropped").await;
    let root = app.create_org(&t, &ws, None, "Root").await;
    let leaf = app.create_org(&t, &ws, Some(&root), "Leaf").await;
    assert_ok(&app.record(&t, &leaf, "users", 1).await);

    // 1. The server's deadline passes while the allocation waits for a lock, inside its
    //    transaction.
    let mut blocker = hold_counters(&app, &root).await;
    let (status, r) = app
        .gql_raw(
            Some(&t),
            json!({"query": RECORD, "variables": {"o": leaf, "k": "deadline-1"}}),
        )
        .await;
    assert_eq!(status, 504, "{r}");
    blocker.batch_execute("ROLLBACK").await.expect("release");

    // 2. A client sends the same kind of allocation and hangs up while it waits.
    let mut blocker = hold_counters(&app, &root).await;
    let body = json!({"query": RECORD, "variables": {"o": leaf, "k": "hang-up-1"}}).to_string();
    let addr = app.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(200)).await;
    blocker.batch_execute("ROLLBACK").await.expect("release");
    drop(blocker);

    // A second later no session is left inside a transaction, holding the tree's locks…
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(idle_in_transaction(&app).await, 0);
    // …so the next allocations on the tree go through at once (well within the deadline),
    // however many connections of the pool they take.
    for _ in 0..12 {
        assert_ok(&app.record(&t, &leaf, "users", 1).await);
    }
    // Neither dropped request recorded anything: their transactions rolled back.
    assert_eq!(app.numbers(&t, &leaf, "users").await.0, 13);
}
