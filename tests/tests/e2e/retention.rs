//! Retention settings and the cleanup that enforces them, with a clock the test controls.

use serde_json::{Value, json};
use tests::{TestApp, assert_code, assert_ok};

const READ: &str = "query($w: ID!) { workspace(id: $w) { retentionSettings { auditLogsDays usageEventsDays executionLogsDays workflowDataDays userDataDays } } }";
const UPDATE: &str = "mutation($w: ID!, $a: Int, $u: Int) { updateRetentionSettings(input: {workspaceId: $w, auditLogsDays: $a, usageEventsDays: $u}) { retentionSettings { auditLogsDays usageEventsDays executionLogsDays } } }";

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.sql_count(sql).await
}

#[tokio::test]
async fn retention_settings_have_the_seed_defaults_and_owners_change_them() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Kept").await;
    let r = app.gql(&owner, READ, json!({"w": ws})).await;
    assert_eq!(
        r["data"]["workspace"]["retentionSettings"],
        json!({"auditLogsDays": 2555, "usageEventsDays": 730, "executionLogsDays": 365,
               "workflowDataDays": 2555, "userDataDays": 2555})
    );
    app.add_member(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    let admin = app.user("admin@example.com");
    let viewer = app.user("viewer@example.com");
    assert_ok(&app.gql(&admin, READ, json!({"w": ws})).await);
    assert_code(&app.gql(&viewer, READ, json!({"w": ws})).await, "FORBIDDEN");
    assert_code(
        &app.gql(&admin, UPDATE, json!({"w": ws, "a": 100})).await,
        "FORBIDDEN",
    );
    for (a, u, field) in [
        (Value::from(29), Value::Null, "auditLogsDays"),
        (Value::Null, Value::from(3651), "usageEventsDays"),
    ] {
        let r = app
            .gql(&owner, UPDATE, json!({"w": ws, "a": a, "u": u}))
            .await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], field);
    }
    let r = app.gql(&owner, UPDATE, json!({"w": ws, "u": 30})).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["updateRetentionSettings"]["retentionSettings"],
        json!({"auditLogsDays": 2555, "usageEventsDays": 30, "executionLogsDays": 365})
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS n FROM audit_events WHERE action = 'retention.update'"
        )
        .await,
        1
    );
    // A stranger's update reads as for a missing workspace.
    let stranger = app.user("stranger@example.com");
    let r1 = app.gql(&stranger, UPDATE, json!({"w": ws, "u": 40})).await;
    let r2 = app
        .gql(
            &stranger,
            UPDATE,
            json!({"w": "ws_0193a0a0a0a0a0a0a0a0a0a0a0a0a0a0", "u": 40}),
        )
        .await;
    assert_code(&r1, "NOT_FOUND");
    assert_eq!(r1["errors"][0]["message"], r2["errors"][0]["message"]);
}

#[tokio::test]
async fn cleanup_deletes_what_is_past_each_workspace_s_retention_in_batches() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let short = app.create_workspace(&owner, "Short").await;
    let long = app.create_workspace(&owner, "Long").await;
    assert_ok(
        &app.gql(&owner, UPDATE, json!({"w": short, "a": 30, "u": 30}))
            .await,
    );
    let mut orgs = Vec::new();
    for ws in [&short, &long] {
        let org = app.create_org(&owner, ws, None, "Org").await;
        for _ in 0..5 {
            assert_ok(&app.record(&owner, &org, "users", 1).await);
        }
        orgs.push(org);
    }
    // Three of each workspace's usage events (and their audit events) are 40 days old.
    app.sql_count(
        "WITH u AS (UPDATE usage_events SET created_at = now() - interval '40 days'
                     WHERE (workspace_id, id) IN (
                        SELECT workspace_id, id FROM (
                          SELECT workspace_id, id, row_number() OVER (PARTITION BY workspace_id ORDER BY id) AS n
                            FROM usage_events) x WHERE n <= 3) RETURNING 1),
              a AS (UPDATE audit_events SET created_at = now() - interval '40 days'
                     WHERE action = 'usage.record' AND (workspace_id, id) IN (
                        SELECT workspace_id, id FROM (
                          SELECT workspace_id, id, row_number() OVER (PARTITION BY workspace_id ORDER BY id) AS n
                            FROM audit_events WHERE action = 'usage.record') x WHERE n <= 3) RETURNING 1)
         SELECT (SELECT count(*) FROM u) + (SELECT count(*) FROM a) AS n",
    )
    .await;
    // Stripe events: one processed long ago, one unprocessed as old, one recent.
    app.sql_count(
        "WITH s AS (INSERT INTO stripe_events (id, type, livemode, created_at, payload, received_at, processed_at)
                    VALUES ('evt_old_done', 'x', false, now(), '{}', now() - interval '100 days', now() - interval '100 days'),
                           ('evt_old_open', 'x', false, now(), '{}', now() - interval '100 days', NULL),
                           ('evt_new_done', 'x', false, now(), '{}', now(), now()) RETURNING 1)
         SELECT count(*) AS n FROM s",
    )
    .await;
    let ledger = |ws: &str| {
        let ws = ws.trim_start_matches("ws_").to_string();
        format!("SELECT count(*) AS n FROM usage_events WHERE workspace_id = '{ws}'")
    };
    let audit = |ws: &str| {
        let ws = ws.trim_start_matches("ws_").to_string();
        format!(
            "SELECT count(*) AS n FROM audit_events WHERE workspace_id = '{ws}' AND action = 'usage.record'"
        )
    };
    assert_eq!(count(&app, &ledger(&short)).await, 5);
    // Batches of two: three old rows take two statements per table.
    let done = api::domain::retention::cleanup(&app.pool, &app.vault(), chrono::Utc::now(), 90, 2)
        .await
        .expect("cleanup");
    assert_eq!(
        (done.usage_events, done.audit_events, done.stripe_events),
        (3, 3, 1),
        "{done:?}"
    );
    assert!(done.batches >= 6, "{done:?}");
    assert_eq!(count(&app, &ledger(&short)).await, 2);
    assert_eq!(count(&app, &audit(&short)).await, 2);
    // The other workspace keeps two years: nothing of it went.
    assert_eq!(count(&app, &ledger(&long)).await, 5);
    assert_eq!(count(&app, &audit(&long)).await, 5);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS n FROM stripe_events WHERE id LIKE 'evt_%'"
        )
        .await,
        2,
        "unprocessed events are never deleted"
    );
    // Counters keep the totals.
    assert_eq!(app.numbers(&owner, &orgs[0], "users").await, (5, 5));
    // Again: nothing left to do. Later (the clock moves on), the long workspace's old rows go.
    let again = api::domain::retention::cleanup(&app.pool, &app.vault(), chrono::Utc::now(), 90, 2)
        .await
        .expect("cleanup");
    assert_eq!((again.usage_events, again.audit_events), (0, 0));
    let later = chrono::Utc::now() + chrono::Duration::days(700);
    let done = api::domain::retention::cleanup(&app.pool, &app.vault(), later, 90, 1_000)
        .await
        .expect("cleanup");
    assert_eq!(done.usage_events, 3 + 2, "{done:?}");
    assert_eq!(count(&app, &ledger(&long)).await, 2);
}

#[tokio::test]
async fn cleanup_deletes_ended_delivery_logs_and_old_analytics_snapshots() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Logs").await;
    let uuid = ws.trim_start_matches("ws_").to_string();
    // Notifications 100 days old: one delivered, one still being retried; one recent.
    app.sql_count(&format!(
        "WITH n AS (INSERT INTO notifications (id, workspace_id, type, category, data, dedupe_key, created_at)
                    VALUES ('00000000-0000-7000-8000-000000000001', '{uuid}', 'quota.warning', 'QUOTA_WARNINGS', '{{}}', 'a', now() - interval '100 days'),
                           ('00000000-0000-7000-8000-000000000002', '{uuid}', 'quota.warning', 'QUOTA_WARNINGS', '{{}}', 'b', now() - interval '100 days'),
                           ('00000000-0000-7000-8000-000000000003', '{uuid}', 'quota.warning', 'QUOTA_WARNINGS', '{{}}', 'c', now())
                    RETURNING id),
              d AS (INSERT INTO notification_deliveries (id, workspace_id, notification_id, channel, target, destination, status, give_up_at, next_attempt_at)
                    SELECT gen_random_uuid(), '{uuid}', id, 'SLACK', 'slack', 'slack',
                           CASE WHEN id = '00000000-0000-7000-8000-000000000002' THEN 'PENDING' ELSE 'DELIVERED' END,
                           now() + interval '1 day',
                           CASE WHEN id = '00000000-0000-7000-8000-000000000002' THEN now() END
                      FROM n RETURNING 1),
              s AS (INSERT INTO analytics_snapshots (workspace_id, period_start, generated_at, data)
                    VALUES ('{uuid}', date_trunc('month', now() - interval '800 days'), now(), '{{}}'),
                           ('{uuid}', date_trunc('month', now()), now(), '{{}}') RETURNING 1)
         SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM s) AS n"
    ))
    .await;
    let done = api::domain::retention::cleanup(&app.pool, &app.vault(), chrono::Utc::now(), 90, 2)
        .await
        .expect("cleanup");
    assert_eq!(
        (done.notifications, done.analytics_snapshots),
        (1, 1),
        "{done:?}"
    );
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) AS n FROM notifications WHERE workspace_id = '{uuid}'")
        )
        .await,
        2,
        "a notification still being delivered stays, and so does a recent one"
    );
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) AS n FROM notification_deliveries WHERE workspace_id = '{uuid}'"
            )
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) AS n FROM analytics_snapshots WHERE workspace_id = '{uuid}'")
        )
        .await,
        1
    );
}

#[tokio::test]
async fn removed_members_are_pseudonymized_in_the_workspace_after_user_data_days() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let left = app.create_workspace(&owner, "Left").await;
    let kept = app.create_workspace(&owner, "Kept").await;
    let member = app
        .add_member(&owner, &left, "bob@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &kept, "bob@example.com", "VIEWER")
        .await;
    let r = app
        .gql(
            &owner,
            "mutation($w: ID!) { updateRetentionSettings(input: {workspaceId: $w, userDataDays: 30}) { retentionSettings { userDataDays } } }",
            json!({"w": left}),
        )
        .await;
    assert_ok(&r);
    let r = app
        .gql(
            &owner,
            "mutation($m: ID!) { removeMember(input: {memberId: $m}) { deletedMemberId } }",
            json!({"m": member}),
        )
        .await;
    assert_ok(&r);
    let (l, k) = (
        left.trim_start_matches("ws_").to_string(),
        kept.trim_start_matches("ws_").to_string(),
    );
    let naming = |ws: &str| {
        format!(
            "SELECT count(*) AS n FROM audit_events WHERE workspace_id = '{ws}' AND summary::text ILIKE '%bob@example.com%'"
        )
    };
    assert!(count(&app, &naming(&l)).await >= 1);
    assert!(count(&app, &naming(&k)).await >= 1);
    let cleanup = |now| {
        let (pool, vault) = (app.pool.clone(), app.vault());
        async move {
            api::domain::retention::cleanup(&pool, &vault, now, 90, 100)
                .await
                .expect("cleanup")
        }
    };
    // Within the 30 days nothing changes.
    let done = cleanup(chrono::Utc::now() + chrono::Duration::days(29)).await;
    assert_eq!(done.former_members, 0, "{done:?}");
    assert!(count(&app, &naming(&l)).await >= 1);
    // After them, the workspace left no longer names Bob; the one he stays in still does,
    // and so does his account.
    let done = cleanup(chrono::Utc::now() + chrono::Duration::days(31)).await;
    assert_eq!(done.former_members, 1, "{done:?}");
    assert_eq!(count(&app, &naming(&l)).await, 0);
    assert!(count(&app, &naming(&k)).await >= 1);
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) AS n FROM audit_events WHERE workspace_id = '{l}' AND summary::text LIKE '%erased\\_%'"
            )
        )
        .await,
        1,
        "the member.add event names the pseudonym"
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS n FROM users WHERE email = 'bob@example.com'"
        )
        .await,
        1
    );
    // Once done, a later cleanup has nothing to do.
    let done = cleanup(chrono::Utc::now() + chrono::Duration::days(32)).await;
    assert_eq!(done.former_members, 0, "{done:?}");
}
