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
