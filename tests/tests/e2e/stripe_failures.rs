//! Stripe down, slow or answering the wrong object, against real `api` and `worker`
//! processes and the fake Stripe misbehaving on purpose: events are never given up while
//! Stripe is the one failing, no connection is held while Stripe is called, and what is
//! applied (and notified) is the object asked for, as Stripe says it is now.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::TestApp;
use tests::fake_stripe::FakeStripe;
use tests::processes::{Process, spawn_api, spawn_worker};

use super::billing::{PRICES, account, app_with_env, mirror_state, subscribe, workspace};
use super::jobs::wait_for;
use super::webhooks::{SECRET, deliver, now, sign};

/// The environment of `api` and `worker` processes using `fake` (and `extra`).
fn stripe_env<'a>(fake_url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<(&str, &str)> = PRICES.to_vec();
    env.extend([
        ("STRIPE_SECRET_KEY", "sk_test_fake_0123456789"),
        ("STRIPE_API_BASE", fake_url),
        ("STRIPE_WEBHOOK_SECRET", SECRET),
        ("STRIPE_RECOVERY_DELAY_SECS", "1"),
    ]);
    env.extend_from_slice(extra);
    env
}

/// Two worker processes on `app`'s database, both listening on the Stripe events queue.
async fn two_workers(app: &TestApp, env: &[(&str, &str)]) -> [Process; 2] {
    let workers = [
        spawn_worker("worker-1", &app.db.url, env),
        spawn_worker("worker-2", &app.db.url, env),
    ];
    wait_for(
        app,
        "SELECT count(*) AS n FROM apalis.workers WHERE worker_type = 'stripe-events'",
        2,
        Duration::from_secs(30),
    )
    .await;
    workers
}

/// Signs and delivers `body` to `base`'s webhook endpoint; the status and JSON answer.
async fn post_event(http: &reqwest::Client, base: &str, body: &str) -> (u16, Value) {
    let t = now();
    let r = http
        .post(format!("{base}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            format!("t={t},v1={}", sign(SECRET, t, body)),
        )
        .body(body.to_string())
        .send()
        .await
        .expect("deliver");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A workspace of `owner` with an account and a subscription of 2 users, made through GraphQL
/// against `fake`: (workspace, customer id, subscription id).
async fn subscribed(app: &TestApp, fake: &FakeStripe, owner: &str) -> (String, String, String) {
    let ws = workspace(app, owner, "SINGLE").await;
    let account_id = account(app, owner, &ws, "Main").await;
    let sub = subscribe(
        app,
        owner,
        &account_id,
        "STARTER",
        json!([{"resource": "users", "quantity": 2}]),
    )
    .await;
    let sub_id = sub["stripeSubscriptionId"]
        .as_str()
        .expect("subscription")
        .to_string();
    let customer = fake.subscription(&sub_id).expect("in the fake")["customer"]
        .as_str()
        .expect("customer")
        .to_string();
    (ws, customer, sub_id)
}

/// The mirror's status of subscription `sub` of workspace `ws`.
async fn status_of(app: &TestApp, owner: &str, ws: &str, sub: &str) -> String {
    let state = mirror_state(app, owner, ws).await;
    state["graph"]["workspace"]["billingAccounts"][0]["subscriptions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["stripeSubscriptionId"] == sub)
        .map(|s| s["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("subscription {sub} not in the mirror: {state}"))
}

/// Stripe cancels the subscription in `fake` and sends `customer.subscription.deleted`.
fn cancel_in_stripe(fake: &FakeStripe, sub: &str) -> String {
    fake.set_subscription(sub, |s| {
        s["status"] = json!("canceled");
        s["canceled_at"] = json!(chrono::Utc::now().timestamp());
        s["ended_at"] = json!(chrono::Utc::now().timestamp());
    });
    fake.event(
        "customer.subscription.deleted",
        fake.subscription(sub).expect("in the fake"),
    )
}

/// Signs and delivers `event` to `app`'s webhook endpoint, which stores it (200); its id.
async fn deliver_stored(app: &TestApp, event: &str) -> String {
    let t = now();
    let (status, r) = deliver(
        app,
        Some(&format!("t={t},v1={}", sign(SECRET, t, event))),
        event,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    serde_json::from_str::<Value>(event).expect("event")["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// Waits (at most 30 s) until no stored event is left unprocessed.
async fn all_applied(app: &TestApp) {
    wait_for(
        app,
        "SELECT count(*) AS n FROM stripe_events WHERE processed_at IS NULL",
        0,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test]
async fn a_stripe_outage_of_a_minute_during_a_cancellation_converges_without_an_operator() {
    let fake = FakeStripe::start().await;
    let app = app_with_env(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let (ws, _, sub) = subscribed(&app, &fake, &owner).await;
    let before = status_of(&app, &owner, &ws, &sub).await;
    assert_eq!(before, "TRIALING");
    let fake_url = fake.url();
    // Attempts wait 2, 4, 8 s, then 8 s each: many more runs than a job's run budget (10)
    // fit in the outage.
    let env = stripe_env(
        &fake_url,
        &[
            ("STRIPE_EVENT_RETRY_MAX_SECS", "8"),
            ("SCHEDULE_STRIPE_EVENT_RETRY", "off"),
        ],
    );
    let _workers = two_workers(&app, &env).await;

    // Stripe goes down; the cancellation happened just before, and its event arrives.
    let event = cancel_in_stripe(&fake, &sub);
    fake.set_down(Some(503));
    let event_id = deliver_stored(&app, &event).await;
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let path = format!("/v1/subscriptions/{sub}");
    let reads_during = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .count();
    // Stripe was asked again and again, with backoff; the event is still waiting, with its
    // failures counted and none of its jobs given up.
    let failures = app
        .sql_count(&format!(
            "SELECT failures::bigint AS n FROM stripe_events WHERE id = '{event_id}' AND processed_at IS NULL"
        ))
        .await;
    assert!(
        failures >= 6,
        "failures counted on the unprocessed event: {failures}"
    );
    assert!(reads_during >= failures as usize, "{reads_during} reads");
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'stripe-events' AND status IN ('Killed', 'Failed')"
        )
        .await,
        0,
        "no job of the event failed or gave up"
    );
    assert_eq!(status_of(&app, &owner, &ws, &sub).await, before);

    // Stripe is back: the next attempt (at most 8 s later) applies the cancellation.
    fake.set_down(None);
    all_applied(&app).await;
    assert_eq!(status_of(&app, &owner, &ws, &sub).await, "CANCELED");
    assert_eq!(
        app.sql_count("SELECT coalesce(sum(capacity), 0)::bigint AS n FROM pool_capacities")
            .await,
        0,
        "the canceled subscription no longer funds its pool"
    );
    assert!(outage.elapsed() >= Duration::from_secs(60));
    // Each attempt ran as one job, once: the run budget was never spent on Stripe's failures.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM job_runs WHERE runs <> 1")
            .await,
        0
    );
}

#[tokio::test]
async fn an_event_whose_jobs_all_died_is_swept_back_onto_the_queue() {
    let fake = FakeStripe::start().await;
    let app = app_with_env(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let (ws, _, sub) = subscribed(&app, &fake, &owner).await;
    let event_id = deliver_stored(&app, &cancel_in_stripe(&fake, &sub)).await;
    // Its job gave up (it crashed its process past its run budget), and an old event that
    // was never applied lies past the horizon.
    app.sql_exec(&format!(
        "UPDATE apalis.jobs SET status = 'Killed', done_at = now()
          WHERE job_type = 'stripe-events' AND idempotency_key = '{event_id}'"
    ))
    .await;
    app.sql_exec(
        "INSERT INTO stripe_events (id, type, livemode, created_at, payload, received_at)
         VALUES ('evt_ancient', 'customer.updated', false, now() - interval '4 days', '{}',
                 now() - interval '4 days')",
    )
    .await;
    let retry = api::domain::webhooks::Retry {
        max_delay: Duration::from_secs(60),
        sweep_after: Duration::from_secs(1),
    };
    // Within its grace period nothing is swept.
    assert_eq!(
        api::domain::webhooks::sweep(&app.pool, &retry)
            .await
            .expect("sweep"),
        0
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        api::domain::webhooks::sweep(&app.pool, &retry)
            .await
            .expect("sweep"),
        1
    );
    // A second sweep finds the new job alive: nothing more.
    assert_eq!(
        api::domain::webhooks::sweep(&app.pool, &retry)
            .await
            .expect("sweep"),
        0
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'stripe-events'
              AND idempotency_key = '{event_id}#1' AND status = 'Pending'"
        ))
        .await,
        1
    );
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM apalis.jobs WHERE idempotency_key LIKE 'evt_ancient%'"
        )
        .await,
        0,
        "an event past the horizon is left for an operator"
    );
    assert_eq!(
        app.metric("stripe_events_unprocessed{state=\"abandoned\"}")
            .await,
        1
    );
    assert_eq!(
        app.metric("stripe_events_unprocessed{state=\"pending\"}")
            .await,
        1
    );
    // A worker runs the swept job: the mirror converges.
    let worker = super::webhooks::Worker::start(&app);
    wait_for(
        &app,
        &format!(
            "SELECT count(*) AS n FROM stripe_events WHERE id = '{event_id}' AND processed_at IS NOT NULL"
        ),
        1,
        Duration::from_secs(30),
    )
    .await;
    worker.stop().await;
    assert_eq!(status_of(&app, &owner, &ws, &sub).await, "CANCELED");
}

#[tokio::test]
async fn a_read_answering_another_object_is_refused_and_tried_again() {
    let fake = FakeStripe::start().await;
    let app = app_with_env(&fake, &[("STRIPE_EVENT_RETRY_MAX_SECS", "1")]).await;
    let owner = app.user("owner@example.com");
    let (ws, customer, first) = subscribed(&app, &fake, &owner).await;
    // A second subscription of the same customer (paid by card), in the mirror too.
    let accounts = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { billingAccounts { id } } }",
            json!({"w": ws}),
        )
        .await;
    let account_id = accounts["data"]["workspace"]["billingAccounts"][0]["id"]
        .as_str()
        .expect("account")
        .to_string();
    let card = fake.create_card("visa", "4242", 12, 2030);
    tests::assert_ok(&super::billing::attach(&app, &owner, &account_id, &card).await);
    let second = subscribe(
        &app,
        &owner,
        &account_id,
        "STARTER",
        json!([{"resource": "users", "quantity": 3}]),
    )
    .await["stripeSubscriptionId"]
        .as_str()
        .expect("second")
        .to_string();
    assert_eq!(
        fake.subscription(&second).expect("second")["customer"],
        json!(customer)
    );
    // The first is canceled; the read its event causes answers the second instead.
    let event = cancel_in_stripe(&fake, &first);
    fake.answer_instead(&first, &second);
    let worker = super::webhooks::Worker::start(&app);
    let event_id = deliver_stored(&app, &event).await;
    all_applied(&app).await;
    worker.stop().await;
    // The answer about the second was refused (one failure, its reason kept), the event read
    // again and the first canceled; the second is as it was.
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM stripe_events WHERE id = '{event_id}' AND failures = 1
                AND last_error LIKE '%answered%instead%'"
        ))
        .await,
        1
    );
    assert_eq!(status_of(&app, &owner, &ws, &first).await, "CANCELED");
    assert_ne!(status_of(&app, &owner, &ws, &second).await, "CANCELED");
}

/// Notifications of `ws` of type `kind` (its recorded events).
async fn notified(app: &TestApp, kind: &str) -> i64 {
    app.sql_count(&format!(
        "SELECT count(*) AS n FROM notifications WHERE type = '{kind}'"
    ))
    .await
}

#[tokio::test]
async fn a_payment_failure_is_notified_from_the_invoice_as_stripe_says_it_is_now() {
    let fake = FakeStripe::start().await;
    let app = app_with_env(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let (_, customer, _) = subscribed(&app, &fake, &owner).await;
    let invoice = fake.invoices_for(&customer)[0]["id"]
        .as_str()
        .expect("first invoice")
        .to_string();
    let worker = super::webhooks::Worker::start(&app);
    let failed = |url: &str| {
        fake.set_invoice(&invoice, |i| {
            i["status"] = json!("open");
            i["amount_due"] = json!(4900);
            i["amount_paid"] = json!(0);
            i["amount_remaining"] = json!(4900);
            i["attempt_count"] = json!(1);
            i["hosted_invoice_url"] = json!(url);
        });
        fake.event(
            "invoice.payment_failed",
            fake.invoice(&invoice).expect("invoice"),
        )
    };
    // 1. The payment failed, and the customer has paid since: nobody is told to pay.
    let event = failed("https://pay.example/at-the-event");
    fake.set_invoice(&invoice, |i| {
        i["status"] = json!("paid");
        i["amount_paid"] = i["amount_due"].clone();
        i["amount_remaining"] = json!(0);
    });
    deliver_stored(&app, &event).await;
    all_applied(&app).await;
    assert_eq!(notified(&app, "billing.payment_failed").await, 0);
    // 2. Still unpaid: the workspace is told, with the invoice's page as Stripe has it now.
    let event = failed("https://pay.example/at-the-event");
    fake.set_invoice(&invoice, |i| {
        i["hosted_invoice_url"] = json!("https://pay.example/now")
    });
    deliver_stored(&app, &event).await;
    all_applied(&app).await;
    worker.stop().await;
    assert_eq!(notified(&app, "billing.payment_failed").await, 1);
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM notifications WHERE type = 'billing.payment_failed'
                AND data->>'hostedInvoiceUrl' = 'https://pay.example/now'"
        )
        .await,
        1
    );
}

/// Sessions of `app`'s database inside a transaction for more than a second right now (a
/// transaction around an 8 s call to Stripe would be one; the short ones of the workers and
/// the webhook endpoint come and go).
async fn in_transaction(app: &TestApp) -> i64 {
    app.sql_count(&format!(
        "SELECT count(*) AS n FROM pg_stat_activity
          WHERE datname = '{}' AND xact_start < now() - interval '1 second'
            AND pid <> pg_backend_pid()",
        app.db.name
    ))
    .await
}

#[tokio::test]
async fn a_slow_stripe_holds_no_connection_and_delays_neither_graphql_nor_webhooks() {
    let fake = FakeStripe::start().await;
    let app = app_with_env(&fake, &[]).await;
    let owner = app.user("owner@example.com");
    let (ws, customer, _) = subscribed(&app, &fake, &owner).await;
    // An `api` process with its worker in-process and a pool of three connections; Stripe
    // answers every call in 8 s.
    let fake_url = fake.url();
    let env = stripe_env(
        &fake_url,
        &[
            ("DATABASE_POOL_SIZE", "3"),
            ("STRIPE_EVENT_CONCURRENCY", "8"),
        ],
    );
    let api = spawn_api("api", &app.db.url, &[], &env).await;
    wait_for(
        &app,
        "SELECT count(*) AS n FROM apalis.workers WHERE worker_type = 'stripe-events'",
        1,
        Duration::from_secs(30),
    )
    .await;
    fake.set_latency(Duration::from_secs(8));
    let customer_object = fake.customer(&customer).expect("customer");
    // Forty events about the customer, each read from Stripe by the workers, all at once.
    let events: Vec<String> = (0..40)
        .map(|_| fake.event("customer.updated", customer_object.clone()))
        .collect();
    let deliveries =
        futures::future::join_all(events.iter().map(|e| post_event(&api.http, &api.base, e)));
    let (answers, _) = futures::join!(deliveries, tokio::time::sleep(Duration::from_secs(2)));
    for (status, r) in &answers {
        assert_eq!(*status, 200, "every delivery is stored: {r}");
    }
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM stripe_events WHERE type = 'customer.updated'")
            .await,
        40
    );
    // While the workers wait on Stripe: no transaction stays open, and GraphQL
    // reads answer as usual (well within the 8 s Stripe takes).
    for _ in 0..10 {
        assert_eq!(in_transaction(&app).await, 0);
        let started = Instant::now();
        let r = api
            .http
            .post(format!("{}/graphql", api.base))
            .bearer_auth(&owner)
            .json(&json!({"query": "query($w: ID!) { workspace(id: $w) { id name billingAccounts { id } } }", "variables": {"w": ws}}))
            .send()
            .await
            .expect("graphql");
        assert_eq!(r.status().as_u16(), 200);
        let body: Value = r.json().await.expect("json");
        assert!(body.get("errors").is_none(), "{body}");
        assert_eq!(body["data"]["workspace"]["id"], json!(ws));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "a read waited for Stripe: {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Stripe answers again at its usual pace: every event is applied.
    fake.set_latency(Duration::ZERO);
    wait_for(
        &app,
        "SELECT count(*) AS n FROM stripe_events WHERE processed_at IS NULL",
        0,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM apalis.jobs WHERE job_type = 'stripe-events' AND status IN ('Killed', 'Failed')"
        )
        .await,
        0
    );
}
