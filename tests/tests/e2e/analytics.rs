//! Analytics: `generateAnalytics` enqueues a job that the in-process worker runs, and
//! `Workspace.analytics` shows the snapshot it stored, checked against hand-computed numbers.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use tests::{TestApp, assert_code, assert_ok};

use super::webhooks::Worker;

const ANALYTICS: &str =
    "query($w: ID!, $p: AnalyticsPeriod) { workspace(id: $w) { analytics(period: $p) {
    periodStart periodEnd
    users { total active newMembers byRole { role count } }
    usage { resource day total events }
    apiUsage { day operation requests errors }
    jobs { total succeeded failed pending successRate failureRate }
    cost { currentCents projectedCents meteredCents baseFeesCents }
    generatedAt } } }";

const GENERATE: &str = "mutation($w: ID!, $p: AnalyticsPeriod, $k: String) {
    generateAnalytics(input: {workspaceId: $w, period: $p, idempotencyKey: $k}) { job { id status kind } } }";

/// The text `sql` selects as `t`.
async fn text(app: &TestApp, sql: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let mut conn = AsyncPgConnection::establish(&app.db.url)
        .await
        .expect("connect");
    let r: T = diesel::sql_query(sql)
        .get_result(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    r.t
}

/// The workspace's UUID (for fixtures written in SQL).
async fn uuid_of(app: &TestApp, name: &str) -> String {
    text(
        app,
        &format!("SELECT id::text AS t FROM workspaces WHERE name = '{name}'"),
    )
    .await
}

async fn analytics(app: &TestApp, token: &str, ws: &str, period: &str) -> Value {
    app.gql(token, ANALYTICS, json!({"w": ws, "p": period}))
        .await
}

async fn generate(app: &TestApp, token: &str, ws: &str, period: &str, key: Option<&str>) -> Value {
    app.gql(token, GENERATE, json!({"w": ws, "p": period, "k": key}))
        .await
}

/// Generates the analytics of `period` and waits until the worker's job succeeded.
async fn generate_and_wait(app: &TestApp, token: &str, ws: &str, period: &str) -> String {
    let r = generate(app, token, ws, period, None).await;
    assert_ok(&r);
    let job = r["data"]["generateAnalytics"]["job"].clone();
    assert_eq!(job["kind"], "analytics.generate", "{r}");
    let id = job["id"].as_str().expect("job id").to_string();
    app.job_succeeded(token, &id).await;
    id
}

/// Job fixtures of workspace `name` that ended as `statuses` (apalis states a worker never
/// fetches again: `Done`, `Killed`), on a queue no worker serves.
async fn finished_jobs(app: &TestApp, name: &str, statuses: &[&str]) {
    let list = statuses
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(",");
    let ws = uuid_of(app, name).await;
    let n = app
        .sql_count(&format!(
            "WITH j AS (
                INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, done_at)
                SELECT apalis.generate_ulid(), 'analytics-test-fixture', convert_to('{{}}', 'UTF8'),
                       s, 1, 1, now()
                  FROM unnest(ARRAY[{list}]) s RETURNING id),
             w AS (INSERT INTO workspace_jobs (job_id, workspace_id, kind)
                   SELECT id, '{ws}', 'fixture.job' FROM j RETURNING 1)
             SELECT count(*) AS n FROM w"
        ))
        .await;
    assert_eq!(n, statuses.len() as i64);
}

/// A UTC day of the previous month (`day` 1-based) as `YYYY-MM-DD`.
async fn previous_month_day(app: &TestApp, day: i32) -> String {
    text(
        app,
        &format!(
            "SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month'
                            + interval '{} days', 'YYYY-MM-DD') AS t",
            day - 1
        ),
    )
    .await
}

#[tokio::test]
async fn analytics_of_the_current_month_match_hand_computed_numbers() {
    let app = TestApp::spawn().await;
    let owner = app.user("an-owner@example.com");
    let admin = app.user("an-admin@example.com");
    let viewer = app.user("an-viewer@example.com");
    let ws = app.create_workspace(&owner, "Analytics now").await;
    app.add_member(&owner, &ws, "an-admin@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &ws, "an-viewer@example.com", "VIEWER")
        .await;
    app.add_member(&owner, &ws, "an-viewer2@example.com", "VIEWER")
        .await;
    let org = app.create_org(&owner, &ws, None, "Root").await;
    // users: 5 + 3 - 1 = 7 in three records; locations: 2 in one (by the admin).
    assert_ok(&app.record(&owner, &org, "users", 5).await);
    assert_ok(&app.record(&owner, &org, "users", 3).await);
    assert_ok(&app.record(&admin, &org, "locations", 2).await);
    assert_ok(&app.record(&owner, &org, "users", -1).await);
    // Jobs: three done, one failed for good.
    finished_jobs(&app, "Analytics now", &["Done", "Killed", "Done", "Done"]).await;

    // Nothing generated yet: null.
    let r = analytics(&app, &owner, &ws, "CURRENT_MONTH").await;
    assert_ok(&r);
    assert!(r["data"]["workspace"]["analytics"].is_null(), "{r}");

    let worker = Worker::start(&app);
    generate_and_wait(&app, &owner, &ws, "CURRENT_MONTH").await;
    let today = chrono::Utc::now().date_naive().to_string();
    let r = analytics(&app, &admin, &ws, "CURRENT_MONTH").await;
    assert_ok(&r);
    let a = &r["data"]["workspace"]["analytics"];
    // Four members, all new this month, and all active: the owner and the admin acted, and
    // the viewers joined by accepting their invitations (an act of theirs in the workspace).
    assert_eq!(
        a["users"],
        json!({"total": 4, "active": 4, "newMembers": 4, "byRole": [
            {"role": "OWNER", "count": 1}, {"role": "ADMIN", "count": 1},
            {"role": "VIEWER", "count": 2}]}),
        "{r}"
    );
    assert_eq!(
        a["usage"],
        json!([
            {"resource": "locations", "day": today, "total": 2, "events": 1},
            {"resource": "users", "day": today, "total": 7, "events": 3},
        ]),
        "{r}"
    );
    // The analytics job itself is left out.
    assert_eq!(
        a["jobs"],
        json!({"total": 4, "succeeded": 3, "failed": 1, "pending": 0,
               "successRate": 0.75, "failureRate": 0.25}),
        "{r}"
    );
    // (apiUsage: `api_usage_counts_requests_per_workspace_day_and_operation`.)
    // No billing account: nothing costs anything.
    assert_eq!(
        a["cost"],
        json!({"currentCents": 0, "projectedCents": 0, "meteredCents": 0, "baseFeesCents": 0})
    );
    assert!(a["generatedAt"].is_string(), "{r}");
    let start = a["periodStart"].as_str().expect("periodStart");
    assert!(today.starts_with(&start[..8]), "{start} vs {today}");
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM analytics_snapshots")
            .await,
        1
    );

    // A viewer is refused, the numbers and the generation alike.
    let r = analytics(&app, &viewer, &ws, "CURRENT_MONTH").await;
    assert_code(&r, "FORBIDDEN");
    let r = generate(&app, &viewer, &ws, "CURRENT_MONTH", None).await;
    assert_code(&r, "FORBIDDEN");
    worker.stop().await;
}

#[tokio::test]
async fn analytics_of_the_previous_month_group_usage_by_day() {
    let app = TestApp::spawn().await;
    let owner = app.user("prev-owner@example.com");
    let admin = app.user("prev-admin@example.com");
    let ws = app.create_workspace(&owner, "Analytics before").await;
    app.add_member(&owner, &ws, "prev-admin@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &ws, "prev-viewer@example.com", "VIEWER")
        .await;
    let org = app.create_org(&owner, &ws, None, "Root").await;
    assert_ok(&app.record(&owner, &org, "users", 4).await);
    assert_ok(&app.record(&owner, &org, "users", 6).await);
    assert_ok(&app.record(&admin, &org, "users", 1).await);
    // Moved into last month: the owner's and admin's memberships (the 2nd), the records of
    // 4 (the 3rd, 10:00) and 6 (the 3rd, 23:59) and of 1 (the 17th). The viewer joined this
    // month: not a member at the end of last month.
    let ws_uuid = uuid_of(&app, "Analytics before").await;
    let month = "date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month'";
    let moved = app
        .sql_count(&format!(
            "WITH m AS (UPDATE members SET created_at = ({month} + interval '1 day') AT TIME ZONE 'UTC'
                         WHERE workspace_id = '{ws_uuid}' AND role <> 'VIEWER' RETURNING 1),
                  u AS (UPDATE usage_events SET created_at = ({month} + CASE delta
                            WHEN 4 THEN interval '2 days 10 hours'
                            WHEN 6 THEN interval '2 days 23 hours 59 minutes'
                            ELSE interval '16 days' END) AT TIME ZONE 'UTC'
                         WHERE workspace_id = '{ws_uuid}' RETURNING 1)
             SELECT (SELECT count(*) FROM m) + (SELECT count(*) FROM u) AS n"
        ))
        .await;
    assert_eq!(moved, 5);

    let worker = Worker::start(&app);
    generate_and_wait(&app, &owner, &ws, "PREVIOUS_MONTH").await;
    // The current month has no snapshot of its own.
    let r = analytics(&app, &owner, &ws, "CURRENT_MONTH").await;
    assert!(r["data"]["workspace"]["analytics"].is_null(), "{r}");
    let r = analytics(&app, &owner, &ws, "PREVIOUS_MONTH").await;
    assert_ok(&r);
    let a = &r["data"]["workspace"]["analytics"];
    assert_eq!(
        a["users"],
        json!({"total": 2, "active": 2, "newMembers": 2, "byRole": [
            {"role": "OWNER", "count": 1}, {"role": "ADMIN", "count": 1},
            {"role": "VIEWER", "count": 0}]}),
        "{r}"
    );
    let (third, seventeenth) = (
        previous_month_day(&app, 3).await,
        previous_month_day(&app, 17).await,
    );
    assert_eq!(
        a["usage"],
        json!([
            {"resource": "users", "day": third, "total": 10, "events": 2},
            {"resource": "users", "day": seventeenth, "total": 1, "events": 1},
        ]),
        "{r}"
    );
    assert_eq!(
        a["jobs"],
        json!({"total": 0, "succeeded": 0, "failed": 0, "pending": 0,
               "successRate": null, "failureRate": null}),
        "{r}"
    );
    assert_eq!(
        a["periodStart"].as_str().map(|s| &s[..10]),
        Some(&previous_month_day(&app, 1).await[..])
    );
    worker.stop().await;
}

#[tokio::test]
async fn strangers_are_told_not_found_and_keys_make_generation_idempotent() {
    let app = TestApp::spawn().await;
    let owner = app.user("idem-owner@example.com");
    let stranger = app.user("idem-stranger@example.com");
    let ws = app.create_workspace(&owner, "Analytics keys").await;
    let theirs = app.create_workspace(&stranger, "Theirs").await;
    // A foreign workspace, a missing one and a malformed id: NOT_FOUND alike.
    for id in [
        ws.as_str(),
        "ws_00000000000000000000000000",
        "ws_nope",
        "nothing",
    ] {
        let r = generate(&app, &stranger, id, "CURRENT_MONTH", None).await;
        assert_code(&r, "NOT_FOUND");
    }
    let r = analytics(&app, &stranger, &ws, "CURRENT_MONTH").await;
    assert!(r["data"]["workspace"].is_null(), "{r}");
    let _ = theirs;

    // The same key: the same job; another key: another job.
    let first = generate(&app, &owner, &ws, "CURRENT_MONTH", Some("an-1")).await;
    assert_ok(&first);
    let again = generate(&app, &owner, &ws, "CURRENT_MONTH", Some("an-1")).await;
    assert_eq!(first["data"], again["data"]);
    let other = generate(&app, &owner, &ws, "CURRENT_MONTH", Some("an-2")).await;
    assert_ok(&other);
    assert_ne!(
        first["data"]["generateAnalytics"]["job"]["id"],
        other["data"]["generateAnalytics"]["job"]["id"]
    );
    // The key with another input is refused.
    let r = generate(&app, &owner, &ws, "PREVIOUS_MONTH", Some("an-1")).await;
    assert_code(&r, "IDEMPOTENCY_KEY_REUSED");
    let ws_uuid = uuid_of(&app, "Analytics keys").await;
    let jobs = format!(
        "SELECT count(*) AS n FROM workspace_jobs WHERE workspace_id = '{ws_uuid}' AND kind = 'analytics.generate'"
    );
    assert_eq!(app.sql_count(&jobs).await, 2);

    // Both jobs run; the snapshot is stored once per workspace and month.
    let worker = Worker::start(&app);
    for r in [&first, &other] {
        let id = r["data"]["generateAnalytics"]["job"]["id"]
            .as_str()
            .expect("id");
        app.job_succeeded(&owner, id).await;
    }
    let snapshots =
        format!("SELECT count(*) AS n FROM analytics_snapshots WHERE workspace_id = '{ws_uuid}'");
    assert_eq!(app.sql_count(&snapshots).await, 1);

    // The hourly refresh enqueues for the workspace without a snapshot, not for the fresh one.
    let theirs_uuid = uuid_of(&app, "Theirs").await;
    let theirs_jobs = format!(
        "SELECT count(*) AS n FROM workspace_jobs WHERE workspace_id = '{theirs_uuid}' AND kind = 'analytics.generate'"
    );
    assert_eq!(app.sql_count(&theirs_jobs).await, 0);
    api::domain::analytics::refresh(&app.pool)
        .await
        .expect("refresh");
    assert_eq!(app.sql_count(&theirs_jobs).await, 1);
    assert_eq!(app.sql_count(&jobs).await, 2);
    let start = Instant::now();
    let theirs_snapshot = format!(
        "SELECT count(*) AS n FROM analytics_snapshots WHERE workspace_id = '{theirs_uuid}'"
    );
    while app.sql_count(&theirs_snapshot).await == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "never refreshed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = analytics(&app, &stranger, &theirs, "CURRENT_MONTH").await;
    assert_eq!(
        r["data"]["workspace"]["analytics"]["users"]["total"], 1,
        "{r}"
    );
    worker.stop().await;
}

/// A server whose API usage counters are stored only when the test flushes them.
async fn app_flushed_by_hand(extra: &[(&str, &str)]) -> TestApp {
    let mut env: std::collections::HashMap<String, String> =
        [("API_USAGE_FLUSH_SECS".to_string(), "3600".to_string())].into();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    TestApp::with(tests::Options { env }).await
}

const DASH: &str = "query Dash($w: ID!) { workspace(id: $w) { name } }";
const BILL: &str = "query Bill($w: ID!) { workspace(id: $w) { billingAccounts { id } } }";
const EXPORT: &str = "query($w: ID!, $p: AnalyticsPeriod, $f: AnalyticsExportFormat!) {
    workspace(id: $w) { analyticsExport(period: $p, format: $f) { url expiresAt } } }";

fn usage_row(day: &str, operation: &str, requests: i64, errors: i64) -> Value {
    json!({"day": day, "operation": operation, "requests": requests, "errors": errors})
}

#[tokio::test]
async fn api_usage_counts_requests_per_workspace_day_and_operation() {
    let app = app_flushed_by_hand(&[]).await;
    let owner = app.user("api-owner@example.com");
    let viewer = app.user("api-viewer@example.com");
    let stranger = app.user("api-stranger@example.com");
    // Named no workspace: nobody's.
    let ws = app.create_workspace(&owner, "Api usage").await;
    let theirs = app.create_workspace(&stranger, "Api theirs").await;
    // addMember 1, createOrganization 1 (both name the workspace).
    app.add_member(&owner, &ws, "api-viewer@example.com", "VIEWER")
        .await;
    let org = app.create_org(&owner, &ws, None, "Root").await;
    let w = json!({"w": ws});
    // Dash: 3 by the owner, 1 by the viewer.
    for t in [&owner, &owner, &owner, &viewer] {
        assert_ok(&app.gql(t, DASH, w.clone()).await);
    }
    // Bill: refused to the viewer (an error).
    assert_code(&app.gql(&viewer, BILL, w.clone()).await, "FORBIDDEN");
    // recordUsage names only the organization: counted for its workspace; one refused.
    assert_ok(&app.record(&owner, &org, "users", 2).await);
    assert_ok(&app.record(&owner, &org, "users", 1).await);
    assert_code(&app.record(&owner, &org, "nope", 1).await, "BAD_USER_INPUT");
    // Unnamed: its root fields.
    let r = app
        .gql(
            &owner,
            "query($w: ID!) { workspace(id: $w) { id } viewer { id } }",
            w.clone(),
        )
        .await;
    assert_ok(&r);
    // The workspace and one of its organizations: counted once.
    let r = app
        .gql(
            &owner,
            "query($w: ID!, $o: ID!) { workspace(id: $w) { id } organization(id: $o) { id } }",
            json!({"w": ws, "o": org}),
        )
        .await;
    assert_ok(&r);
    // A syntax error whose variables name the workspace.
    let r = app
        .gql(
            &owner,
            "query Broken($w: ID!) { workspace(id: $w) { id }",
            w.clone(),
        )
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    // A 150-character name is cut to 100.
    let long = "A".repeat(150);
    let r = app
        .gql(
            &owner,
            &format!("query {long}($w: ID!) {{ workspace(id: $w) {{ id }} }}"),
            w.clone(),
        )
        .await;
    assert_ok(&r);
    // A batch: each operation counts (Dash 5; Bill 2 with 1 error).
    let (status, r) = app
        .gql_raw(
            Some(&owner),
            json!([{"query": DASH, "variables": w}, {"query": BILL, "variables": w}]),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_ok(&r[0]);
    assert_ok(&r[1]);
    // A stranger naming the workspace counts for nothing; naming theirs too, for theirs.
    let r = app.gql(&stranger, DASH, w.clone()).await;
    assert!(r["data"]["workspace"].is_null(), "{r}");
    let r = app
        .gql(
            &stranger,
            "query Both($a: ID!, $b: ID!) { a: workspace(id: $a) { id } b: workspace(id: $b) { id } }",
            json!({"a": ws, "b": theirs}),
        )
        .await;
    assert_ok(&r);

    // Nothing is stored before a flush; one flush stores it all.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM api_request_counters")
            .await,
        0
    );
    assert!(app.flush_api_usage().await > 0);
    assert_eq!(app.flush_api_usage().await, 0);
    let theirs_uuid = uuid_of(&app, "Api theirs").await;
    assert_eq!(
        text(
            &app,
            &format!(
                "SELECT string_agg(operation || ':' || requests || ':' || errors, ' ') AS t
                   FROM api_request_counters WHERE workspace_id = '{theirs_uuid}'"
            )
        )
        .await,
        "Both:1:0"
    );

    let worker = Worker::start(&app);
    generate_and_wait(&app, &owner, &ws, "CURRENT_MONTH").await;
    let today = chrono::Utc::now().date_naive().to_string();
    let r = analytics(&app, &owner, &ws, "CURRENT_MONTH").await;
    assert_ok(&r);
    let a = &r["data"]["workspace"]["analytics"];
    // By day, then operation in byte order. generateAnalytics and this query came after the
    // flush.
    let expected = json!([
        usage_row(&today, "(invalid)", 1, 1),
        usage_row(&today, &"A".repeat(100), 1, 0),
        usage_row(&today, "Bill", 2, 1),
        usage_row(&today, "Dash", 5, 0),
        usage_row(&today, "addMember", 1, 0),
        usage_row(&today, "createOrganization", 1, 0),
        usage_row(&today, "organization,workspace", 1, 0),
        usage_row(&today, "recordUsage", 3, 1),
        usage_row(&today, "viewer,workspace", 1, 0),
    ]);
    assert_eq!(a["apiUsage"], expected, "{r}");

    // The exports hold the same snapshot: JSON as the query answers it, CSV a row per number.
    let json_export = fetch_export(&app, &owner, &ws, "JSON").await;
    assert_eq!(
        json_export.headers["content-type"], "application/json",
        "{json_export:?}"
    );
    let body: Value = serde_json::from_slice(&json_export.body).expect("JSON export");
    assert_eq!(&body, a);
    let csv = fetch_export(&app, &owner, &ws, "CSV").await;
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let text = String::from_utf8(csv.body.clone()).expect("UTF-8");
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], "section,day,key,metric,value");
    for line in [
        format!("apiUsage,{today},Dash,requests,5"),
        format!("apiUsage,{today},Dash,errors,0"),
        format!("apiUsage,{today},\"organization,workspace\",requests,1"),
        format!("apiUsage,{today},(invalid),errors,1"),
        format!("usage,{today},users,total,3"),
        format!("usage,{today},users,events,2"),
        "users,,,total,2".to_string(),
        "users.byRole,,VIEWER,count,1".to_string(),
        "jobs,,,successRate,".to_string(),
        "cost,,,currentCents,0".to_string(),
        format!(
            "period,,,start,{}",
            a["periodStart"].as_str().expect("start")
        ),
        format!(
            "period,,,generatedAt,{}",
            a["generatedAt"].as_str().expect("at")
        ),
    ] {
        assert!(
            lines.contains(&line.as_str()),
            "{line} missing from\n{text}"
        );
    }
    // Header, 3 period, 3 users, 3 roles, 2 usage, 9 × 2 apiUsage, 6 jobs, 4 cost, "".
    assert_eq!(lines.len(), 1 + 3 + 3 + 3 + 2 + 18 + 6 + 4 + 1, "{text}");
    worker.stop().await;

    // Retention deletes the counters of days past the usage events' retention (730 days).
    let ws_uuid = uuid_of(&app, "Api usage").await;
    let old = |days: i32| {
        format!(
            "INSERT INTO api_request_counters (workspace_id, day, operation, requests, errors)
             VALUES ('{ws_uuid}', (now() AT TIME ZONE 'UTC')::date - {days}, 'Old{days}', 1, 0)
             RETURNING 1::bigint AS n"
        )
    };
    assert_eq!(app.sql_count(&old(731)).await, 1);
    assert_eq!(app.sql_count(&old(729)).await, 1);
    let done =
        api::domain::retention::cleanup(&app.pool, &app.vault(), chrono::Utc::now(), 90, 1_000)
            .await
            .expect("cleanup");
    assert_eq!(done.api_counters, 1, "{done:?}");
    let left =
        format!("SELECT count(*) AS n FROM api_request_counters WHERE workspace_id = '{ws_uuid}'");
    assert_eq!(app.sql_count(&left).await, 9 + 1);
}

/// An export fetched over HTTP without any credential.
#[derive(Debug)]
struct Fetched {
    status: u16,
    headers: std::collections::HashMap<String, String>,
    body: Vec<u8>,
}

async fn get(app: &TestApp, path: &str) -> Fetched {
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .expect("download");
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = r.bytes().await.expect("body").to_vec();
    Fetched {
        status,
        headers,
        body,
    }
}

async fn export_link(app: &TestApp, token: &str, ws: &str, format: &str) -> Value {
    app.gql(
        token,
        EXPORT,
        json!({"w": ws, "p": "CURRENT_MONTH", "f": format}),
    )
    .await
}

fn url_of(r: &Value) -> String {
    r["data"]["workspace"]["analyticsExport"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no export link: {r}"))
        .to_string()
}

/// Fetches the export of the current month in `format` through a link `token` asked for.
async fn fetch_export(app: &TestApp, token: &str, ws: &str, format: &str) -> Fetched {
    let r = export_link(app, token, ws, format).await;
    assert_ok(&r);
    let url = url_of(&r);
    assert!(url.starts_with("/downloads/"), "{url}");
    let f = get(app, &url).await;
    assert_eq!(f.status, 200, "{f:?}");
    assert_eq!(f.headers["cache-control"], "no-store");
    let ext = if format == "CSV" { "csv" } else { "json" };
    let month = chrono::Utc::now().format("%Y-%m");
    assert_eq!(
        f.headers["content-disposition"],
        format!("attachment; filename=\"analytics-{ws}-{month}.{ext}\"")
    );
    f
}

async fn user_uuid(app: &TestApp, email: &str) -> uuid::Uuid {
    text(
        app,
        &format!("SELECT id::text AS t FROM users WHERE email = '{email}'"),
    )
    .await
    .parse()
    .expect("uuid")
}

#[tokio::test]
async fn export_links_open_only_as_issued_to_a_manager_until_they_expire() {
    let app = app_flushed_by_hand(&[("DOWNLOAD_LINK_TTL_SECS", "600")]).await;
    let owner = app.user("exp-owner@example.com");
    let admin = app.user("exp-admin@example.com");
    let viewer = app.user("exp-viewer@example.com");
    let stranger = app.user("exp-stranger@example.com");
    let ws = app.create_workspace(&owner, "Exports").await;
    let theirs = app.create_workspace(&stranger, "Exports theirs").await;
    app.add_member(&owner, &ws, "exp-admin@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &ws, "exp-viewer@example.com", "VIEWER")
        .await;

    // No snapshot yet: no link.
    let r = export_link(&app, &owner, &ws, "CSV").await;
    assert_ok(&r);
    assert!(r["data"]["workspace"]["analyticsExport"].is_null(), "{r}");
    let worker = Worker::start(&app);
    generate_and_wait(&app, &owner, &ws, "CURRENT_MONTH").await;
    generate_and_wait(&app, &stranger, &theirs, "CURRENT_MONTH").await;
    worker.stop().await;

    // A viewer is refused; a stranger sees no workspace (as for every foreign id).
    assert_code(&export_link(&app, &viewer, &ws, "CSV").await, "FORBIDDEN");
    let r = export_link(&app, &stranger, &ws, "CSV").await;
    assert_ok(&r);
    assert!(r["data"]["workspace"].is_null(), "{r}");

    // The link lives DOWNLOAD_LINK_TTL_SECS.
    let r = export_link(&app, &admin, &ws, "JSON").await;
    assert_ok(&r);
    let expires = r["data"]["workspace"]["analyticsExport"]["expiresAt"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .expect("expiresAt");
    let left = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!((595..=601).contains(&left), "{left}");
    let admins = url_of(&r);
    assert_eq!(get(&app, &admins).await.status, 200);

    let not_found = get(&app, "/downloads/nothing").await;
    assert_eq!(not_found.status, 404);
    let refused = |f: &Fetched| {
        assert_eq!(
            (f.status, &f.body),
            (404, &not_found.body),
            "{f:?} {}",
            String::from_utf8_lossy(&f.body)
        );
    };

    // One character or one byte changed anywhere: refused alike.
    let token = admins.trim_start_matches("/downloads/").to_string();
    let mut chars: Vec<char> = token.chars().collect();
    let middle = chars.len() / 2;
    chars[middle] = if chars[middle] == 'A' { 'B' } else { 'A' };
    refused(
        &get(
            &app,
            &format!("/downloads/{}", chars.iter().collect::<String>()),
        )
        .await,
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes = b64.decode(&token).expect("base64url token");
    for i in [0, 5, 12, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        refused(&get(&app, &format!("/downloads/{}", b64.encode(&b))).await);
    }

    // Links minted with the deployment's key (as the resolver does), at a chosen time.
    let vault = app.vault();
    let ws_uuid: uuid::Uuid = uuid_of(&app, "Exports").await.parse().expect("uuid");
    let theirs_uuid: uuid::Uuid = uuid_of(&app, "Exports theirs").await.parse().expect("uuid");
    let owner_id = user_uuid(&app, "exp-owner@example.com").await;
    let (start, _) = api::domain::analytics::bounds(
        api::domain::analytics::Period::CurrentMonth,
        chrono::Utc::now(),
    );
    let mint = |workspace, user, at: chrono::DateTime<chrono::Utc>| {
        api::domain::downloads::link(
            &vault,
            &api::domain::downloads::Download::AnalyticsExport {
                workspace,
                user,
                period_start: start,
                format: api::domain::analytics::ExportFormat::Csv,
            },
            Duration::from_secs(900),
            at,
        )
        .0
    };
    let now = chrono::Utc::now();
    assert_eq!(get(&app, &mint(ws_uuid, owner_id, now)).await.status, 200);
    // Expired a second ago.
    refused(
        &get(
            &app,
            &mint(ws_uuid, owner_id, now - chrono::Duration::seconds(901)),
        )
        .await,
    );
    // Another workspace, the owner not a member of it.
    refused(&get(&app, &mint(theirs_uuid, owner_id, now)).await);
    // Another deployment's key.
    let other = api::storage::Vault::open("memory:///", &[], [7; 32]).expect("vault");
    let foreign = api::domain::downloads::link(
        &other,
        &api::domain::downloads::Download::AnalyticsExport {
            workspace: ws_uuid,
            user: owner_id,
            period_start: start,
            format: api::domain::analytics::ExportFormat::Csv,
        },
        Duration::from_secs(900),
        now,
    )
    .0;
    refused(&get(&app, &foreign).await);

    // Access is checked again at download time: the admin, now a viewer, is refused.
    let member = app.member_id(&owner, &ws, "exp-admin@example.com").await;
    let r = app
        .gql(
            &owner,
            "mutation($m: ID!) { updateMemberRole(input: {memberId: $m, role: VIEWER}) { member { role } } }",
            json!({"m": member}),
        )
        .await;
    assert_ok(&r);
    refused(&get(&app, &admins).await);
}
