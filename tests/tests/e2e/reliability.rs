//! Reliability: nothing stays locked when a client hangs up or a request passes its
//! deadline inside a transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use serde_json::json;
use tests::processes::{ApiProcess, spawn_api_without_worker};
use tests::{Options, TestApp, assert_ok, id_uuid};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

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

/// Sessions of the test's database inside a transaction that began more than half a second
/// ago (idle in it, or waiting for a lock): what a request dropped inside its transaction
/// leaves behind, and none of the short transactions of a quiet server.
async fn open_transactions(app: &TestApp) -> i64 {
    app.sql_count(&format!(
        "SELECT count(*) AS n FROM pg_stat_activity
          WHERE datname = '{}' AND xact_start < now() - interval '500 milliseconds'
            AND pid <> pg_backend_pid()",
        app.db.name
    ))
    .await
}

/// A chain of ten organizations in a workspace of its own.
struct Chain {
    /// The workspace owner's token.
    token: String,
    /// The top organization, whose counters every allocation in the chain locks.
    root: String,
    /// The bottom one, where the load allocates.
    leaf: String,
}

async fn chain_of_ten(app: &TestApp) -> Chain {
    let token = app.user("chain@example.com");
    let ws = app.create_workspace(&token, "Chain").await;
    let root = app.create_org(&token, &ws, None, "Level 1").await;
    let mut leaf = root.clone();
    for level in 2..=10 {
        leaf = app
            .create_org(&token, &ws, Some(&leaf), &format!("Level {level}"))
            .await;
    }
    Chain { token, root, leaf }
}

/// The answers the load got, by status.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    deadline: AtomicUsize,
    other: AtomicUsize,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} answered 200, {} 504 (deadline), {} otherwise",
            self.ok.load(Ordering::Relaxed),
            self.deadline.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed)
        )
    }
}

/// The status of the next response on `from`, its body read; `None` when the connection
/// ended or the response has no length.
async fn read_response<R: tokio::io::AsyncRead + Unpin>(from: &mut BufReader<R>) -> Option<u16> {
    let mut line = String::new();
    from.read_line(&mut line).await.ok()?;
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut length = None;
    loop {
        line.clear();
        if from.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length?];
    from.read_exact(&mut body).await.ok()?;
    Some(status)
}

/// One connection of the load, as wrk keeps it: keyed allocations on `org` sent one after
/// another over one raw HTTP/1.1 connection, each waiting for its answer, until the future
/// is dropped, which closes the socket with a request in flight.
async fn allocate_until_dropped(addr: &str, token: &str, org: &str, keys: &str, tally: &Tally) {
    let Ok(socket) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    for n in 0.. {
        let body = json!({"query": RECORD, "variables": {"o": org, "k": format!("{keys}-{n}")}})
            .to_string();
        let request = format!(
            "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if write.write_all(request.as_bytes()).await.is_err() {
            return;
        }
        let counter = match read_response(&mut read).await {
            None => return,
            Some(200) => &tally.ok,
            Some(504) => &tally.deadline,
            Some(_) => &tally.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A keyed allocation on `org` through the server at `base`; asserts that it succeeds within
/// a few seconds, far from the lock timeout a session left holding the chain's locks makes
/// it wait.
async fn allocate_now(base: &str, token: &str, org: &str, key: &str) {
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({"query": RECORD, "variables": {"o": org, "k": key}}))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("json body");
    assert_eq!(status, 200, "allocation {key} at {base}: {body}");
    assert_ok(&body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "allocation {key} at {base} took {:?}",
        started.elapsed()
    );
}

/// A fixed sequence of pseudo-random numbers (splitmix64): moments that look random to the
/// server and are the same on every run.
struct Moments(u64);

impl Moments {
    /// A number in `low..high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        low + (z ^ (z >> 31)) % (high - low)
    }
}

/// wrk's load, repeated: each round, `clients` connections allocate on the chain's leaf and
/// hang up at moments spread over a second, most of them while their request waits for the
/// chain's locks inside its transaction. With `hold_root`, a session also holds the root's
/// counters for half a second of each round, so that the requests queued behind it pass
/// their deadline inside their transaction. A second after each round, no transaction is
/// open, and an allocation on the leaf goes through at once on `second` and on this server.
async fn hang_up_rounds(
    app: &TestApp,
    second: &ApiProcess,
    chain: &Chain,
    clients: usize,
    hold_root: bool,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut moments = Moments(21);
    for round in 1..=4 {
        let mut load = Vec::new();
        for client in 0..clients {
            let hang_up = Duration::from_millis(moments.between(300, 1_300));
            let (addr, token, leaf, tally) = (
                addr.clone(),
                chain.token.clone(),
                chain.leaf.clone(),
                tally.clone(),
            );
            load.push(tokio::spawn(async move {
                let keys = format!("load-{round}-{client}");
                let allocating = allocate_until_dropped(&addr, &token, &leaf, &keys, &tally);
                let _ = tokio::time::timeout(hang_up, allocating).await;
            }));
        }
        if hold_root {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut blocker = hold_counters(app, &chain.root).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            blocker.batch_execute("ROLLBACK").await.expect("release");
        }
        for client in load {
            client.await.expect("a client of the load");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            open_transactions(app).await,
            0,
            "round {round}: a transaction is still open a second after the clients hung up ({tally})"
        );
        // Another process first: this one's next checkout could close a connection it left
        // inside a transaction (the pool drops a broken connection when it hands it out).
        let (token, leaf) = (&chain.token, &chain.leaf);
        allocate_now(
            &second.base,
            token,
            leaf,
            &format!("after-{round}-elsewhere"),
        )
        .await;
        allocate_now(&app.base, token, leaf, &format!("after-{round}")).await;
    }
    app.assert_usage_invariant().await;
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_hanging_up_under_load_on_a_chain_leave_nothing_locked() {
    let app = TestApp::spawn().await;
    let (chain, second) = tokio::join!(
        chain_of_ten(&app),
        spawn_api_without_worker("api-2", &app.db.url, &[])
    );
    let tally = hang_up_rounds(&app, &second, &chain, 6, false).await;
    eprintln!("{tally}");
    assert!(tally.ok.load(Ordering::Relaxed) > 0, "{tally}");
    assert_eq!(tally.other.load(Ordering::Relaxed), 0, "{tally}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_past_their_deadline_under_load_on_a_chain_leave_nothing_locked() {
    // A deadline far shorter than a lock wait, on both processes.
    let env = [
        ("GRAPHQL_TIMEOUT_MS", "250"),
        ("DATABASE_LOCK_TIMEOUT_MS", "10000"),
    ];
    let app = TestApp::with(Options {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .await;
    let (chain, second) = tokio::join!(
        chain_of_ten(&app),
        spawn_api_without_worker("api-2", &app.db.url, &env)
    );
    let tally = hang_up_rounds(&app, &second, &chain, 8, true).await;
    eprintln!("{tally}");
    assert!(tally.deadline.load(Ordering::Relaxed) > 0, "{tally}");
    assert_eq!(tally.other.load(Ordering::Relaxed), 0, "{tally}");
}
