//! The job queues under failure: a job that keeps coming back as an orphan gives up, a worker
//! killed with `kill -9` mid-job loses nothing, several processes share the queues and do
//! each job once, the billing story included. The last three run the real `worker` and `api`
//! binaries (`tests::processes`).

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde_json::{Value, json};
use tests::TestApp;
use tests::fake_stripe::FakeStripe;
use tests::processes::{ApiProcess, spawn_api_without_worker, spawn_worker};

use super::billing::{PRICES, account, app_with, mirror_state, subscribe, workspace};
use super::webhooks::{SECRET, Worker, app, deliver, event, now, sign};

pub(crate) async fn connect(app: &TestApp) -> AsyncPgConnection {
    AsyncPgConnection::establish(&app.db.url)
        .await
        .expect("connect")
}

/// The text `sql` selects as `t` (e.g. a job's id).
async fn text(app: &TestApp, sql: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let r: T = diesel::sql_query(sql)
        .get_result(&mut connect(app).await)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    r.t
}

/// Waits until `sql` counts `n`; panics after `timeout`.
pub(crate) async fn wait_for(app: &TestApp, sql: &str, n: i64, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if app.sql_count(sql).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{sql} did not reach {n} within {timeout:?} (now {})",
        app.sql_count(sql).await
    );
}

/// The type of the events these tests deliver: one the billing mirror ignores (an unknown
/// type is acknowledged by marking it processed), so that a job's only effect is
/// `processed_at` and these tests are about the queue alone.
const KIND: &str = "test.jobs_probe";

/// A signed delivery of event `id` (the header and the body).
fn signed(id: &str, kind: &str) -> (String, String) {
    let body = event(id, kind);
    let t = now();
    (format!("t={t},v1={}", sign(SECRET, t, &body)), body)
}

/// Delivers a signed event (`header`, `body`) to `POST /webhooks/stripe` of an api process;
/// returns the status and the JSON body.
async fn post(api: &ApiProcess, header: String, body: String) -> (u16, Value) {
    let r = api
        .http
        .post(format!("{}/webhooks/stripe", api.base))
        .header("content-type", "application/json")
        .header("stripe-signature", header)
        .body(body)
        .send()
        .await
        .expect("deliver");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The id of the job of Stripe event `event` (its idempotency key).
async fn job_of(app: &TestApp, event: &str) -> String {
    text(
        app,
        &format!(
            "SELECT id AS t FROM apalis.jobs WHERE job_type = 'stripe-events' AND idempotency_key = '{event}'"
        ),
    )
    .await
}

#[tokio::test]
async fn jobs_a_job_re_queued_as_an_orphan_gives_up_after_its_last_run() {
    let app = app().await;
    for id in ["evt_orphan_last_run", "evt_orphan_loop"] {
        let (header, body) = signed(id, KIND);
        assert_eq!(deliver(&app, Some(&header), &body).await.0, 200);
    }
    let last_run = job_of(&app, "evt_orphan_last_run").await;
    let looping = job_of(&app, "evt_orphan_loop").await;
    let max = api::jobs::MAX_RUNS;
    // Both jobs as a worker killed mid-job leaves them, the process-killing loop already well
    // under way: locked `Running` by a worker that stopped heartbeating an hour ago, attempts
    // at `max_attempts` (apalis re-queues and fetches an orphan anyway), one run left for
    // the first job and none for the second.
    connect(&app)
        .await
        .batch_execute(&format!(
            "INSERT INTO apalis.workers (id, worker_type, storage_name, last_seen)
                 VALUES ('killed-worker', 'stripe-events', 'PgStorage', now() - interval '1 hour');
             UPDATE apalis.jobs SET status = 'Running', lock_by = 'killed-worker',
                    lock_at = now() - interval '1 hour', attempts = max_attempts
              WHERE id IN ('{last_run}', '{looping}');
             INSERT INTO job_runs (job_id, runs)
                 VALUES ('{last_run}', {}), ('{looping}', {max});",
            max - 1
        ))
        .await
        .expect("simulate the orphan loop");
    // A worker starts: apalis's reaper re-queues both (a worker registering takes back the
    // jobs of dead ones), and it fetches them.
    let worker = Worker::start(&app);
    let timeout = Duration::from_secs(20);
    wait_for(
        &app,
        &format!(
            "SELECT count(*) AS n FROM apalis.jobs WHERE id = '{last_run}' AND status = 'Done'"
        ),
        1,
        timeout,
    )
    .await;
    wait_for(
        &app,
        &format!(
            "SELECT count(*) AS n FROM apalis.jobs WHERE id = '{looping}' AND status = 'Killed'"
        ),
        1,
        timeout,
    )
    .await;
    // Its last allowed run did the work; both ran although their attempts were past
    // `max_attempts`.
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM job_runs r JOIN apalis.jobs j ON j.id = r.job_id
              WHERE j.id = '{last_run}' AND r.runs = {max} AND j.attempts > j.max_attempts"
        ))
        .await,
        1
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM stripe_events WHERE id = 'evt_orphan_last_run' AND processed_at IS NOT NULL").await,
        1
    );
    // The other gave up before doing anything, and says why.
    let error = text(
        &app,
        &format!("SELECT last_result->>'Err' AS t FROM apalis.jobs WHERE id = '{looping}'"),
    )
    .await;
    assert!(
        error.starts_with(&format!(
            "AbortError: gave up: run {} of a job that may run {max} times",
            max + 1
        )) && error.contains("Re-enqueued due to worker heartbeat timeout"),
        "{error}"
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM job_runs r JOIN apalis.jobs j ON j.id = r.job_id
              WHERE j.id = '{looping}' AND r.runs = {} AND j.attempts > j.max_attempts",
            max + 1
        ))
        .await,
        1
    );
    // It never runs again: the worker fetches and does a new job, the given-up one stays.
    let (header, body) = signed("evt_after_orphans", KIND);
    assert_eq!(deliver(&app, Some(&header), &body).await.0, 200);
    wait_for(
        &app,
        "SELECT count(*) AS n FROM stripe_events WHERE id = 'evt_after_orphans' AND processed_at IS NOT NULL",
        1,
        timeout,
    )
    .await;
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM job_runs r JOIN apalis.jobs j ON j.id = r.job_id
              WHERE j.id = '{looping}' AND r.runs = {} AND j.status = 'Killed'",
            max + 1
        ))
        .await,
        1
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM stripe_events WHERE id = 'evt_orphan_loop' AND processed_at IS NULL").await,
        1
    );
    worker.stop().await;
}

#[tokio::test]
async fn jobs_run_counts_are_deleted_with_their_jobs() {
    let app = app().await;
    // Done 8 days ago, done an hour ago, given up 31 days ago, failed 31 days ago, pending;
    // each has run once.
    app.sql_count(
        "WITH j AS (INSERT INTO apalis.jobs (id, job_type, job, status, done_at, run_at, idempotency_key)
            SELECT apalis.generate_ulid(), 'retention-runs', convert_to('{}', 'UTF8'), s, now() - d, now() - d, k
              FROM (VALUES ('Done', interval '8 days', 'old-done'), ('Done', interval '1 hour', 'new-done'),
                           ('Killed', interval '31 days', 'old-killed'), ('Failed', interval '31 days', 'old-failed'),
                           ('Pending', interval '40 days', 'pending')) AS v(s, d, k)
            RETURNING id),
         r AS (INSERT INTO job_runs (job_id, runs) SELECT id, 1 FROM j RETURNING 1)
         SELECT count(*) AS n FROM r",
    )
    .await;
    let settings = api::jobs::Settings {
        done_retention: Duration::from_secs(7 * 86_400),
        failed_retention: Duration::from_secs(30 * 86_400),
        stripe_event_retention: std::time::Duration::from_secs(90 * 86_400),
        schedules: api::jobs::Schedules::none(),
        ..api::jobs::Settings::new(&app.config).expect("job settings")
    };
    let deleted = api::jobs::purge_finished_jobs(&app.pool, &settings)
        .await
        .expect("purge");
    assert_eq!(deleted, 3);
    // The run counts of the jobs kept are kept, the others are gone with their jobs.
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM job_runs r JOIN apalis.jobs j ON j.id = r.job_id
              WHERE j.idempotency_key IN ('new-done', 'pending')"
        )
        .await,
        2
    );
    assert_eq!(app.sql_count("SELECT count(*) AS n FROM job_runs").await, 2);
}

#[tokio::test]
async fn jobs_a_worker_killed_mid_job_loses_nothing() {
    let app = app().await;
    let (header, body) = signed("evt_killed_mid_job", KIND);
    assert_eq!(deliver(&app, Some(&header), &body).await.0, 200);
    let job = job_of(&app, "evt_killed_mid_job").await;
    // Hold the event's row lock: the job, which locks or updates the event in its
    // transaction, waits on it mid-job (no hook in the code under test).
    let mut holder = connect(&app).await;
    holder
        .batch_execute(
            "BEGIN; SELECT 1 FROM stripe_events WHERE id = 'evt_killed_mid_job' FOR UPDATE",
        )
        .await
        .expect("lock the event");
    // Wait as long as it takes (the default lock timeout would fail the job first).
    let patient = [("DATABASE_LOCK_TIMEOUT_MS", "300000")];
    let mut first = spawn_worker("worker-killed", &app.db.url, &patient);
    wait_for(
        &app,
        &format!(
            "SELECT count(*) AS n FROM job_runs r JOIN apalis.jobs j ON j.id = r.job_id
              WHERE r.job_id = '{job}' AND r.runs = 1 AND j.status IN ('Queued', 'Running')
                AND EXISTS (SELECT 1 FROM pg_stat_activity
                             WHERE datname = current_database() AND wait_event_type = 'Lock')"
        ),
        1,
        Duration::from_secs(30),
    )
    .await;
    first.kill();
    let killed = Instant::now();
    assert!(!first.is_running());
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM stripe_events WHERE id = 'evt_killed_mid_job' AND processed_at IS NULL").await,
        1,
        "the job was not killed mid-job"
    );
    // The lock goes (whatever the dead worker's connection still does, the job is locked by
    // a dead worker and not done).
    holder.batch_execute("ROLLBACK").await.expect("unlock");
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM apalis.jobs WHERE id = '{job}' AND status <> 'Done'"
        ))
        .await,
        1
    );
    // Another worker takes the job back once the dead one has missed its heartbeats.
    let _second = spawn_worker("worker-second", &app.db.url, &patient);
    let window = api::jobs::HEARTBEAT * api::jobs::MISSED as u32 + Duration::from_secs(10);
    wait_for(
        &app,
        &format!("SELECT count(*) AS n FROM apalis.jobs WHERE id = '{job}' AND status = 'Done'"),
        1,
        window.saturating_sub(killed.elapsed()),
    )
    .await;
    // Done once, after two runs (the killed one and the second); the event processed once.
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM job_runs r JOIN apalis.jobs j ON j.id = r.job_id
              WHERE j.id = '{job}' AND r.runs = 2 AND j.attempts = 2"
        ))
        .await,
        1
    );
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM apalis.jobs WHERE idempotency_key = 'evt_killed_mid_job'"
        )
        .await,
        1
    );
    let processed = "SELECT processed_at::text AS t FROM stripe_events WHERE id = 'evt_killed_mid_job' AND processed_at IS NOT NULL";
    let at = text(&app, processed).await;
    // Nothing runs it again.
    tokio::time::sleep(api::jobs::HEARTBEAT + Duration::from_secs(1)).await;
    assert_eq!(text(&app, processed).await, at);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM job_runs WHERE job_id = '{job}' AND runs = 2"
        ))
        .await,
        1
    );
}

#[tokio::test]
async fn jobs_two_workers_and_an_api_process_do_each_job_once() {
    let app = app().await;
    let url = app.db.url.clone();
    let mut api = spawn_api_without_worker("api", &url, &[("STRIPE_WEBHOOK_SECRET", SECRET)]).await;
    let mut workers = [
        spawn_worker("worker-1", &url, &[]),
        spawn_worker("worker-2", &url, &[]),
    ];
    // Both workers listen before the events come (a worker that starts late finds every
    // job taken, and the test would prove nothing about two).
    wait_for(
        &app,
        "SELECT count(*) AS n FROM apalis.workers WHERE worker_type = 'stripe-events'",
        2,
        Duration::from_secs(30),
    )
    .await;
    // Thirty events, each delivered twice at once, through the api process.
    const EVENTS: i64 = 30;
    let deliveries = (0..EVENTS).flat_map(|i| {
        let (header, body) = signed(&format!("evt_shared_{i:02}"), KIND);
        [
            post(&api, header.clone(), body.clone()),
            post(&api, header, body),
        ]
    });
    for (status, r) in futures::future::join_all(deliveries).await {
        assert_eq!((status, &r["received"]), (200, &json!(true)), "{r}");
    }
    let timeout = Duration::from_secs(30);
    wait_for(
        &app,
        "SELECT count(*) AS n FROM stripe_events WHERE processed_at IS NOT NULL",
        EVENTS,
        timeout,
    )
    .await;
    wait_for(
        &app,
        "SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'stripe-events' AND status = 'Done'",
        EVENTS,
        timeout,
    )
    .await;
    // One event, one job, one run each.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM stripe_events")
            .await,
        EVENTS
    );
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM apalis.jobs j JOIN job_runs r ON r.job_id = j.id
              WHERE j.job_type = 'stripe-events' AND j.status = 'Done' AND j.attempts = 1
                AND r.runs = 1 AND j.idempotency_key LIKE 'evt_shared_%'"
        )
        .await,
        EVENTS
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'stripe-events'")
            .await,
        EVENTS
    );
    // No job of any queue ran twice.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM job_runs WHERE runs <> 1")
            .await,
        0
    );
    // The two worker processes ran the queue (`--no-worker`: the api process ran none), and
    // none of the three stopped.
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM apalis.workers
              WHERE worker_type = 'stripe-events' AND last_seen > now() - interval '15 seconds'"
        )
        .await,
        2
    );
    assert!(api.process.is_running());
    for w in &mut workers {
        assert!(w.is_running());
    }
}

/// The Stripe key `billing::app_with` configures.
const STRIPE_KEY: &str = "sk_test_fake_0123456789";

/// Delivers `body` (a signed event) to an api process twice at once, as Stripe sometimes
/// does; returns both answers.
async fn deliver_twice(api: &ApiProcess, body: &str) -> [(u16, Value); 2] {
    let t = now();
    let header = format!("t={t},v1={}", sign(SECRET, t, body));
    let (a, b) = futures::join!(
        post(api, header.clone(), body.to_string()),
        post(api, header, body.to_string())
    );
    [a, b]
}

#[tokio::test]
async fn jobs_two_workers_and_an_api_process_apply_the_billing_story_once() {
    // The workspace, its account (a Stripe customer) and a subscription, created through
    // GraphQL against the fake Stripe (this enqueues a recovery job per billing request).
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "SINGLE").await;
    let account_id = account(&app, &owner, &ws, "Main").await;
    let customer = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { billingAccounts { stripeCustomerId } } }",
            json!({"w": ws}),
        )
        .await["data"]["workspace"]["billingAccounts"][0]["stripeCustomerId"]
        .as_str()
        .expect("customer")
        .to_string();
    let sub = subscribe(
        &app,
        &owner,
        &account_id,
        "STARTER",
        json!([{"resource": "users", "quantity": 2}]),
    )
    .await;
    let sub_id = sub["stripeSubscriptionId"]
        .as_str()
        .expect("subscription")
        .to_string();
    let inv_id = fake.invoices_for(&customer)[0]["id"]
        .as_str()
        .expect("first invoice")
        .to_string();
    let audit_before = app
        .sql_count("SELECT count(*) AS n FROM audit_events")
        .await;
    // Two workers and an api process without a worker, on the same database, with the same
    // Stripe as the server above.
    let url = app.db.url.clone();
    let fake_url = fake.url();
    let mut env: Vec<(&str, &str)> = PRICES.to_vec();
    env.extend([
        ("STRIPE_SECRET_KEY", STRIPE_KEY),
        ("STRIPE_API_BASE", fake_url.as_str()),
        ("STRIPE_WEBHOOK_SECRET", SECRET),
        ("STRIPE_RECOVERY_DELAY_SECS", "1"),
    ]);
    let mut api = spawn_api_without_worker("api", &url, &env).await;
    let mut workers = [
        spawn_worker("worker-1", &url, &env),
        spawn_worker("worker-2", &url, &env),
    ];
    // Both workers listen on both queues before Stripe sends anything (a worker that starts
    // late finds every job taken).
    wait_for(
        &app,
        "SELECT count(*) AS n FROM apalis.workers
          WHERE worker_type IN ('stripe-events', 'billing-intents')",
        4,
        Duration::from_secs(30),
    )
    .await;
    let reads_before = |path: &str| fake.count("GET", path);
    let (customer_reads, sub_reads, inv_reads) = (
        reads_before(&format!("/v1/customers/{customer}")),
        reads_before(&format!("/v1/subscriptions/{sub_id}")),
        reads_before(&format!("/v1/invoices/{inv_id}")),
    );
    // The story of `billing::story`: each change happens in Stripe, then its event is
    // delivered twice at once, while the workers process the earlier ones.
    let obj = |v: Option<Value>| v.expect("object in the fake");
    let mut events: Vec<String> = Vec::new();
    let mut answers: Vec<(u16, Value)> = Vec::new();
    let mut emit = async |event: String| {
        answers.extend(deliver_twice(&api, &event).await);
        events.push(event);
    };
    emit(fake.event("customer.created", obj(fake.customer(&customer)))).await;
    emit(fake.event(
        "customer.subscription.created",
        obj(fake.subscription(&sub_id)),
    ))
    .await;
    fake.set_invoice(&inv_id, |i| {
        i["status"] = json!("paid");
        i["amount_paid"] = i["amount_due"].clone();
        i["amount_remaining"] = json!(0);
    });
    emit(fake.event("invoice.paid", obj(fake.invoice(&inv_id)))).await;
    // Raised to 10 users, trial over.
    fake.set_subscription(&sub_id, |s| {
        s["status"] = json!("active");
        for item in s["items"]["data"].as_array_mut().into_iter().flatten() {
            if item["price"]["id"] == "price_users_unit" {
                item["quantity"] = json!(10);
            }
        }
    });
    emit(fake.event(
        "customer.subscription.updated",
        obj(fake.subscription(&sub_id)),
    ))
    .await;
    fake.set_invoice(&inv_id, |i| i["status"] = json!("paid"));
    emit(fake.event("invoice.payment_failed", obj(fake.invoice(&inv_id)))).await;
    fake.set_subscription(&sub_id, |s| s["status"] = json!("past_due"));
    emit(fake.event(
        "customer.subscription.updated",
        obj(fake.subscription(&sub_id)),
    ))
    .await;
    fake.set_subscription(&sub_id, |s| {
        s["status"] = json!("canceled");
        s["canceled_at"] = json!(chrono::Utc::now().timestamp());
        s["ended_at"] = json!(chrono::Utc::now().timestamp());
    });
    emit(fake.event(
        "customer.subscription.deleted",
        obj(fake.subscription(&sub_id)),
    ))
    .await;
    // Stripe delivers the whole story again, late, newest first, all at once.
    let late = futures::future::join_all(events.iter().rev().map(|e| deliver_twice(&api, e)));
    answers.extend(late.await.into_iter().flatten());
    let n = i64::try_from(events.len()).expect("few events");
    // Every delivery was acknowledged; each event was new exactly once.
    for (status, r) in &answers {
        assert_eq!((*status, &r["received"]), (200, &json!(true)), "{r}");
    }
    let new = answers
        .iter()
        .filter(|(_, r)| r["duplicate"] == json!(false))
        .count();
    assert_eq!(new, events.len(), "{answers:?}");
    // Every job of every queue done: the events' and the billing requests' recovery jobs
    // (due a second after their requests).
    let intents = app
        .sql_count("SELECT count(*) AS n FROM stripe_intents")
        .await;
    assert_eq!(intents, 2, "the account's and the subscription's");
    let timeout = Duration::from_secs(30);
    wait_for(
        &app,
        "SELECT count(*) AS n FROM stripe_events WHERE processed_at IS NOT NULL",
        n,
        timeout,
    )
    .await;
    wait_for(
        &app,
        "SELECT count(*) AS n FROM apalis.jobs WHERE status = 'Done' AND job_type IN ('stripe-events', 'billing-intents')",
        n + intents,
        timeout,
    )
    .await;
    // One event, one job, one run; nothing else was enqueued on these queues (the periodic
    // jobs' ticks go to the maintenance queue, the story's billing notifications to theirs).
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM stripe_events")
            .await,
        n
    );
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM apalis.jobs j JOIN stripe_events e ON e.id = j.idempotency_key
              WHERE j.job_type = 'stripe-events'"
        )
        .await,
        n
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'billing-intents'")
            .await,
        intents
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM apalis.jobs WHERE job_type IN ('stripe-events', 'billing-intents')")
            .await,
        n + intents
    );
    // No job of any queue ran twice: each started once, in one attempt.
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM apalis.jobs j JOIN job_runs r ON r.job_id = j.id
              WHERE j.status = 'Done' AND j.attempts = 1 AND r.runs = 1
                AND j.job_type IN ('stripe-events', 'billing-intents')"
        )
        .await,
        n + intents
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM job_runs WHERE runs <> 1")
            .await,
        0
    );
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM job_runs r JOIN apalis.jobs j ON j.id = r.job_id
              WHERE j.job_type IN ('stripe-events', 'billing-intents')"
        )
        .await,
        n + intents
    );
    // Each event read its object from Stripe once (a second application would read again).
    assert_eq!(
        (
            reads_before(&format!("/v1/customers/{customer}")) - customer_reads,
            reads_before(&format!("/v1/subscriptions/{sub_id}")) - sub_reads,
            reads_before(&format!("/v1/invoices/{inv_id}")) - inv_reads,
        ),
        (1, 4, 2)
    );
    // The billing requests finished once (their recovery jobs found them done), with their
    // audit events once; applying events writes no audit event.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM stripe_intents WHERE state = 'DONE'")
            .await,
        intents
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events")
            .await,
        audit_before
    );
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM audit_events
              WHERE action IN ('billing_account.create', 'subscription.create')"
        )
        .await,
        2
    );
    // The mirror: one subscription, one invoice per Stripe invoice, in Stripe's final state.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM billing_accounts")
            .await,
        1
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM subscriptions")
            .await,
        1
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM subscriptions s
              WHERE s.stripe_subscription_id = '{sub_id}' AND s.status = 'CANCELED'
                AND s.canceled_at IS NOT NULL
                AND (SELECT quantity FROM subscription_items i
                      WHERE i.subscription_id = s.id AND i.stripe_price_id = 'price_users_unit') = 10"
        ))
        .await,
        1
    );
    let invoices = fake.invoices_for(&customer);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM invoices").await,
        i64::try_from(invoices.len()).expect("few invoices")
    );
    for i in &invoices {
        assert_eq!(
            app.sql_count(&format!(
                "SELECT count(*) AS n FROM invoices WHERE stripe_invoice_id = {} AND status = {}
                    AND amount_due = {} AND amount_paid = {} AND amount_remaining = {}",
                quoted(&i["id"]),
                quoted(&i["status"]),
                i["amount_due"],
                i["amount_paid"],
                i["amount_remaining"]
            ))
            .await,
            1,
            "{i}"
        );
    }
    assert_eq!(
        app.sql_count("SELECT coalesce(sum(capacity), 0)::bigint AS n FROM pool_capacities")
            .await,
        0,
        "a canceled subscription funds nothing"
    );
    // The same through GraphQL.
    let state = mirror_state(&app, &owner, &ws).await;
    let graph = &state["graph"]["workspace"]["billingAccounts"][0];
    let subs = graph["subscriptions"].as_array().expect("subscriptions");
    assert_eq!(subs.len(), 1, "{state}");
    assert_eq!(
        (&subs[0]["stripeSubscriptionId"], &subs[0]["status"]),
        (&json!(sub_id), &json!("CANCELED")),
        "{state}"
    );
    let edges = graph["invoices"]["edges"].as_array().expect("invoices");
    assert_eq!(edges.len(), invoices.len(), "{state}");
    assert_eq!(
        (
            &edges[0]["node"]["stripeInvoiceId"],
            &edges[0]["node"]["status"]
        ),
        (&json!(inv_id), &json!("paid")),
        "{state}"
    );
    assert_eq!(state["capacity"], 0);
    // The two worker processes ran the queues (the api process none), and none of the three
    // stopped.
    for queue in ["stripe-events", "billing-intents"] {
        assert_eq!(
            app.sql_count(&format!(
                "SELECT count(*) AS n FROM apalis.workers
                  WHERE worker_type = '{queue}' AND last_seen > now() - interval '15 seconds'"
            ))
            .await,
            2,
            "{queue}"
        );
    }
    assert!(api.process.is_running());
    for w in &mut workers {
        assert!(w.is_running());
    }
}

/// `v` (a JSON string) as an SQL literal.
fn quoted(v: &Value) -> String {
    format!("'{}'", v.as_str().expect("a string").replace('\'', "''"))
}

/// The schedule every test below sets for `idempotency-expiry`: every second.
const EVERY_SECOND: &str = "* * * * * *";

/// The `schedule ticked` lines of a worker's JSON log: (tick, whether this process enqueued
/// its job), of schedule `name`.
fn ticks_logged(output: &str, name: &str) -> Vec<(String, bool)> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "schedule ticked" && l["schedule"] == name)
        .filter_map(|l| Some((l["tick"].as_str()?.to_string(), l["enqueued"].as_bool()?)))
        .collect()
}

#[tokio::test]
async fn jobs_two_workers_enqueue_one_job_per_tick() {
    let app = app().await;
    let url = app.db.url.clone();
    let env = [
        ("SCHEDULE_IDEMPOTENCY_EXPIRY", EVERY_SECOND),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "info,api::jobs::schedule=debug"),
    ];
    let mut workers = [
        spawn_worker("worker-1", &url, &env),
        spawn_worker("worker-2", &url, &env),
    ];
    // Both schedulers tick before the window opens.
    for w in &mut workers {
        w.wait_for_output("schedule ticked", Duration::from_secs(30))
            .await;
    }
    let opened = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let closed = chrono::Utc::now();
    // The ticks of the window: every whole second after it opened, up to its close.
    let (first, last) = (opened.timestamp() + 1, closed.timestamp());
    let seconds = last - first + 1;
    // Let the last tick's enqueue land.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let key = "idempotency-expiry:";
    let window = format!(
        "job_type = 'maintenance' AND idempotency_key LIKE '{key}%'
         AND substr(idempotency_key, {})::timestamptz BETWEEN to_timestamp({first}) AND to_timestamp({last})",
        key.len() + 1
    );
    let jobs = app
        .sql_count(&format!(
            "SELECT count(*) AS n FROM apalis.jobs WHERE {window}"
        ))
        .await;
    // One job a tick: no key twice, one key a second, about as many as seconds went by (a
    // tick that both processes missed while the machine was busy is skipped, not doubled).
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM (SELECT idempotency_key FROM apalis.jobs WHERE {window}
              GROUP BY idempotency_key HAVING count(*) > 1) d"
        ))
        .await,
        0
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(DISTINCT substr(idempotency_key, {})::timestamptz) AS n
               FROM apalis.jobs WHERE {window}",
            key.len() + 1
        ))
        .await,
        jobs
    );
    assert!(
        (seconds - 1..=seconds).contains(&jobs),
        "{jobs} jobs for {seconds} ticks"
    );
    // Each key is the schedule and its tick to the second in UTC, and so is the payload.
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM apalis.jobs WHERE {window}
                AND idempotency_key = '{key}' || to_char(substr(idempotency_key, {})::timestamptz
                        AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                AND convert_from(job, 'UTF8')::jsonb = jsonb_build_object('v', 1,
                        'schedule', 'idempotency-expiry', 'tick', substr(idempotency_key, {}))",
            key.len() + 1,
            key.len() + 1
        ))
        .await,
        jobs
    );
    // Both processes ticked every tick and tried to enqueue it; for each tick one of them
    // did, the other found its job there.
    let logs: Vec<Vec<(String, bool)>> = workers
        .iter()
        .map(|w| ticks_logged(&w.output(), "idempotency-expiry"))
        .collect();
    let in_window = |tick: &str| {
        chrono::DateTime::parse_from_rfc3339(tick)
            .is_ok_and(|t| (first..=last).contains(&t.timestamp()))
    };
    let mut by_tick: std::collections::BTreeMap<String, Vec<bool>> = Default::default();
    for (tick, enqueued) in logs.iter().flatten() {
        if in_window(tick) {
            by_tick.entry(tick.clone()).or_default().push(*enqueued);
        }
    }
    assert_eq!(
        i64::try_from(by_tick.len()).expect("few"),
        jobs,
        "{by_tick:?}"
    );
    for (tick, tries) in &by_tick {
        assert_eq!(
            tries.iter().filter(|e| **e).count(),
            1,
            "{tick} enqueued by exactly one process: {by_tick:?}"
        );
    }
    let both = by_tick.values().filter(|t| t.len() == 2).count();
    assert!(
        i64::try_from(both).expect("few") >= jobs - 1,
        "most ticks fired in both processes: {by_tick:?}"
    );
    // Each tick's job ran once, on one of the workers.
    wait_for(
        &app,
        &format!(
            "SELECT count(*) AS n FROM apalis.jobs j JOIN job_runs r ON r.job_id = j.id
              WHERE {window} AND j.status = 'Done' AND r.runs = 1"
        ),
        jobs,
        Duration::from_secs(15),
    )
    .await;
    for w in &mut workers {
        assert!(w.is_running());
    }
}

#[tokio::test]
async fn jobs_a_tick_runs_its_periodic_job() {
    let app = app().await;
    // An expired idempotency key and a live one (of callers that need not exist).
    app.sql_count(
        "WITH k AS (INSERT INTO idempotency_keys (caller_id, key, operation, fingerprint, expires_at)
            VALUES (gen_random_uuid(), 'tick-expired', 'test', 'f', now() - interval '1 minute'),
                   (gen_random_uuid(), 'tick-live', 'test', 'f', now() + interval '1 hour')
            RETURNING 1) SELECT count(*) AS n FROM k",
    )
    .await;
    let _worker = spawn_worker(
        "worker",
        &app.db.url,
        &[("SCHEDULE_IDEMPOTENCY_EXPIRY", EVERY_SECOND)],
    );
    // A tick's job deletes the expired key, and only it.
    wait_for(
        &app,
        "SELECT count(*) AS n FROM idempotency_keys WHERE key = 'tick-expired'",
        0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM idempotency_keys WHERE key = 'tick-live'")
            .await,
        1
    );
    // It ran as a job of the maintenance queue, counted once, done.
    wait_for(
        &app,
        "SELECT least(count(*), 1) AS n FROM apalis.jobs j JOIN job_runs r ON r.job_id = j.id
          WHERE j.job_type = 'maintenance' AND j.idempotency_key LIKE 'idempotency-expiry:%'
            AND j.status = 'Done' AND j.attempts = 1 AND r.runs = 1 AND j.max_attempts = 5",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM apalis.jobs
              WHERE job_type = 'maintenance' AND status IN ('Failed', 'Killed')"
        )
        .await,
        0
    );
}

/// The configuration with `SCHEDULE_*` variables `vars` (the rest unset).
fn config_with(vars: &[(&str, &str)]) -> Result<api::config::Config, api::config::ConfigError> {
    api::config::Config::from_lookup(|k| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    })
}

#[tokio::test]
async fn jobs_schedules_are_configured_and_a_bad_one_stops_the_process() {
    // Every periodic job is scheduled by default, each by its own variable.
    let config = config_with(&[]).expect("the defaults");
    for p in api::jobs::maintenance::PERIODIC {
        assert_eq!(
            p.var,
            format!("SCHEDULE_{}", p.name.to_uppercase().replace('-', "_"))
        );
        let schedule = config.schedules.get(p.name).expect("scheduled by default");
        assert_eq!(schedule.source(), p.default);
    }
    let config = config_with(&[
        ("SCHEDULE_METER_REPORT", " 0 */5 * * * * "),
        ("SCHEDULE_JOB_RETENTION", "@daily"),
        ("SCHEDULE_IDEMPOTENCY_EXPIRY", "off"),
    ])
    .expect("valid schedules");
    assert_eq!(
        config.schedules.get("meter-report").map(|s| s.source()),
        Some("0 */5 * * * *")
    );
    assert_eq!(
        config.schedules.get("job-retention").map(|s| s.source()),
        Some("@daily")
    );
    assert!(config.schedules.get("idempotency-expiry").is_none());
    // A bad schedule is a configuration error naming its variable, in one line.
    let error = |var: &str, value: &str| {
        let e = config_with(&[(var, value)]).expect_err("refused");
        assert_eq!(e.var, var);
        let message = e.to_string();
        assert!(!message.contains('\n'), "{message}");
        message
    };
    let m = error("SCHEDULE_METER_REPORT", "every minute");
    assert!(
        m.starts_with(
            "configuration error: SCHEDULE_METER_REPORT: `every minute` is not a cron schedule ("
        ) && m.contains("expected 6 or 7 fields, seconds first"),
        "{m}"
    );
    let m = error("SCHEDULE_JOB_RETENTION", "*/5 * * * *");
    assert!(
        m.starts_with(
            "configuration error: SCHEDULE_JOB_RETENTION: `*/5 * * * *` has 5 fields (a crontab line?)"
        ),
        "{m}"
    );
    let m = error("SCHEDULE_IDEMPOTENCY_EXPIRY", "0 0 0 1 1 * 2020");
    assert_eq!(
        m,
        "configuration error: SCHEDULE_IDEMPOTENCY_EXPIRY: `0 0 0 1 1 * 2020` never fires again"
    );
    // The worker process stops at start with that line.
    let app = app().await;
    let mut worker = spawn_worker(
        "worker-bad-schedule",
        &app.db.url,
        &[("SCHEDULE_METER_REPORT", "61 * * * * *")],
    );
    let start = Instant::now();
    while worker.is_running() {
        assert!(start.elapsed() < Duration::from_secs(30), "still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = worker.output();
    assert!(
        output.contains(
            "configuration error: SCHEDULE_METER_REPORT: `61 * * * * *` is not a cron schedule ("
        ),
        "{output}"
    );
}

#[tokio::test]
async fn jobs_payloads_written_by_the_previous_release_still_run() {
    // Rows exactly as the release before typed tasks wrote them (JSON text of `"v": 1`
    // payloads), and one of a version this release does not know.
    let app = app().await;
    let owner = app.user("upgrade@example.com");
    let ws = app.create_workspace(&owner, "Upgrade").await;
    let ws_uuid = tests::workspace_uuid(&ws);
    let month = chrono::Utc::now().format("%Y-%m-01T00:00:00Z").to_string();
    let gone = uuid::Uuid::now_v7();
    let rows = [
        (
            "analytics",
            format!(r#"{{"v": 1, "workspace": "{ws_uuid}", "periodStart": "{month}"}}"#),
        ),
        ("archives", format!(r#"{{"v": 1, "archive": "{gone}"}}"#)),
        (
            "gdpr",
            format!(r#"{{"v": 1, "op": "export", "export": "{gone}"}}"#),
        ),
        (
            "stripe-events",
            r#"{"v": 1, "event_id": "evt_gone"}"#.to_string(),
        ),
        (
            "notifications",
            format!(r#"{{"v": 1, "kind": "fanout", "notification": "{gone}"}}"#),
        ),
        (
            "analytics",
            format!(r#"{{"v": 2, "workspace": "{ws_uuid}", "month": "{month}"}}"#),
        ),
    ];
    for (i, (queue, payload)) in rows.iter().enumerate() {
        app.sql_exec(&format!(
            "INSERT INTO apalis.jobs (id, job_type, job, max_attempts, idempotency_key, run_at)
             VALUES (apalis.generate_ulid(), '{queue}', convert_to('{payload}', 'UTF8'), 3,
                     'upgrade-{i}', now())"
        ))
        .await;
    }
    let worker = Worker::start(&app);
    wait_for(
        &app,
        "SELECT count(*) AS n FROM apalis.jobs WHERE idempotency_key LIKE 'upgrade-%' AND status = 'Done' AND attempts = 1",
        rows.len() as i64,
        Duration::from_secs(30),
    )
    .await;
    worker.stop().await;
    // The v1 analytics job did its work: the month's snapshot is there.
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM analytics_snapshots WHERE workspace_id = '{ws_uuid}'"
        ))
        .await,
        1
    );
}
