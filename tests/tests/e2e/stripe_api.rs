//! `api::stripe::StripeApi` against the fake Stripe: what it sends, what it reads back,
//! and how it retries.

use api::stripe::{
    Address, Customer, CustomerFields, Invoice, ItemChange, NewSubscription, PaymentMethod,
    Proration, StripeApi, StripeError, Subscription, SubscriptionChange,
};
use serde_json::Value;
use tests::fake_stripe::{FakeStripe, Recorded};

const KEY: &str = "sk_test_fake_0123456789";

async fn setup() -> (FakeStripe, StripeApi) {
    let fake = FakeStripe::start().await;
    let api = StripeApi::new(KEY, Some(&fake.url()));
    (fake, api)
}

fn fields(name: &str) -> CustomerFields {
    CustomerFields {
        name: name.into(),
        email: format!("{}@example.com", name.to_lowercase()),
        phone: Some("+15555550100".into()),
        description: Some("workspace ws_1".into()),
        address: Some(Address {
            line1: Some("1 Main St".into()),
            line2: None,
            city: Some("Springfield".into()),
            state: Some("IL".into()),
            postal_code: Some("62701".into()),
            country: Some("US".into()),
        }),
        metadata: vec![("workspace_id".into(), "ws_1".into())],
    }
}

fn last(fake: &FakeStripe) -> Recorded {
    fake.requests().pop().expect("a request was sent")
}

#[track_caller]
fn assert_refused(e: StripeError, status: u16, code: Option<&str>) -> (String, Option<String>) {
    match e {
        StripeError::Refused {
            status: s,
            code: c,
            message,
            param,
        } => {
            assert_eq!(s, status, "{message}");
            assert_eq!(c.as_deref(), code, "{message}");
            (message, param)
        }
        other => panic!("expected Refused {status}, got {other:?}"),
    }
}

#[tokio::test]
async fn customers_are_created_read_updated_and_deleted() {
    let (fake, api) = setup().await;

    let c = api
        .create_customer("ws_1:customer", &fields("Ada"))
        .await
        .expect("create");
    assert!(c.id.starts_with("cus_"), "{c:?}");
    assert_eq!(c.email.as_deref(), Some("ada@example.com"));
    assert_eq!(c.name.as_deref(), Some("Ada"));
    assert!(!c.deleted);
    assert_eq!(c.default_payment_method, None);
    assert!(c.created > 1_700_000_000);
    let r = last(&fake);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/customers")
    );
    assert_eq!(r.idempotency_key.as_deref(), Some("ws_1:customer"));
    assert_eq!(r.authorization, Some(format!("Bearer {KEY}")));
    assert_eq!(r.stripe_version.as_deref(), Some(api::stripe::API_VERSION));
    assert_eq!(r.field("name"), Some("Ada"));
    assert_eq!(r.field("email"), Some("ada@example.com"));
    assert_eq!(r.field("phone"), Some("+15555550100"));
    assert_eq!(r.field("description"), Some("workspace ws_1"));
    assert_eq!(r.field("address[line1]"), Some("1 Main St"));
    assert_eq!(r.field("address[city]"), Some("Springfield"));
    assert_eq!(r.field("address[country]"), Some("US"));
    assert_eq!(r.field("address[line2]"), None);
    assert_eq!(r.field("metadata[workspace_id]"), Some("ws_1"));
    let stored = fake.customer(&c.id).expect("stored");
    assert_eq!(stored["address"]["postal_code"], "62701");
    assert_eq!(stored["metadata"]["workspace_id"], "ws_1");

    assert_eq!(api.retrieve_customer(&c.id).await.expect("retrieve"), c);
    let r = last(&fake);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("GET", &*format!("/v1/customers/{}", c.id))
    );
    assert_eq!(r.idempotency_key, None, "reads send no key");

    let mut changed = fields("Grace");
    changed.phone = None;
    changed.address = None;
    changed.metadata = vec![("plan".into(), "pro".into())];
    let u = api
        .update_customer("ws_1:customer:2", &c.id, &changed)
        .await
        .expect("update");
    assert_eq!(
        (u.id.as_str(), u.name.as_deref()),
        (c.id.as_str(), Some("Grace"))
    );
    assert_eq!(u.email.as_deref(), Some("grace@example.com"));
    let r = last(&fake);
    assert_eq!(r.path, format!("/v1/customers/{}", c.id));
    assert_eq!(r.idempotency_key.as_deref(), Some("ws_1:customer:2"));
    assert_eq!(r.field("phone"), Some(""), "None clears the phone");
    assert_eq!(r.field("address[city]"), None, "None leaves the address");
    let stored = fake.customer(&c.id).expect("stored");
    assert_eq!(stored["phone"], Value::Null);
    assert_eq!(stored["address"]["city"], "Springfield");
    assert_eq!(stored["metadata"]["workspace_id"], "ws_1");
    assert_eq!(stored["metadata"]["plan"], "pro");

    api.delete_customer("ws_1:customer:delete", &c.id)
        .await
        .expect("delete");
    let r = last(&fake);
    assert_eq!(
        (r.method.as_str(), r.idempotency_key.as_deref()),
        ("DELETE", Some("ws_1:customer:delete"))
    );
    let gone = api
        .retrieve_customer(&c.id)
        .await
        .expect("retrieve deleted");
    assert!(gone.deleted);
    assert_eq!(gone.id, c.id);
}

#[tokio::test]
async fn payment_methods_are_saved_attached_made_default_and_detached() {
    let (fake, api) = setup().await;
    let c = api
        .create_customer("c", &fields("Ada"))
        .await
        .expect("customer");

    let si = api
        .create_setup_intent("si-1", &c.id)
        .await
        .expect("setup intent");
    assert!(si.id.starts_with("seti_"));
    assert!(si.client_secret.starts_with(&format!("{}_secret_", si.id)));
    let r = last(&fake);
    assert_eq!(r.path, "/v1/setup_intents");
    assert_eq!(r.idempotency_key.as_deref(), Some("si-1"));
    assert_eq!(r.field("customer"), Some(c.id.as_str()));
    assert_eq!(r.field("usage"), Some("off_session"));
    assert_eq!(r.field("automatic_payment_methods[enabled]"), Some("true"));

    let pm_id = fake.create_card("mastercard", "4444", 12, 2031);
    let pm = api
        .attach_payment_method("attach-1", &pm_id, &c.id)
        .await
        .expect("attach");
    assert_eq!(
        pm,
        PaymentMethod {
            id: pm_id.clone(),
            customer: Some(c.id.clone()),
            kind: "card".into(),
            brand: Some("mastercard".into()),
            last4: Some("4444".into()),
            exp_month: Some(12),
            exp_year: Some(2031),
            created: pm.created,
        }
    );
    let r = last(&fake);
    assert_eq!(r.path, format!("/v1/payment_methods/{pm_id}/attach"));
    assert_eq!(r.idempotency_key.as_deref(), Some("attach-1"));
    assert_eq!(r.field("customer"), Some(c.id.as_str()));
    assert_eq!(api.retrieve_payment_method(&pm_id).await.expect("read"), pm);

    let with_default = api
        .set_default_payment_method("default-1", &c.id, &pm_id)
        .await
        .expect("default");
    assert_eq!(
        with_default.default_payment_method.as_deref(),
        Some(pm_id.as_str())
    );
    let r = last(&fake);
    assert_eq!(r.path, format!("/v1/customers/{}", c.id));
    assert_eq!(r.idempotency_key.as_deref(), Some("default-1"));
    assert_eq!(
        r.field("invoice_settings[default_payment_method]"),
        Some(pm_id.as_str())
    );
    assert_eq!(r.form.len(), 1, "only the default changes: {:?}", r.form);

    let other = fake.create_card("visa", "4242", 1, 2030);
    let e = api
        .set_default_payment_method("default-2", &c.id, &other)
        .await
        .expect_err("not attached");
    let (_, param) = assert_refused(e, 400, Some("resource_missing"));
    assert_eq!(
        param.as_deref(),
        Some("invoice_settings[default_payment_method]")
    );

    let detached = api
        .detach_payment_method("detach-1", &pm_id)
        .await
        .expect("detach");
    assert_eq!(detached.customer, None);
    let r = last(&fake);
    assert_eq!(r.path, format!("/v1/payment_methods/{pm_id}/detach"));
    assert_eq!(r.idempotency_key.as_deref(), Some("detach-1"));
    let after = api.retrieve_customer(&c.id).await.expect("customer");
    assert_eq!(
        after.default_payment_method, None,
        "detaching clears the default"
    );
}

#[tokio::test]
async fn subscriptions_are_created_changed_and_invoiced() {
    let (fake, api) = setup().await;
    fake.set_price("price_seat", 1500);
    let c = api
        .create_customer("c", &fields("Ada"))
        .await
        .expect("customer");
    let pm = fake.create_card("visa", "4242", 8, 2030);
    api.attach_payment_method("a", &pm, &c.id)
        .await
        .expect("attach");

    let new = NewSubscription {
        customer: c.id.clone(),
        items: vec![("price_seat".into(), 3), ("price_base".into(), 1)],
        trial_period_days: Some(14),
        default_payment_method: Some(pm.clone()),
        metadata: vec![("workspace_id".into(), "ws_1".into())],
    };
    let s = api
        .create_subscription("sub-1", &new)
        .await
        .expect("create");
    assert!(s.id.starts_with("sub_"));
    assert_eq!(
        (s.customer.as_str(), s.status.as_str()),
        (c.id.as_str(), "trialing")
    );
    assert_eq!(s.items.len(), 2);
    assert_eq!(
        (s.items[0].price.as_str(), s.items[0].quantity),
        ("price_seat", 3)
    );
    assert_eq!(
        (s.items[1].price.as_str(), s.items[1].quantity),
        ("price_base", 1)
    );
    let start = s.current_period_start.expect("period start");
    let end = s.current_period_end.expect("period end");
    assert_eq!(end - start, 14 * 86_400, "a trialing period is the trial");
    assert_eq!(s.trial_end, Some(end));
    assert!(!s.cancel_at_period_end);
    assert_eq!(
        s.metadata,
        vec![("workspace_id".to_string(), "ws_1".to_string())]
    );
    let r = last(&fake);
    assert_eq!(
        (r.path.as_str(), r.idempotency_key.as_deref()),
        ("/v1/subscriptions", Some("sub-1"))
    );
    assert_eq!(r.field("customer"), Some(c.id.as_str()));
    assert_eq!(r.field("items[0][price]"), Some("price_seat"));
    assert_eq!(r.field("items[0][quantity]"), Some("3"));
    assert_eq!(r.field("items[1][price]"), Some("price_base"));
    assert_eq!(r.field("trial_period_days"), Some("14"));
    assert_eq!(r.field("default_payment_method"), Some(pm.as_str()));
    assert_eq!(r.field("metadata[workspace_id]"), Some("ws_1"));
    assert_eq!(api.retrieve_subscription(&s.id).await.expect("read"), s);

    // What the worker reads from a webhook is what the client read.
    let object = fake.subscription(&s.id).expect("stored");
    assert_eq!(Subscription::from_event_object(&object).expect("parse"), s);
    let event: Value =
        serde_json::from_str(&fake.event("customer.subscription.created", object)).expect("event");
    assert_eq!(event["api_version"], "2026-09-30.endive");
    assert!(
        event["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("evt_"))
    );
    assert_eq!(
        Subscription::from_event_object(&event["data"]["object"]).expect("parse"),
        s
    );

    let seat = s.items[0].id.clone();
    let base = s.items[1].id.clone();
    let change = SubscriptionChange {
        items: vec![
            ItemChange {
                id: Some(seat.clone()),
                price: None,
                quantity: Some(5),
                deleted: false,
            },
            ItemChange {
                id: Some(base.clone()),
                price: None,
                quantity: None,
                deleted: true,
            },
            ItemChange {
                id: None,
                price: Some("price_addon".into()),
                quantity: Some(2),
                deleted: false,
            },
        ],
        proration_behavior: Some(Proration::AlwaysInvoice),
        cancel_at_period_end: Some(true),
    };
    let u = api
        .update_subscription("sub-1:change", &s.id, &change)
        .await
        .expect("update");
    assert!(u.cancel_at_period_end);
    let items: Vec<(&str, &str, u64)> = u
        .items
        .iter()
        .map(|i| (i.id.as_str(), i.price.as_str(), i.quantity))
        .collect();
    assert_eq!(items[0], (seat.as_str(), "price_seat", 5));
    assert_eq!((items[1].1, items[1].2), ("price_addon", 2));
    assert_eq!(items.len(), 2, "the base item is gone: {items:?}");
    let r = last(&fake);
    assert_eq!(r.path, format!("/v1/subscriptions/{}", s.id));
    assert_eq!(r.idempotency_key.as_deref(), Some("sub-1:change"));
    assert_eq!(r.field("items[0][id]"), Some(seat.as_str()));
    assert_eq!(r.field("items[0][quantity]"), Some("5"));
    assert_eq!(r.field("items[1][id]"), Some(base.as_str()));
    assert_eq!(r.field("items[1][deleted]"), Some("true"));
    assert_eq!(r.field("items[2][price]"), Some("price_addon"));
    assert_eq!(r.field("items[2][quantity]"), Some("2"));
    assert_eq!(r.field("proration_behavior"), Some("always_invoice"));
    assert_eq!(r.field("cancel_at_period_end"), Some("true"));

    fake.set_subscription(&s.id, |sub| sub["status"] = "past_due".into());
    assert_eq!(
        api.retrieve_subscription(&s.id).await.expect("read").status,
        "past_due"
    );

    let invoices = fake.invoices_for(&c.id);
    assert_eq!(invoices.len(), 1, "one invoice, for the creation");
    let id = invoices[0]["id"].as_str().expect("invoice id");
    let i = api.retrieve_invoice(id).await.expect("invoice");
    assert_eq!(i.id.as_deref(), Some(id));
    assert_eq!(
        (i.customer.as_str(), i.subscription.as_deref()),
        (c.id.as_str(), Some(s.id.as_str()))
    );
    assert_eq!(
        (i.status.as_deref(), i.total),
        (Some("paid"), 0),
        "the trial costs nothing"
    );
    assert_eq!(i.lines.len(), 2);
    assert_eq!(i.lines[0].price.as_deref(), Some("price_seat"));
    assert_eq!(Invoice::from_event_object(&invoices[0]).expect("parse"), i);
}

#[tokio::test]
async fn the_next_invoice_is_previewed() {
    let (fake, api) = setup().await;
    fake.set_price("price_seat", 1500);
    let c = api
        .create_customer("c", &fields("Ada"))
        .await
        .expect("customer");

    let e = api
        .preview_invoice(&c.id)
        .await
        .expect_err("nothing to preview");
    assert_refused(e, 400, Some("invoice_upcoming_none"));

    let new = NewSubscription {
        customer: c.id.clone(),
        items: vec![("price_seat".into(), 3)],
        ..Default::default()
    };
    let s = api.create_subscription("sub", &new).await.expect("create");
    assert_eq!(s.status, "active");
    let first = &fake.invoices_for(&c.id)[0];
    assert_eq!(
        (first["total"].as_i64(), first["status"].as_str()),
        (Some(4500), Some("paid"))
    );

    let p = api.preview_invoice(&c.id).await.expect("preview");
    assert_eq!(p.id, None);
    assert_eq!(
        (p.customer.as_str(), p.subscription.as_deref()),
        (c.id.as_str(), Some(s.id.as_str()))
    );
    assert_eq!(
        (p.amount_due, p.total, p.currency.as_str()),
        (4500, 4500, "usd")
    );
    assert_eq!(p.lines.len(), 1);
    assert_eq!((p.lines[0].amount, p.lines[0].quantity), (4500, Some(3)));
    assert_eq!(p.period_start, s.current_period_end.expect("period end"));
    let r = last(&fake);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/invoices/create_preview")
    );
    assert_eq!(r.field("customer"), Some(c.id.as_str()));
    assert_eq!(r.idempotency_key, None, "a preview changes nothing");
    assert_eq!(fake.invoices_for(&c.id).len(), 1, "a preview is not stored");
}

#[tokio::test]
async fn meter_events_carry_customer_value_identifier_and_time() {
    let (fake, api) = setup().await;
    api.create_meter_event(
        "meter-1",
        "api_requests",
        "cus_123",
        25,
        "usage-1",
        1_750_000_000,
    )
    .await
    .expect("meter event");
    let r = last(&fake);
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/billing/meter_events")
    );
    assert_eq!(r.idempotency_key.as_deref(), Some("meter-1"));
    assert_eq!(r.field("event_name"), Some("api_requests"));
    assert_eq!(r.field("payload[stripe_customer_id]"), Some("cus_123"));
    assert_eq!(r.field("payload[value]"), Some("25"));
    assert_eq!(r.field("identifier"), Some("usage-1"));
    assert_eq!(r.field("timestamp"), Some("1750000000"));
    let events = fake.meter_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["payload"]["value"], "25");
}

#[tokio::test]
async fn a_short_outage_is_retried_with_the_same_key_and_acts_once() {
    let (fake, api) = setup().await;
    fake.fail_next(2, 500);
    let c = api
        .create_customer("once", &fields("Ada"))
        .await
        .expect("after retries");
    let sent = fake.requests();
    assert_eq!(sent.len(), 3, "two failures, then success");
    assert!(
        sent.iter()
            .all(|r| r.idempotency_key.as_deref() == Some("once")
                && r.path == "/v1/customers"
                && r.field("name") == Some("Ada"))
    );
    assert_eq!(fake.count("POST", "/v1/customers"), 1);
    assert!(fake.customer(&c.id).is_some());

    // 429 and 409 are transient too.
    fake.fail_next(1, 429);
    api.retrieve_customer(&c.id).await.expect("after a 429");
    fake.fail_next(1, 409);
    api.retrieve_customer(&c.id).await.expect("after a 409");
    assert_eq!(fake.requests().len(), 7);
}

#[tokio::test]
async fn a_long_outage_is_unavailable_after_four_attempts() {
    let (fake, api) = setup().await;
    fake.fail_next(10, 503);
    let started = std::time::Instant::now();
    let e = api
        .create_customer("down", &fields("Ada"))
        .await
        .expect_err("outage");
    assert!(matches!(e, StripeError::Unavailable(_)), "{e:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let sent = fake.requests();
    assert_eq!(sent.len(), 4);
    assert!(
        sent.iter()
            .all(|r| r.idempotency_key.as_deref() == Some("down"))
    );
    assert_eq!(fake.count("POST", "/v1/customers"), 0);
}

#[tokio::test]
async fn refusals_are_not_retried() {
    let (fake, api) = setup().await;
    fake.fail_next(1, 400);
    let e = api
        .create_customer("bad", &fields("Ada"))
        .await
        .expect_err("refused");
    assert_refused(e, 400, None);
    assert_eq!(fake.requests().len(), 1);

    let e = api
        .retrieve_subscription("sub_missing")
        .await
        .expect_err("missing");
    let (message, param) = assert_refused(e, 404, Some("resource_missing"));
    assert!(message.contains("sub_missing"), "{message}");
    assert_eq!(param.as_deref(), Some("id"));
    assert_eq!(fake.requests().len(), 2);

    let e = api
        .attach_payment_method("attach", "pm_missing", "cus_missing")
        .await
        .expect_err("missing customer");
    let (_, param) = assert_refused(e, 400, Some("resource_missing"));
    assert_eq!(param.as_deref(), Some("customer"));
    assert_eq!(fake.requests().len(), 3);

    let e = StripeApi::new(KEY, Some(&fake.url()))
        .create_customer("", &fields("Ada"))
        .await
        .expect_err("an empty key is refused before sending");
    assert_refused(e, 400, Some("idempotency_key_invalid"));
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn the_same_key_creates_one_customer() {
    let (fake, api) = setup().await;
    let first = api
        .create_customer("ws_9:customer", &fields("Ada"))
        .await
        .expect("first");
    let again = api
        .create_customer("ws_9:customer", &fields("Ada"))
        .await
        .expect("again");
    assert_eq!(first, again);
    assert_eq!(fake.count("POST", "/v1/customers"), 1);
    assert_eq!(fake.requests().len(), 2);

    // The same key with other parameters is Stripe's idempotency_error, not a customer.
    let e = api
        .create_customer("ws_9:customer", &fields("Grace"))
        .await
        .expect_err("other parameters");
    assert_refused(e, 400, None);
    assert_eq!(fake.count("POST", "/v1/customers"), 1);
    let parsed =
        Customer::from_event_object(&fake.customer(&first.id).expect("stored")).expect("parse");
    assert_eq!(parsed, first);
}

#[tokio::test]
async fn an_unreachable_stripe_is_unavailable() {
    // A port that was free a moment ago: connections are refused.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let api = StripeApi::new(KEY, Some(&format!("http://{addr}")));
    let e = api
        .retrieve_customer("cus_1")
        .await
        .expect_err("unreachable");
    assert!(
        matches!(e, StripeError::Unavailable(ref m) if m.contains("network")),
        "{e:?}"
    );
}
