//! Archival: retention cleanup archives what it deletes (to a local directory and to a real
//! S3 server on loopback), `Workspace.archives` lists the manifests, and `restoreArchive`
//! verifies an archive and puts its rows back, through the real worker.

use std::collections::HashMap;
use std::time::Duration;

use diesel_async::SimpleAsyncConnection as _;
use serde_json::{Value, json};
use tests::{Options, TestApp, assert_code, assert_ok};

use super::webhooks::Worker;

const ARCHIVE_ON: &str = "mutation($w: ID!) { updateRetentionSettings(input: {workspaceId: $w, auditLogsDays: 30, usageEventsDays: 30, archiveBeforeDelete: true}) { retentionSettings { archiveBeforeDelete } } }";
const ARCHIVES: &str = "query($w: ID!, $c: ArchiveCategory) { workspace(id: $w) { archives(first: 50, category: $c) { edges { node { id category rangeStart rangeEnd rowCount plaintextBytes objectBytes plaintextSha256 objectSha256 restoredAt restoredRows heldUntil } } } } }";
const RESTORE: &str = "mutation($a: ID!) { restoreArchive(input: {archiveId: $a}) { archive { id rowCount } job { id kind status } } }";

/// A workspace archiving before it deletes, five usage records, and three of its ledger
/// entries and their audit events aged 40 days (past its 30 days); the workspace id.
async fn aged_workspace(app: &TestApp, owner: &str, name: &str) -> String {
    let ws = app.create_workspace(owner, name).await;
    let r = app.gql(owner, ARCHIVE_ON, json!({"w": ws})).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["updateRetentionSettings"]["retentionSettings"]["archiveBeforeDelete"],
        true
    );
    let org = app.create_org(owner, &ws, None, "Org").await;
    for _ in 0..5 {
        assert_ok(&app.record(owner, &org, "users", 1).await);
    }
    let uuid = uuid_of(&ws);
    app.sql_count(&format!(
        "WITH u AS (UPDATE usage_events SET created_at = now() - interval '40 days' - (random() * interval '1 day')
                     WHERE workspace_id = '{uuid}' AND id IN (
                        SELECT id FROM usage_events WHERE workspace_id = '{uuid}' ORDER BY id LIMIT 3) RETURNING 1),
              a AS (UPDATE audit_events SET created_at = now() - interval '40 days' - (random() * interval '1 day')
                     WHERE workspace_id = '{uuid}' AND action = 'usage.record' AND id IN (
                        SELECT id FROM audit_events WHERE workspace_id = '{uuid}' AND action = 'usage.record'
                         ORDER BY id LIMIT 3) RETURNING 1)
         SELECT (SELECT count(*) FROM u) + (SELECT count(*) FROM a) AS n"
    ))
    .await;
    ws
}

fn uuid_of(ws: &str) -> String {
    ws.trim_start_matches("ws_").to_string()
}

/// A fingerprint of every row of `table` of `ws`, every column included: (rows, hash).
async fn fingerprint(app: &TestApp, table: &str, ws: &str) -> (i64, i64) {
    fingerprint_where(app, table, ws, "true").await
}

/// [`fingerprint`] of the rows that match `filter`.
async fn fingerprint_where(app: &TestApp, table: &str, ws: &str, filter: &str) -> (i64, i64) {
    let uuid = uuid_of(ws);
    let n = app
        .sql_count(&format!(
            "SELECT count(*) AS n FROM {table} e WHERE workspace_id = '{uuid}' AND {filter}"
        ))
        .await;
    let h = app
        .sql_count(&format!(
            "SELECT coalesce(('x' || substr(md5(string_agg(row_to_json(e)::text, '|' ORDER BY e.id)), 1, 15))::bit(60)::bigint, 0) AS n
               FROM {table} e WHERE workspace_id = '{uuid}' AND {filter}"
        ))
        .await;
    (n, h)
}

async fn archives(app: &TestApp, token: &str, ws: &str) -> Vec<Value> {
    let r = app.gql(token, ARCHIVES, json!({"w": ws})).await;
    assert_ok(&r);
    r["data"]["workspace"]["archives"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

async fn restore(app: &TestApp, token: &str, archive: &str) -> Value {
    let r = app.gql(token, RESTORE, json!({"a": archive})).await;
    assert_ok(&r);
    assert_eq!(
        r["data"]["restoreArchive"]["job"]["kind"],
        "archive.restore"
    );
    let id = r["data"]["restoreArchive"]["job"]["id"]
        .as_str()
        .expect("job id")
        .to_string();
    app.job_ended(token, &id).await
}

async fn cleanup(
    app: &TestApp,
    now: chrono::DateTime<chrono::Utc>,
) -> api::domain::retention::Cleanup {
    api::domain::retention::cleanup(&app.pool, &app.vault(), now, 90, 2)
        .await
        .expect("cleanup")
}

/// Archive → delete → restore, and the rows are back as they were.
async fn round_trip(app: &TestApp) -> String {
    let owner = app.user("owner@example.com");
    let ws = aged_workspace(app, &owner, "Archived").await;
    let other = aged_workspace(app, &owner, "Other").await;
    let ledger_before = fingerprint(app, "usage_events", &ws).await;
    let audit_before = fingerprint(app, "audit_events", &ws).await;
    assert_eq!(ledger_before.0, 5);

    let done = cleanup(app, chrono::Utc::now()).await;
    // Three old rows of each category of each workspace, in batches of two: two archives each.
    assert_eq!(
        (done.usage_events, done.audit_events, done.archives),
        (6, 6, 8),
        "{done:?}"
    );
    assert_eq!(fingerprint(app, "usage_events", &ws).await.0, 2);
    let list = archives(app, &owner, &ws).await;
    assert_eq!(list.len(), 4, "{list:?}");
    for category in ["AUDIT_EVENTS", "USAGE_EVENTS"] {
        let of: Vec<&Value> = list.iter().filter(|a| a["category"] == category).collect();
        assert_eq!(of.len(), 2);
        assert_eq!(
            of.iter()
                .map(|a| a["rowCount"].as_i64().unwrap_or(0))
                .sum::<i64>(),
            3
        );
        for a in of {
            assert_eq!(a["plaintextSha256"].as_str().map(str::len), Some(64));
            assert_eq!(a["objectSha256"].as_str().map(str::len), Some(64));
            assert!(a["rangeStart"].as_str() <= a["rangeEnd"].as_str());
            assert!(a["restoredAt"].is_null());
        }
    }
    let filtered = app
        .gql(&owner, ARCHIVES, json!({"w": ws, "c": "USAGE_EVENTS"}))
        .await;
    assert_eq!(
        filtered["data"]["workspace"]["archives"]["edges"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    let worker = Worker::start(app);
    for a in &list {
        let job = restore(app, &owner, a["id"].as_str().expect("id")).await;
        assert_eq!(job["status"], "SUCCEEDED", "{job}");
    }
    assert_eq!(fingerprint(app, "usage_events", &ws).await, ledger_before);
    assert_eq!(
        fingerprint(app, "audit_events", &ws).await.0,
        audit_before.0 + 4,
        "the four restores are audited"
    );
    let restored = archives(app, &owner, &ws).await;
    assert_eq!(
        restored
            .iter()
            .map(|a| a["restoredRows"].as_i64().unwrap_or(-1))
            .sum::<i64>(),
        6
    );
    // Restoring again duplicates nothing.
    let job = restore(app, &owner, list[0]["id"].as_str().expect("id")).await;
    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    assert_eq!(fingerprint(app, "usage_events", &ws).await, ledger_before);
    let again = archives(app, &owner, &ws).await;
    let first = again
        .iter()
        .find(|a| a["id"] == list[0]["id"])
        .expect("still listed");
    assert_eq!(first["restoredRows"], 0);
    worker.stop().await;

    // The other workspace's archives are its own.
    assert_eq!(archives(app, &owner, &other).await.len(), 4);
    // Restored rows are held from cleanup for 30 days, then archived again.
    let done = cleanup(app, chrono::Utc::now()).await;
    assert_eq!((done.usage_events, done.archives), (0, 0), "{done:?}");
    let done = cleanup(app, chrono::Utc::now() + chrono::Duration::days(31)).await;
    assert!(done.usage_events >= 3, "{done:?}");
    ws
}

#[tokio::test]
async fn archive_delete_restore_round_trip_in_a_local_directory() {
    let app = TestApp::spawn().await;
    round_trip(&app).await;
    // Every archive has its manifest beside it, and the objects hold no plaintext.
    let dir = app
        .config
        .archive_url
        .strip_prefix("file://")
        .expect("file URL")
        .to_string();
    let mut manifests = 0;
    let mut objects = 0;
    for path in walk(std::path::Path::new(&dir)) {
        let name = path.to_string_lossy().to_string();
        let bytes = std::fs::read(&path).expect("read");
        if name.ends_with(".manifest.json") {
            manifests += 1;
            let m: Value = serde_json::from_slice(&bytes).expect("manifest JSON");
            assert_eq!(m["format"], "ndjson+zstd+aes-256-gcm");
            assert!(m["rowCount"].as_i64() > Some(0));
        } else if name.ends_with(".ndjson.zst.enc") {
            objects += 1;
            assert!(bytes.starts_with(b"WSA1"));
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("usage.record") && !text.contains("workspace_id"));
        }
    }
    // Two workspaces × two categories × two batches, then the re-archived rows of the first.
    assert!(
        manifests >= 8 && manifests == objects,
        "{manifests} manifests, {objects} objects"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn archive_delete_restore_round_trip_on_s3() {
    let bucket = format!("arch-{}", uuid::Uuid::now_v7().simple());
    let env: HashMap<String, String> = tests::moto::bucket_env(&bucket).await.into_iter().collect();
    let app = TestApp::with(Options { env }).await;
    assert!(app.config.archive_url.starts_with("s3://"));
    round_trip(&app).await;
    let keys = tests::moto::list(&bucket).await;
    let objects = keys
        .iter()
        .filter(|k| k.ends_with(".ndjson.zst.enc"))
        .count();
    let manifests = keys
        .iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .count();
    assert!(objects >= 8 && objects == manifests, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("archives/workspaces/")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_corrupted_or_missing_archive_is_refused_on_restore_and_restores_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = aged_workspace(&app, &owner, "Archived").await;
    cleanup(&app, chrono::Utc::now()).await;
    let list = archives(&app, &owner, &ws).await;
    assert_eq!(list.len(), 4);
    let before = fingerprint(&app, "usage_events", &ws).await;
    let vault = app.vault();
    let usage: Vec<&Value> = list
        .iter()
        .filter(|a| a["category"] == "USAGE_EVENTS")
        .collect();
    // One byte flipped in the middle of the object.
    let flipped = usage[0]["id"].as_str().expect("id");
    let p = object_path(&app, flipped).await;
    let mut bytes = vault.get_raw(&p).await.expect("object");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    vault.put_raw(&p, bytes).await.expect("overwrite");
    // The other one gone from storage.
    let missing = usage[1]["id"].as_str().expect("id");
    vault
        .delete(&object_path(&app, missing).await)
        .await
        .expect("delete");

    let worker = Worker::start(&app);
    for (id, why) in [(flipped, "corrupt"), (missing, "missing")] {
        let job = restore(&app, &owner, id).await;
        assert_eq!(job["status"], "FAILED", "{job}");
        let error = job["lastError"].as_str().unwrap_or_default();
        assert!(error.contains("corrupt") && error.contains(why), "{job}");
        assert_eq!(
            job["attempts"], 1,
            "a corrupt archive is not retried: {job}"
        );
    }
    worker.stop().await;
    assert_eq!(fingerprint(&app, "usage_events", &ws).await, before);
    let after = archives(&app, &owner, &ws).await;
    assert!(after.iter().all(|a| a["restoredAt"].is_null()));
}

/// The object path of archive `id` (from its manifest row).
async fn object_path(app: &TestApp, id: &str) -> String {
    let uuid = api::ids::ArchiveId::decode(id).expect("archive id").0;
    let mut conn = app.pool.get().await.expect("conn");
    api::db::repo::archives::find(&mut conn, uuid)
        .await
        .expect("find")
        .expect("archive")
        .path
}

#[tokio::test]
async fn archives_are_read_by_managers_restored_by_owners_and_invisible_to_others() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = aged_workspace(&app, &owner, "Archived").await;
    cleanup(&app, chrono::Utc::now()).await;
    let list = archives(&app, &owner, &ws).await;
    let id = list[0]["id"].as_str().expect("id").to_string();
    app.add_member(&owner, &ws, "admin@example.com", "ADMIN")
        .await;
    app.add_member(&owner, &ws, "viewer@example.com", "VIEWER")
        .await;
    let admin = app.user("admin@example.com");
    let viewer = app.user("viewer@example.com");
    let stranger = app.user("stranger@example.com");
    assert_eq!(archives(&app, &admin, &ws).await.len(), 4);
    assert_code(
        &app.gql(&viewer, ARCHIVES, json!({"w": ws})).await,
        "FORBIDDEN",
    );
    assert_code(
        &app.gql(&admin, RESTORE, json!({"a": id})).await,
        "FORBIDDEN",
    );
    // A stranger's restore and read look exactly like those of a missing archive.
    let missing = "arc_0193a0a0a0a0a0a0a0a0a0a0a0a0a0a0";
    let r1 = app.gql(&stranger, RESTORE, json!({"a": id})).await;
    let r2 = app.gql(&stranger, RESTORE, json!({"a": missing})).await;
    assert_code(&r1, "NOT_FOUND");
    assert_eq!(r1["errors"][0]["message"], r2["errors"][0]["message"]);
    assert_eq!(r1["errors"][0]["extensions"], r2["errors"][0]["extensions"]);
    let q = "query($a: ID!) { archive(id: $a) { id rowCount } }";
    assert_eq!(
        app.gql(&stranger, q, json!({"a": id})).await["data"]["archive"],
        Value::Null
    );
    assert_eq!(
        app.gql(&viewer, q, json!({"a": id})).await["data"]["archive"],
        Value::Null
    );
    assert_eq!(
        app.gql(&admin, q, json!({"a": id})).await["data"]["archive"]["id"],
        id
    );
    assert_eq!(
        app.gql(&owner, q, json!({"a": "garbage"})).await["data"]["archive"],
        Value::Null
    );
    // Nothing was enqueued by the refused requests.
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM workspace_jobs WHERE kind = 'archive.restore'")
            .await,
        0
    );
}

/// Seeds `n` audit events of `ws` aged past its 30 days (one second apart, the oldest has
/// `target_id` `n`); their fingerprint.
async fn seed_expired(app: &TestApp, ws: &str, n: i64) -> (i64, i64) {
    let uuid = uuid_of(ws);
    app.sql_count(&format!(
        "WITH s AS (INSERT INTO audit_events (workspace_id, id, action, target_type, target_id, summary, created_at)
                    SELECT '{uuid}', gen_random_uuid(), 'seed.event', 'Seed', i::text,
                           jsonb_build_object('i', i, 'note', repeat('x', 40)),
                           now() - interval '40 days' - i * interval '1 second'
                      FROM generate_series(1, {n}) i RETURNING 1)
         SELECT count(*) AS n FROM s"
    ))
    .await;
    seeded(app, ws).await
}

/// The fingerprint of the seeded rows of `ws` that are live.
async fn seeded(app: &TestApp, ws: &str) -> (i64, i64) {
    fingerprint_where(app, "audit_events", ws, "action = 'seed.event'").await
}

/// A worker process that runs retention every second on `app`'s database and archive store,
/// waiting as long as it takes for row locks.
fn retention_worker(app: &TestApp, name: &str) -> tests::processes::Process {
    let archive = app.config.archive_url.clone();
    tests::processes::spawn_worker(
        name,
        &app.db.url,
        &[
            ("DATABASE_LOCK_TIMEOUT_MS", "300000"),
            ("ARCHIVE_URL", archive.as_str()),
            ("SCHEDULE_RETENTION", "* * * * * *"),
            ("SCHEDULE_ANALYTICS", "off"),
            ("SCHEDULE_METER_REPORT", "off"),
            ("SCHEDULE_IDEMPOTENCY_EXPIRY", "off"),
            ("SCHEDULE_JOB_RETENTION", "off"),
            ("SHUTDOWN_TIMEOUT_SECS", "20"),
        ],
    )
}

/// Holds the row lock of the oldest seeded row (of the first batch): the worker's delete of
/// that batch will wait on it, after the batch's object is written — mid-batch, with no hook
/// in the code under test.
async fn lock_oldest(app: &TestApp, ws: &str, n: i64) -> diesel_async::AsyncPgConnection {
    let mut holder = super::jobs::connect(app).await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM audit_events WHERE workspace_id = '{}' AND target_id = '{n}' FOR UPDATE",
            uuid_of(ws)
        ))
        .await
        .expect("lock the oldest row");
    holder
}

/// Waits until a worker's delete of a batch waits on the lock of [`lock_oldest`].
async fn wait_blocked(app: &TestApp) {
    super::jobs::wait_for(
        app,
        "SELECT count(*) AS n FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock'
            AND query ILIKE 'DELETE FROM audit_events%'",
        1,
        Duration::from_secs(60),
    )
    .await;
}

/// Every expired seeded row gone from the live table, each in exactly one archive, and the
/// archives restore them as they were.
async fn assert_archived_once(app: &TestApp, ws: &str, before: (i64, i64)) {
    super::jobs::wait_for(
        app,
        &format!(
            "SELECT count(*) AS n FROM audit_events WHERE workspace_id = '{}' AND action = 'seed.event'",
            uuid_of(ws)
        ),
        0,
        Duration::from_secs(90),
    )
    .await;
    let uuid = uuid_of(ws);
    assert_eq!(
        app.sql_count(&format!(
            "SELECT coalesce(sum(row_count), 0)::bigint AS n FROM archives
              WHERE workspace_id = '{uuid}' AND category = 'AUDIT_EVENTS'"
        ))
        .await,
        // The seeded rows and the audit event of the settings change (40 days old too? no:
        // it is new), nothing twice.
        before.0,
        "every row is in exactly one archive"
    );
    let ids: Vec<uuid::Uuid> = {
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            id: uuid::Uuid,
        }
        let mut conn = app.pool.get().await.expect("conn");
        let rows: Vec<Id> = diesel_async::RunQueryDsl::load(
            diesel::sql_query(format!(
                "SELECT id FROM archives WHERE workspace_id = '{uuid}' ORDER BY created_at"
            )),
            &mut conn,
        )
        .await
        .expect("archive ids");
        rows.into_iter().map(|r| r.id).collect()
    };
    let vault = app.vault();
    for id in ids {
        api::domain::archives::run_restore(&app.pool, &vault, id, chrono::Utc::now())
            .await
            .expect("restore");
    }
    assert_eq!(
        seeded(app, ws).await,
        before,
        "restored exactly as they were"
    );
}

#[tokio::test]
async fn archives_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Killed").await;
    assert_ok(&app.gql(&owner, ARCHIVE_ON, json!({"w": ws})).await);
    let n = 12_000;
    let before = seed_expired(&app, &ws, n).await;
    assert_eq!(before.0, n);
    let mut holder = lock_oldest(&app, &ws, n).await;
    let mut first = retention_worker(&app, "worker-killed");
    wait_blocked(&app).await;
    first.kill();
    holder.batch_execute("ROLLBACK").await.expect("unlock");
    // The killed batch wrote its object but never committed its manifest or its delete.
    assert_eq!(app.sql_count("SELECT count(*) AS n FROM archives").await, 0);
    let dir = app
        .config
        .archive_url
        .strip_prefix("file://")
        .expect("file URL")
        .to_string();
    let orphans = walk(std::path::Path::new(&dir))
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.zst.enc"))
        .count();
    assert_eq!(
        orphans, 1,
        "the killed batch's object is written (and never listed)"
    );
    assert_eq!(seeded(&app, &ws).await, before);
    let _second = retention_worker(&app, "worker-second");
    assert_archived_once(&app, &ws, before).await;
}

#[tokio::test]
async fn archives_a_worker_stopped_with_sigterm_mid_batch_exits_cleanly_and_loses_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.user("owner@example.com");
    let ws = app.create_workspace(&owner, "Stopped").await;
    assert_ok(&app.gql(&owner, ARCHIVE_ON, json!({"w": ws})).await);
    let n = 12_000;
    let before = seed_expired(&app, &ws, n).await;
    let mut holder = lock_oldest(&app, &ws, n).await;
    let mut first = retention_worker(&app, "worker-stopped");
    wait_blocked(&app).await;
    first.terminate();
    // The job in flight is given time to finish: let it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.batch_execute("ROLLBACK").await.expect("unlock");
    let status = first
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the worker exits within its shutdown timeout");
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        first.output()
    );
    assert!(
        first.output().contains("worker stopped"),
        "{}",
        first.output()
    );
    // Whatever the stopped worker finished stays done once; a new worker does the rest.
    let _second = retention_worker(&app, "worker-after");
    assert_archived_once(&app, &ws, before).await;
}
