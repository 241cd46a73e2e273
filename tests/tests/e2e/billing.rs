//! Billing: accounts per mode, payment methods, subscriptions, pools in the limit engine,
//! recovery from Stripe outages, and the webhook story, against the fake Stripe.

use serde_json::{Value, json};
use tests::fake_stripe::FakeStripe;
use tests::{TestApp, assert_code, assert_ok};

pub(crate) const PRICES: [(&str, &str); 5] = [
    ("STRIPE_PRICE_STARTER", "price_starter_monthly"),
    ("STRIPE_PRICE_ENTERPRISE", "price_enterprise_monthly"),
    ("STRIPE_PRICE_USERS", "price_users_unit"),
    ("STRIPE_PRICE_LOCATIONS", "price_locations_unit"),
    ("STRIPE_PRICE_SSO_CONNECTIONS", "price_sso_unit"),
];

/// A server whose Stripe is `fake`.
pub(crate) async fn app_with(fake: &FakeStripe) -> TestApp {
    app_with_env(fake, &[]).await
}

/// A server whose Stripe is `fake`, with `extra` configuration.
pub(crate) async fn app_with_env(fake: &FakeStripe, extra: &[(&str, &str)]) -> TestApp {
    let mut env: std::collections::HashMap<String, String> = PRICES
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.insert("STRIPE_SECRET_KEY".into(), "sk_test_fake_0123456789".into());
    env.insert(
        "STRIPE_PUBLISHABLE_KEY".into(),
        "pk_test_fake_0123456789".into(),
    );
    env.insert("STRIPE_API_BASE".into(), fake.url());
    env.insert(
        "STRIPE_WEBHOOK_SECRET".into(),
        super::webhooks::SECRET.to_string(),
    );
    env.insert("STRIPE_RECOVERY_DELAY_SECS".into(), "1".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    TestApp::with(tests::Options { env }).await
}

pub(crate) async fn workspace(app: &TestApp, token: &str, mode: &str) -> String {
    let r = app
        .gql(
            token,
            "mutation($m: BillingMode!) { createWorkspace(input: {name: \"Billing\", billingMode: $m}) { workspace { id } } }",
            json!({"m": mode}),
        )
        .await;
    r["data"]["createWorkspace"]["workspace"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("createWorkspace: {r}"))
        .to_string()
}

const ACCOUNT: &str = "mutation($w: ID!, $n: String!, $c: String, $k: String) {
  createBillingAccount(input: {workspaceId: $w, name: $n, email: \"billing@example.com\", currency: $c,
                               address: {country: \"us\", city: \"Springfield\"}, idempotencyKey: $k}) {
    billingAccount { id stripeCustomerId name email currency address { country city } }
  }
}";

pub(crate) async fn try_account(
    app: &TestApp,
    token: &str,
    ws: &str,
    name: &str,
    key: Option<&str>,
) -> Value {
    app.gql(
        token,
        ACCOUNT,
        json!({"w": ws, "n": name, "c": "USD", "k": key}),
    )
    .await
}

pub(crate) async fn account(app: &TestApp, token: &str, ws: &str, name: &str) -> String {
    let r = try_account(app, token, ws, name, None).await;
    r["data"]["createBillingAccount"]["billingAccount"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("createBillingAccount: {r}"))
        .to_string()
}

const SUBSCRIBE: &str = "mutation($a: ID!, $p: Plan!, $q: [ResourceQuantityInput!]!) {
  createSubscription(input: {billingAccountId: $a, plan: $p, quantities: $q, metadata: [{key: \"team\", value: \"ops\"}]}) {
    subscription { id stripeSubscriptionId status plan quantities { resource quantity } currentPeriodEnd cancelAtPeriodEnd metadata { key value } }
  }
}";

pub(crate) async fn try_subscribe(
    app: &TestApp,
    token: &str,
    account: &str,
    plan: &str,
    q: Value,
) -> Value {
    app.gql(token, SUBSCRIBE, json!({"a": account, "p": plan, "q": q}))
        .await
}

pub(crate) async fn subscribe(
    app: &TestApp,
    token: &str,
    account: &str,
    plan: &str,
    q: Value,
) -> Value {
    let r = try_subscribe(app, token, account, plan, q).await;
    assert_ok(&r);
    r["data"]["createSubscription"]["subscription"].clone()
}

pub(crate) async fn attach(app: &TestApp, token: &str, account: &str, pm: &str) -> Value {
    app.gql(
        token,
        "mutation($a: ID!, $p: String!) { attachPaymentMethod(input: {billingAccountId: $a, paymentMethodId: $p}) {
            billingAccount { paymentMethods { id stripePaymentMethodId brand last4 expMonth expYear isDefault } } } }",
        json!({"a": account, "p": pm}),
    )
    .await
}

fn quantity(sub: &Value, resource: &str) -> i64 {
    sub["quantities"]
        .as_array()
        .and_then(|q| q.iter().find(|e| e["resource"] == resource))
        .and_then(|e| e["quantity"].as_i64())
        .unwrap_or_else(|| panic!("no {resource} in {sub}"))
}

#[tokio::test]
async fn accounts_create_stripe_customers_within_the_modes_caps() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let single = workspace(&app, &owner, "SINGLE").await;
    let r = try_account(&app, &owner, &single, "Main", None).await;
    assert_ok(&r);
    let a = &r["data"]["createBillingAccount"]["billingAccount"];
    let customer = a["stripeCustomerId"].as_str().expect("customer id");
    assert!(customer.starts_with("cus_"), "{a}");
    assert_eq!(a["currency"], "usd", "currencies come back lower case");
    assert_eq!(a["address"]["country"], "US");
    // The Stripe customer has the account's fields and ids in its metadata.
    let c = fake
        .customer(customer)
        .expect("the customer exists in Stripe");
    assert_eq!(c["email"], "billing@example.com");
    assert_eq!(c["metadata"]["workspace_id"], single.as_str());
    let create = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == "/v1/customers")
        .expect("POST /v1/customers");
    assert!(
        create.idempotency_key.is_some(),
        "creates carry an idempotency key"
    );
    // SINGLE: exactly one account.
    assert_code(
        &try_account(&app, &owner, &single, "Second", None).await,
        "LIMIT_EXCEEDED",
    );
    assert_eq!(
        fake.count("POST", "/v1/customers"),
        1,
        "a refused account calls no one"
    );
    // POOLED and ASSIGNED: ten.
    let pooled = workspace(&app, &owner, "POOLED").await;
    for i in 0..10 {
        account(&app, &owner, &pooled, &format!("Payer {i}")).await;
    }
    assert_code(
        &try_account(&app, &owner, &pooled, "Eleventh", None).await,
        "LIMIT_EXCEEDED",
    );
    // Deleting one frees its place and deletes its Stripe customer.
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { billingAccounts { id stripeCustomerId } } }",
            json!({"w": pooled}),
        )
        .await;
    let victim = r["data"]["workspace"]["billingAccounts"][0].clone();
    let del = "mutation($a: ID!) { deleteBillingAccount(input: {billingAccountId: $a}) { deletedBillingAccountId } }";
    let r = app.gql(&owner, del, json!({"a": victim["id"]})).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["deleteBillingAccount"]["deletedBillingAccountId"],
        victim["id"]
    );
    let customer = victim["stripeCustomerId"].as_str().expect("customer");
    assert!(
        fake.customer(customer).is_none_or(|c| c["deleted"] == true),
        "the Stripe customer is deleted"
    );
    assert_code(
        &app.gql(&owner, del, json!({"a": victim["id"]})).await,
        "NOT_FOUND",
    );
    account(&app, &owner, &pooled, "Replacement").await;
    // The mode is fixed: updateWorkspace has no billingMode.
    let r = app
        .gql(
            &owner,
            "mutation($w: ID!) { updateWorkspace(input: {workspaceId: $w, billingMode: SINGLE}) { workspace { billingMode } } }",
            json!({"w": pooled}),
        )
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { billingMode } }",
            json!({"w": pooled}),
        )
        .await;
    assert_eq!(r["data"]["workspace"]["billingMode"], "POOLED");
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { billingMode billingAccounts { name } } }",
            json!({"w": pooled}),
        )
        .await;
    assert_eq!(
        r["data"]["workspace"]["billingAccounts"]
            .as_array()
            .map(Vec::len),
        Some(10)
    );
    // Bad input never reaches Stripe.
    let before = fake.requests().len();
    for (field, vars) in [
        ("currency", json!({"w": single, "n": "X", "c": "JPY"})),
        (
            "name",
            json!({"w": pooled, "n": "x".repeat(101), "c": "usd"}),
        ),
    ] {
        let r = app.gql(&owner, ACCOUNT, vars).await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], field, "{r}");
    }
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn a_stripe_outage_then_a_retry_with_the_same_key_creates_one_customer() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "SINGLE").await;
    // Longer than the client's retries.
    fake.fail_next(50, 503);
    let r = try_account(&app, &owner, &ws, "Main", Some("create-main")).await;
    assert_code(&r, "PAYMENT_PROVIDER_UNAVAILABLE");
    assert_eq!(fake.count("POST", "/v1/customers"), 0);
    // Nothing shows while the customer does not exist, and the pending account holds the
    // SINGLE workspace's one place.
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { billingAccounts { id } } }",
            json!({"w": ws}),
        )
        .await;
    assert_eq!(r["data"]["workspace"]["billingAccounts"], json!([]));
    assert_code(
        &try_account(&app, &owner, &ws, "Other", Some("other")).await,
        "LIMIT_EXCEEDED",
    );
    fake.fail_next(0, 503);
    let first = try_account(&app, &owner, &ws, "Main", Some("create-main")).await;
    assert_ok(&first);
    let again = try_account(&app, &owner, &ws, "Main", Some("create-main")).await;
    assert_eq!(first["data"], again["data"], "a replay answers the same");
    assert_eq!(
        fake.count("POST", "/v1/customers"),
        1,
        "exactly one customer"
    );
    // Every attempt carried the same Stripe idempotency key.
    let keys: std::collections::HashSet<Option<String>> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/customers")
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    // A different request under the key is refused.
    let r = app
        .gql(
            &owner,
            ACCOUNT,
            json!({"w": ws, "n": "Renamed", "c": "usd", "k": "create-main"}),
        )
        .await;
    assert_code(&r, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM billing_accounts")
            .await,
        1
    );
}

#[tokio::test]
async fn an_interrupted_request_is_finished_by_the_recovery_job() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "SINGLE").await;
    fake.fail_next(50, 500);
    assert_code(
        &try_account(&app, &owner, &ws, "Main", None).await,
        "PAYMENT_PROVIDER_UNAVAILABLE",
    );
    fake.fail_next(0, 500);
    // The caller gives up; the recovery job (due after STRIPE_RECOVERY_DELAY_SECS) finishes it.
    let worker = super::webhooks::Worker::start(&app);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n = app
            .sql_count("SELECT count(*) AS n FROM billing_accounts WHERE state = 'ACTIVE'")
            .await;
        if n == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the intent was not recovered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    worker.stop().await;
    assert_eq!(fake.count("POST", "/v1/customers"), 1);
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM audit_events WHERE action = 'billing_account.create'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn billing_is_for_owners_to_manage_and_admins_to_read() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "POOLED").await;
    let a = account(&app, &owner, &ws, "Main").await;
    app.add_member(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    let admin = app.user("admin@example.com");
    let viewer = app.user("viewer@example.com");
    let q = "query($w: ID!) { workspace(id: $w) { billingAccounts { id name } } }";
    let r = app.gql(&admin, q, json!({"w": ws})).await;
    assert_eq!(
        r["data"]["workspace"]["billingAccounts"][0]["id"],
        a.as_str()
    );
    assert_code(&app.gql(&viewer, q, json!({"w": ws})).await, "FORBIDDEN");
    assert_code(
        &try_account(&app, &admin, &ws, "Admin's", None).await,
        "FORBIDDEN",
    );
    let upd = "mutation($a: ID!) { updateBillingAccount(input: {billingAccountId: $a, name: \"X\"}) { billingAccount { name } } }";
    assert_code(&app.gql(&admin, upd, json!({"a": a})).await, "FORBIDDEN");
    // A stranger's (and a made-up) id is not found, alike.
    let stranger = app.user("stranger@example.com");
    let r1 = app.gql(&stranger, upd, json!({"a": a})).await;
    let r2 = app
        .gql(
            &stranger,
            upd,
            json!({"a": "ba_0193a0a0a0a0a0a0a0a0a0a0a0a0a0a0"}),
        )
        .await;
    assert_code(&r1, "NOT_FOUND");
    assert_eq!(r1["errors"][0]["message"], r2["errors"][0]["message"]);
    // The owner's update reaches Stripe.
    let r = app
        .gql(&owner, "mutation($a: ID!) { updateBillingAccount(input: {billingAccountId: $a, name: \"Renamed\", phone: \"+1 555\"}) { billingAccount { name phone currency } } }", json!({"a": a}))
        .await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["updateBillingAccount"]["billingAccount"]["name"],
        "Renamed"
    );
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
    assert_eq!(
        fake.customer(&customer).expect("customer")["name"],
        "Renamed"
    );
}

#[tokio::test]
async fn payment_methods_are_capped_at_five_and_detached_by_the_rules() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "SINGLE").await;
    let a = account(&app, &owner, &ws, "Main").await;
    let r = app
        .gql(&owner, "mutation($a: ID!) { createSetupIntent(input: {billingAccountId: $a}) { clientSecret publishableKey } }", json!({"a": a}))
        .await;
    assert_ok(&r);
    assert!(
        r["data"]["createSetupIntent"]["clientSecret"]
            .as_str()
            .is_some_and(|s| s.contains("_secret_")),
        "{r}"
    );
    assert_eq!(
        r["data"]["createSetupIntent"]["publishableKey"],
        "pk_test_fake_0123456789"
    );
    let mut pms = Vec::new();
    for i in 0..5 {
        let pm = fake.create_card("visa", &format!("424{i}"), 12, 2030);
        let r = attach(&app, &owner, &a, &pm).await;
        assert_ok(&r);
        pms.push(pm);
    }
    let list = attach(&app, &owner, &a, &pms[0]).await;
    let methods = list["data"]["attachPaymentMethod"]["billingAccount"]["paymentMethods"].clone();
    assert_eq!(methods.as_array().map(Vec::len), Some(5), "{list}");
    assert_eq!(
        methods[0]["isDefault"], true,
        "the first one is the default"
    );
    assert_eq!(methods[1]["isDefault"], false);
    assert_eq!(methods[0]["brand"], "visa");
    assert_eq!(methods[0]["last4"], "4240");
    let sixth = fake.create_card("mastercard", "5555", 1, 2031);
    assert_code(&attach(&app, &owner, &a, &sixth).await, "LIMIT_EXCEEDED");
    // A live subscription: the default cannot go, another can.
    subscribe(&app, &owner, &a, "STARTER", json!([])).await;
    let ids: Vec<String> = methods
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    // The default moves, in Stripe too, and back.
    let set_default = "mutation($p: ID!) { setDefaultPaymentMethod(input: {paymentMethodId: $p}) { billingAccount { stripeCustomerId paymentMethods { id isDefault } } } }";
    let r = app.gql(&owner, set_default, json!({"p": ids[1]})).await;
    assert_ok(&r);
    let account_json = &r["data"]["setDefaultPaymentMethod"]["billingAccount"];
    assert_eq!(account_json["paymentMethods"][1]["isDefault"], true, "{r}");
    assert_eq!(account_json["paymentMethods"][0]["isDefault"], false);
    let customer = account_json["stripeCustomerId"].as_str().expect("customer");
    assert_eq!(
        fake.customer(customer).expect("customer")["invoice_settings"]["default_payment_method"],
        pms[1].as_str()
    );
    assert_ok(&app.gql(&owner, set_default, json!({"p": ids[0]})).await);
    let detach = "mutation($p: ID!) { detachPaymentMethod(input: {paymentMethodId: $p}) { billingAccount { paymentMethods { id isDefault } } } }";
    assert_code(
        &app.gql(&owner, detach, json!({"p": ids[0]})).await,
        "CONFLICT",
    );
    for id in &ids[1..] {
        assert_ok(&app.gql(&owner, detach, json!({"p": id})).await);
    }
    // The only one is never detached.
    assert_code(
        &app.gql(&owner, detach, json!({"p": ids[0]})).await,
        "CONFLICT",
    );
    assert!(
        fake.payment_method(&pms[1]).expect("pm")["customer"].is_null(),
        "detached in Stripe"
    );
}

#[tokio::test]
async fn the_first_subscription_is_a_trial_and_later_ones_need_a_payment_method() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "SINGLE").await;
    let a = account(&app, &owner, &ws, "Main").await;
    let trial = subscribe(
        &app,
        &owner,
        &a,
        "STARTER",
        json!([{"resource": "users", "quantity": 3}]),
    )
    .await;
    assert_eq!(trial["status"], "TRIALING");
    assert_eq!(trial["plan"], "STARTER");
    assert_eq!(quantity(&trial, "users"), 8, "5 from the plan, 3 add-ons");
    assert_eq!(quantity(&trial, "locations"), 1);
    assert_eq!(trial["metadata"], json!([{"key": "team", "value": "ops"}]));
    let create = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/subscriptions" && r.method == "POST")
        .expect("POST /v1/subscriptions");
    assert_eq!(create.field("trial_period_days"), Some("14"));
    // Not eligible any more: a payment method is required.
    let r = try_subscribe(&app, &owner, &a, "ENTERPRISE", json!([])).await;
    assert_code(&r, "FAILED_PRECONDITION");
    let pm = fake.create_card("visa", "4242", 12, 2030);
    assert_ok(&attach(&app, &owner, &a, &pm).await);
    let paid = subscribe(&app, &owner, &a, "ENTERPRISE", json!([])).await;
    assert_eq!(paid["status"], "ACTIVE");
    subscribe(&app, &owner, &a, "STARTER", json!([])).await;
    assert_code(
        &try_subscribe(&app, &owner, &a, "STARTER", json!([])).await,
        "LIMIT_EXCEEDED",
    );
    assert_code(
        &try_subscribe(
            &app,
            &owner,
            &a,
            "CUSTOM",
            json!([{"resource": "widgets", "quantity": 1}]),
        )
        .await,
        "BAD_USER_INPUT",
    );
}

async fn usage_error(app: &TestApp, token: &str, org: &str, n: i64) -> Value {
    let r = app.record(token, org, "users", n).await;
    r["errors"][0]["extensions"].clone()
}

#[tokio::test]
async fn allocations_that_fit_every_organization_limit_but_not_the_pool_are_refused() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "SINGLE").await;
    let root = app.create_org(&owner, &ws, None, "Root").await;
    let child = app.create_org(&owner, &ws, Some(&root), "Child").await;
    // Without a billing account, billing does not limit.
    assert_ok(&app.record(&owner, &child, "users", 3).await);
    let a = account(&app, &owner, &ws, "Main").await;
    // With one, the pool applies: no subscription, no capacity.
    let e = usage_error(&app, &owner, &child, 1).await;
    assert_eq!(e["code"], "LIMIT_EXCEEDED", "{e}");
    assert_eq!(e["pool"], ws.as_str());
    assert_eq!(
        (e["limit"].as_i64(), e["used"].as_i64()),
        (Some(0), Some(3))
    );
    subscribe(
        &app,
        &owner,
        &a,
        "STARTER",
        json!([{"resource": "users", "quantity": 5}]),
    )
    .await;
    assert_ok(&app.set_limit(&owner, &root, "users", Some(100)).await);
    // The pool is part of what is available: min(100 − 3, 10 − 3).
    let u = app.usage(&owner, &child, "users").await;
    assert_eq!(
        (u["available"].as_i64(), u["effectiveLimit"].as_i64()),
        (Some(7), Some(10)),
        "{u}"
    );
    assert_ok(&app.record(&owner, &child, "users", 7).await);
    let u = app.usage(&owner, &root, "users").await;
    assert_eq!(
        (u["available"].as_i64(), u["effectiveLimit"].as_i64()),
        (Some(0), Some(10)),
        "{u}"
    );
    let e = usage_error(&app, &owner, &child, 1).await;
    assert_eq!(
        (
            e["limit"].as_i64(),
            e["used"].as_i64(),
            e["requested"].as_i64()
        ),
        (Some(10), Some(10), Some(1)),
        "{e}"
    );
    // Releases always pass, and free the pool.
    assert_ok(&app.record(&owner, &child, "users", -2).await);
    assert_ok(&app.record(&owner, &child, "users", 2).await);
    // Resources the catalog does not sell are not limited by billing.
    assert_ok(&app.record(&owner, &child, "locations", 1).await);
    assert_code(
        &app.record(&owner, &child, "locations", 1).await,
        "LIMIT_EXCEEDED",
    );
}

#[tokio::test]
async fn concurrent_allocations_never_overshoot_the_pool() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "POOLED").await;
    let a = account(&app, &owner, &ws, "Main").await;
    subscribe(
        &app,
        &owner,
        &a,
        "STARTER",
        json!([{"resource": "users", "quantity": 15}]),
    )
    .await;
    // Two trees, no organization limits: only the pool (20 users) binds.
    let r1 = app.create_org(&owner, &ws, None, "One").await;
    let r2 = app.create_org(&owner, &ws, None, "Two").await;
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let org = if i % 2 == 0 { r1.clone() } else { r2.clone() };
            let app = &app;
            let owner = owner.clone();
            async move { app.record(&owner, &org, "users", 1).await }
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    let ok = results.iter().filter(|r| r.get("errors").is_none()).count();
    assert_eq!(ok, 20, "exactly the pool's capacity was allocated");
    for r in results.iter().filter(|r| r.get("errors").is_some()) {
        assert_code(r, "LIMIT_EXCEEDED");
    }
    let used =
        app.numbers(&owner, &r1, "users").await.1 + app.numbers(&owner, &r2, "users").await.1;
    assert_eq!(used, 20);
    assert_eq!(
        app.sql_count("SELECT used AS n FROM pool_counters WHERE resource = 'users'")
            .await,
        20
    );
}

#[tokio::test]
async fn assigned_accounts_are_silos_and_pooled_accounts_add_up() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "ASSIGNED").await;
    // A root created before the workspace has an account has none.
    let loose = app.create_org(&owner, &ws, None, "Unassigned").await;
    let a = account(&app, &owner, &ws, "A").await;
    let pm = fake.create_card("visa", "4242", 12, 2030);
    let b = account(&app, &owner, &ws, "B").await;
    assert_ok(&attach(&app, &owner, &b, &pm).await);
    // Not trial-eligible (two accounts): A needs a payment method too.
    let pm_a = fake.create_card("visa", "1111", 12, 2030);
    assert_ok(&attach(&app, &owner, &a, &pm_a).await);
    subscribe(&app, &owner, &a, "STARTER", json!([])).await; // 5 users
    subscribe(&app, &owner, &b, "ENTERPRISE", json!([])).await; // 50 users
    let create = "mutation($w: ID!, $p: ID, $a: ID) { createOrganization(input: {workspaceId: $w, parentId: $p, name: \"Org\", billingAccountId: $a}) { organization { id } } }";
    let root = |r: Value| {
        r["data"]["createOrganization"]["organization"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createOrganization: {r}"))
            .to_string()
    };
    // Now roots need an account, and children take none.
    let r = app
        .gql(&owner, create, json!({"w": ws, "p": null, "a": null}))
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    assert_eq!(r["errors"][0]["extensions"]["field"], "billingAccountId");
    let root_a = root(
        app.gql(&owner, create, json!({"w": ws, "p": null, "a": a}))
            .await,
    );
    let root_b = root(
        app.gql(&owner, create, json!({"w": ws, "p": null, "a": b}))
            .await,
    );
    assert_code(
        &app.gql(&owner, create, json!({"w": ws, "p": root_a, "a": a}))
            .await,
        "BAD_USER_INPUT",
    );
    let assign = "mutation($o: ID!, $a: ID!) { assignBillingAccount(input: {organizationId: $o, billingAccountId: $a}) { organization { id } billingAccountId } }";
    let child_a = app.create_org(&owner, &ws, Some(&root_a), "Site").await;
    assert_code(
        &app.gql(&owner, assign, json!({"o": child_a, "a": b})).await,
        "BAD_USER_INPUT",
    );
    // Children draw from their root's account only.
    assert_ok(&app.record(&owner, &child_a, "users", 5).await);
    let e = usage_error(&app, &owner, &child_a, 1).await;
    assert_eq!(e["pool"], a.as_str(), "{e}");
    assert_ok(&app.record(&owner, &root_b, "users", 40).await);
    assert_code(
        &app.record(&owner, &loose, "users", 1).await,
        "FAILED_PRECONDITION",
    );
    // Switching A's tree to B: it fits (5 + 40 <= 50), and moves the usage.
    assert_ok(&app.gql(&owner, assign, json!({"o": root_a, "a": b})).await);
    assert_ok(&app.record(&owner, &child_a, "users", 5).await);
    let e = usage_error(&app, &owner, &root_b, 1).await;
    assert_eq!(
        (e["pool"].as_str(), e["used"].as_i64()),
        (Some(b.as_str()), Some(50)),
        "{e}"
    );
    // And back to A does not fit (10 > 5).
    let r = app.gql(&owner, assign, json!({"o": root_a, "a": a})).await;
    assert_code(&r, "LIMIT_EXCEEDED");
    // Moving a subtree between silos carries its usage: B is full (50), so A's tree may
    // not move back under A's account through a move either.
    let site_b = app.create_org(&owner, &ws, Some(&root_b), "Site B").await;
    let mv = "mutation($o: ID!, $p: ID) { moveOrganization(input: {organizationId: $o, newParentId: $p}) { organization { id } } }";
    assert_ok(&app.record(&owner, &root_b, "users", -40).await);
    assert_ok(&app.record(&owner, &site_b, "users", 3).await);
    // site_b (3 users) moves under root_a, whose account is now B too: no pool change.
    assert_ok(
        &app.gql(&owner, mv, json!({"o": site_b, "p": child_a}))
            .await,
    );
    // A root becoming a child gives up its account and joins its new root's pool.
    assert_ok(&app.gql(&owner, mv, json!({"o": root_b, "p": root_a})).await);
    let e = usage_error(&app, &owner, &child_a, 50).await;
    assert_eq!(
        (e["pool"].as_str(), e["used"].as_i64()),
        (Some(b.as_str()), Some(13)),
        "{e}"
    );
    // A subtree that becomes a root has no account: its usage leaves the pool.
    assert_ok(&app.gql(&owner, mv, json!({"o": site_b, "p": null})).await);
    assert_code(
        &app.record(&owner, &site_b, "users", 1).await,
        "FAILED_PRECONDITION",
    );
    let e = usage_error(&app, &owner, &child_a, 50).await;
    assert_eq!(e["used"].as_i64(), Some(10), "{e}");
    // An account with assigned roots cannot be deleted.
    let del = "mutation($a: ID!) { deleteBillingAccount(input: {billingAccountId: $a}) { deletedBillingAccountId } }";
    assert_code(&app.gql(&owner, del, json!({"a": b})).await, "CONFLICT");

    // POOLED: every account feeds one pool.
    let pooled = workspace(&app, &owner, "POOLED").await;
    let p1 = account(&app, &owner, &pooled, "P1").await;
    let p2 = account(&app, &owner, &pooled, "P2").await;
    for acc in [&p1, &p2] {
        let pm = fake.create_card("visa", "4242", 12, 2030);
        assert_ok(&attach(&app, &owner, acc, &pm).await);
        subscribe(&app, &owner, acc, "STARTER", json!([])).await;
    }
    let org = app.create_org(&owner, &pooled, None, "Anywhere").await;
    assert_ok(&app.record(&owner, &org, "users", 10).await);
    let e = usage_error(&app, &owner, &org, 1).await;
    assert_eq!(
        (e["pool"].as_str(), e["limit"].as_i64()),
        (Some(pooled.as_str()), Some(10)),
        "{e}"
    );
    assert_code(
        &app.gql(&owner, assign, json!({"o": org, "a": p1})).await,
        "FAILED_PRECONDITION",
    );
}

#[tokio::test]
async fn decreases_and_cancellations_never_leave_usage_unfunded() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "SINGLE").await;
    let a = account(&app, &owner, &ws, "Main").await;
    let sub = subscribe(
        &app,
        &owner,
        &a,
        "STARTER",
        json!([{"resource": "users", "quantity": 10}]),
    )
    .await;
    let id = sub["id"].as_str().expect("id").to_string();
    let org = app.create_org(&owner, &ws, None, "Org").await;
    assert_ok(&app.record(&owner, &org, "users", 12).await);
    let update = "mutation($s: ID!, $q: Int!) { updateSubscription(input: {subscriptionId: $s, quantities: [{resource: \"users\", quantity: $q}]}) { subscription { quantities { resource quantity } } } }";
    // 5 + 6 = 11 < 12 in use.
    assert_code(
        &app.gql(&owner, update, json!({"s": id, "q": 6})).await,
        "CONFLICT",
    );
    // An increase applies at once, prorated.
    let r = app.gql(&owner, update, json!({"s": id, "q": 20})).await;
    assert_ok(&r);
    assert_eq!(
        quantity(&r["data"]["updateSubscription"]["subscription"], "users"),
        25
    );
    let last = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path.starts_with("/v1/subscriptions/"))
        .expect("update");
    assert_eq!(last.field("proration_behavior"), Some("create_prorations"));
    // A decrease that fits is sent without proration and shows at the next period.
    let r = app.gql(&owner, update, json!({"s": id, "q": 8})).await;
    assert_ok(&r);
    assert_eq!(
        quantity(&r["data"]["updateSubscription"]["subscription"], "users"),
        25,
        "until the next period"
    );
    let last = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path.starts_with("/v1/subscriptions/"))
        .expect("update");
    assert_eq!(last.field("proration_behavior"), Some("none"));
    // Stripe starts the next period: the decrease takes effect when its event says so.
    let stripe_id = sub["stripeSubscriptionId"]
        .as_str()
        .expect("sub")
        .to_string();
    let month = 30 * 86_400;
    fake.set_subscription(&stripe_id, |s| {
        for item in s["items"]["data"].as_array_mut().into_iter().flatten() {
            for f in ["current_period_start", "current_period_end"] {
                item[f] = json!(item[f].as_i64().unwrap_or(0) + month);
            }
        }
    });
    let worker = super::webhooks::Worker::start(&app);
    let updated = fake.event(
        "customer.subscription.updated",
        fake.subscription(&stripe_id).expect("sub"),
    );
    deliver_all(&app, &[updated]).await;
    let q = "query($w: ID!) { workspace(id: $w) { billingAccounts { subscriptions { status cancelAtPeriodEnd quantities { resource quantity } } } } }";
    let r = app.gql(&owner, q, json!({"w": ws})).await;
    let current = &r["data"]["workspace"]["billingAccounts"][0]["subscriptions"][0];
    assert_eq!(
        quantity(current, "users"),
        13,
        "5 + 8 from the new period: {r}"
    );
    assert_ok(&app.record(&owner, &org, "users", 1).await);
    assert_eq!(
        usage_error(&app, &owner, &org, 1).await["limit"].as_i64(),
        Some(13)
    );
    assert_ok(&app.record(&owner, &org, "users", -1).await);
    // Cancelling would leave 12 users unfunded.
    let cancel = "mutation($s: ID!) { cancelSubscription(input: {subscriptionId: $s}) { subscription { cancelAtPeriodEnd status } } }";
    assert_code(&app.gql(&owner, cancel, json!({"s": id})).await, "CONFLICT");
    assert_ok(&app.record(&owner, &org, "users", -12).await);
    let r = app.gql(&owner, cancel, json!({"s": id})).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["cancelSubscription"]["subscription"]["cancelAtPeriodEnd"],
        true
    );
    // The capacity stays until Stripe ends the subscription.
    assert_ok(&app.record(&owner, &org, "users", 1).await);
    fake.set_subscription(&stripe_id, |s| {
        s["status"] = json!("canceled");
        s["canceled_at"] = json!(chrono::Utc::now().timestamp());
    });
    let deleted = fake.event(
        "customer.subscription.deleted",
        fake.subscription(&stripe_id).expect("sub"),
    );
    deliver_all(&app, &[deleted]).await;
    worker.stop().await;
    let r = app.gql(&owner, q, json!({"w": ws})).await;
    let current = &r["data"]["workspace"]["billingAccounts"][0]["subscriptions"][0];
    assert_eq!(current["status"], "CANCELED", "{r}");
    let e = usage_error(&app, &owner, &org, 1).await;
    assert_eq!(
        (e["limit"].as_i64(), e["used"].as_i64()),
        (Some(0), Some(1)),
        "{e}"
    );
}

/// Delivers signed events and waits until the workers processed every stored event.
async fn deliver_all(app: &TestApp, events: &[String]) {
    for body in events {
        let t = super::webhooks::now();
        let sig = format!(
            "t={t},v1={}",
            super::webhooks::sign(super::webhooks::SECRET, t, body)
        );
        let (status, _) = super::webhooks::deliver(app, Some(&sig), body).await;
        assert_eq!(status, 200);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let pending = app
            .sql_count("SELECT count(*) AS n FROM stripe_events WHERE processed_at IS NULL")
            .await;
        if pending == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pending} events not processed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The mirror's state that events change, as one comparable value.
pub(crate) async fn mirror_state(app: &TestApp, token: &str, ws: &str) -> Value {
    let r = app
        .gql(
            token,
            "query($w: ID!) { workspace(id: $w) { billingAccounts {
                subscriptions { stripeSubscriptionId status plan quantities { resource quantity } cancelAtPeriodEnd }
                paymentMethods { stripePaymentMethodId isDefault }
                invoices(first: 10) { edges { node { stripeInvoiceId status amountDue amountPaid currency hostedInvoiceUrl } } } } } }",
            json!({"w": ws}),
        )
        .await;
    assert_ok(&r);
    let pools = app
        .sql_count("SELECT coalesce(sum(capacity), 0)::bigint AS n FROM pool_capacities")
        .await;
    json!({"graph": r["data"], "capacity": pools})
}

/// The story: a customer subscribes from Stripe's side, pays, raises a quantity, fails a
/// payment, goes past due and is canceled. Returns the app, the owner, the workspace and
/// the events in the order Stripe sent them (the fake holds the final state).
async fn story(
    fake: &FakeStripe,
    step: bool,
) -> (
    TestApp,
    String,
    String,
    Vec<String>,
    Option<super::webhooks::Worker>,
) {
    let app = app_with(fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "SINGLE").await;
    let a = account(&app, &owner, &ws, "Main").await;
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
        &a,
        "STARTER",
        json!([{"resource": "users", "quantity": 2}]),
    )
    .await;
    let sub_id = sub["stripeSubscriptionId"]
        .as_str()
        .expect("sub")
        .to_string();
    let org = app.create_org(&owner, &ws, None, "Org").await;
    let worker = step.then(|| super::webhooks::Worker::start(&app));
    let mut events = Vec::new();
    let obj = |v: Option<Value>| v.expect("object in the fake");
    // Each change happens in Stripe, then its event is sent; stepwise, it is delivered at
    // once and its effect checked.
    let mut emit = async |app: &TestApp, event: String| {
        if step {
            deliver_all(app, std::slice::from_ref(&event)).await;
        }
        events.push(event);
    };
    emit(
        &app,
        fake.event("customer.created", obj(fake.customer(&customer))),
    )
    .await;
    emit(
        &app,
        fake.event(
            "customer.subscription.created",
            obj(fake.subscription(&sub_id)),
        ),
    )
    .await;
    let invoice = fake
        .invoices_for(&customer)
        .last()
        .cloned()
        .expect("first invoice");
    let inv_id = invoice["id"].as_str().expect("invoice id").to_string();
    fake.set_invoice(&inv_id, |i| {
        i["status"] = json!("paid");
        i["amount_paid"] = i["amount_due"].clone();
        i["amount_remaining"] = json!(0);
    });
    emit(&app, fake.event("invoice.paid", obj(fake.invoice(&inv_id)))).await;
    if step {
        let state = mirror_state(&app, &owner, &ws).await;
        let inv =
            &state["graph"]["workspace"]["billingAccounts"][0]["invoices"]["edges"][0]["node"];
        assert_eq!(inv["status"], "paid", "{state}");
        assert_eq!(inv["amountPaid"], inv["amountDue"]);
    }
    // Raised to 10 users in Stripe's dashboard, trial over.
    fake.set_subscription(&sub_id, |s| {
        s["status"] = json!("active");
        for item in s["items"]["data"].as_array_mut().into_iter().flatten() {
            if item["price"]["id"] == "price_users_unit" {
                item["quantity"] = json!(10);
            }
        }
    });
    emit(
        &app,
        fake.event(
            "customer.subscription.updated",
            obj(fake.subscription(&sub_id)),
        ),
    )
    .await;
    if step {
        assert_ok(&app.record(&owner, &org, "users", 14).await);
    }
    fake.set_invoice(&inv_id, |i| i["status"] = json!("paid"));
    emit(
        &app,
        fake.event("invoice.payment_failed", obj(fake.invoice(&inv_id))),
    )
    .await;
    fake.set_subscription(&sub_id, |s| s["status"] = json!("past_due"));
    emit(
        &app,
        fake.event(
            "customer.subscription.updated",
            obj(fake.subscription(&sub_id)),
        ),
    )
    .await;
    if step {
        // Past due keeps the capacity.
        assert_ok(&app.record(&owner, &org, "users", 1).await);
    }
    fake.set_subscription(&sub_id, |s| {
        s["status"] = json!("canceled");
        s["canceled_at"] = json!(chrono::Utc::now().timestamp());
        s["ended_at"] = json!(chrono::Utc::now().timestamp());
    });
    emit(
        &app,
        fake.event(
            "customer.subscription.deleted",
            obj(fake.subscription(&sub_id)),
        ),
    )
    .await;
    if step {
        let e = usage_error(&app, &owner, &org, 1).await;
        assert_eq!(
            (e["code"].as_str(), e["limit"].as_i64()),
            (Some("LIMIT_EXCEEDED"), Some(0)),
            "{e}"
        );
        // An event of a type the mirror does not keep is stored and acknowledged.
        let other = fake.event("charge.refunded", json!({"id": "ch_1", "object": "charge"}));
        deliver_all(&app, &[other]).await;
    }
    (app, owner, ws, events, worker)
}

#[tokio::test]
async fn the_webhook_story_converges_in_order_shuffled_and_duplicated() {
    // In order, each event applied as it happens.
    let fake = FakeStripe::start().await;
    let (app, owner, ws, _, worker) = story(&fake, true).await;
    let in_order = mirror_state(&app, &owner, &ws).await;
    if let Some(w) = worker {
        w.stop().await;
    }
    let sub = &in_order["graph"]["workspace"]["billingAccounts"][0]["subscriptions"][0];
    assert_eq!(sub["status"], "CANCELED", "{in_order}");
    assert_eq!(in_order["capacity"], 0);
    // The same story, delivered late: shuffled, with duplicates, some at the same moment.
    let fake = FakeStripe::start().await;
    let (app, owner, ws, events, _) = story(&fake, false).await;
    let mut late: Vec<String> = events.iter().rev().cloned().collect();
    late.extend(events.iter().step_by(2).cloned());
    late.rotate_left(3);
    let worker = super::webhooks::Worker::start(&app);
    let again: Vec<_> = late
        .iter()
        .take(4)
        .map(|e| {
            let t = super::webhooks::now();
            let sig = format!(
                "t={t},v1={}",
                super::webhooks::sign(super::webhooks::SECRET, t, e)
            );
            let app = &app;
            async move { super::webhooks::deliver(app, Some(&sig), e).await.0 }
        })
        .collect();
    assert!(
        futures::future::join_all(again)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    deliver_all(&app, &late).await;
    worker.stop().await;
    let shuffled = mirror_state(&app, &owner, &ws).await;
    // Ids differ between the two runs; the shapes and values must not.
    let strip = |v: &Value| {
        let mut v = v.clone();
        for a in v["graph"]["workspace"]["billingAccounts"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            for s in a["subscriptions"].as_array_mut().into_iter().flatten() {
                s["stripeSubscriptionId"] = json!("sub");
            }
            for e in a["invoices"]["edges"].as_array_mut().into_iter().flatten() {
                e["node"]["stripeInvoiceId"] = json!("in");
                e["node"]["hostedInvoiceUrl"] = json!("url");
            }
        }
        v
    };
    assert_eq!(strip(&in_order), strip(&shuffled));
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM stripe_events")
            .await,
        i64::try_from(events.len()).expect("small"),
        "duplicates are stored once"
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM subscriptions")
            .await,
        1,
        "the subscription's events never create a second one"
    );
}

#[tokio::test]
async fn invoices_are_mirrored_newest_first_with_the_upcoming_one_and_a_cost_summary() {
    let fake = FakeStripe::start().await;
    fake.set_price("price_starter_monthly", 2_999);
    fake.set_price("price_enterprise_monthly", 19_999);
    fake.set_price("price_users_unit", 800);
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "SINGLE").await;
    let a = account(&app, &owner, &ws, "Main").await;
    let pm = fake.create_card("visa", "4242", 12, 2030);
    assert_ok(&attach(&app, &owner, &a, &pm).await);
    subscribe(
        &app,
        &owner,
        &a,
        "STARTER",
        json!([{"resource": "users", "quantity": 3}]),
    )
    .await;
    subscribe(&app, &owner, &a, "ENTERPRISE", json!([])).await;
    let q = "query($w: ID!, $after: String) { workspace(id: $w) { billingAccounts {
        stripeCustomerId
        invoices(first: 1, after: $after) { edges { cursor node { stripeInvoiceId status amountDue amountPaid currency lines { description amount quantity priceId } } } pageInfo { hasNextPage } }
        upcomingInvoice { amountDue currency lines { priceId quantity } } } } }";
    let r = app.gql(&owner, q, json!({"w": ws})).await;
    assert_ok(&r);
    let account_json = &r["data"]["workspace"]["billingAccounts"][0];
    assert_eq!(
        account_json["invoices"]["edges"],
        json!([]),
        "nothing mirrored yet"
    );
    let upcoming = &account_json["upcomingInvoice"];
    assert!(
        upcoming["amountDue"].as_i64().is_some_and(|n| n > 0),
        "{upcoming}"
    );
    assert_eq!(upcoming["currency"], "usd");
    // Stripe's invoice events are mirrored by the worker.
    let customer = account_json["stripeCustomerId"]
        .as_str()
        .expect("customer")
        .to_string();
    let invoices = fake.invoices_for(&customer);
    assert_eq!(invoices.len(), 2, "one per subscription");
    // The first was drawn a minute earlier (both were created within the same second here).
    let first_id = invoices[0]["id"].as_str().expect("id").to_string();
    fake.set_invoice(&first_id, |i| {
        i["created"] = json!(i["created"].as_i64().unwrap_or(0) - 60);
    });
    let invoices = fake.invoices_for(&customer);
    let worker = super::webhooks::Worker::start(&app);
    let events: Vec<String> = invoices
        .iter()
        .flat_map(|i| {
            ["invoice.created", "invoice.finalized", "invoice.paid"]
                .map(|kind| fake.event(kind, i.clone()))
        })
        .collect();
    deliver_all(&app, &events).await;
    worker.stop().await;
    let first = app.gql(&owner, q, json!({"w": ws})).await;
    let page = &first["data"]["workspace"]["billingAccounts"][0]["invoices"];
    assert_eq!(page["pageInfo"]["hasNextPage"], true, "{first}");
    let newest = &page["edges"][0]["node"];
    // Newest first: the ENTERPRISE subscription's invoice.
    assert_eq!(newest["stripeInvoiceId"], invoices[1]["id"]);
    assert_eq!(newest["currency"], "usd");
    assert_eq!(newest["status"], invoices[1]["status"]);
    assert_eq!(newest["lines"][0]["priceId"], "price_enterprise_monthly");
    let cursor = page["edges"][0]["cursor"]
        .as_str()
        .expect("cursor")
        .to_string();
    let second = app.gql(&owner, q, json!({"w": ws, "after": cursor})).await;
    let page = &second["data"]["workspace"]["billingAccounts"][0]["invoices"];
    assert_eq!(
        page["edges"][0]["node"]["stripeInvoiceId"],
        invoices[0]["id"]
    );
    assert_eq!(page["pageInfo"]["hasNextPage"], false);
    // The summary: list prices of the live subscriptions.
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { billingSummary { periodStart periodEnd currentPeriodCents projectedCents baseFeesCents
                byResource { resource capacity monthlyCents } byBillingAccount { billingAccount { id } monthlyCents invoiced paid } } } }",
            json!({"w": ws}),
        )
        .await;
    assert_ok(&r);
    let s = &r["data"]["workspace"]["billingSummary"];
    assert_eq!(s["projectedCents"], 2_999 + 3 * 800 + 19_999, "{s}");
    assert_eq!(s["baseFeesCents"], 2_999 + 19_999);
    let current = s["currentPeriodCents"].as_i64().expect("current");
    assert!((0..=2_999 + 3 * 800 + 19_999).contains(&current), "{s}");
    let users = s["byResource"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e["resource"] == "users"))
        .expect("users");
    assert_eq!(
        (users["capacity"].as_i64(), users["monthlyCents"].as_i64()),
        (Some(58), Some(2_400))
    );
    let by_account = &s["byBillingAccount"][0];
    assert_eq!(by_account["billingAccount"]["id"], a.as_str());
    let invoiced: i64 = invoices
        .iter()
        .map(|i| i["total"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(by_account["invoiced"].as_i64(), Some(invoiced));
    // Viewers see none of it.
    app.add_member(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    let viewer = app.user("viewer@example.com");
    let r = app
        .gql(
            &viewer,
            "query($w: ID!) { workspace(id: $w) { billingSummary { projectedCents } } }",
            json!({"w": ws}),
        )
        .await;
    assert_code(&r, "FORBIDDEN");
}

#[tokio::test]
async fn metered_usage_is_priced_and_reported_to_stripe_meters_once() {
    let fake = FakeStripe::start().await;
    let mut env: std::collections::HashMap<String, String> = PRICES
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.insert("STRIPE_SECRET_KEY".into(), "sk_test_fake_0123456789".into());
    env.insert("STRIPE_API_BASE".into(), fake.url());
    env.insert(
        "BILLING_METERS".into(),
        "executions=workflow_executions:10/1000:5000".into(),
    );
    let app = TestApp::with(tests::Options { env }).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "SINGLE").await;
    let r = app
        .gql(
            &owner,
            "mutation($w: ID!) { defineResource(input: {workspaceId: $w, key: \"executions\", name: \"Executions\", unit: \"runs\", kind: METERED, resetPeriod: MONTH}) { resource { key } } }",
            json!({"w": ws}),
        )
        .await;
    assert_ok(&r);
    let org = app.create_org(&owner, &ws, None, "Org").await;
    // Before the workspace has an account there is no one to bill.
    assert_ok(&app.record(&owner, &org, "executions", 100).await);
    let billing = api::domain::billing::Billing::new(&app.config.billing);
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    let round = api::domain::billing::meters::report(&app.pool, &billing, later)
        .await
        .expect("report");
    assert_eq!((round.stored, round.sent), (0, 0));
    account(&app, &owner, &ws, "Main").await;
    for _ in 0..7 {
        assert_ok(&app.record(&owner, &org, "executions", 1_000).await);
    }
    // The summary prices the usage beyond the included 5,000: 10 cents per 1,000.
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { billingSummary { meteredCents currentPeriodCents projectedCents byResource { resource used monthlyCents } } } }",
            json!({"w": ws}),
        )
        .await;
    assert_ok(&r);
    let s = &r["data"]["workspace"]["billingSummary"];
    assert_eq!(
        s["meteredCents"], 21,
        "7,100 − 5,000 = 2,100 units at 10¢/1,000: {s}"
    );
    let ex = s["byResource"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e["resource"] == "executions"))
        .expect("executions");
    assert_eq!(
        (ex["used"].as_i64(), ex["monthlyCents"].as_i64()),
        (Some(7_100), Some(21))
    );
    assert!(
        s["projectedCents"].as_i64() >= s["currentPeriodCents"].as_i64(),
        "{s}"
    );
    // Once the hour closed, the hour's usage is one meter event for the account's customer.
    let round = api::domain::billing::meters::report(&app.pool, &billing, later)
        .await
        .expect("report");
    assert_eq!((round.stored, round.sent, round.failed), (1, 1, 0));
    let events = fake.meter_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_name"], "workflow_executions");
    assert_eq!(events[0]["payload"]["value"], "7100");
    assert!(
        events[0]["payload"]["stripe_customer_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("cus_"))
    );
    let identifier = events[0]["identifier"]
        .as_str()
        .expect("identifier")
        .to_string();
    let sent = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/billing/meter_events")
        .expect("sent");
    assert_eq!(sent.idempotency_key.as_deref(), Some(identifier.as_str()));
    // Another round reports nothing again.
    let round = api::domain::billing::meters::report(&app.pool, &billing, later)
        .await
        .expect("report");
    assert_eq!((round.stored, round.sent), (0, 0));
    // Usage of another hour, reported during a Stripe outage: kept, then sent once.
    assert_ok(&app.record(&owner, &org, "executions", 50).await);
    app.sql_count(
        "WITH u AS (UPDATE usage_events SET created_at = created_at - interval '3 hours'
                     WHERE id = (SELECT id FROM usage_events ORDER BY created_at DESC LIMIT 1) RETURNING 1)
         SELECT count(*) AS n FROM u",
    )
    .await;
    fake.fail_next(50, 500);
    let round = api::domain::billing::meters::report(&app.pool, &billing, later)
        .await
        .expect("report");
    assert_eq!((round.stored, round.sent, round.failed), (1, 0, 1));
    fake.fail_next(0, 500);
    let round = api::domain::billing::meters::report(&app.pool, &billing, later)
        .await
        .expect("report");
    assert_eq!((round.stored, round.sent, round.failed), (0, 1, 0));
    let events = fake.meter_events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["payload"]["value"], "50");
    assert_ne!(events[1]["identifier"], events[0]["identifier"]);
}

#[tokio::test]
async fn without_an_api_key_events_applied_out_of_order_keep_the_latest_state() {
    let fake = FakeStripe::start().await;
    let (app, owner, ws, events, _) = story(&fake, false).await;
    // Stripe's `created` orders the events: after the subscription was created here, ten
    // seconds apart.
    let t0 = chrono::Utc::now().timestamp() + 1;
    let events: Vec<String> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut v: Value = serde_json::from_str(e).expect("event");
            v["created"] = json!(t0 + 10 * i64::try_from(i).expect("small"));
            v.to_string()
        })
        .collect();
    // Newest first, then all again: each stored once, applied by a worker without a key.
    let mut late: Vec<String> = events.iter().rev().cloned().collect();
    late.extend(events.iter().cloned());
    for body in &late {
        let t = super::webhooks::now();
        let sig = format!(
            "t={t},v1={}",
            super::webhooks::sign(super::webhooks::SECRET, t, body)
        );
        assert_eq!(
            super::webhooks::deliver(&app, Some(&sig), body).await.0,
            200
        );
    }
    let mut config = app.config.billing.clone();
    config.stripe_secret_key = None;
    let keyless = api::domain::billing::Billing::new(&config);
    for body in &late {
        let id: Value = serde_json::from_str(body).expect("event");
        let retry = api::jobs::JobConfig::default().stripe_retry;
        let event = id["id"].as_str().expect("event id");
        api::domain::webhooks::process(&app.pool, &keyless, &retry, event)
            .await
            .expect("processed");
    }
    let state = mirror_state(&app, &owner, &ws).await;
    let sub = &state["graph"]["workspace"]["billingAccounts"][0]["subscriptions"][0];
    assert_eq!(sub["status"], "CANCELED", "{state}");
    assert_eq!(
        quantity(sub, "users"),
        15,
        "5 from the plan, 10 add-ons: {state}"
    );
    assert_eq!(state["capacity"], 0);
    let invoice =
        &state["graph"]["workspace"]["billingAccounts"][0]["invoices"]["edges"][0]["node"];
    assert_eq!(invoice["status"], "paid");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM stripe_events WHERE processed_at IS NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn a_workspace_s_jobs_are_shown_to_its_managers_and_failed_ones_retried() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = workspace(&app, &owner, "POOLED").await;
    account(&app, &owner, &ws, "Main").await;
    account(&app, &owner, &ws, "Second").await;
    let q = "query($w: ID!, $s: JobStatus) { workspace(id: $w) { jobs(first: 10, status: $s) {
        edges { cursor node { id kind status attempts lastError createdAt runAt startedAt finishedAt } } pageInfo { hasNextPage } } } }";
    let r = app.gql(&owner, q, json!({"w": ws})).await;
    assert_ok(&r);
    let edges = r["data"]["workspace"]["jobs"]["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(edges.len(), 2, "one recovery job per billing request: {r}");
    assert!(
        edges
            .iter()
            .all(|e| e["node"]["kind"] == "billing.request" && e["node"]["status"] == "PENDING")
    );
    // Newest first.
    assert!(edges[0]["node"]["id"].as_str() > edges[1]["node"]["id"].as_str());
    // One fails for good (as apalis leaves a job past its run limit).
    let id = edges[1]["node"]["id"].as_str().expect("id").to_string();
    let ulid = id.trim_start_matches("job_").to_string();
    app.sql_count(&format!(
        "WITH j AS (UPDATE apalis.jobs SET status = 'Killed', attempts = 11, done_at = now(),
                     last_result = '{{\"Err\": \"AbortError: gave up\"}}' WHERE id = '{ulid}' RETURNING 1)
         SELECT count(*) AS n FROM j"
    ))
    .await;
    let r = app.gql(&owner, q, json!({"w": ws, "s": "FAILED"})).await;
    let failed = r["data"]["workspace"]["jobs"]["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["node"]["lastError"], "AbortError: gave up");
    assert!(failed[0]["node"]["finishedAt"].is_string());
    let one = "query($j: ID!) { job(id: $j) { id status kind } }";
    let r = app.gql(&owner, one, json!({"j": id})).await;
    assert_eq!(r["data"]["job"]["status"], "FAILED");
    // Viewers and strangers see nothing of it.
    app.add_member(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    let viewer = app.user("viewer@example.com");
    let stranger = app.user("stranger@example.com");
    assert_code(&app.gql(&viewer, q, json!({"w": ws})).await, "FORBIDDEN");
    for who in [&viewer, &stranger] {
        let r = app.gql(who, one, json!({"j": id})).await;
        assert_eq!(r["data"]["job"], Value::Null, "{r}");
    }
    let missing = app
        .gql(
            &stranger,
            one,
            json!({"j": "job_01KB2ZJ0R5V8Y3T6W9X2M4N7PQ"}),
        )
        .await;
    assert_eq!(missing, app.gql(&stranger, one, json!({"j": id})).await);
    let retry = "mutation($j: ID!) { retryJob(input: {jobId: $j}) { job { id status attempts lastError } } }";
    let r1 = app.gql(&stranger, retry, json!({"j": id})).await;
    let r2 = app
        .gql(
            &stranger,
            retry,
            json!({"j": "job_01KB2ZJ0R5V8Y3T6W9X2M4N7PQ"}),
        )
        .await;
    assert_code(&r1, "NOT_FOUND");
    assert_eq!(r1["errors"][0]["message"], r2["errors"][0]["message"]);
    assert_code(
        &app.gql(&viewer, retry, json!({"j": id})).await,
        "FORBIDDEN",
    );
    // The owner puts it back; a second retry finds nothing failed.
    let r = app.gql(&owner, retry, json!({"j": id})).await;
    assert_ok(&r);
    let job = &r["data"]["retryJob"]["job"];
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("PENDING"), Some(0))
    );
    assert_eq!(job["lastError"], Value::Null);
    assert_code(&app.gql(&owner, retry, json!({"j": id})).await, "CONFLICT");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events WHERE action = 'job.retry'")
            .await,
        1
    );
    // A worker runs both: the requests were completed by their mutations already.
    let worker = super::webhooks::Worker::start(&app);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = app.gql(&owner, q, json!({"w": ws, "s": "SUCCEEDED"})).await;
        if r["data"]["workspace"]["jobs"]["edges"]
            .as_array()
            .map(Vec::len)
            == Some(2)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    worker.stop().await;
    // /metrics shows the queues by status, and their latency.
    assert_eq!(
        app.metric("jobs{queue=\"billing-intents\",status=\"Done\"}")
            .await,
        2
    );
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("job_latency_seconds{quantile=\"0.99\",queue=\"billing-intents\"}"),
        "{text}"
    );
}
