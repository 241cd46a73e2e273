//! Database failures by class: a connection the server ends (a restart, a failover,
//! `pg_terminate_backend`) answers `SERVICE_UNAVAILABLE` with HTTP 503 and `Retry-After`,
//! never `INTERNAL_SERVER_ERROR`; reads, and transactions that never reached COMMIT, are run
//! once more by the server first, and keyed mutations a client retries apply exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::{Value, json};
use tests::{TestApp, assert_ok};

const READ: &str =
    "query($o: ID!) { organization(id: $o) { id name depth usage { resource direct subtree } } }";
const LIST: &str = "query($w: ID!) { workspace(id: $w) { id name organizations(first: 20) { edges { node { id name } } } } }";
const RECORD: &str = "mutation($o: ID!, $k: String) { recordUsage(input: {organizationId: $o, resource: \"users\", delta: 1, idempotencyKey: $k}) { organization { id } } }";

/// Sessions are ended this often: often enough that statements in flight meet it, rarely
/// enough that a transaction gets through in between.
const TERMINATE_EVERY: Duration = Duration::from_millis(150);

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 200 without errors.
    Ok,
    /// 503, `SERVICE_UNAVAILABLE`, with `Retry-After`.
    Unavailable,
}

/// Tallies of the outcomes, to show what the run went through.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    unavailable: AtomicU64,
}

impl Tally {
    fn count(&self, o: Outcome) {
        match o {
            Outcome::Ok => &self.ok,
            Outcome::Unavailable => &self.unavailable,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// Posts `body` to `/graphql`; the outcome, or a panic naming what is wrong with the
/// response: anything but a clean 200 or a 503 `SERVICE_UNAVAILABLE` with `Retry-After`.
async fn send(app: &TestApp, token: &str, body: &Value) -> Outcome {
    exchange(app, token, body).await.0
}

/// [`send`], with the answer.
async fn exchange(app: &TestApp, token: &str, body: &Value) -> (Outcome, Value) {
    let resp = app
        .http
        .post(format!("{}/graphql", app.base))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await.expect("body");
    let parsed: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!(text));
    let answers: Vec<&Value> = match &parsed {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    let codes: Vec<&str> = answers
        .iter()
        .filter_map(|a| a.get("errors").and_then(Value::as_array))
        .flatten()
        .map(|e| e["extensions"]["code"].as_str().unwrap_or("(no code)"))
        .collect();
    assert!(
        !codes.contains(&"INTERNAL_SERVER_ERROR"),
        "a connection-level failure answered as internal ({status}): {text}"
    );
    let outcome = match status {
        200 if codes.is_empty() => Outcome::Ok,
        503 => {
            assert!(
                codes.contains(&"SERVICE_UNAVAILABLE")
                    && codes.iter().all(|c| *c == "SERVICE_UNAVAILABLE"),
                "503 without SERVICE_UNAVAILABLE: {text}"
            );
            let secs: u64 = retry_after
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("503 without a Retry-After in seconds: {text}"));
            assert!(secs >= 1, "{text}");
            Outcome::Unavailable
        }
        _ => panic!("neither 200 without errors nor 503: {status} {text}"),
    };
    (outcome, parsed)
}

/// Ends every session of the test database but its own every `TERMINATE_EVERY` until `stop`
/// (what clients see of a database that restarts or fails over, many times over); the
/// sessions it ended.
async fn terminate_until(db: String, stop: Arc<AtomicBool>) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut admin = AsyncPgConnection::establish(&format!("{}/postgres", tests::server_url()))
        .await
        .expect("connect as admin");
    let sql = format!(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS n FROM pg_stat_activity
          WHERE datname = '{db}' AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    );
    let mut ended = 0;
    while !stop.load(Ordering::Relaxed) {
        // Called by path: the trait's `load` would shadow the atomics'.
        let round: N = diesel_async::RunQueryDsl::get_result(diesel::sql_query(&sql), &mut admin)
            .await
            .expect("terminate the test database's sessions");
        ended += round.n;
        tokio::time::sleep(TERMINATE_EVERY).await;
    }
    ended
}

/// Records one unit under each of `keys`, retrying each after a 503 with the same key as a
/// client should, until it is answered.
async fn record_all(app: &TestApp, token: &str, org: &str, keys: Vec<String>, tally: &Tally) {
    for k in keys {
        let body = json!({"query": RECORD, "variables": {"o": org, "k": k}});
        for attempt in 1.. {
            let o = send(app, token, &body).await;
            tally.count(o);
            if o == Outcome::Ok {
                break;
            }
            assert!(attempt < 200, "{k} never went through");
            // Retry-After says a second; the test retries sooner to keep the failures coming.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A session of the test's own that holds `lock` (SQL run after `BEGIN`) until dropped or
/// rolled back.
async fn hold(app: &TestApp, lock: &str) -> AsyncPgConnection {
    use diesel_async::SimpleAsyncConnection;
    let mut blocker = AsyncPgConnection::establish(&app.db.url)
        .await
        .expect("connect");
    blocker
        .batch_execute(&format!("BEGIN; {lock}"))
        .await
        .expect("take the lock");
    blocker
}

/// Waits (at most ten seconds) until a session of the server waits for a lock; its pid.
/// Sessions in `ended` do not count: an ended session may still be listed for a moment.
async fn lock_waiter(app: &TestApp, ended: &[i64]) -> i64 {
    let except = ended
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT COALESCE((SELECT pid FROM pg_stat_activity
                           WHERE datname = '{}' AND wait_event_type = 'Lock'
                             AND pid <> pg_backend_pid() AND pid <> ALL('{{{except}}}'::int[])
                           LIMIT 1), 0)::bigint AS n",
        app.db.name
    );
    for _ in 0..1000 {
        let pid = app.sql_count(&sql).await;
        if pid != 0 {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no session of the server came to wait for the lock");
}

/// Ends the session `pid` (and adds it to `ends`): its statement fails as it would if the
/// server restarted.
async fn end_session(app: &TestApp, pid: i64, ends: &mut Vec<i64>) {
    let ended = app
        .sql_count(&format!(
            "SELECT pg_terminate_backend({pid})::int::bigint AS n"
        ))
        .await;
    assert_eq!(ended, 1, "session {pid} was not ended");
    ends.push(pid);
}

/// [`exchange`] in the background.
fn spawn_send(
    app: &Arc<TestApp>,
    token: &str,
    body: Value,
) -> tokio::task::JoinHandle<(Outcome, Value)> {
    let (app, token) = (app.clone(), token.to_string());
    tokio::spawn(async move { exchange(&app, &token, &body).await })
}

#[tokio::test]
async fn a_read_that_loses_its_connection_runs_once_more_and_a_second_loss_answers_503() {
    let app = Arc::new(TestApp::spawn().await);
    let t = app.user("reread@example.com");
    let ws = app.create_workspace(&t, "Reread").await;
    let org = app.create_org(&t, &ws, None, "Root").await;
    let read = json!({"query": READ, "variables": {"o": org}});
    assert_eq!(send(&app, &t, &read).await, Outcome::Ok);

    // The read waits for a table lock; its session is ended; the read runs again on another
    // connection, and goes through once the lock is released.
    let mut ended = Vec::new();
    let blocker = hold(&app, "LOCK TABLE organizations IN ACCESS EXCLUSIVE MODE").await;
    let answer = spawn_send(&app, &t, read.clone());
    let pid = lock_waiter(&app, &ended).await;
    end_session(&app, pid, &mut ended).await;
    lock_waiter(&app, &ended).await;
    drop(blocker);
    let (outcome, body) = answer.await.expect("read");
    assert_eq!(outcome, Outcome::Ok, "{body}");
    assert_eq!(body["data"]["organization"]["id"], json!(org));

    // Ended twice: the second loss answers 503 with Retry-After.
    let blocker = hold(&app, "LOCK TABLE organizations IN ACCESS EXCLUSIVE MODE").await;
    let answer = spawn_send(&app, &t, read.clone());
    let pid = lock_waiter(&app, &ended).await;
    end_session(&app, pid, &mut ended).await;
    let pid = lock_waiter(&app, &ended).await;
    end_session(&app, pid, &mut ended).await;
    let (outcome, body) = answer.await.expect("read");
    drop(blocker);
    assert_eq!(outcome, Outcome::Unavailable, "{body}");
    assert_eq!(send(&app, &t, &read).await, Outcome::Ok);
}

#[tokio::test]
async fn a_mutation_that_loses_its_connection_before_commit_runs_once_more_and_applies_once() {
    let app = Arc::new(TestApp::spawn().await);
    let t = app.user("rewrite@example.com");
    let ws = app.create_workspace(&t, "Rewrite").await;
    let root = app.create_org(&t, &ws, None, "Root").await;
    assert_ok(&app.record(&t, &root, "users", 1).await);
    let counters = format!(
        "SELECT 1 FROM usage_counters WHERE organization_id = '{}' FOR UPDATE",
        tests::id_uuid(&root)
    );
    let body = |k: &str| json!({"query": RECORD, "variables": {"o": root, "k": k}});

    // The allocation waits for the counters' lock inside its transaction, before COMMIT; its
    // session is ended; the transaction runs again on a fresh connection and commits.
    let mut ended = Vec::new();
    let blocker = hold(&app, &counters).await;
    let answer = spawn_send(&app, &t, body("again-1"));
    let pid = lock_waiter(&app, &ended).await;
    end_session(&app, pid, &mut ended).await;
    lock_waiter(&app, &ended).await;
    drop(blocker);
    let (outcome, r) = answer.await.expect("mutation");
    assert_eq!(outcome, Outcome::Ok, "{r}");
    assert_eq!(app.numbers(&t, &root, "users").await.0, 2);

    // Ended twice: 503; the client's retry with the same key applies it once.
    let blocker = hold(&app, &counters).await;
    let answer = spawn_send(&app, &t, body("again-2"));
    let pid = lock_waiter(&app, &ended).await;
    end_session(&app, pid, &mut ended).await;
    let pid = lock_waiter(&app, &ended).await;
    end_session(&app, pid, &mut ended).await;
    let (outcome, r) = answer.await.expect("mutation");
    drop(blocker);
    assert_eq!(outcome, Outcome::Unavailable, "{r}");
    assert_eq!(app.numbers(&t, &root, "users").await.0, 2);
    assert_eq!(send(&app, &t, &body("again-2")).await, Outcome::Ok);
    assert_eq!(send(&app, &t, &body("again-2")).await, Outcome::Ok);
    assert_eq!(app.numbers(&t, &root, "users").await.0, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_answers_200_or_503_never_internal_and_keyed_mutations_apply_once() {
    let app = Arc::new(TestApp::spawn().await);
    let t = app.user("outage@example.com");
    let ws = app.create_workspace(&t, "Outage").await;
    let root = app.create_org(&t, &ws, None, "Root").await;
    let leaf = app.create_org(&t, &ws, Some(&root), "Leaf").await;
    let read = json!({"query": READ, "variables": {"o": leaf}});
    let batch = json!([
        {"query": READ, "variables": {"o": root}},
        {"query": LIST, "variables": {"w": ws}},
    ]);
    assert_eq!(send(&app, &t, &read).await, Outcome::Ok);
    assert_eq!(send(&app, &t, &batch).await, Outcome::Ok);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let terminator = tokio::spawn(terminate_until(app.db.name.clone(), stop.clone()));
    let mut readers = Vec::new();
    for i in 0..12 {
        let (app, t, stop, tally) = (app.clone(), t.clone(), stop.clone(), tally.clone());
        let body = if i % 3 == 0 {
            batch.clone()
        } else {
            read.clone()
        };
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tally.count(send(&app, &t, &body).await);
            }
        }));
    }
    let (writers, per_writer) = (4, 30);
    let mut recorders = Vec::new();
    for w in 0..writers {
        let (app, t, leaf, tally) = (app.clone(), t.clone(), leaf.clone(), tally.clone());
        let keys = (0..per_writer).map(|i| format!("outage-{w}-{i}")).collect();
        recorders.push(tokio::spawn(async move {
            record_all(&app, &t, &leaf, keys, &tally).await;
        }));
    }
    // The keyed mutations run through the outage; the reads go on until it ends.
    for r in recorders {
        r.await.expect("recorder");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
    let ended = terminator.await.expect("terminator");
    let (ok, unavailable) = (
        tally.ok.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
    );
    eprintln!("{ended} sessions ended; {ok} answers 200, {unavailable} answers 503");
    assert!(ended > 20, "the outage ended only {ended} sessions");

    // Once the sessions stop being ended, everything goes through again.
    for _ in 0..10 {
        assert_eq!(send(&app, &t, &read).await, Outcome::Ok);
        assert_eq!(send(&app, &t, &batch).await, Outcome::Ok);
    }
    assert_ok(&app.record(&t, &root, "users", 1).await);
    // Every key applied exactly once, however often its client had to send it.
    let (direct, _) = app.numbers(&t, &leaf, "users").await;
    assert_eq!(direct, writers * per_writer);
    app.assert_usage_invariant().await;
}
