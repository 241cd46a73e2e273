//! Tenant isolation: another workspace's ids look exactly like ids that do not exist.

use api::ids::{BillingAccountId, OrganizationId, PaymentMethodId, SubscriptionId, WorkspaceId};
use serde_json::{Value, json};
use tests::fake_stripe::FakeStripe;
use tests::{TestApp, assert_ok};

use super::billing::{app_with, attach, subscribe, try_account, workspace};

/// Removes what legitimately differs between two answers (nothing but the id itself).
fn normalize(mut v: Value, id: &str) -> String {
    if let Some(errors) = v.get_mut("errors").and_then(Value::as_array_mut) {
        for e in errors {
            if let Some(ext) = e.get_mut("extensions").and_then(Value::as_object_mut) {
                ext.remove("requestId");
            }
        }
    }
    if id.is_empty() {
        v.to_string()
    } else {
        v.to_string().replace(id, "<id>")
    }
}

#[tokio::test]
async fn foreign_ids_are_indistinguishable_from_missing_ones() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice@a.example");
    let bob = app.user("bob@b.example");
    let ws_a = app.create_workspace(&alice, "A").await;
    let ws_b = app.create_workspace(&bob, "B").await;
    let member_b = app
        .add_member(&bob, &ws_b, "carol@b.example", "VIEWER")
        .await;
    let bob_member = app.member_id(&bob, &ws_b, "bob@b.example").await;
    let missing_ws = api::ids::WorkspaceId::new().encode();
    let missing_member = api::ids::MemberId::new().encode();
    let _ = ws_a;

    let ops: Vec<(&str, &str, bool)> = vec![
        (
            "query($id: ID!) { workspace(id: $id) { id name members { edges { node { id } } } } }",
            "ws",
            false,
        ),
        ("query($id: ID!) { node(id: $id) { id } }", "ws", false),
        ("query($id: ID!) { node(id: $id) { id } }", "member", false),
        (
            "mutation($id: ID!) { renameWorkspace(input: {workspaceId: $id, name: \"x\"}) { workspace { id } } }",
            "ws",
            true,
        ),
        (
            "mutation($id: ID!) { updateWorkspace(input: {workspaceId: $id, description: \"x\"}) { workspace { id } } }",
            "ws",
            true,
        ),
        (
            "mutation($id: ID!) { deleteWorkspace(input: {workspaceId: $id}) { deletedWorkspaceId } }",
            "ws",
            true,
        ),
        (
            "mutation($id: ID!) { addMember(input: {workspaceId: $id, email: \"x@x.example\", role: VIEWER}) { invitation { id } } }",
            "ws",
            true,
        ),
        (
            "mutation($id: ID!) { updateMemberRole(input: {memberId: $id, role: ADMIN}) { member { id } } }",
            "member",
            true,
        ),
        (
            "mutation($id: ID!) { removeMember(input: {memberId: $id}) { deletedMemberId } }",
            "member",
            true,
        ),
    ];
    for (q, kind, is_mutation) in ops {
        let foreign_ids: Vec<&str> = if kind == "ws" {
            vec![&ws_b]
        } else {
            vec![&member_b, &bob_member]
        };
        let missing = if kind == "ws" {
            &missing_ws
        } else {
            &missing_member
        };
        let expected = normalize(app.gql(&alice, q, json!({"id": missing})).await, missing);
        if is_mutation {
            assert!(expected.contains("NOT_FOUND"), "{q}: {expected}");
        } else {
            assert!(expected.contains("null"), "{q}: {expected}");
        }
        for foreign in foreign_ids {
            let got = normalize(app.gql(&alice, q, json!({"id": foreign})).await, foreign);
            assert_eq!(got, expected, "{q} with a foreign id");
        }
        // Malformed ids and ids of another type look missing too.
        for odd in ["", "ws_123", "mem_not-hex", &missing_member, &missing_ws] {
            if odd == missing {
                continue;
            }
            let got = normalize(app.gql(&alice, q, json!({"id": odd})).await, odd);
            assert_eq!(got, expected, "{q} with id {odd:?}");
        }
    }
    // Nothing of B changed, and B is not listed for Alice.
    let r = app
        .gql(
            &alice,
            "{ workspaces { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert!(!r.to_string().contains(&ws_b), "{r}");
    let r = app
        .gql(
            &bob,
            "query($w: ID!) { workspace(id: $w) { name members { edges { node { role } } } } }",
            json!({"w": ws_b}),
        )
        .await;
    assert_eq!(r["data"]["workspace"]["name"], "B");
    assert_eq!(
        r["data"]["workspace"]["members"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(app.sql_count("SELECT count(*) AS n FROM audit_events WHERE actor_id = (SELECT id FROM users WHERE email = 'alice@a.example')").await, 1);
}

#[tokio::test]
async fn deleted_workspaces_disappear_everywhere() {
    let app = TestApp::spawn().await;
    let t = app.user("del@example.com");
    let ws = app.create_workspace(&t, "Gone").await;
    let r = app.gql(&t, "mutation($w: ID!) { deleteWorkspace(input: {workspaceId: $w}) { deletedWorkspaceId } }", json!({"w": ws})).await;
    assert_eq!(
        r["data"]["deleteWorkspace"]["deletedWorkspaceId"],
        ws.as_str()
    );
    let r = app
        .gql(
            &t,
            "query($w: ID!) { workspace(id: $w) { id } workspaces { edges { node { id } } } }",
            json!({"w": ws}),
        )
        .await;
    assert!(r["data"]["workspace"].is_null());
    assert_eq!(
        r["data"]["workspaces"]["edges"].as_array().map(Vec::len),
        Some(0)
    );
    let r = app
        .try_add_member(&t, &ws, "late@example.com", "VIEWER")
        .await;
    tests::assert_code(&r, "NOT_FOUND");
    // The audit trail survives the deletion.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM audit_events WHERE action = 'workspace.delete'")
            .await,
        1
    );
}

// ---------------------------------------------------------------------------------------
// Billing: another workspace's accounts, payment methods and subscriptions.

/// Every table a request could write (users are provisioned on first sight and left out).
const WRITABLE: [&str; 19] = [
    "workspaces",
    "members",
    "organizations",
    "organization_limits",
    "resources",
    "usage_counters",
    "usage_events",
    "audit_events",
    "idempotency_keys",
    "billing_accounts",
    "payment_methods",
    "subscriptions",
    "subscription_items",
    "subscription_capacities",
    "pool_capacities",
    "pool_counters",
    "stripe_intents",
    "invoices",
    "apalis.jobs",
];

/// A fingerprint of every stored row a request could change: equal before and after a
/// request exactly when it changed nothing.
pub(crate) async fn db_state(app: &TestApp) -> i64 {
    let parts: Vec<String> = WRITABLE
        .iter()
        .map(|t| {
            format!("coalesce((SELECT string_agg(t::text, '|' ORDER BY t::text) FROM {t} t), '')")
        })
        .collect();
    app.sql_count(&format!(
        "SELECT ('x' || substr(md5(concat_ws('#', {})), 1, 15))::bit(60)::bigint AS n",
        parts.join(", ")
    ))
    .await
}

/// A tenant with billing: an ASSIGNED workspace, an account with a Stripe customer, a root
/// organization assigned to it, a (trial) subscription and two payment methods.
struct Billed {
    token: String,
    ws: String,
    account: String,
    account_name: String,
    customer: String,
    org: String,
    subscription: String,
    stripe_subscription: String,
    /// `pmt_…` ids, the default first.
    methods: Vec<String>,
    /// The Stripe `pm_…` ids, in the same order.
    stripe_methods: Vec<String>,
}

impl Billed {
    /// Every id and name of this tenant's billing that nobody else may ever read.
    fn secrets(&self) -> Vec<String> {
        let mut s = vec![
            self.ws.clone(),
            self.account.clone(),
            self.account_name.clone(),
            self.customer.clone(),
            self.org.clone(),
            self.subscription.clone(),
            self.stripe_subscription.clone(),
        ];
        s.extend(self.methods.iter().cloned());
        s.extend(self.stripe_methods.iter().cloned());
        s
    }
}

const CREATE_ROOT: &str = "mutation($w: ID!, $a: ID, $k: String) { createOrganization(input: {workspaceId: $w, name: \"Sneaky\", billingAccountId: $a, idempotencyKey: $k}) { organization { id name } } }";

async fn billed(app: &TestApp, fake: &FakeStripe, email: &str, account_name: &str) -> Billed {
    let token = app.user(email);
    let ws = workspace(app, &token, "ASSIGNED").await;
    let r = try_account(app, &token, &ws, account_name, None).await;
    let a = &r["data"]["createBillingAccount"]["billingAccount"];
    let account = a["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    let customer = a["stripeCustomerId"]
        .as_str()
        .expect("customer")
        .to_string();
    let r = app
        .gql(&token, CREATE_ROOT, json!({"w": ws, "a": account}))
        .await;
    let org = r["data"]["createOrganization"]["organization"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("createOrganization: {r}"))
        .to_string();
    let sub = subscribe(
        app,
        &token,
        &account,
        "STARTER",
        json!([{"resource": "users", "quantity": 2}]),
    )
    .await;
    let subscription = sub["id"].as_str().expect("subscription").to_string();
    let stripe_subscription = sub["stripeSubscriptionId"]
        .as_str()
        .expect("stripe subscription")
        .to_string();
    let mut stripe_methods = Vec::new();
    let mut listed = Value::Null;
    for last4 in ["4242", "1881"] {
        let pm = fake.create_card("visa", last4, 12, 2030);
        let r = attach(app, &token, &account, &pm).await;
        assert_ok(&r);
        listed = r["data"]["attachPaymentMethod"]["billingAccount"]["paymentMethods"].clone();
        stripe_methods.push(pm);
    }
    let methods: Vec<String> = stripe_methods
        .iter()
        .map(|pm| {
            listed
                .as_array()
                .and_then(|l| l.iter().find(|m| m["stripePaymentMethodId"] == pm.as_str()))
                .and_then(|m| m["id"].as_str())
                .unwrap_or_else(|| panic!("{pm} not in {listed}"))
                .to_string()
        })
        .collect();
    Billed {
        token,
        ws,
        account,
        account_name: account_name.to_string(),
        customer,
        org,
        subscription,
        stripe_subscription,
        methods,
        stripe_methods,
    }
}

/// Sends `query` as `token` with `foreign` (real ids of another workspace) and with
/// `missing` (well-formed ids that do not exist): the two bodies must be the same text
/// (errors, messages, codes, key order; the differing ids themselves aside), a `NOT_FOUND`,
/// and neither may reach Stripe or change a stored row.
async fn reads_as_missing(
    app: &TestApp,
    fake: &FakeStripe,
    what: &str,
    token: &str,
    query: &str,
    foreign: Value,
    missing: Value,
) {
    let requests = fake.requests().len();
    let state = db_state(app).await;
    let expected = app.gql_text(token, query, missing.clone()).await;
    let got = app.gql_text(token, query, foreign.clone()).await;
    // Only the ids that differ between the two requests may differ between the answers.
    let (mut expected_n, mut got_n) = (expected.clone(), got.clone());
    if let (Some(f), Some(m)) = (foreign.as_object(), missing.as_object()) {
        for (k, fv) in f {
            if let (Some(fs), Some(ms)) = (fv.as_str(), m.get(k).and_then(Value::as_str))
                && fs != ms
            {
                got_n = got_n.replace(fs, "<id>");
                expected_n = expected_n.replace(ms, "<id>");
            }
        }
    }
    assert_eq!(
        got_n, expected_n,
        "{what}: a foreign id must read exactly like a missing one\n foreign {foreign}\n missing {missing}"
    );
    let body: Value = serde_json::from_str(&expected).expect("JSON body");
    assert_eq!(
        tests::error_code(&body),
        Some("NOT_FOUND"),
        "{what}: {expected}"
    );
    assert!(body["data"].is_null(), "{what}: {expected}");
    let after = fake.requests();
    assert_eq!(
        after.len(),
        requests,
        "{what}: reached Stripe: {:?}",
        &after[requests.min(after.len())..]
    );
    assert_eq!(db_state(app).await, state, "{what}: stored data changed");
}

/// [`reads_as_missing`] without an idempotency key and with a fresh one on each request.
async fn reads_as_missing_keyed_or_not(
    app: &TestApp,
    fake: &FakeStripe,
    what: &str,
    token: &str,
    query: &str,
    foreign: Value,
    missing: Value,
) {
    reads_as_missing(
        app,
        fake,
        what,
        token,
        query,
        foreign.clone(),
        missing.clone(),
    )
    .await;
    let (mut f, mut m) = (foreign, missing);
    f["k"] = json!(format!("iso-{}", uuid::Uuid::now_v7()));
    m["k"] = json!(format!("iso-{}", uuid::Uuid::now_v7()));
    reads_as_missing(
        app,
        fake,
        &format!("{what} (with a key)"),
        token,
        query,
        f,
        m,
    )
    .await;
}

const B_CREATE_ACCOUNT: &str = "mutation($w: ID!, $k: String) { createBillingAccount(input: {workspaceId: $w, name: \"Intruder\", email: \"intruder@example.com\", currency: \"usd\", idempotencyKey: $k}) { billingAccount { id name stripeCustomerId } } }";
const B_UPDATE_ACCOUNT: &str = "mutation($a: ID!, $k: String) { updateBillingAccount(input: {billingAccountId: $a, name: \"Hijacked\", email: \"intruder@example.com\", idempotencyKey: $k}) { billingAccount { id name email stripeCustomerId address { city country } } } }";
const B_DELETE_ACCOUNT: &str = "mutation($a: ID!, $k: String) { deleteBillingAccount(input: {billingAccountId: $a, idempotencyKey: $k}) { deletedBillingAccountId } }";
const B_ASSIGN: &str = "mutation($o: ID!, $a: ID!, $k: String) { assignBillingAccount(input: {organizationId: $o, billingAccountId: $a, idempotencyKey: $k}) { billingAccountId organization { id name } } }";
const B_SETUP_INTENT: &str = "mutation($a: ID!, $k: String) { createSetupIntent(input: {billingAccountId: $a, idempotencyKey: $k}) { setupIntentId clientSecret publishableKey } }";
const B_ATTACH: &str = "mutation($a: ID!, $p: String!, $k: String) { attachPaymentMethod(input: {billingAccountId: $a, paymentMethodId: $p, idempotencyKey: $k}) { billingAccount { id name paymentMethods { id stripePaymentMethodId isDefault } } } }";
const B_SET_DEFAULT: &str = "mutation($p: ID!, $k: String) { setDefaultPaymentMethod(input: {paymentMethodId: $p, idempotencyKey: $k}) { billingAccount { id name paymentMethods { id isDefault } } } }";
const B_DETACH: &str = "mutation($p: ID!, $k: String) { detachPaymentMethod(input: {paymentMethodId: $p, idempotencyKey: $k}) { billingAccount { id name paymentMethods { id isDefault } } } }";
const B_SUBSCRIBE: &str = "mutation($a: ID!, $k: String) { createSubscription(input: {billingAccountId: $a, plan: STARTER, quantities: [{resource: \"users\", quantity: 1}], metadata: [{key: \"by\", value: \"intruder\"}], idempotencyKey: $k}) { subscription { id stripeSubscriptionId status } } }";
const B_UPDATE_SUB: &str = "mutation($s: ID!, $k: String) { updateSubscription(input: {subscriptionId: $s, quantities: [{resource: \"users\", quantity: 50}], idempotencyKey: $k}) { subscription { id stripeSubscriptionId quantities { resource quantity } } } }";
const B_CANCEL_SUB: &str = "mutation($s: ID!, $k: String) { cancelSubscription(input: {subscriptionId: $s, idempotencyKey: $k}) { subscription { id stripeSubscriptionId cancelAtPeriodEnd } } }";

fn missing_ws() -> String {
    WorkspaceId::new().encode()
}
fn missing_account() -> String {
    BillingAccountId::new().encode()
}
fn missing_org() -> String {
    OrganizationId::new().encode()
}
fn missing_method() -> String {
    PaymentMethodId::new().encode()
}
fn missing_subscription() -> String {
    SubscriptionId::new().encode()
}

#[tokio::test]
async fn every_billing_mutation_answers_a_stranger_as_for_a_missing_id() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let a = billed(&app, &fake, "alice@a.example", "Alice Secret Ledger").await;
    let b = billed(&app, &fake, "bob@b.example", "Bob Ledger").await;
    // Carol belongs to no workspace at all.
    let carol = app.user("carol@c.example");
    assert_ok(&app.gql(&carol, "{ viewer { id } }", json!({})).await);
    // A card collected in the browser, not attached to anyone yet.
    let fresh_pm = fake.create_card("visa", "0005", 1, 2031);
    for (who, token) in [
        ("a member of another workspace", &b.token),
        ("a member of none", &carol),
    ] {
        let cases: Vec<(&str, &str, Value, Value)> = vec![
            (
                "createBillingAccount in another workspace",
                B_CREATE_ACCOUNT,
                json!({"w": a.ws}),
                json!({"w": missing_ws()}),
            ),
            (
                "updateBillingAccount",
                B_UPDATE_ACCOUNT,
                json!({"a": a.account}),
                json!({"a": missing_account()}),
            ),
            (
                "deleteBillingAccount",
                B_DELETE_ACCOUNT,
                json!({"a": a.account}),
                json!({"a": missing_account()}),
            ),
            (
                "assignBillingAccount of a foreign account to a foreign root",
                B_ASSIGN,
                json!({"o": a.org, "a": a.account}),
                json!({"o": missing_org(), "a": missing_account()}),
            ),
            (
                "assignBillingAccount to a foreign root",
                B_ASSIGN,
                json!({"o": a.org, "a": b.account}),
                json!({"o": missing_org(), "a": b.account}),
            ),
            (
                "createSetupIntent",
                B_SETUP_INTENT,
                json!({"a": a.account}),
                json!({"a": missing_account()}),
            ),
            (
                "attachPaymentMethod",
                B_ATTACH,
                json!({"a": a.account, "p": fresh_pm}),
                json!({"a": missing_account(), "p": fresh_pm}),
            ),
            (
                "setDefaultPaymentMethod",
                B_SET_DEFAULT,
                json!({"p": a.methods[1]}),
                json!({"p": missing_method()}),
            ),
            (
                "detachPaymentMethod",
                B_DETACH,
                json!({"p": a.methods[1]}),
                json!({"p": missing_method()}),
            ),
            (
                "detachPaymentMethod of the default",
                B_DETACH,
                json!({"p": a.methods[0]}),
                json!({"p": missing_method()}),
            ),
            (
                "createSubscription",
                B_SUBSCRIBE,
                json!({"a": a.account}),
                json!({"a": missing_account()}),
            ),
            (
                "updateSubscription",
                B_UPDATE_SUB,
                json!({"s": a.subscription}),
                json!({"s": missing_subscription()}),
            ),
            (
                "cancelSubscription",
                B_CANCEL_SUB,
                json!({"s": a.subscription}),
                json!({"s": missing_subscription()}),
            ),
        ];
        for (what, query, foreign, missing) in cases {
            let what = format!("{what}, by {who}");
            reads_as_missing_keyed_or_not(&app, &fake, &what, token, query, foreign, missing).await;
        }
    }
    // Bob, owner of his own ASSIGNED workspace, with a foreign account on his own root and
    // for a new root of his.
    reads_as_missing_keyed_or_not(
        &app,
        &fake,
        "assignBillingAccount of a foreign account to one's own root",
        &b.token,
        B_ASSIGN,
        json!({"o": b.org, "a": a.account}),
        json!({"o": b.org, "a": missing_account()}),
    )
    .await;
    reads_as_missing_keyed_or_not(
        &app,
        &fake,
        "createOrganization with a foreign billing account",
        &b.token,
        CREATE_ROOT,
        json!({"w": b.ws, "a": a.account}),
        json!({"w": b.ws, "a": missing_account()}),
    )
    .await;
    // The same mutations work for Alice (the cases above were refused for who asked, not
    // for what they asked): her account is still hers and whole.
    let r = app
        .gql(
            &a.token,
            "query($w: ID!) { workspace(id: $w) { billingAccounts { id name subscriptions { id cancelAtPeriodEnd quantities { resource quantity } } paymentMethods { id isDefault } } } }",
            json!({"w": a.ws}),
        )
        .await;
    assert_ok(&r);
    let acc = &r["data"]["workspace"]["billingAccounts"][0];
    assert_eq!(acc["name"], a.account_name.as_str(), "{r}");
    assert_eq!(acc["subscriptions"][0]["cancelAtPeriodEnd"], false, "{r}");
    assert_eq!(
        acc["paymentMethods"].as_array().map(Vec::len),
        Some(2),
        "{r}"
    );
    assert_ok(
        &app.gql(
            &a.token,
            B_UPDATE_ACCOUNT,
            json!({"a": a.account, "k": null}),
        )
        .await,
    );
}

#[tokio::test]
async fn an_owner_cannot_assign_another_workspace_s_account_to_a_root_of_theirs() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let a = billed(&app, &fake, "alice@a.example", "Alice Ledger").await;
    let b = billed(&app, &fake, "bob@b.example", "Bob Secret Ledger").await;
    reads_as_missing_keyed_or_not(
        &app,
        &fake,
        "assignBillingAccount of B's account to A's root, by A's owner",
        &a.token,
        B_ASSIGN,
        json!({"o": a.org, "a": b.account}),
        json!({"o": a.org, "a": missing_account()}),
    )
    .await;
    reads_as_missing_keyed_or_not(
        &app,
        &fake,
        "createOrganization in A with B's account, by A's owner",
        &a.token,
        CREATE_ROOT,
        json!({"w": a.ws, "a": b.account}),
        json!({"w": a.ws, "a": missing_account()}),
    )
    .await;
    // A's root still draws from A's account, and nothing of A's draws from B's.
    let uuid_of = |id: &str, decoded: Option<uuid::Uuid>| {
        decoded.unwrap_or_else(|| panic!("{id} does not decode"))
    };
    let org = uuid_of(&a.org, OrganizationId::decode(&a.org).map(|o| o.0));
    let acc_a = uuid_of(
        &a.account,
        BillingAccountId::decode(&a.account).map(|x| x.0),
    );
    let acc_b = uuid_of(
        &b.account,
        BillingAccountId::decode(&b.account).map(|x| x.0),
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM organizations WHERE id = '{org}' AND billing_account_id = '{acc_a}'"
        ))
        .await,
        1
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM organizations o JOIN billing_accounts b ON b.id = o.billing_account_id
             WHERE b.id = '{acc_b}' AND o.workspace_id <> b.workspace_id"
        ))
        .await,
        0
    );
    // The same assignment within A works (so the refusal above was about B's account).
    let second = super::billing::account(&app, &a.token, &a.ws, "Alice Second").await;
    let r = app
        .gql(
            &a.token,
            B_ASSIGN,
            json!({"o": a.org, "a": second, "k": null}),
        )
        .await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["assignBillingAccount"]["billingAccountId"],
        second.as_str()
    );
}

#[tokio::test]
async fn billing_data_never_reaches_strangers_through_other_paths() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let a = billed(&app, &fake, "alice@a.example", "Alice Secret Ledger").await;
    let b = billed(&app, &fake, "bob@b.example", "Bob Ledger").await;
    let carol = app.user("carol@c.example");
    assert_ok(&app.gql(&carol, "{ viewer { id } }", json!({})).await);
    // Refetching by id: billing objects are not nodes, and foreign ones are as absent as
    // missing ones.
    let node = "query($id: ID!) { node(id: $id) { __typename id } }";
    let workspace_q = "query($id: ID!) { workspace(id: $id) { id billingMode billingAccounts { id name email stripeCustomerId subscriptions { id } paymentMethods { id } } billingSummary { projectedCents byBillingAccount { billingAccount { id name } } } } }";
    let org_q = "query($id: ID!) { organization(id: $id) { id name workspace { id billingAccounts { id name } } } }";
    let pairs: Vec<(&str, String, String)> = vec![
        (node, a.account.clone(), missing_account()),
        (node, a.subscription.clone(), missing_subscription()),
        (node, a.methods[0].clone(), missing_method()),
        (node, a.ws.clone(), missing_ws()),
        (node, a.org.clone(), missing_org()),
        (node, a.customer.clone(), "cus_doesnotexist0000".to_string()),
        (workspace_q, a.ws.clone(), missing_ws()),
        (org_q, a.org.clone(), missing_org()),
    ];
    let mut bodies = Vec::new();
    for token in [&b.token, &carol] {
        for (q, foreign, missing) in &pairs {
            let expected = app.gql_text(token, q, json!({"id": missing})).await;
            let got = app.gql_text(token, q, json!({"id": foreign})).await;
            assert_eq!(
                got.replace(foreign.as_str(), "<id>"),
                expected.replace(missing.as_str(), "<id>"),
                "{q} with {foreign}"
            );
            bodies.push(got);
        }
    }
    // Everything Bob can see of his own workspace, where billing is shown in full.
    let own = "{ workspaces(first: 5) { edges { node { id name billingAccounts { id name email stripeCustomerId address { city country }
        subscriptions { id stripeSubscriptionId metadata { key value } quantities { resource quantity } }
        paymentMethods { id stripePaymentMethodId } invoices(first: 5) { edges { node { id stripeInvoiceId } } } upcomingInvoice { amountDue } }
        billingSummary { projectedCents byResource { resource capacity } byBillingAccount { billingAccount { id name } monthlyCents } }
        auditLog(first: 50) { edges { node { action targetId summary } } }
        organizations(first: 10) { edges { node { id name usage { resource subtree effectiveLimit available } } } } } } } }";
    for token in [&b.token, &carol] {
        let r = app.gql_text(token, own, json!({})).await;
        assert_ok(&serde_json::from_str(&r).expect("JSON"));
        bodies.push(r);
    }
    // A usage error names the pool that refused: Bob's own, never Alice's.
    let r = app.record(&b.token, &b.org, "users", 1_000).await;
    assert_eq!(tests::error_code(&r), Some("LIMIT_EXCEEDED"), "{r}");
    bodies.push(r.to_string());
    for body in &bodies {
        for secret in a.secrets() {
            assert!(
                !body.contains(&secret),
                "a stranger's answer holds {secret:?} of another workspace: {body}"
            );
        }
    }
    // The same query shows Alice her own billing: the sweep above could see it.
    let mine = app.gql_text(&a.token, own, json!({})).await;
    for secret in [
        &a.account,
        &a.account_name,
        &a.customer,
        &a.subscription,
        &a.methods[1],
    ] {
        assert!(
            mine.contains(secret.as_str()),
            "{secret} missing from {mine}"
        );
    }
}

#[tokio::test]
async fn an_idempotency_key_never_replays_another_tenant_s_billing_result() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let a = billed(&app, &fake, "alice@a.example", "Alice Secret Ledger").await;
    let b = billed(&app, &fake, "bob@b.example", "Bob Ledger").await;
    // Alice's successful requests, each under a key...
    let first: Vec<(&str, &str, Value, Value)> = vec![
        (
            "updateBillingAccount",
            B_UPDATE_ACCOUNT,
            json!({"a": a.account, "k": "shared-1"}),
            json!({"a": missing_account(), "k": "fresh-1"}),
        ),
        (
            "createBillingAccount",
            B_CREATE_ACCOUNT,
            json!({"w": a.ws, "k": "shared-2"}),
            json!({"w": missing_ws(), "k": "fresh-2"}),
        ),
        (
            "createSetupIntent",
            B_SETUP_INTENT,
            json!({"a": a.account, "k": "shared-3"}),
            json!({"a": missing_account(), "k": "fresh-3"}),
        ),
        (
            "assignBillingAccount",
            B_ASSIGN,
            json!({"o": a.org, "a": a.account, "k": "shared-4"}),
            json!({"o": missing_org(), "a": missing_account(), "k": "fresh-4"}),
        ),
        (
            "cancelSubscription",
            B_CANCEL_SUB,
            json!({"s": a.subscription, "k": "shared-5"}),
            json!({"s": missing_subscription(), "k": "fresh-5"}),
        ),
    ];
    for (what, q, vars, _) in &first {
        let r = app.gql(&a.token, q, vars.clone()).await;
        assert_ok(&r);
        assert!(
            r.to_string().contains("Hijacked")
                || r.to_string().contains("Intruder")
                || r.to_string().contains(&a.account)
                || r.to_string().contains(&a.subscription)
                || r.to_string().contains("seti_"),
            "{what}: {r}"
        );
    }
    // ... repeated word for word by Bob: his keys are his own, so he gets what any
    // request of his for a missing id gets, not Alice's stored answers.
    for (what, q, foreign, missing) in first {
        let what = format!("{what} repeated by a stranger under the owner's key");
        reads_as_missing(&app, &fake, &what, &b.token, q, foreign, missing).await;
    }
}

#[tokio::test]
async fn a_member_removed_while_a_billing_request_was_pending_cannot_finish_or_read_it() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let a = billed(&app, &fake, "alice@a.example", "Alice Secret Ledger").await;
    // Dave is a second owner of A.
    app.add_member(&a.token, &a.ws, "dave@a.example", "OWNER")
        .await;
    let dave = app.user("dave@a.example");
    let r = app
        .gql(
            &dave,
            "query($w: ID!) { workspace(id: $w) { viewerRole } }",
            json!({"w": a.ws}),
        )
        .await;
    assert_eq!(r["data"]["workspace"]["viewerRole"], "OWNER", "{r}");
    let fresh_pm = fake.create_card("visa", "0005", 1, 2031);
    let ops: Vec<(&str, &str, Value, Value)> = vec![
        (
            "createBillingAccount",
            B_CREATE_ACCOUNT,
            json!({"w": a.ws}),
            json!({"w": missing_ws()}),
        ),
        (
            "updateBillingAccount",
            B_UPDATE_ACCOUNT,
            json!({"a": a.account}),
            json!({"a": missing_account()}),
        ),
        (
            "attachPaymentMethod",
            B_ATTACH,
            json!({"a": a.account, "p": fresh_pm}),
            json!({"a": missing_account(), "p": fresh_pm}),
        ),
        (
            "setDefaultPaymentMethod",
            B_SET_DEFAULT,
            json!({"p": a.methods[1]}),
            json!({"p": missing_method()}),
        ),
        (
            "detachPaymentMethod",
            B_DETACH,
            json!({"p": a.methods[1]}),
            json!({"p": missing_method()}),
        ),
        (
            "createSubscription",
            B_SUBSCRIBE,
            json!({"a": a.account}),
            json!({"a": missing_account()}),
        ),
        (
            "updateSubscription",
            B_UPDATE_SUB,
            json!({"s": a.subscription}),
            json!({"s": missing_subscription()}),
        ),
        (
            "cancelSubscription",
            B_CANCEL_SUB,
            json!({"s": a.subscription}),
            json!({"s": missing_subscription()}),
        ),
    ];
    // His changes meet a Stripe outage: each request stays pending under his key.
    for (i, (what, q, foreign, _)) in ops.iter().enumerate() {
        fake.fail_next(50, 503);
        let mut vars = foreign.clone();
        vars["k"] = json!(format!("dave-{i}"));
        let r = app.gql(&dave, q, vars).await;
        assert_eq!(
            tests::error_code(&r),
            Some("PAYMENT_PROVIDER_UNAVAILABLE"),
            "{what}: {r}"
        );
    }
    fake.fail_next(0, 503);
    // Alice removes him. He is now a stranger to A.
    let member = app.member_id(&a.token, &a.ws, "dave@a.example").await;
    assert_ok(
        &app.gql(
            &a.token,
            "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }",
            json!({"m": member}),
        )
        .await,
    );
    let r = app
        .gql(
            &dave,
            "query($w: ID!) { workspace(id: $w) { id } }",
            json!({"w": a.ws}),
        )
        .await;
    assert!(r["data"]["workspace"].is_null(), "{r}");
    // His retries under the same keys must read like any request of his for a missing
    // id: not finish the change in Stripe, not show him anything of A.
    let mut failures = Vec::new();
    for (i, (what, q, foreign, missing)) in ops.into_iter().enumerate() {
        let mut m = missing.clone();
        m["k"] = json!(format!("dave-fresh-{i}"));
        let expected = app.gql_text(&dave, q, m).await;
        let requests = fake.requests().len();
        let state = db_state(&app).await;
        let mut f = foreign.clone();
        f["k"] = json!(format!("dave-{i}"));
        let got = app.gql_text(&dave, q, f).await;
        let stripe_calls: Vec<String> = fake.requests()[requests..]
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        let changed = db_state(&app).await != state;
        let leaked: Vec<String> = a
            .secrets()
            .into_iter()
            .filter(|s| got.contains(s.as_str()))
            .collect();
        let mut normalized = got.clone();
        if let (Some(fo), Some(mo)) = (foreign.as_object(), missing.as_object()) {
            for (k, fv) in fo {
                if let (Some(fs), Some(ms)) = (fv.as_str(), mo.get(k).and_then(Value::as_str))
                    && fs != ms
                {
                    normalized = normalized.replace(fs, ms);
                }
            }
        }
        if normalized != expected || !stripe_calls.is_empty() || changed || !leaked.is_empty() {
            failures.push(format!(
                "{what}\n   got      {got}\n   expected {expected}\n   Stripe calls {stripe_calls:?}\n   stored rows changed: {changed}\n   leaked {leaked:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "a removed member's retries must read as for missing ids:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_payment_method_of_another_workspace_cannot_be_attached_elsewhere() {
    let fake = FakeStripe::start().await;
    let app = app_with(&fake).await;
    let a = billed(&app, &fake, "alice@a.example", "Alice Secret Ledger").await;
    let b = billed(&app, &fake, "bob@b.example", "Bob Ledger").await;
    let requests = fake.requests().len();
    let state = db_state(&app).await;
    for pm in &a.stripe_methods {
        let r = app
            .gql(&b.token, B_ATTACH, json!({"a": b.account, "p": pm}))
            .await;
        assert!(
            r.get("errors").is_some(),
            "{pm} attached to another workspace: {r}"
        );
        assert!(r["data"].is_null(), "{r}");
        for secret in a.secrets().into_iter().filter(|s| s != pm) {
            assert!(!r.to_string().contains(&secret), "{secret} in {r}");
        }
        assert_eq!(
            fake.payment_method(pm).expect("pm")["customer"],
            a.customer.as_str(),
            "still attached to its own customer"
        );
    }
    assert_eq!(fake.requests().len(), requests, "reached Stripe");
    assert_eq!(db_state(&app).await, state, "stored data changed");
}
