//! `POST /webhooks/stripe`: signatures as Stripe computes them, events stored once.

use hmac::Mac;
use serde_json::{Value, json};
use tests::TestApp;

pub(crate) const SECRET: &str = "whsec_test_secret_0123456789abcdef";
const ROLLED: &str = "whsec_new_secret_fedcba9876543210";

pub(crate) async fn app() -> TestApp {
    TestApp::with(tests::Options {
        env: [(
            "STRIPE_WEBHOOK_SECRET".to_string(),
            format!("{SECRET}, {ROLLED}"),
        )]
        .into(),
    })
    .await
}

pub(crate) fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(crate) fn event(id: &str, kind: &str) -> String {
    json!({
        "id": id, "object": "event", "type": kind, "created": now(), "livemode": false,
        "api_version": "2026-09-30.endive",
        "data": {"object": {"id": "cus_123", "object": "customer", "email": "a@example.com"}},
    })
    .to_string()
}

pub(crate) async fn deliver(app: &TestApp, signature: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}/webhooks/stripe", app.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(s) = signature {
        req = req.header("stripe-signature", s);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn stored(app: &TestApp) -> i64 {
    app.sql_count("SELECT count(*) AS n FROM stripe_events")
        .await
}

#[tokio::test]
async fn a_signed_event_is_stored_once_however_often_it_is_delivered() {
    let app = app().await;
    let body = event("evt_once", "customer.created");
    let t = now();
    let header = format!("t={t},v1={}", sign(SECRET, t, &body));
    let (status, r) = deliver(&app, Some(&header), &body).await;
    assert_eq!(
        (status, &r["received"], &r["duplicate"]),
        (200, &json!(true), &json!(false))
    );
    // Stripe delivers again (and sometimes twice at once): acknowledged, stored once.
    let again =
        futures::future::join_all((0..8).map(|_| deliver(&app, Some(&header), &body))).await;
    for (status, r) in again {
        assert_eq!((status, &r["duplicate"]), (200, &json!(true)));
    }
    assert_eq!(stored(&app).await, 1);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM stripe_events WHERE id = 'evt_once' AND type = 'customer.created' AND payload->'data'->'object'->>'id' = 'cus_123' AND processed_at IS NULL").await,
        1
    );
    // A secret being rolled out verifies too (Stripe sends one v1 per secret).
    let body = event("evt_rolled", "invoice.paid");
    let header = format!(
        "t={t},v1={},v1={}",
        sign("whsec_some_other_endpoint_000", t, &body),
        sign(ROLLED, t, &body)
    );
    assert_eq!(deliver(&app, Some(&header), &body).await.0, 200);
    assert_eq!(stored(&app).await, 2);
}

#[tokio::test]
async fn bad_signatures_stale_timestamps_and_tampered_bodies_store_nothing() {
    let app = app().await;
    let body = event("evt_bad", "customer.subscription.updated");
    let t = now();
    let good = sign(SECRET, t, &body);
    let tampered = body.replace("a@example.com", "attacker@example.com");
    // A minute past the tolerance either way (the server reads its clock a moment later).
    let stale = t - 360;
    let future = t + 360;
    let cases: Vec<(Option<String>, String, &str)> = vec![
        (None, body.clone(), "WEBHOOK_SIGNATURE_INVALID"),
        (
            Some(String::new()),
            body.clone(),
            "WEBHOOK_SIGNATURE_INVALID",
        ),
        (
            Some(format!("v1={good}")),
            body.clone(),
            "WEBHOOK_SIGNATURE_INVALID",
        ),
        (
            Some(format!("t={t}")),
            body.clone(),
            "WEBHOOK_SIGNATURE_INVALID",
        ),
        (
            Some(format!(
                "t={t},v1={}",
                sign("whsec_wrong_secret_00000", t, &body)
            )),
            body.clone(),
            "WEBHOOK_SIGNATURE_INVALID",
        ),
        (
            Some(format!("t={t},v1={good}")),
            tampered,
            "WEBHOOK_SIGNATURE_INVALID",
        ),
        (
            Some(format!("t={},v1={good}", t + 1)),
            body.clone(),
            "WEBHOOK_SIGNATURE_INVALID",
        ),
        (
            Some(format!("t={stale},v1={}", sign(SECRET, stale, &body))),
            body.clone(),
            "WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE",
        ),
        (
            Some(format!("t={future},v1={}", sign(SECRET, future, &body))),
            body.clone(),
            "WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE",
        ),
    ];
    for (header, body, code) in cases {
        let (status, r) = deliver(&app, header.as_deref(), &body).await;
        assert_eq!(status, 400, "{header:?}: {r}");
        assert_eq!(tests::error_code(&r), Some(code), "{header:?}: {r}");
    }
    // Correctly signed, but not an event.
    for not_event in ["not json", "[]", r#"{"id":"evt_x","type":"x"}"#] {
        let header = format!("t={t},v1={}", sign(SECRET, t, not_event));
        let (status, r) = deliver(&app, Some(&header), not_event).await;
        assert_eq!(
            (status, tests::error_code(&r)),
            (400, Some("BAD_USER_INPUT")),
            "{not_event}"
        );
    }
    assert_eq!(stored(&app).await, 0);
}

#[tokio::test]
async fn without_a_secret_deliveries_are_refused_for_a_retry_later() {
    let app = TestApp::spawn().await;
    let body = event("evt_unconfigured", "customer.created");
    let t = now();
    let header = format!("t={t},v1={}", sign(SECRET, t, &body));
    let (status, r) = deliver(&app, Some(&header), &body).await;
    // 503: Stripe keeps the event and delivers again once the endpoint is configured.
    assert_eq!(
        (status, tests::error_code(&r)),
        (503, Some("SERVICE_UNAVAILABLE"))
    );
    assert_eq!(stored(&app).await, 0);
}

/// Runs the job workers (what `api` runs in-process and `worker` alone) until dropped.
pub(crate) struct Worker(
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
);

impl Worker {
    pub(crate) fn start(app: &TestApp) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let settings = api::jobs::Settings {
            done_retention: std::time::Duration::from_secs(7 * 86_400),
            failed_retention: std::time::Duration::from_secs(30 * 86_400),
            stripe_event_retention: std::time::Duration::from_secs(90 * 86_400),
            schedules: api::jobs::Schedules::none(),
            ..api::jobs::Settings::new(&app.config).expect("job settings")
        };
        let run = tokio::spawn(api::jobs::run(app.pool.clone(), settings, stopped));
        Self(stop, run)
    }

    pub(crate) async fn stop(self) {
        let _ = self.0.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.1).await;
    }
}

/// Waits until `sql` counts `n` (the workers run on their own time).
async fn eventually(app: &TestApp, sql: &str, n: i64) {
    for _ in 0..200 {
        if app.sql_count(sql).await == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{sql} never reached {n} (now {})", app.sql_count(sql).await);
}

#[tokio::test]
async fn a_stored_event_is_enqueued_once_and_processed_by_the_workers() {
    let app = app().await;
    let t = now();
    // Twenty events, each delivered twice: twenty events, twenty jobs.
    for i in 0..20 {
        let body = event(&format!("evt_job_{i}"), "customer.updated");
        let header = format!("t={t},v1={}", sign(SECRET, t, &body));
        for _ in 0..2 {
            assert_eq!(deliver(&app, Some(&header), &body).await.0, 200);
        }
    }
    assert_eq!(stored(&app).await, 20);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'stripe-events' AND idempotency_key LIKE 'evt_job_%' AND status = 'Pending'").await,
        20
    );
    // Two workers (two processes in production) share the queue: each event is processed,
    // each job done once.
    let (a, b) = (Worker::start(&app), Worker::start(&app));
    eventually(
        &app,
        "SELECT count(*) AS n FROM stripe_events WHERE processed_at IS NOT NULL",
        20,
    )
    .await;
    eventually(
        &app,
        "SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'stripe-events' AND status = 'Done' AND attempts = 1",
        20,
    )
    .await;
    // An event delivered while the workers run is picked up without waiting for a poll.
    let body = event("evt_live", "invoice.created");
    let header = format!("t={t},v1={}", sign(SECRET, t, &body));
    assert_eq!(deliver(&app, Some(&header), &body).await.0, 200);
    eventually(
        &app,
        "SELECT count(*) AS n FROM stripe_events WHERE id = 'evt_live' AND processed_at IS NOT NULL",
        1,
    )
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_job_commits_and_rolls_back_with_the_transaction_that_enqueues_it() {
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    let app = app().await;
    let mut conn = AsyncPgConnection::establish(&app.db.url)
        .await
        .expect("connect");
    let job = json!({"v": 1, "event_id": "evt_tx"});
    let refused: Result<(), diesel::result::Error> = conn
        .transaction(async |c| {
            api::db::repo::jobs::enqueue(c, "test-queue", &job, "rolled-back", 3).await?;
            Err(diesel::result::Error::RollbackTransaction)
        })
        .await;
    assert!(refused.is_err());
    let committed = conn
        .transaction(async |c| {
            let first = api::db::repo::jobs::enqueue(c, "test-queue", &job, "committed", 3).await?;
            let again = api::db::repo::jobs::enqueue(c, "test-queue", &job, "committed", 3).await?;
            Ok::<_, diesel::result::Error>((first, again))
        })
        .await
        .expect("commits");
    assert_eq!(committed, (true, false), "the same key enqueues once");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'test-queue'")
            .await,
        1
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'test-queue' AND idempotency_key = 'committed' AND convert_from(job, 'UTF8')::jsonb = '{\"v\": 1, \"event_id\": \"evt_tx\"}'::jsonb AND max_attempts = 3")
            .await,
        1
    );
}

#[tokio::test]
async fn a_job_row_that_would_stop_the_workers_cannot_be_stored() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let app = app().await;
    let mut conn = AsyncPgConnection::establish(&app.db.url)
        .await
        .expect("connect");
    // Rows no code of ours writes: a payload that is not JSON (or not UTF-8), an id that is
    // not a ULID. Either would stop every worker that fetches it, again after each restart.
    for (id, job) in [
        ("apalis.generate_ulid()", "'\\xff00'::bytea"),
        ("apalis.generate_ulid()", "convert_to('not json', 'UTF8')"),
        ("'job-1'", "convert_to('{}', 'UTF8')"),
    ] {
        let insert = format!(
            "INSERT INTO apalis.jobs (id, job_type, job, max_attempts) VALUES ({id}, 'stripe-events', {job}, 3)"
        );
        assert!(
            diesel::sql_query(&insert).execute(&mut conn).await.is_err(),
            "{insert} was stored"
        );
    }
    // The queue keeps working.
    let worker = Worker::start(&app);
    let t = now();
    let body = event("evt_after_refusals", "customer.created");
    let header = format!("t={t},v1={}", sign(SECRET, t, &body));
    assert_eq!(deliver(&app, Some(&header), &body).await.0, 200);
    eventually(
        &app,
        "SELECT count(*) AS n FROM stripe_events WHERE id = 'evt_after_refusals' AND processed_at IS NOT NULL",
        1,
    )
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn finished_jobs_are_deleted_after_their_retention() {
    let app = app().await;
    // Done 8 days ago, done an hour ago, failed 8 days ago, failed 31 days ago, pending.
    app.sql_count(
        "WITH j AS (INSERT INTO apalis.jobs (id, job_type, job, status, done_at, run_at, last_result)
            SELECT apalis.generate_ulid(), 'retention', convert_to('{}', 'UTF8'), s, now() - d, now() - d, NULL
              FROM (VALUES ('Done', interval '8 days'), ('Done', interval '1 hour'),
                           ('Failed', interval '8 days'), ('Failed', interval '31 days'),
                           ('Pending', interval '40 days')) AS v(s, d)
            RETURNING 1) SELECT count(*) AS n FROM j",
    )
    .await;
    let settings = api::jobs::Settings {
        done_retention: std::time::Duration::from_secs(7 * 86_400),
        failed_retention: std::time::Duration::from_secs(30 * 86_400),
        stripe_event_retention: std::time::Duration::from_secs(90 * 86_400),
        schedules: api::jobs::Schedules::none(),
        ..api::jobs::Settings::new(&app.config).expect("job settings")
    };
    let deleted = api::jobs::purge_finished_jobs(&app.pool, &settings)
        .await
        .expect("purge");
    assert_eq!(deleted, 2);
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'retention' AND (
                (status = 'Done' AND done_at > now() - interval '2 hours')
                OR (status = 'Failed' AND done_at > now() - interval '9 days')
                OR status = 'Pending')"
        )
        .await,
        3
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'retention'")
            .await,
        3
    );
}

/// Runs `api <args>` on the test's database; its exit status and stdout.
fn api_cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    let env = tests::processes::env_for(&app.db.url, &[]);
    let out = std::process::Command::new(tests::processes::binary("api"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run the api command line");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn failed_jobs_are_listed_with_their_error_and_can_be_retried() {
    let app = app().await;
    let body = event("evt_failed_for_good", "customer.updated");
    let t = now();
    let (status, _) = deliver(
        &app,
        Some(&format!("t={t},v1={}", sign(SECRET, t, &body))),
        &body,
    )
    .await;
    assert_eq!(status, 200);
    // As apalis leaves a job whose attempts ran out.
    let n = app
        .sql_count(
            "WITH j AS (UPDATE apalis.jobs SET status = 'Failed', attempts = 25, done_at = now(),
                          last_result = '{\"Err\": \"Stripe unavailable: boom\"}'
                        WHERE job_type = 'stripe-events' RETURNING 1)
             SELECT count(*) AS n FROM j",
        )
        .await;
    assert_eq!(n, 1);
    let (ok, out) = api_cli(&app, &["failed-jobs", "--queue", "stripe-events"]);
    assert!(ok, "{out}");
    let jobs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(jobs.len(), 1, "{out}");
    assert_eq!(jobs[0]["status"], "Failed");
    assert_eq!(jobs[0]["error"], "Stripe unavailable: boom");
    assert!(
        jobs[0]["payload"]
            .as_str()
            .is_some_and(|p| p.contains("evt_failed_for_good"))
    );
    let (ok, out) = api_cli(&app, &["failed-jobs", "--queue", "billing-intents"]);
    assert!(ok && out.is_empty(), "{out}");
    let id = jobs[0]["id"].as_str().expect("id").to_string();
    assert!(!api_cli(&app, &["retry-job", "01NOSUCHJOB0000000000000000"]).0);
    let (ok, out) = api_cli(&app, &["retry-job", &id]);
    assert!(ok, "{out}");
    assert!(
        !api_cli(&app, &["retry-job", &id]).0,
        "only failed jobs are retried"
    );
    let worker = Worker::start(&app);
    eventually(
        &app,
        "SELECT count(*) AS n FROM stripe_events WHERE id = 'evt_failed_for_good' AND processed_at IS NOT NULL",
        1,
    )
    .await;
    worker.stop().await;
    let (_, out) = api_cli(&app, &["failed-jobs"]);
    assert!(out.is_empty(), "{out}");
}

#[tokio::test]
async fn a_signed_event_holding_a_nul_character_is_refused_with_400_and_the_next_is_stored() {
    let app = app().await;
    let t = now();
    let mut body: Value =
        serde_json::from_str(&event("evt_nul\u{0}id", "customer.updated")).expect("json");
    body["data"]["object"]["description"] = json!("a\u{0}b");
    let body = body.to_string();
    assert!(body.contains("\\u0000"), "{body}");
    let header = format!("t={t},v1={}", sign(SECRET, t, &body));
    let (status, r) = deliver(&app, Some(&header), &body).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    // Again: the same answer (Stripe stops retrying on a 4xx), and nothing stored.
    assert_eq!(deliver(&app, Some(&header), &body).await.0, 400);
    assert_eq!(stored(&app).await, 0);
    let good = event("evt_after_nul", "customer.updated");
    let header = format!("t={t},v1={}", sign(SECRET, t, &good));
    assert_eq!(deliver(&app, Some(&header), &good).await.0, 200);
    assert_eq!(stored(&app).await, 1);
}
