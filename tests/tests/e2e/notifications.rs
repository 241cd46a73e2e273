//! Notifications: integration settings, and deliveries to real receivers on loopback (HTTP
//! receivers in the test, an SMTP sink in Python), retried on a clock the test controls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::domain::notifications::standardwebhooks::Webhook;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tests::smtp::SmtpSink;
use tests::{Options, TestApp, assert_code, assert_ok};

use super::webhooks::Worker;

pub(crate) const CREATE: &str =
    "mutation($w: ID!, $u: String!, $t: [NotificationEventType!]! = [], $k: String) {
  createWebhookEndpoint(input: {workspaceId: $w, url: $u, eventTypes: $t, idempotencyKey: $k}) {
    webhookEndpoint { id url eventTypes createdAt } secret } }";
pub(crate) const UPDATE: &str = "mutation($w: ID!, $s: String, $r: [EmailRecipientsInput!], $k: String) {
  updateIntegrationSettings(input: {workspaceId: $w, slackWebhookUrl: $s, emailRecipients: $r, idempotencyKey: $k}) {
    integrations { slackWebhookConfigured slackWebhookUrlMasked emailRecipients { category addresses } } } }";
const UPDATE_RECIPIENTS: &str = "mutation($w: ID!, $r: [EmailRecipientsInput!]) {
  updateIntegrationSettings(input: {workspaceId: $w, emailRecipients: $r}) {
    integrations { slackWebhookConfigured emailRecipients { category addresses } } } }";
const DELETE: &str = "mutation($e: ID!) { deleteWebhookEndpoint(input: {webhookEndpointId: $e}) { deletedWebhookEndpointId } }";
const READ: &str = "query($w: ID!) { workspace(id: $w) { integrations {
  webhookEndpoints { id url eventTypes createdAt } slackWebhookConfigured slackWebhookUrlMasked
  emailRecipients { category addresses } } } }";
const DELIVERIES: &str = "query($w: ID!, $s: NotificationDeliveryStatus) { workspace(id: $w) {
  notificationDeliveries(first: 50, status: $s) { edges { node {
    id event { id type wireType category data createdAt } channel destination status attempts
    lastError lastAttemptAt nextAttemptAt deliveredAt
    attemptLog { number statusCode error durationMs succeeded startedAt finishedAt } } } } } }";

/// A server that lets notifications go to loopback receivers (and e-mail to `smtp`).
async fn app(smtp: Option<&SmtpSink>) -> TestApp {
    let mut env = HashMap::from([(
        "INTEGRATIONS_ALLOW_HTTP_LOOPBACK".to_string(),
        "true".to_string(),
    )]);
    if let Some(s) = smtp {
        env.insert("SMTP_URL".into(), s.url());
        env.insert(
            "SMTP_FROM".into(),
            "Workspaces <notifications@example.com>".into(),
        );
    }
    TestApp::with(Options { env }).await
}

type Hits = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// An HTTP receiver on loopback: answers the n-th request with the n-th status of its plan
/// (the last one repeating) and keeps every request.
struct Receiver {
    url: String,
    hits: Hits,
}

async fn receive(
    State((hits, plan)): State<(Hits, Arc<Vec<u16>>)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut hits = hits.lock().expect("hits");
    let status = plan.get(hits.len()).or(plan.last()).copied().unwrap_or(200);
    hits.push((headers, body));
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}

impl Receiver {
    async fn start(plan: &[u16]) -> Self {
        let hits: Hits = Arc::default();
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state((hits.clone(), Arc::new(plan.to_vec())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url: format!("http://{addr}/hook"),
            hits,
        }
    }

    fn hits(&self) -> Vec<(HeaderMap, Bytes)> {
        self.hits.lock().expect("hits").clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<(HeaderMap, Bytes)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver got {} of {n} requests",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Creates a webhook endpoint; (its id, its secret).
async fn endpoint(
    app: &TestApp,
    owner: &str,
    ws: &str,
    url: &str,
    types: Value,
) -> (String, String) {
    let r = app
        .gql(owner, CREATE, json!({"w": ws, "u": url, "t": types}))
        .await;
    assert_ok(&r);
    let c = &r["data"]["createWebhookEndpoint"];
    (
        c["webhookEndpoint"]["id"].as_str().expect("id").to_string(),
        c["secret"].as_str().expect("secret").to_string(),
    )
}

/// The workspace's deliveries (newest first), as `token` reads them.
async fn deliveries(app: &TestApp, token: &str, ws: &str) -> Vec<Value> {
    let r = app.gql(token, DELIVERIES, json!({"w": ws})).await;
    assert_ok(&r);
    r["data"]["workspace"]["notificationDeliveries"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"].clone())
        // `add_member` invites first: the invitee's e-mail is another story (`invitations`).
        .filter(|d| d["event"]["type"] != "MEMBER_INVITED")
        .collect()
}

/// Waits until some delivery satisfies `done`; it.
async fn delivery_where(
    app: &TestApp,
    token: &str,
    ws: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = deliveries(app, token, ws).await;
        if let Some(d) = all.iter().find(|d| done(d)) {
            return d.clone();
        }
        assert!(Instant::now() < deadline, "no delivery {what}: {all:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn uuid_of(id: &str) -> String {
    id.split_once('_')
        .map(|(_, hex)| hex.to_string())
        .expect("a prefixed id")
}

/// Makes delivery `id`'s next attempt due now (the test's clock), then runs the sweep that
/// enqueues due attempts, as the periodic `notification-retry` does.
async fn retry_now(app: &TestApp, id: &str, also: &str) {
    let n = app
        .sql_count(&format!(
            "WITH d AS (UPDATE notification_deliveries SET next_attempt_at = now(){also}
                         WHERE id = '{}' AND status = 'PENDING' RETURNING 1)
             SELECT count(*) AS n FROM d",
            uuid_of(id)
        ))
        .await;
    assert_eq!(n, 1, "delivery {id} is not pending");
    let enqueued = api::domain::notifications::enqueue_due(&app.pool)
        .await
        .expect("sweep");
    assert_eq!(enqueued, 1);
    // A second sweep finds the job there and enqueues nothing.
    assert_eq!(
        api::domain::notifications::enqueue_due(&app.pool)
            .await
            .expect("sweep"),
        0
    );
}

fn finished(d: &Value, attempts: i64) -> bool {
    d["attempts"] == attempts
        && d["attemptLog"].as_array().is_some_and(|l| {
            l.len() == attempts as usize && !l[attempts as usize - 1]["finishedAt"].is_null()
        })
}

fn seconds_between(a: &Value, b: &Value) -> i64 {
    let t = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
            .expect("RFC 3339")
            .timestamp_millis()
    };
    (t(b) - t(a)) / 1000
}

#[tokio::test]
async fn integration_settings_are_validated_owner_only_and_never_show_secrets() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Integrated").await;
    app.add_member(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    let admin = app.user("admin@example.com");
    let viewer = app.user("viewer@example.com");
    // Nothing configured yet: every category listed, empty.
    let r = app.gql(&admin, READ, json!({"w": ws})).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["workspace"]["integrations"],
        json!({"webhookEndpoints": [], "slackWebhookConfigured": false, "slackWebhookUrlMasked": null,
               "emailRecipients": [
                   {"category": "QUOTA_WARNINGS", "addresses": []},
                   {"category": "SECURITY_ALERTS", "addresses": []},
                   {"category": "BILLING_NOTIFICATIONS", "addresses": []},
                   {"category": "APPROVAL_REQUESTS", "addresses": []}]})
    );
    assert_code(&app.gql(&viewer, READ, json!({"w": ws})).await, "FORBIDDEN");
    // Owners create endpoints; the secret comes back once, in Standard Webhooks' format.
    let vars = json!({"w": ws, "u": "https://hooks.example.com/in", "t": ["QUOTA_WARNING", "OWNER_ADDED", "QUOTA_WARNING"], "k": "we-1"});
    assert_code(&app.gql(&admin, CREATE, vars.clone()).await, "FORBIDDEN");
    let r = app.gql(&owner, CREATE, vars.clone()).await;
    assert_ok(&r);
    let created = &r["data"]["createWebhookEndpoint"];
    let secret = created["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert!(Webhook::new(&secret).is_ok());
    assert_eq!(
        created["webhookEndpoint"]["eventTypes"],
        json!(["QUOTA_WARNING", "OWNER_ADDED"])
    );
    let id = created["webhookEndpoint"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(id.starts_with("we_"), "{id}");
    // A repeat with the same key is the same endpoint and secret (the client lost the answer),
    // read again from its sealed copy: no table holds it in clear, the idempotency key's
    // stored result and rendering included.
    let again = app.gql(&owner, CREATE, vars).await;
    assert_eq!(again["data"], r["data"]);
    let body = secret.trim_start_matches("whsec_");
    assert_eq!(app.columns_containing(&[body]).await, Vec::<String>::new());
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM idempotency_keys WHERE key = 'we-1' AND response IS NOT NULL"
        )
        .await,
        1
    );
    // Readers see the endpoint, never the secret: the types have no field that holds one.
    let r = app.gql(&admin, READ, json!({"w": ws})).await;
    assert_eq!(
        r["data"]["workspace"]["integrations"]["webhookEndpoints"][0]["url"],
        "https://hooks.example.com/in"
    );
    let fields = app
        .gql(
            &admin,
            "{ a: __type(name: \"WebhookEndpoint\") { fields { name } } b: __type(name: \"IntegrationSettings\") { fields { name } } }",
            json!({}),
        )
        .await;
    let names = fields.to_string().to_lowercase();
    assert!(
        !names.contains("secret") && !names.contains("\"slackwebhookurl\""),
        "{names}"
    );
    // Secrets are sealed at rest.
    let at_rest = app
        .sql_count(&format!(
            "SELECT count(*) AS n FROM webhook_endpoints
              WHERE position(convert_to('{}', 'UTF8') IN secret_sealed) > 0
                 OR position(convert_to('{}', 'UTF8') IN secret_sealed) > 0",
            secret,
            secret.trim_start_matches("whsec_")
        ))
        .await;
    assert_eq!(at_rest, 0);
    // URLs: https to a public host; no http, loopback or private address without the
    // development flag; credentials refused; at most 2048 bytes.
    for url in [
        "http://hooks.example.com/in",
        "http://127.0.0.1:9/in",
        "https://localhost/in",
        "https://10.0.0.7/in",
        "https://169.254.169.254/latest/meta-data",
        "https://user:pw@hooks.example.com/in",
        "ftp://hooks.example.com/in",
        "hooks.example.com/in",
    ] {
        let r = app.gql(&owner, CREATE, json!({"w": ws, "u": url})).await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], "url", "{url}: {r}");
    }
    let long = format!("https://hooks.example.com/{}", "a".repeat(2048));
    let r = app.gql(&owner, CREATE, json!({"w": ws, "u": long})).await;
    assert_code(&r, "BAD_USER_INPUT");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("2048") && m.len() < 200),
        "{r}"
    );
    // At most ten endpoints.
    for i in 1..10 {
        endpoint(
            &app,
            &owner,
            &ws,
            &format!("https://hooks.example.com/{i}"),
            json!([]),
        )
        .await;
    }
    let r = app
        .gql(
            &owner,
            CREATE,
            json!({"w": ws, "u": "https://hooks.example.com/11"}),
        )
        .await;
    assert_code(&r, "LIMIT_EXCEEDED");
    // Slack and recipients: the URL shown masked, addresses normalized and deduplicated.
    let slack = "https://hooks.slack.com/services/T0/B0/secretXYZ1";
    let r = app
        .gql(
            &owner,
            UPDATE,
            json!({"w": ws, "s": slack, "r": [{"category": "SECURITY_ALERTS", "addresses": ["Sec@Example.com", "sec@example.com", "ops@example.com"]}]}),
        )
        .await;
    assert_ok(&r);
    let settings = &r["data"]["updateIntegrationSettings"]["integrations"];
    assert_eq!(settings["slackWebhookConfigured"], true);
    assert_eq!(
        settings["slackWebhookUrlMasked"],
        "https://hooks.slack.com/…XYZ1"
    );
    assert_eq!(
        settings["emailRecipients"][1],
        json!({"category": "SECURITY_ALERTS", "addresses": ["sec@example.com", "ops@example.com"]})
    );
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM integration_settings WHERE position('secretXYZ1'::bytea IN slack_url_sealed) > 0"
        )
        .await,
        0
    );
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM audit_events WHERE summary::text LIKE '%secretXYZ1%'"
        )
        .await,
        0
    );
    // Recipients only: Slack keeps its URL. Too many recipients, a bad address, a category
    // twice, an http Slack URL: refused, naming the field.
    let only_recipients =
        json!({"w": ws, "r": [{"category": "QUOTA_WARNINGS", "addresses": ["q@example.com"]}]});
    let r = app.gql(&owner, UPDATE_RECIPIENTS, only_recipients).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["updateIntegrationSettings"]["integrations"]["slackWebhookConfigured"],
        true
    );
    let many: Vec<String> = (0..21).map(|i| format!("p{i}@example.com")).collect();
    for (vars, field) in [
        (
            json!({"w": ws, "r": [{"category": "QUOTA_WARNINGS", "addresses": many}]}),
            "emailRecipients",
        ),
        (
            json!({"w": ws, "r": [{"category": "QUOTA_WARNINGS", "addresses": ["not an address"]}]}),
            "emailRecipients",
        ),
        (
            json!({"w": ws, "r": [{"category": "QUOTA_WARNINGS", "addresses": []}, {"category": "QUOTA_WARNINGS", "addresses": []}]}),
            "emailRecipients",
        ),
        (
            json!({"w": ws, "s": "http://hooks.slack.com/services/x"}),
            "slackWebhookUrl",
        ),
    ] {
        let r = app.gql(&owner, UPDATE, vars.clone()).await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], field, "{vars}: {r}");
    }
    assert_code(
        &app.gql(&admin, UPDATE, json!({"w": ws, "s": null})).await,
        "FORBIDDEN",
    );
    // Null removes Slack.
    let r = app.gql(&owner, UPDATE, json!({"w": ws, "s": null})).await;
    assert_eq!(
        r["data"]["updateIntegrationSettings"]["integrations"]["slackWebhookConfigured"], false,
        "{r}"
    );
    // A stranger's ids read exactly like missing ones.
    let stranger = app.user("stranger@example.com");
    let missing_ws = "ws_0193a0a0a0a0a0a0a0a0a0a0a0a0a0a0";
    let missing_we = "we_0193a0a0a0a0a0a0a0a0a0a0a0a0a0a0";
    for (foreign, missing) in [
        (
            app.gql(
                &stranger,
                CREATE,
                json!({"w": ws, "u": "https://x.example.com/"}),
            )
            .await,
            app.gql(
                &stranger,
                CREATE,
                json!({"w": missing_ws, "u": "https://x.example.com/"}),
            )
            .await,
        ),
        (
            app.gql(&stranger, UPDATE, json!({"w": ws, "s": null}))
                .await,
            app.gql(&stranger, UPDATE, json!({"w": missing_ws, "s": null}))
                .await,
        ),
        (
            app.gql(&stranger, DELETE, json!({"e": id})).await,
            app.gql(&stranger, DELETE, json!({"e": missing_we})).await,
        ),
        (
            app.gql(&stranger, DELETE, json!({"e": id})).await,
            app.gql(&stranger, DELETE, json!({"e": "we_not-an-id"}))
                .await,
        ),
    ] {
        assert_code(&foreign, "NOT_FOUND");
        assert_eq!(foreign["errors"], missing["errors"]);
    }
    assert_eq!(
        app.gql(&stranger, READ, json!({"w": ws})).await["data"]["workspace"],
        Value::Null
    );
    // Owners delete endpoints; a second delete finds nothing.
    assert_code(
        &app.gql(&admin, DELETE, json!({"e": id})).await,
        "FORBIDDEN",
    );
    let r = app.gql(&owner, DELETE, json!({"e": id})).await;
    assert_eq!(
        r["data"]["deleteWebhookEndpoint"]["deletedWebhookEndpointId"],
        id.as_str()
    );
    assert_code(
        &app.gql(&owner, DELETE, json!({"e": id})).await,
        "NOT_FOUND",
    );
    // Every change is audited.
    for (action, n) in [
        ("integration.webhook_endpoint.create", 10),
        ("integration.webhook_endpoint.delete", 1),
        ("integration.settings.update", 3),
    ] {
        assert_eq!(
            app.sql_count(&format!(
                "SELECT count(*) AS n FROM audit_events WHERE action = '{action}'"
            ))
            .await,
            n,
            "{action}"
        );
    }
}

#[tokio::test]
async fn a_webhook_is_delivered_signed_to_the_endpoints_that_subscribe() {
    let app = app(None).await;
    let receiver = Receiver::start(&[200]).await;
    let quiet = Receiver::start(&[200]).await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Signed").await;
    let (_, secret) = endpoint(&app, &owner, &ws, &receiver.url, json!(["OWNER_ADDED"])).await;
    endpoint(&app, &owner, &ws, &quiet.url, json!(["QUOTA_WARNING"])).await;
    let worker = Worker::start(&app);
    // An owner added, and an admin promoted to owner: two security alerts.
    app.add_member(&owner, &ws, "second@example.com", "OWNER")
        .await;
    let admin = app
        .add_member(&owner, &ws, "third@example.com", "ADMIN")
        .await;
    let r = app
        .gql(
            &owner,
            "mutation($m: ID!) { updateMemberRole(input: {memberId: $m, role: OWNER}) { member { role } } }",
            json!({"m": admin}),
        )
        .await;
    assert_ok(&r);
    let hits = receiver.wait_for(2).await;
    let webhook = Webhook::new(&secret).expect("secret");
    let mut emails = Vec::new();
    for (headers, body) in &hits {
        webhook
            .verify(body, headers)
            .expect("a valid Standard Webhooks signature");
        assert_eq!(headers["content-type"], "application/json");
        let body: Value = serde_json::from_slice(body).expect("JSON");
        assert_eq!(body["type"], "security.owner_added");
        assert!(body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(body["data"]["workspaceId"], ws.as_str());
        emails.push((
            body["data"]["email"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            body["data"]["how"].as_str().unwrap_or_default().to_string(),
        ));
        // Tampering breaks the signature.
        let mut forged = body.clone();
        forged["data"]["email"] = json!("mallory@example.com");
        let forged = serde_json::to_vec(&forged).expect("JSON");
        assert!(webhook.verify(&forged, headers).is_err());
    }
    emails.sort();
    assert_eq!(
        emails,
        vec![
            ("second@example.com".to_string(), "added".to_string()),
            ("third@example.com".to_string(), "promoted".to_string())
        ]
    );
    // Each delivery is logged: delivered on its first attempt, its id the webhook-id. (The
    // receiver has the bodies before the worker records its answers: wait for the records.)
    let mut all = deliveries(&app, &owner, &ws).await;
    let started = std::time::Instant::now();
    while all.iter().any(|d| d["status"] == "PENDING")
        && started.elapsed() < std::time::Duration::from_secs(10)
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        all = deliveries(&app, &owner, &ws).await;
    }
    assert_eq!(all.len(), 2, "{all:#?}");
    for d in &all {
        assert_eq!(d["status"], "DELIVERED");
        assert_eq!(d["channel"], "WEBHOOK");
        assert_eq!(d["destination"], receiver.url.as_str());
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["nextAttemptAt"], Value::Null);
        assert_eq!(d["attemptLog"][0]["statusCode"], 200);
        assert_eq!(d["attemptLog"][0]["succeeded"], true);
        assert_eq!(d["event"]["type"], "OWNER_ADDED");
        assert_eq!(d["event"]["category"], "SECURITY_ALERTS");
        assert!(
            hits.iter()
                .any(|(h, _)| h["webhook-id"] == d["id"].as_str().unwrap_or_default()),
            "{d}"
        );
    }
    // The other endpoint subscribes to quota warnings only.
    assert!(quiet.hits().is_empty());
    // Viewers do not read deliveries.
    app.add_member(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    let viewer = app.user("viewer@example.com");
    assert_code(
        &app.gql(&viewer, DELIVERIES, json!({"w": ws})).await,
        "FORBIDDEN",
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_backoff_until_it_accepts() {
    let app = app(None).await;
    let receiver = Receiver::start(&[500, 500, 200]).await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Retried").await;
    let (_, secret) = endpoint(&app, &owner, &ws, &receiver.url, json!([])).await;
    let worker = Worker::start(&app);
    app.add_member(&owner, &ws, "second@example.com", "OWNER")
        .await;
    // The first attempt fails: the next is due 30 s later.
    let d = delivery_where(&app, &owner, &ws, "after one attempt", |d| finished(d, 1)).await;
    assert_eq!(d["status"], "PENDING");
    assert_eq!(d["lastError"], "HTTP 500");
    assert_eq!(d["attemptLog"][0]["statusCode"], 500);
    let wait = seconds_between(&d["lastAttemptAt"], &d["nextAttemptAt"]);
    assert!((29..=31).contains(&wait), "{wait} s: {d}");
    let id = d["id"].as_str().expect("id").to_string();
    // The test's clock: the retry is due now.
    retry_now(&app, &id, "").await;
    let d = delivery_where(&app, &owner, &ws, "after two attempts", |d| finished(d, 2)).await;
    assert_eq!(d["status"], "PENDING");
    let wait = seconds_between(&d["lastAttemptAt"], &d["nextAttemptAt"]);
    assert!((119..=121).contains(&wait), "{wait} s: {d}");
    retry_now(&app, &id, "").await;
    let d = delivery_where(&app, &owner, &ws, "delivered", |d| {
        d["status"] == "DELIVERED"
    })
    .await;
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["lastError"], Value::Null);
    assert!(!d["deliveredAt"].is_null());
    assert_eq!(d["nextAttemptAt"], Value::Null);
    let log: Vec<(Value, Value)> = d["attemptLog"]
        .as_array()
        .expect("log")
        .iter()
        .map(|a| (a["number"].clone(), a["statusCode"].clone()))
        .collect();
    assert_eq!(
        log,
        vec![
            (json!(1), json!(500)),
            (json!(2), json!(500)),
            (json!(3), json!(200))
        ]
    );
    // Three requests, one message: the same webhook-id, each validly signed.
    let hits = receiver.wait_for(3).await;
    let webhook = Webhook::new(&secret).expect("secret");
    for (headers, body) in &hits {
        assert_eq!(headers["webhook-id"], id.as_str());
        webhook.verify(body, headers).expect("signed");
    }
    // The jobs scheduled for the moved due times find nothing to do when they run.
    app.sql_count(
        "WITH j AS (UPDATE apalis.jobs SET run_at = now() WHERE job_type = 'notifications' AND status = 'Pending' RETURNING 1)
         SELECT count(*) AS n FROM j",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.hits().len(), 3);
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM notification_attempts a
               JOIN notification_deliveries d ON d.id = a.delivery_id
              WHERE d.channel = 'WEBHOOK'"
        )
        .await,
        3
    );
    worker.stop().await;
}

#[tokio::test]
async fn deliveries_fail_for_good_when_their_window_ends_or_their_destination_goes() {
    let app = app(None).await;
    let down = Receiver::start(&[503]).await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Failing").await;
    let (endpoint_id, _) = endpoint(&app, &owner, &ws, &down.url, json!([])).await;
    let worker = Worker::start(&app);
    app.add_member(&owner, &ws, "second@example.com", "OWNER")
        .await;
    let d = delivery_where(&app, &owner, &ws, "attempted", |d| finished(d, 1)).await;
    let id = d["id"].as_str().expect("id").to_string();
    // 24 hours later (the test's clock): the last attempt fails, and so does the delivery.
    retry_now(&app, &id, ", give_up_at = now()").await;
    let d = delivery_where(&app, &owner, &ws, "failed", |d| d["status"] == "FAILED").await;
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["lastError"], "HTTP 503");
    assert_eq!(d["nextAttemptAt"], Value::Null);
    let failed = app
        .gql(&owner, DELIVERIES, json!({"w": ws, "s": "FAILED"}))
        .await;
    assert_eq!(
        failed["data"]["workspace"]["notificationDeliveries"]["edges"]
            .as_array()
            .map(|e| e
                .iter()
                .filter(|e| e["node"]["event"]["type"] != "MEMBER_INVITED")
                .count()),
        Some(1)
    );
    // A second alert; its endpoint is deleted before the retry: it fails at once.
    app.add_member(&owner, &ws, "third@example.com", "OWNER")
        .await;
    let d = delivery_where(&app, &owner, &ws, "second attempted", |d| {
        d["status"] == "PENDING" && finished(d, 1)
    })
    .await;
    let second = d["id"].as_str().expect("id").to_string();
    assert_ok(&app.gql(&owner, DELETE, json!({"e": endpoint_id})).await);
    retry_now(&app, &second, "").await;
    let d = delivery_where(&app, &owner, &ws, "failed after its endpoint went", |d| {
        d["id"] == second.as_str() && d["status"] == "FAILED"
    })
    .await;
    assert_eq!(d["lastError"], "the webhook endpoint was deleted");
    assert_eq!(down.hits().len(), 3);
    worker.stop().await;
}

#[tokio::test]
async fn slack_and_email_notifications_reach_loopback_receivers() {
    let smtp = SmtpSink::start().await;
    let app = app(Some(&smtp)).await;
    let slack = Receiver::start(&[200]).await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Chatty").await;
    let r = app
        .gql(
            &owner,
            UPDATE,
            json!({"w": ws, "s": slack.url, "r": [
                {"category": "SECURITY_ALERTS", "addresses": ["sec@example.com", "audit@example.com"]},
                {"category": "QUOTA_WARNINGS", "addresses": ["quota@example.com"]}]}),
        )
        .await;
    assert_ok(&r);
    let worker = Worker::start(&app);
    app.add_member(&owner, &ws, "second@example.com", "OWNER")
        .await;
    // Slack: one `{"text": …}` POST.
    let hits = slack.wait_for(1).await;
    let body: Value = serde_json::from_slice(&hits[0].1).expect("JSON");
    let text = body["text"].as_str().expect("text");
    assert!(
        text.contains("owner added")
            && text.contains("second@example.com")
            && text.contains("Chatty"),
        "{text}"
    );
    // E-mail: one message per recipient of the category, none to the others.
    // Two alerts (the invitation e-mail to the new owner, if it went before they accepted,
    // is another story: `invitations`).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mails = loop {
        let alerts: Vec<_> = smtp
            .messages()
            .into_iter()
            .filter(|m| m.to != ["second@example.com"])
            .collect();
        if alerts.len() >= 2 {
            break alerts;
        }
        assert!(Instant::now() < deadline, "alerts: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut to: Vec<String> = mails.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(to, vec!["audit@example.com", "sec@example.com"]);
    for m in &mails {
        assert_eq!(m.from, "notifications@example.com");
        assert!(
            m.data
                .contains("Subject: [Chatty] Security alert: owner added"),
            "{}",
            m.data
        );
        assert!(m.data.contains("second@example.com"), "{}", m.data);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = deliveries(&app, &owner, &ws).await;
        if all.len() == 3 && all.iter().all(|d| d["status"] == "DELIVERED") {
            let mut channels: Vec<(String, String)> = all
                .iter()
                .map(|d| {
                    (
                        d["channel"].as_str().unwrap_or_default().to_string(),
                        d["destination"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            channels.sort();
            assert_eq!(channels[0], ("EMAIL".into(), "audit@example.com".into()));
            assert_eq!(channels[1], ("EMAIL".into(), "sec@example.com".into()));
            assert_eq!(channels[2].0, "SLACK");
            // The Slack URL is a credential: only its masked form is shown.
            assert!(
                channels[2].1.starts_with("http://127.0.0.1/…"),
                "{channels:?}"
            );
            let email = all.iter().find(|d| d["channel"] == "EMAIL").expect("email");
            assert_eq!(email["attemptLog"][0]["statusCode"], 250);
            break;
        }
        assert!(Instant::now() < deadline, "{all:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;
}

#[tokio::test]
async fn e_mail_without_smtp_fails_at_once_with_a_clear_error() {
    let app = app(None).await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Unmailed").await;
    let r = app
        .gql(
            &owner,
            UPDATE,
            json!({"w": ws, "r": [{"category": "SECURITY_ALERTS", "addresses": ["sec@example.com"]}]}),
        )
        .await;
    assert_ok(&r);
    let worker = Worker::start(&app);
    app.add_member(&owner, &ws, "second@example.com", "OWNER")
        .await;
    let d = delivery_where(&app, &owner, &ws, "failed", |d| d["status"] == "FAILED").await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(
        d["lastError"],
        "e-mail is not configured on this server (SMTP_URL)"
    );
    worker.stop().await;
}

#[tokio::test]
async fn quota_warnings_fire_once_per_window_under_concurrent_usage() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Busy").await;
    let root = app.create_org(&owner, &ws, None, "HQ").await;
    let team = app.create_org(&owner, &ws, Some(&root), "Team").await;
    assert_ok(&app.set_limit(&owner, &root, "users", Some(10)).await);
    // Forty allocations of one at once below the capped root: ten fit.
    let results =
        futures::future::join_all((0..40).map(|_| app.record(&owner, &team, "users", 1))).await;
    assert_eq!(
        results.iter().filter(|r| r.get("errors").is_none()).count(),
        10
    );
    let count = |kind: &'static str| {
        let app = &app;
        async move {
            app.sql_count(&format!(
                "SELECT count(*) AS n FROM notifications WHERE type = '{kind}'"
            ))
            .await
        }
    };
    assert_eq!(count("quota.warning").await, 1);
    assert_eq!(count("quota.reached").await, 1);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM notifications
              WHERE category = 'QUOTA_WARNINGS' AND data->>'organizationId' = '{root}'
                AND data->>'resource' = 'users' AND (data->>'limit')::int = 10
                AND ((type = 'quota.warning' AND (data->>'used')::int = 8 AND (data->>'percent')::int = 80)
                  OR (type = 'quota.reached' AND (data->>'used')::int = 10 AND (data->>'percent')::int = 100))"
        ))
        .await,
        2
    );
    // Each with the job that fans it out, in the same transaction.
    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM apalis.jobs j JOIN notifications n
                ON j.idempotency_key = 'notification:' || n.id WHERE j.job_type = 'notifications'"
        )
        .await,
        2
    );
    // Down and up again in the same window: no new warnings.
    assert_ok(&app.record(&owner, &team, "users", -5).await);
    assert_ok(&app.record(&owner, &team, "users", 5).await);
    assert_eq!(count("quota.warning").await, 1);
    assert_eq!(count("quota.reached").await, 1);
    // A new limit is a new threshold: raising it to 20 and filling it warns again.
    assert_ok(&app.set_limit(&owner, &root, "users", Some(20)).await);
    assert_ok(&app.record(&owner, &team, "users", 6).await);
    assert_eq!(count("quota.warning").await, 2);
    assert_eq!(count("quota.reached").await, 1);
    // A refused allocation notifies nothing.
    let refused = app.record(&owner, &team, "users", 100).await;
    assert_code(&refused, "LIMIT_EXCEEDED");
    assert_eq!(count("quota.reached").await, 1);
    app.assert_usage_invariant().await;
}

/// Delivers signed Stripe events to the webhook and waits until they are processed.
async fn stripe(app: &TestApp, events: &[String]) {
    for body in events {
        let t = super::webhooks::now();
        let sig = format!(
            "t={t},v1={}",
            super::webhooks::sign(super::webhooks::SECRET, t, body)
        );
        for _ in 0..2 {
            assert_eq!(super::webhooks::deliver(app, Some(&sig), body).await.0, 200);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while app
        .sql_count("SELECT count(*) AS n FROM stripe_events WHERE processed_at IS NULL")
        .await
        > 0
    {
        assert!(Instant::now() < deadline, "Stripe events not processed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn billing_events_and_pool_thresholds_notify_the_workspace() {
    let fake = tests::fake_stripe::FakeStripe::start().await;
    let app = super::billing::app_with(&fake).await;
    let owner = app.user("owner@example.com");
    let ws = super::billing::workspace(&app, &owner, "SINGLE").await;
    let account = super::billing::account(&app, &owner, &ws, "Main").await;
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
    let sub = super::billing::subscribe(
        &app,
        &owner,
        &account,
        "STARTER",
        json!([{"resource": "users", "quantity": 5}]),
    )
    .await;
    let sub_id = sub["stripeSubscriptionId"]
        .as_str()
        .expect("sub")
        .to_string();
    // The plan grants five users and the subscription five more: the eighth crosses 80 %
    // of the pool, the tenth reaches it.
    let org = app.create_org(&owner, &ws, None, "Org").await;
    assert_ok(&app.record(&owner, &org, "users", 7).await);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM notifications")
            .await,
        0
    );
    assert_ok(&app.record(&owner, &org, "users", 1).await);
    assert_ok(&app.record(&owner, &org, "users", 2).await);
    assert_code(
        &app.record(&owner, &org, "users", 1).await,
        "LIMIT_EXCEEDED",
    );
    for (kind, used) in [("quota.warning", 8), ("quota.reached", 10)] {
        assert_eq!(
            app.sql_count(&format!(
                "SELECT count(*) AS n FROM notifications WHERE data->>'pool' = '{ws}'
                    AND (data->>'limit')::int = 10 AND type = '{kind}' AND (data->>'used')::int = {used}"
            ))
            .await,
            1,
            "{kind}"
        );
    }
    // Stripe: a failed payment, a trial ending, a cancellation (each delivered twice).
    let worker = Worker::start(&app);
    let invoice = fake
        .invoices_for(&customer)
        .last()
        .cloned()
        .expect("an invoice");
    let inv_id = invoice["id"].as_str().expect("invoice id").to_string();
    // The payment failed: the invoice is open, its amount still due (notifications read the
    // invoice as Stripe has it when the event is applied).
    fake.set_invoice(&inv_id, |i| {
        i["status"] = json!("open");
        i["amount_due"] = json!(4900);
        i["amount_paid"] = json!(0);
        i["amount_remaining"] = json!(4900);
        i["attempt_count"] = json!(1);
    });
    let obj = |v: Option<Value>| v.expect("object in the fake");
    stripe(
        &app,
        &[
            fake.event("invoice.payment_failed", obj(fake.invoice(&inv_id))),
            fake.event(
                "customer.subscription.trial_will_end",
                obj(fake.subscription(&sub_id)),
            ),
        ],
    )
    .await;
    fake.set_subscription(&sub_id, |s| {
        s["status"] = json!("canceled");
        s["canceled_at"] = json!(chrono::Utc::now().timestamp());
    });
    stripe(
        &app,
        &[fake.event(
            "customer.subscription.deleted",
            obj(fake.subscription(&sub_id)),
        )],
    )
    .await;
    worker.stop().await;
    for (kind, field, value) in [
        ("billing.payment_failed", "invoiceId", inv_id.as_str()),
        ("billing.trial_ending", "subscriptionId", sub_id.as_str()),
        (
            "billing.subscription_canceled",
            "subscriptionId",
            sub_id.as_str(),
        ),
    ] {
        assert_eq!(
            app.sql_count(&format!(
                "SELECT count(*) AS n FROM notifications
                  WHERE type = '{kind}' AND category = 'BILLING_NOTIFICATIONS'
                    AND data->>'{field}' = '{value}' AND data->>'billingAccountId' = '{account}'"
            ))
            .await,
            1,
            "{kind}"
        );
    }
}
