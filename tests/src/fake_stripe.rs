//! A local, in-memory Stripe for the tests: an HTTP server on `127.0.0.1:0` that answers
//! the endpoints our client calls with objects of the shapes Stripe sends (built from the
//! reference fixtures the parser tests use, every field kept, so async-stripe reads them),
//! and behaves like Stripe where our code depends on it:
//!
//! - an `Idempotency-Key` seen before on the same method and path replays the first 2xx
//!   answer (same status and body, header `Idempotent-Replayed: true`) with no second
//!   effect; the same key with other parameters or on another endpoint is a 400
//!   `idempotency_error`, as at Stripe;
//! - an unknown id in the path is a 404, an unknown id in a parameter a 400, both with
//!   Stripe's error body (`invalid_request_error`, `resource_missing`, `param`);
//! - a request without `Authorization: Bearer …` is a 401;
//! - subscriptions start `trialing` (the period is the trial) when `trial_period_days` is
//!   given, else `active` (the period is one month); items carry the periods (API version
//!   2025-03-31.basil and later); each new subscription gets its first invoice;
//! - attaching a payment method sets its `customer`; detaching clears it and the
//!   customer's default; deleting a customer cancels its subscriptions.
//!
//! `fail_next` simulates an outage: the next requests fail before any effect.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The reference Stripe objects (from `shared/reference/stripe/fixtures3.json`), shared
/// with the parser tests of `api::stripe`.
static FIXTURES: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../api/src/stripe/fixtures.json"))
        .expect("Stripe fixtures are JSON")
});

/// The API version of the events the fake makes.
pub const API_VERSION: &str = "2026-09-30.endive";

/// What a price costs per unit when the test did not say (`set_price`), in cents.
pub const DEFAULT_UNIT_AMOUNT: i64 = 2000;

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `GET`, `POST` or `DELETE`.
    pub method: String,
    /// The path, without the query (`/v1/customers/cus_…`).
    pub path: String,
    /// The form body (POST) or query (GET, DELETE), decoded, in order, keys in Stripe's
    /// bracket notation (`items[0][price]`, `metadata[k]`).
    pub form: Vec<(String, String)>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Stripe-Version` header (the API version the client reads).
    pub stripe_version: Option<String>,
}

impl Recorded {
    /// The value of form field `key`.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The running fake; it stops when dropped.
pub struct FakeStripe {
    url: String,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    /// Requests that took effect: (method, path).
    effects: Vec<(String, String)>,
    fail: Option<(usize, u16)>,
    /// Every request fails with this status until cleared (`set_down`).
    down: Option<u16>,
    /// How long every answer takes (`set_latency`).
    latency: std::time::Duration,
    /// Reads of the first id answer the object of the second, once (`answer_instead`).
    instead: Option<(String, String)>,
    /// (key) -> (method, path, form, status, body) of the first answer.
    idempotent: HashMap<String, Stored>,
    customers: HashMap<String, Value>,
    deleted_customers: Vec<String>,
    payment_methods: HashMap<String, Value>,
    setup_intents: HashMap<String, Value>,
    subscriptions: HashMap<String, Value>,
    /// In creation order.
    invoices: Vec<Value>,
    meter_events: Vec<Value>,
    prices: HashMap<String, i64>,
    invoice_numbers: HashMap<String, u32>,
}

struct Stored {
    method: String,
    path: String,
    form: Vec<(String, String)>,
    status: u16,
    body: Value,
}

type Answer = (u16, Value);

impl FakeStripe {
    /// Starts a fake on a free port of 127.0.0.1.
    pub async fn start() -> FakeStripe {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Stripe");
        let addr = listener.local_addr().expect("fake Stripe address");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeStripe {
            url: format!("http://{addr}"),
            state,
            server,
        }
    }

    /// Its base URL, `http://127.0.0.1:PORT` (what `StripeApi::new` takes as `api_base`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// An outage: every request fails with `status` (and no effect) until `set_down(None)`.
    pub fn set_down(&self, status: Option<u16>) {
        self.lock().down = status;
    }

    /// Every answer (failures included) comes `latency` after its request.
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.lock().latency = latency;
    }

    /// The next read (GET) of the object `asked` answers the object `other` of the same
    /// collection instead, as a misrouted or mixed-up answer would.
    pub fn answer_instead(&self, asked: &str, other: &str) {
        self.lock().instead = Some((asked.to_string(), other.to_string()));
    }

    /// Every request received, in order (failed and replayed ones included).
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The next `n` requests get `status` with Stripe's error body, and no effect.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.lock().fail = (n > 0).then_some((n, status));
    }

    /// A card payment method as Stripe.js creates it in the browser (not attached to any
    /// customer); returns its `pm_…` id.
    pub fn create_card(&self, brand: &str, last4: &str, exp_month: u32, exp_year: u32) -> String {
        let id = new_id("pm");
        let mut pm = fixture("payment_method");
        pm["id"] = json!(id);
        pm["created"] = json!(now());
        pm["customer"] = Value::Null;
        pm["metadata"] = json!({});
        let card = &mut pm["card"];
        card["brand"] = json!(brand);
        card["display_brand"] = json!(brand);
        card["last4"] = json!(last4);
        card["exp_month"] = json!(exp_month);
        card["exp_year"] = json!(exp_year);
        card["fingerprint"] = json!(new_id("fp"));
        card["networks"]["available"] = json!([brand]);
        card["wallet"] = Value::Null;
        card["generated_from"] = Value::Null;
        self.lock().payment_methods.insert(id.clone(), pm);
        id
    }

    /// The unit amount (cents per month) of price `price`; prices the test did not set
    /// cost [`DEFAULT_UNIT_AMOUNT`].
    pub fn set_price(&self, price: &str, unit_amount: i64) {
        self.lock().prices.insert(price.to_string(), unit_amount);
    }

    /// A customer as it is now (a deleted one: `{"id", "object", "deleted": true}`).
    pub fn customer(&self, id: &str) -> Option<Value> {
        let s = self.lock();
        s.customers.get(id).cloned().or_else(|| {
            s.deleted_customers
                .iter()
                .any(|d| d == id)
                .then(|| deleted_customer(id))
        })
    }

    /// A payment method as it is now.
    pub fn payment_method(&self, id: &str) -> Option<Value> {
        self.lock().payment_methods.get(id).cloned()
    }

    /// A subscription as it is now.
    pub fn subscription(&self, id: &str) -> Option<Value> {
        self.lock().subscriptions.get(id).cloned()
    }

    /// Changes a subscription as Stripe would on its own (e.g. `status` to `past_due`).
    pub fn set_subscription(&self, id: &str, f: impl FnOnce(&mut Value)) {
        let mut s = self.lock();
        let sub = s
            .subscriptions
            .get_mut(id)
            .unwrap_or_else(|| panic!("the fake Stripe has no subscription {id}"));
        f(sub);
    }

    /// Changes an invoice as Stripe would on its own (e.g. `status` to `paid`).
    pub fn set_invoice(&self, id: &str, f: impl FnOnce(&mut Value)) {
        let mut s = self.lock();
        let invoice = s
            .invoices
            .iter_mut()
            .find(|i| i["id"] == id)
            .unwrap_or_else(|| panic!("the fake Stripe has no invoice {id}"));
        f(invoice);
    }

    /// An invoice as it is now.
    pub fn invoice(&self, id: &str) -> Option<Value> {
        self.lock().invoices.iter().find(|i| i["id"] == id).cloned()
    }

    /// The invoices of a customer, oldest first.
    pub fn invoices_for(&self, customer: &str) -> Vec<Value> {
        self.lock()
            .invoices
            .iter()
            .filter(|i| i["customer"] == customer)
            .cloned()
            .collect()
    }

    /// The meter events received, oldest first.
    pub fn meter_events(&self) -> Vec<Value> {
        self.lock().meter_events.clone()
    }

    /// Requests that took effect (answered 2xx, not replayed, not failed by `fail_next`)
    /// with `method` and a path starting with `path_prefix`: `count("POST",
    /// "/v1/customers")` counts customers created and updated, `count("POST",
    /// "/v1/billing/meter_events")` meter events recorded.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.lock()
            .effects
            .iter()
            .filter(|(m, p)| m.eq_ignore_ascii_case(method) && p.starts_with(path_prefix))
            .count()
    }

    /// A webhook event of `event_type` about `object`, as Stripe delivers it (JSON text,
    /// unique `evt_…` id, `created` now, API version [`API_VERSION`]).
    pub fn event(&self, event_type: &str, object: Value) -> String {
        let mut event = fixture("event");
        event["id"] = json!(new_id("evt"));
        event["api_version"] = json!(API_VERSION);
        event["created"] = json!(now());
        event["data"] = json!({"object": object});
        event["pending_webhooks"] = json!(1);
        event["type"] = json!(event_type);
        event.to_string()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let form = if method == Method::POST {
        decode_form(&String::from_utf8_lossy(&body))
    } else {
        decode_form(uri.query().unwrap_or(""))
    };
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path().to_string(),
        form,
        idempotency_key: header("idempotency-key"),
        authorization: header("authorization"),
        stripe_version: header("stripe-version"),
    };
    let latency = state.lock().unwrap_or_else(|p| p.into_inner()).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.requests.push(recorded.clone());
    let mut asked = recorded.clone();
    if method == Method::GET
        && let Some((from, to)) = s.instead.clone()
        && let Some(prefix) = asked.path.strip_suffix(from.as_str())
    {
        asked.path = format!("{prefix}{to}");
        s.instead = None;
    }
    let (status, body, replayed) = match s.down {
        Some(status) => (status, outage(status), false),
        None => answer(&mut s, &asked),
    };
    drop(s);
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response();
    let h = response.headers_mut();
    if let Ok(v) = new_id("req").parse() {
        h.insert("request-id", v);
    }
    if let Some(key) = recorded
        .idempotency_key
        .as_deref()
        .and_then(|k| k.parse().ok())
    {
        h.insert("idempotency-key", key);
    }
    if replayed {
        h.insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    response
}

/// The answer to one request: (status, body, replayed).
fn answer(s: &mut State, r: &Recorded) -> (u16, Value, bool) {
    if let Some((n, status)) = s.fail {
        s.fail = (n > 1).then_some((n - 1, status));
        return (status, outage(status), false);
    }
    if !r
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7)
    {
        let (status, body) = error(
            401,
            "invalid_request_error",
            None,
            "You did not provide an API key.",
            None,
        );
        return (status, body, false);
    }
    if let Some(key) = &r.idempotency_key
        && let Some(first) = s.idempotent.get(key)
    {
        if first.method == r.method && first.path == r.path && first.form == r.form {
            return (first.status, first.body.clone(), true);
        }
        let (status, body) = error(
            400,
            "idempotency_error",
            None,
            &format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
            ),
            None,
        );
        return (status, body, false);
    }
    let form = Form(&r.form);
    let (status, body) = route(s, &r.method, &r.path, &form);
    if (200..300).contains(&status) {
        s.effects.push((r.method.clone(), r.path.clone()));
        if let Some(key) = &r.idempotency_key {
            s.idempotent.insert(
                key.clone(),
                Stored {
                    method: r.method.clone(),
                    path: r.path.clone(),
                    form: r.form.clone(),
                    status,
                    body: body.clone(),
                },
            );
        }
    }
    (status, body, false)
}

fn route(s: &mut State, method: &str, path: &str, form: &Form) -> Answer {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["v1", "customers"]) => create_customer(s, form),
        ("POST", ["v1", "customers", id]) => update_customer(s, id, form),
        ("DELETE", ["v1", "customers", id]) => delete_customer(s, id),
        ("GET", ["v1", "customers", id]) => match s.customers.get(*id) {
            Some(c) => (200, c.clone()),
            None if s.deleted_customers.iter().any(|d| d == id) => (200, deleted_customer(id)),
            None => missing("customer", id, "id"),
        },
        ("POST", ["v1", "setup_intents"]) => create_setup_intent(s, form),
        ("POST", ["v1", "payment_methods", id, "attach"]) => attach(s, id, form),
        ("POST", ["v1", "payment_methods", id, "detach"]) => detach(s, id),
        ("GET", ["v1", "payment_methods", id]) => match s.payment_methods.get(*id) {
            Some(pm) => (200, pm.clone()),
            None => missing("payment_method", id, "id"),
        },
        ("POST", ["v1", "subscriptions"]) => create_subscription(s, form),
        ("POST", ["v1", "subscriptions", id]) => update_subscription(s, id, form),
        ("GET", ["v1", "subscriptions", id]) => match s.subscriptions.get(*id) {
            Some(sub) => (200, sub.clone()),
            None => missing("subscription", id, "id"),
        },
        ("POST", ["v1", "invoices", "create_preview"]) => preview_invoice(s, form),
        ("GET", ["v1", "invoices", id]) => match s.invoices.iter().find(|i| i["id"] == *id) {
            Some(i) => (200, i.clone()),
            None => missing("invoice", id, "id"),
        },
        ("POST", ["v1", "billing", "meter_events"]) => create_meter_event(s, form),
        _ => error(
            404,
            "invalid_request_error",
            None,
            &format!("Unrecognized request URL ({method}: {path})."),
            None,
        ),
    }
}

fn create_customer(s: &mut State, form: &Form) -> Answer {
    let id = new_id("cus");
    let mut c = fixture("customer");
    c["id"] = json!(id);
    c["created"] = json!(now());
    c["discount"] = Value::Null;
    c["shipping"] = Value::Null;
    c["currency"] = Value::Null;
    c["invoice_prefix"] = json!(uuid::Uuid::new_v4().simple().to_string()[..8].to_uppercase());
    if let Some(pm) = form.get("invoice_settings[default_payment_method]") {
        return error(
            400,
            "invalid_request_error",
            Some("resource_missing"),
            &format!("The customer does not have a payment method with the ID {pm}."),
            Some("invoice_settings[default_payment_method]"),
        );
    }
    apply_customer_fields(&mut c, form);
    s.customers.insert(id, c.clone());
    (200, c)
}

fn update_customer(s: &mut State, id: &str, form: &Form) -> Answer {
    if !s.customers.contains_key(id) {
        return missing("customer", id, "id");
    }
    if let Some(pm) = form.get("invoice_settings[default_payment_method]") {
        let attached = s
            .payment_methods
            .get(pm)
            .is_some_and(|p| p["customer"] == id);
        if !pm.is_empty() && !attached {
            return error(
                400,
                "invalid_request_error",
                Some("resource_missing"),
                &format!(
                    "The customer does not have a payment method with the ID {pm}. The payment method must be attached to the customer."
                ),
                Some("invoice_settings[default_payment_method]"),
            );
        }
    }
    let Some(c) = s.customers.get_mut(id) else {
        return missing("customer", id, "id");
    };
    apply_customer_fields(c, form);
    if let Some(pm) = form.get("invoice_settings[default_payment_method]") {
        c["invoice_settings"]["default_payment_method"] = nullable(pm);
    }
    (200, c.clone())
}

fn apply_customer_fields(c: &mut Value, form: &Form) {
    for field in ["name", "email", "phone", "description"] {
        if let Some(v) = form.get(field) {
            c[field] = nullable(v);
        }
    }
    for field in ["line1", "line2", "city", "state", "postal_code", "country"] {
        if let Some(v) = form.get(&format!("address[{field}]")) {
            if c["address"].is_null() {
                c["address"] = fixture("customer")["address"].clone();
            }
            c["address"][field] = nullable(v);
        }
    }
    merge_metadata(&mut c["metadata"], form);
}

fn delete_customer(s: &mut State, id: &str) -> Answer {
    if s.customers.remove(id).is_none() {
        return missing("customer", id, "id");
    }
    s.deleted_customers.push(id.to_string());
    let t = now();
    for sub in s.subscriptions.values_mut() {
        if sub["customer"] == id && sub["status"] != "canceled" {
            sub["status"] = json!("canceled");
            sub["canceled_at"] = json!(t);
            sub["ended_at"] = json!(t);
        }
    }
    (200, deleted_customer(id))
}

fn create_setup_intent(s: &mut State, form: &Form) -> Answer {
    let customer = form.get("customer");
    if let Some(c) = customer
        && !s.customers.contains_key(c)
    {
        return missing("customer", c, "customer");
    }
    let id = new_id("seti");
    let mut si = fixture("setup_intent");
    si["id"] = json!(id);
    si["client_secret"] = json!(format!("{id}_secret_{}", new_id("x")));
    si["created"] = json!(now());
    si["customer"] = json!(customer);
    si["last_setup_error"] = Value::Null;
    si["next_action"] = Value::Null;
    si["payment_method_configuration_details"] = Value::Null;
    si["usage"] = json!(form.get("usage").unwrap_or("off_session"));
    if let Some(enabled) = form.get("automatic_payment_methods[enabled]") {
        si["automatic_payment_methods"] = json!({
            "allow_redirects": form.get("automatic_payment_methods[allow_redirects]"),
            "enabled": enabled == "true",
        });
    } else {
        si["automatic_payment_methods"] = Value::Null;
    }
    merge_metadata(&mut si["metadata"], form);
    s.setup_intents.insert(id, si.clone());
    (200, si)
}

fn attach(s: &mut State, id: &str, form: &Form) -> Answer {
    let Some(customer) = form.get("customer") else {
        return error(
            400,
            "invalid_request_error",
            Some("parameter_missing"),
            "Missing required param: customer.",
            Some("customer"),
        );
    };
    if !s.customers.contains_key(customer) {
        return missing("customer", customer, "customer");
    }
    let Some(pm) = s.payment_methods.get_mut(id) else {
        return missing("payment_method", id, "payment_method");
    };
    if !pm["customer"].is_null() && pm["customer"] != customer {
        return error(
            400,
            "invalid_request_error",
            Some("payment_method_unexpected_state"),
            "The payment method you provided has already been attached to a customer.",
            None,
        );
    }
    pm["customer"] = json!(customer);
    (200, pm.clone())
}

fn detach(s: &mut State, id: &str) -> Answer {
    let Some(pm) = s.payment_methods.get_mut(id) else {
        return missing("payment_method", id, "payment_method");
    };
    let Some(customer) = pm["customer"].as_str().map(str::to_string) else {
        return error(
            400,
            "invalid_request_error",
            Some("payment_method_unexpected_state"),
            &format!("The payment method {id} is not attached to a customer."),
            None,
        );
    };
    pm["customer"] = Value::Null;
    let out = pm.clone();
    if let Some(c) = s.customers.get_mut(&customer)
        && c["invoice_settings"]["default_payment_method"] == id
    {
        c["invoice_settings"]["default_payment_method"] = Value::Null;
    }
    for sub in s.subscriptions.values_mut() {
        if sub["default_payment_method"] == id {
            sub["default_payment_method"] = Value::Null;
        }
    }
    (200, out)
}

fn create_subscription(s: &mut State, form: &Form) -> Answer {
    let Some(customer) = form.get("customer") else {
        return error(
            400,
            "invalid_request_error",
            Some("parameter_missing"),
            "Missing required param: customer.",
            Some("customer"),
        );
    };
    if !s.customers.contains_key(customer) {
        return missing("customer", customer, "customer");
    }
    let items = form.items();
    if items.is_empty() {
        return error(
            400,
            "invalid_request_error",
            Some("parameter_missing"),
            "Missing required param: items.",
            Some("items"),
        );
    }
    if let Some(pm) = form.get("default_payment_method")
        && !s
            .payment_methods
            .get(pm)
            .is_some_and(|p| p["customer"] == customer)
    {
        return missing("payment_method", pm, "default_payment_method");
    }
    let id = new_id("sub");
    let t = now();
    let trial_days = form
        .get("trial_period_days")
        .and_then(|d| d.parse::<i64>().ok())
        .filter(|d| *d > 0);
    let (status, period_end, trial) = match trial_days {
        Some(days) => ("trialing", t + days * 86_400, true),
        None => ("active", month_after(t), false),
    };
    let mut sub = fixture("subscription");
    let mut data = Vec::new();
    for item in &items {
        let Some(price) = item.get("price") else {
            return error(
                400,
                "invalid_request_error",
                Some("parameter_missing"),
                "Each item needs a price.",
                Some("items[0][price]"),
            );
        };
        let quantity = item
            .get("quantity")
            .and_then(|q| q.parse::<u64>().ok())
            .unwrap_or(1);
        data.push(subscription_item(s, &id, price, quantity, t, period_end));
    }
    sub["id"] = json!(id);
    sub["customer"] = json!(customer);
    sub["status"] = json!(status);
    sub["created"] = json!(t);
    sub["start_date"] = json!(t);
    sub["billing_cycle_anchor"] = json!(if trial { period_end } else { t });
    sub["billing_cycle_anchor_config"] = Value::Null;
    sub["billing_schedules"] = json!([]);
    sub["billing_thresholds"] = Value::Null;
    sub["cancel_at"] = Value::Null;
    sub["canceled_at"] = Value::Null;
    sub["ended_at"] = Value::Null;
    sub["cancel_at_period_end"] = json!(false);
    sub["default_payment_method"] = json!(form.get("default_payment_method"));
    sub["items"]["data"] = json!(data);
    sub["items"]["url"] = json!(format!("/v1/subscription_items?subscription={id}"));
    sub["metadata"] = json!({});
    merge_metadata(&mut sub["metadata"], form);
    sub["next_pending_invoice_item_invoice"] = Value::Null;
    sub["pause_collection"] = Value::Null;
    sub["pending_invoice_item_interval"] = Value::Null;
    sub["pending_update"] = Value::Null;
    sub["transfer_data"] = Value::Null;
    sub["trial_start"] = if trial { json!(t) } else { Value::Null };
    sub["trial_end"] = if trial {
        json!(period_end)
    } else {
        Value::Null
    };
    let invoice = subscription_invoice(s, &sub, "subscription_create");
    sub["latest_invoice"] = invoice["id"].clone();
    s.invoices.push(invoice);
    s.subscriptions.insert(id, sub.clone());
    (200, sub)
}

fn update_subscription(s: &mut State, id: &str, form: &Form) -> Answer {
    let Some(mut sub) = s.subscriptions.get(id).cloned() else {
        return missing("subscription", id, "id");
    };
    if sub["status"] == "canceled" {
        return error(
            400,
            "invalid_request_error",
            None,
            &format!(
                "A canceled subscription can only update its cancellation_details and metadata ({id})."
            ),
            None,
        );
    }
    let t = now();
    let first = &sub["items"]["data"][0];
    let start = first["current_period_start"].as_i64().unwrap_or(t);
    let end = first["current_period_end"].as_i64().unwrap_or(t);
    let mut data: Vec<Value> = sub["items"]["data"].as_array().cloned().unwrap_or_default();
    for (n, change) in form.items().iter().enumerate() {
        let quantity = change.get("quantity").and_then(|q| q.parse::<u64>().ok());
        match change.get("id") {
            Some(item_id) => {
                let Some(pos) = data.iter().position(|i| i["id"] == item_id) else {
                    return missing("subscription_item", item_id, &format!("items[{n}][id]"));
                };
                if change.get("deleted") == Some("true") {
                    data.remove(pos);
                    continue;
                }
                if let Some(price) = change.get("price") {
                    let q = quantity.or(data[pos]["quantity"].as_u64()).unwrap_or(1);
                    let mut replaced = subscription_item(s, id, price, q, start, end);
                    replaced["id"] = data[pos]["id"].clone();
                    replaced["created"] = data[pos]["created"].clone();
                    data[pos] = replaced;
                } else if let Some(q) = quantity {
                    data[pos]["quantity"] = json!(q);
                }
            }
            None => {
                let Some(price) = change.get("price") else {
                    return error(
                        400,
                        "invalid_request_error",
                        Some("parameter_missing"),
                        "A new item needs a price.",
                        Some(&format!("items[{n}][price]")),
                    );
                };
                data.push(subscription_item(
                    s,
                    id,
                    price,
                    quantity.unwrap_or(1),
                    start,
                    end,
                ));
            }
        }
    }
    sub["items"]["data"] = json!(data);
    if let Some(cancel) = form.get("cancel_at_period_end") {
        let cancel = cancel == "true";
        sub["cancel_at_period_end"] = json!(cancel);
        sub["cancel_at"] = if cancel { json!(end) } else { Value::Null };
        sub["canceled_at"] = if cancel { json!(t) } else { Value::Null };
    }
    if let Some(pm) = form.get("default_payment_method") {
        sub["default_payment_method"] = nullable(pm);
    }
    merge_metadata(&mut sub["metadata"], form);
    s.subscriptions.insert(id.to_string(), sub.clone());
    (200, sub)
}

fn subscription_item(
    s: &State,
    subscription: &str,
    price: &str,
    quantity: u64,
    start: i64,
    end: i64,
) -> Value {
    let mut item = fixture("subscription")["items"]["data"][0].clone();
    let unit = s.unit_amount(price);
    item["id"] = json!(new_id("si"));
    item["created"] = json!(start);
    item["subscription"] = json!(subscription);
    item["quantity"] = json!(quantity);
    item["current_period_start"] = json!(start);
    item["current_period_end"] = json!(end);
    item["billing_thresholds"] = Value::Null;
    item["metadata"] = json!({});
    let p = &mut item["price"];
    p["id"] = json!(price);
    p["unit_amount"] = json!(unit);
    p["unit_amount_decimal"] = json!(unit.to_string());
    p["custom_unit_amount"] = Value::Null;
    p["transform_quantity"] = Value::Null;
    let product = p["product"].clone();
    // A recurring price is also a plan with the same id.
    let plan = &mut item["plan"];
    plan["id"] = json!(price);
    plan["amount"] = json!(unit);
    plan["amount_decimal"] = json!(unit.to_string());
    plan["billing_scheme"] = json!("per_unit");
    plan["created"] = json!(start);
    plan["currency"] = json!("usd");
    plan["interval_count"] = json!(1);
    plan["livemode"] = json!(false);
    plan["metadata"] = json!({});
    plan["product"] = product;
    plan["transform_usage"] = Value::Null;
    item
}

/// The invoice Stripe draws for `sub` (its first, or its next as a preview).
fn subscription_invoice(s: &mut State, sub: &Value, reason: &str) -> Value {
    let id = new_id("in");
    let customer = sub["customer"].as_str().unwrap_or_default().to_string();
    let trialing = sub["status"] == "trialing";
    let mut invoice = fixture("invoice");
    let mut lines = Vec::new();
    let mut total = 0;
    for item in sub["items"]["data"].as_array().into_iter().flatten() {
        let price = item["price"]["id"].as_str().unwrap_or_default();
        let quantity = item["quantity"].as_i64().unwrap_or(1);
        let unit = if trialing { 0 } else { s.unit_amount(price) };
        let amount = unit * quantity;
        total += amount;
        let mut line = fixture("invoice")["lines"]["data"][0].clone();
        line["id"] = json!(new_id("il"));
        line["invoice"] = json!(id);
        line["amount"] = json!(amount);
        line["subtotal"] = json!(amount);
        line["quantity"] = json!(quantity);
        line["description"] = json!(if trialing {
            format!("Trial period for {price}")
        } else {
            format!(
                "{quantity} × {price} (at ${:.2} / month)",
                unit as f64 / 100.0
            )
        });
        line["period"] = json!({
            "start": item["current_period_start"],
            "end": item["current_period_end"],
        });
        line["parent"] = json!({
            "type": "subscription_item_details",
            "invoice_item_details": null,
            "subscription_item_details": {
                "invoice_item": null,
                "proration": false,
                "proration_details": {"credited_items": null},
                "subscription": sub["id"],
                "subscription_item": item["id"],
            },
        });
        line["pricing"] = json!({
            "type": "price_details",
            "price_details": {"price": price, "product": item["price"]["product"]},
            "unit_amount_decimal": unit.to_string(),
        });
        lines.push(line);
    }
    let t = now();
    let first = &sub["items"]["data"][0];
    let number = {
        let n = s.invoice_numbers.entry(customer.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let prefix = s
        .customers
        .get(&customer)
        .and_then(|c| c["invoice_prefix"].as_str())
        .unwrap_or("FAKE")
        .to_string();
    invoice["id"] = json!(id);
    invoice["customer"] = json!(customer);
    invoice["created"] = json!(t);
    invoice["effective_at"] = json!(t);
    invoice["due_date"] = Value::Null;
    invoice["next_payment_attempt"] = Value::Null;
    invoice["webhooks_delivered_at"] = json!(t);
    invoice["period_start"] = first["current_period_start"].clone();
    invoice["period_end"] = first["current_period_start"].clone();
    invoice["billing_reason"] = json!(reason);
    invoice["status"] = json!("paid");
    invoice["paid"] = json!(true);
    invoice["attempted"] = json!(true);
    invoice["attempt_count"] = json!(i64::from(total > 0));
    invoice["amount_due"] = json!(total);
    invoice["amount_paid"] = json!(total);
    invoice["amount_remaining"] = json!(0);
    invoice["amount_overpaid"] = json!(0);
    invoice["subtotal"] = json!(total);
    invoice["subtotal_excluding_tax"] = json!(total);
    invoice["total"] = json!(total);
    invoice["total_excluding_tax"] = json!(total);
    invoice["starting_balance"] = json!(0);
    invoice["ending_balance"] = json!(0);
    invoice["number"] = json!(format!("{prefix}-{number:04}"));
    invoice["hosted_invoice_url"] = json!(format!("https://invoice.stripe.com/i/fake/{id}"));
    invoice["invoice_pdf"] = json!(format!("https://pay.stripe.com/invoice/fake/{id}/pdf"));
    invoice["default_payment_method"] = sub["default_payment_method"].clone();
    invoice["from_invoice"] = Value::Null;
    invoice["last_finalization_error"] = Value::Null;
    invoice["shipping_cost"] = Value::Null;
    invoice["shipping_details"] = Value::Null;
    invoice["customer_shipping"] = Value::Null;
    invoice["status_transitions"] = json!({
        "finalized_at": t, "marked_uncollectible_at": null, "paid_at": t, "voided_at": null,
    });
    invoice["parent"] = json!({
        "type": "subscription_details",
        "quote_details": null,
        "subscription_details": {"metadata": sub["metadata"], "subscription": sub["id"]},
    });
    invoice["lines"]["data"] = json!(lines);
    invoice["lines"]["url"] = json!(format!("/v1/invoices/{id}/lines"));
    invoice
}

fn preview_invoice(s: &mut State, form: &Form) -> Answer {
    let Some(customer) = form.get("customer") else {
        return error(
            400,
            "invalid_request_error",
            Some("parameter_missing"),
            "Missing required param: customer.",
            Some("customer"),
        );
    };
    if !s.customers.contains_key(customer) {
        return missing("customer", customer, "customer");
    }
    let Some(sub) = s
        .subscriptions
        .values()
        .filter(|sub| {
            sub["customer"] == customer
                && sub["status"] != "canceled"
                && sub["cancel_at_period_end"] != true
        })
        .max_by_key(|sub| sub["created"].as_i64())
        .cloned()
    else {
        return error(
            400,
            "invalid_request_error",
            Some("invoice_upcoming_none"),
            &format!("No upcoming invoices for customer: {customer}"),
            None,
        );
    };
    // The next invoice bills the period after the current one, at full price.
    let mut next = sub.clone();
    next["status"] = json!("active");
    let end = sub["items"]["data"][0]["current_period_end"]
        .as_i64()
        .unwrap_or_else(now);
    for item in next["items"]["data"].as_array_mut().into_iter().flatten() {
        item["current_period_start"] = json!(end);
        item["current_period_end"] = json!(month_after(end));
    }
    let mut invoice = subscription_invoice(s, &next, "upcoming");
    // A preview is nothing yet: no id, no number, not paid.
    if let Some(n) = s.invoice_numbers.get_mut(customer) {
        *n -= 1;
    }
    let total = invoice["total"].clone();
    invoice["id"] = Value::Null;
    invoice["number"] = Value::Null;
    invoice["status"] = json!("draft");
    invoice["paid"] = json!(false);
    invoice["attempted"] = json!(false);
    invoice["attempt_count"] = json!(0);
    invoice["amount_paid"] = json!(0);
    invoice["amount_remaining"] = total;
    invoice["hosted_invoice_url"] = Value::Null;
    invoice["invoice_pdf"] = Value::Null;
    invoice["created"] = json!(end);
    invoice["period_start"] = json!(end);
    invoice["period_end"] = json!(end);
    invoice["status_transitions"] = json!({
        "finalized_at": null, "marked_uncollectible_at": null, "paid_at": null, "voided_at": null,
    });
    for line in invoice["lines"]["data"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        line["invoice"] = Value::Null;
    }
    invoice["lines"]["url"] = json!("/v1/invoices/upcoming/lines");
    (200, invoice)
}

fn create_meter_event(s: &mut State, form: &Form) -> Answer {
    let Some(event_name) = form.get("event_name") else {
        return error(
            400,
            "invalid_request_error",
            Some("parameter_missing"),
            "Missing required param: event_name.",
            Some("event_name"),
        );
    };
    let payload: serde_json::Map<String, Value> = form
        .0
        .iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix("payload[")?.strip_suffix(']')?;
            Some((key.to_string(), json!(v)))
        })
        .collect();
    if !payload.contains_key("stripe_customer_id") || !payload.contains_key("value") {
        return error(
            400,
            "invalid_request_error",
            Some("parameter_missing"),
            "The payload needs stripe_customer_id and value.",
            Some("payload"),
        );
    }
    let mut event = fixture("billing.meter_event");
    event["created"] = json!(now());
    event["event_name"] = json!(event_name);
    event["identifier"] = json!(
        form.get("identifier")
            .map(str::to_string)
            .unwrap_or_else(|| new_id("mev"))
    );
    event["payload"] = Value::Object(payload);
    event["timestamp"] = json!(
        form.get("timestamp")
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or_else(now)
    );
    s.meter_events.push(event.clone());
    (200, event)
}

impl State {
    fn unit_amount(&self, price: &str) -> i64 {
        self.prices
            .get(price)
            .copied()
            .unwrap_or(DEFAULT_UNIT_AMOUNT)
    }
}

/// A decoded form, keys in Stripe's bracket notation.
struct Form<'a>(&'a [(String, String)]);

impl Form<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `items[N][field]` as one item per N, in index order.
    fn items(&self) -> Vec<Item> {
        let mut items: std::collections::BTreeMap<usize, HashMap<String, String>> =
            Default::default();
        for (k, v) in self.0 {
            let Some(rest) = k.strip_prefix("items[") else {
                continue;
            };
            let Some((n, field)) = rest.split_once("][") else {
                continue;
            };
            let (Ok(n), Some(field)) = (n.parse::<usize>(), field.strip_suffix(']')) else {
                continue;
            };
            items
                .entry(n)
                .or_default()
                .insert(field.to_string(), v.clone());
        }
        items.into_values().map(Item).collect()
    }
}

/// The fields of one `items[N]`.
struct Item(HashMap<String, String>);

impl Item {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// `metadata[k]=v` sets a key, `metadata[k]=` removes it, `metadata=` removes them all.
fn merge_metadata(metadata: &mut Value, form: &Form) {
    if !metadata.is_object() {
        *metadata = json!({});
    }
    for (k, v) in form.0 {
        let key = k
            .strip_prefix("metadata[")
            .and_then(|r| r.strip_suffix(']'));
        match (key, metadata.as_object_mut()) {
            (None, _) if k == "metadata" && v.is_empty() => *metadata = json!({}),
            (Some(key), Some(m)) if v.is_empty() => {
                m.remove(key);
            }
            (Some(key), Some(m)) => {
                m.insert(key.to_string(), json!(v));
            }
            _ => {}
        }
    }
}

/// Splits and percent-decodes `a=1&b%5Bc%5D=2` (`+` is a space).
fn decode_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn fixture(name: &str) -> Value {
    FIXTURES[name].clone()
}

fn deleted_customer(id: &str) -> Value {
    let mut d = fixture("deleted_customer");
    d["id"] = json!(id);
    d
}

/// `""` is how Stripe's forms clear a field.
fn nullable(v: &str) -> Value {
    if v.is_empty() { Value::Null } else { json!(v) }
}

fn outage(status: u16) -> Value {
    match status {
        429 => json!({"error": {
            "type": "invalid_request_error", "code": "rate_limit",
            "message": "Too many requests hit the API too quickly.",
        }}),
        409 => json!({"error": {
            "type": "invalid_request_error", "code": "lock_timeout",
            "message": "This object cannot be accessed right now because another API request or Stripe process is currently accessing it.",
        }}),
        s if s >= 500 => json!({"error": {
            "type": "api_error",
            "message": "An unknown error occurred (the fake Stripe was told to fail).",
        }}),
        _ => json!({"error": {
            "type": "invalid_request_error",
            "message": "The fake Stripe was told to refuse this request.",
        }}),
    }
}

fn error(
    status: u16,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> Answer {
    let mut e = json!({"type": kind, "message": message});
    if let Some(code) = code {
        e["code"] = json!(code);
        e["doc_url"] = json!(format!(
            "https://stripe.com/docs/error-codes/{}",
            code.replace('_', "-")
        ));
    }
    if let Some(param) = param {
        e["param"] = json!(param);
    }
    (status, json!({ "error": e }))
}

/// Stripe's answer to an id that does not exist: 404 for the object of the path, 400 for
/// one named by a parameter.
fn missing(object: &str, id: &str, param: &str) -> Answer {
    let status = if param == "id" { 404 } else { 400 };
    error(
        status,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such {object}: '{id}'"),
        Some(param),
    )
}

fn new_id(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &random[..24])
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn month_after(t: i64) -> i64 {
    chrono::DateTime::from_timestamp(t, 0)
        .and_then(|d| d.checked_add_months(chrono::Months::new(1)))
        .map_or(t + 30 * 86_400, |d| d.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_stripe_forms() {
        assert_eq!(
            decode_form("items%5B0%5D%5Bprice%5D=price_1&name=Ada+Lovelace&email=a%40b.c&x="),
            vec![
                ("items[0][price]".to_string(), "price_1".to_string()),
                ("name".to_string(), "Ada Lovelace".to_string()),
                ("email".to_string(), "a@b.c".to_string()),
                ("x".to_string(), String::new()),
            ]
        );
        assert_eq!(percent_decode("%E2%9C%93%zz%4"), "✓%zz%4");
    }

    #[test]
    fn reads_items_in_index_order() {
        let pairs = decode_form(
            "items[1][price]=b&items[0][price]=a&items[0][quantity]=3&items[10][deleted]=true",
        );
        let items = Form(&pairs).items();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].get("price"), Some("a"));
        assert_eq!(items[0].get("quantity"), Some("3"));
        assert_eq!(items[1].get("price"), Some("b"));
        assert_eq!(items[2].get("deleted"), Some("true"));
    }
}
