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
    wait_succeeded(app, token, &id).await;
    id
}

async fn wait_succeeded(app: &TestApp, token: &str, id: &str) {
    let start = Instant::now();
    loop {
        let r = app
            .gql(
                token,
                "query($id: ID!) { job(id: $id) { status lastError } }",
                json!({"id": id}),
            )
            .await;
        match r["data"]["job"]["status"].as_str() {
            Some("SUCCEEDED") => return,
            Some("FAILED") => panic!("the analytics job failed: {r}"),
            _ if start.elapsed() > Duration::from_secs(60) => panic!("job never succeeded: {r}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
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
    // Four members, all new this month; the owner and the admin acted, the viewers did not.
    assert_eq!(
        a["users"],
        json!({"total": 4, "active": 2, "newMembers": 4, "byRole": [
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
    assert_eq!(a["apiUsage"], json!([]));
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
        wait_succeeded(&app, &owner, id).await;
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
