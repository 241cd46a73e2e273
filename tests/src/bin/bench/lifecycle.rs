//! The data lifecycle rows (`BENCH_ONLY=lifecycle`, or after the others): one workspace with
//! 1,000,000 usage events and 100,000 audit events in the current month plus 500,000 ledger
//! entries past its retention;
//! - analytics generation for the month (the job's computation, three runs);
//! - retention cleanup of the 500,000 expired entries, batch by batch, while `recordUsage`
//!   runs against the release api (its rate compared with the idle rate just before), and
//!   the longest delete transaction (row locks are held that long);
//! - archive write (cleanup with `archiveBeforeDelete` of the 100,000 audit events) and
//!   restore throughput, to a local directory and to moto's S3 on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use super::{Body, DB, Server, env_or, http_row, own_api, reset_database, start_server};

/// Ledger entries and audit events of the month, and expired ledger entries.
const MONTH_USAGE: i64 = 1_000_000;
const MONTH_AUDIT: i64 = 100_000;
const EXPIRED_USAGE: i64 = 500_000;

struct Step {
    name: String,
    rows: i64,
    elapsed: Duration,
    bytes: Option<i64>,
    note: String,
}

fn print_steps(steps: &[Step]) {
    println!("| step | rows | time | rows/s | MB/s (plaintext) | notes |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    for s in steps {
        let secs = s.elapsed.as_secs_f64().max(1e-9);
        println!(
            "| {} | {} | {:.2} s | {:.0} | {} | {} |",
            s.name,
            s.rows,
            secs,
            s.rows as f64 / secs,
            s.bytes
                .map(|b| format!("{:.1}", b as f64 / 1e6 / secs))
                .unwrap_or_default(),
            s.note
        );
    }
}

async fn sql(server_url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) =
        tokio_postgres::connect(&format!("{server_url}/{DB}"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// The library's configuration for the bench database, archives in `archive_url`.
fn config_for(
    server_url: &str,
    archive: &[(String, String)],
) -> anyhow::Result<api::config::Config> {
    let mut env: std::collections::HashMap<String, String> = [
        ("DATABASE_URL".to_string(), format!("{server_url}/{DB}")),
        ("DATABASE_POOL_SIZE".to_string(), "4".to_string()),
        ("JWT_HS256_SECRET".to_string(), super::SECRET.to_string()),
    ]
    .into_iter()
    .collect();
    env.extend(archive.iter().cloned());
    Ok(api::config::Config::from_lookup(|k| env.get(k).cloned())?)
}

/// Seeds the workspace of `s` (created here, with one organization per load worker): the
/// rows of the module docs. Returns (workspace uuid, leaves).
async fn seed(
    s: &Server,
    db: &tokio_postgres::Client,
    workers: usize,
) -> anyhow::Result<(uuid::Uuid, Vec<String>)> {
    let r = s
        .gql(
            "mutation { createWorkspace(input: {name: \"Lifecycle\", billingMode: SINGLE}) { workspace { id } } }",
            json!({}),
        )
        .await?;
    let ws = r["data"]["createWorkspace"]["workspace"]["id"]
        .as_str()
        .context("ws id")?
        .to_string();
    let mut leaves = Vec::new();
    for w in 0..workers.max(1) {
        leaves.push(super::create_org(s, &ws, None, &format!("Org {w}")).await?);
    }
    let ws_id = api::ids::WorkspaceId::decode(&ws).context("ws id")?.0;
    let started = Instant::now();
    // Spread over the month so far (at least a day), five resources, the owner as actor.
    db.batch_execute(&format!(
        "CREATE TEMP TABLE bench_ctx AS
           SELECT date_trunc('month', now()) AS m0,
                  greatest(extract(epoch FROM now() - date_trunc('month', now())), 86400)::bigint AS span,
                  (SELECT user_id FROM members WHERE workspace_id = '{ws_id}' LIMIT 1) AS actor,
                  (SELECT id FROM organizations WHERE workspace_id = '{ws_id}' ORDER BY id LIMIT 1) AS org;
         INSERT INTO usage_events (workspace_id, id, organization_id, resource, period_start, delta, actor_id, created_at)
           SELECT '{ws_id}', gen_random_uuid(), c.org,
                  (ARRAY['users','locations','executions','storage','seats'])[1 + i % 5],
                  'epoch', 1 + i % 7, c.actor, c.m0 + (i % c.span) * interval '1 second'
             FROM bench_ctx c, generate_series(1, {MONTH_USAGE}) i;
         INSERT INTO audit_events (workspace_id, id, actor_id, action, target_type, target_id, summary, created_at)
           SELECT '{ws_id}', gen_random_uuid(), c.actor, 'usage.record', 'Organization', 'org_' || i,
                  jsonb_build_object('resource', 'users', 'delta', 1 + i % 7, 'note', repeat('x', 60)),
                  c.m0 + (i % c.span) * interval '1 second'
             FROM bench_ctx c, generate_series(1, {MONTH_AUDIT}) i;
         INSERT INTO usage_events (workspace_id, id, organization_id, resource, period_start, delta, actor_id, created_at)
           SELECT '{ws_id}', gen_random_uuid(), c.org, 'users', 'epoch', 1, c.actor,
                  now() - interval '800 days' - i * interval '1 second'
             FROM bench_ctx c, generate_series(1, {EXPIRED_USAGE}) i;
         DROP TABLE bench_ctx;"
    ))
    .await?;
    // (VACUUM runs outside the implicit transaction of a multi-statement batch.)
    db.batch_execute("VACUUM ANALYZE usage_events").await?;
    db.batch_execute("VACUUM ANALYZE audit_events").await?;
    eprintln!(
        "seeded {} usage events and {} audit events in {:.1} s",
        MONTH_USAGE + EXPIRED_USAGE,
        MONTH_AUDIT,
        started.elapsed().as_secs_f64()
    );
    Ok((ws_id, leaves))
}

/// Archives the audit events of `ws` (all aged past retention by the caller) with `vault`
/// and restores them; the two steps.
async fn archive_round(
    label: &str,
    pool: &api::db::DbPool,
    db: &tokio_postgres::Client,
    vault: &api::storage::Vault,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Vec<Step>> {
    let last: Option<String> = db
        .query_one("SELECT max(id::text) FROM archives", &[])
        .await?
        .get(0);
    let started = Instant::now();
    let done = api::domain::retention::cleanup(
        pool,
        vault,
        now,
        90,
        api::jobs::maintenance::RETENTION_BATCH,
    )
    .await?;
    let write = started.elapsed();
    let rows = db
        .query(
            "SELECT id::text, plaintext_bytes, object_bytes FROM archives
              WHERE $1::text IS NULL OR id > $1::text::uuid ORDER BY id",
            &[&last],
        )
        .await?;
    let plain: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    let object: i64 = rows.iter().map(|r| r.get::<_, i64>(2)).sum();
    let mut steps = vec![Step {
        name: format!("archive write ({label}): cleanup with archiveBeforeDelete"),
        rows: done.audit_events as i64,
        elapsed: write,
        bytes: Some(plain),
        note: format!(
            "{} archives, {:.1} MB → {:.1} MB stored ({:.1}×); longest delete {:.1} ms",
            done.archives,
            plain as f64 / 1e6,
            object as f64 / 1e6,
            plain as f64 / object.max(1) as f64,
            done.longest_lock_us as f64 / 1000.0
        ),
    }];
    let started = Instant::now();
    for r in &rows {
        let id: uuid::Uuid = r.get::<_, String>(0).parse()?;
        api::domain::archives::run_restore(pool, vault, id, now)
            .await
            .map_err(|e| anyhow::anyhow!("restoring {id}: {e}"))?;
    }
    steps.push(Step {
        name: format!("archive restore ({label}): verify and re-import"),
        rows: done.audit_events as i64,
        elapsed: started.elapsed(),
        bytes: Some(plain),
        note: format!("{} archives, one after the other", rows.len()),
    });
    Ok(steps)
}

/// The lifecycle rows (see the module docs).
pub async fn run(server_url: &str, workers: usize, seconds: u64) -> anyhow::Result<()> {
    reset_database(server_url).await?;
    let server = Arc::new(start_server(server_url, &own_api()?, &[]).await?);
    let db = sql(server_url).await?;
    let (ws, leaves) = seed(&server, &db, workers).await?;
    let dir = std::env::temp_dir().join(format!("bench-archives-{}", std::process::id()));
    let local = [(
        "ARCHIVE_URL".to_string(),
        format!("file://{}/", dir.display()),
    )];
    let config = config_for(server_url, &local)?;
    let pool = api::db::build_pool(&config, Default::default())?;
    let settings = api::jobs::Settings::new(&config)?;
    let mut steps = Vec::new();

    // Analytics of the month: the job's computation, three runs.
    let start = api::domain::analytics::bounds(
        api::domain::analytics::Period::CurrentMonth,
        chrono::Utc::now(),
    )
    .0;
    let services = settings.services(&pool);
    let mut runs = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        api::domain::analytics::run(&services, ws, start).await?;
        runs.push(started.elapsed());
    }
    runs.sort();
    steps.push(Step {
        name: "analytics generation for the month (median of 3)".into(),
        rows: MONTH_USAGE + MONTH_AUDIT,
        elapsed: runs[1],
        bytes: None,
        note: format!(
            "runs {} (goal ≤ 5 s)",
            runs.iter()
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });

    // Retention of the expired ledger while recordUsage runs.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let leaves = Arc::new(leaves);
    let body: Body = Arc::new(move |w, _| {
        let n = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        json!({
            "query": "mutation Alloc($o: ID!, $k: String!) { recordUsage(input: {organizationId: $o, resource: \"locations\", delta: 1, idempotencyKey: $k}) { organization { id } } }",
            "variables": {"o": leaves[w % leaves.len()], "k": format!("{run_id}-{n}")},
        })
        .to_string()
    });
    let window = seconds.min(env_or("BENCH_LIFECYCLE_SECONDS", 5));
    let idle = http_row(
        &server,
        "recordUsage, idle",
        "allocations/s",
        workers,
        window,
        body.clone(),
    )
    .await?;
    let cleanup_pool = pool.clone();
    let vault = settings.vault.clone();
    let cleanup = tokio::spawn(async move {
        let started = Instant::now();
        let done = api::domain::retention::cleanup(
            &cleanup_pool,
            &vault,
            chrono::Utc::now(),
            90,
            api::jobs::maintenance::RETENTION_BATCH,
        )
        .await;
        (done, started.elapsed())
    });
    let busy = http_row(
        &server,
        "recordUsage, during cleanup",
        "allocations/s",
        workers,
        window,
        body,
    )
    .await?;
    let (done, took) = cleanup.await?;
    let done = done?;
    steps.push(Step {
        name: "retention cleanup of the expired ledger (delete only)".into(),
        rows: done.usage_events as i64,
        elapsed: took,
        bytes: None,
        note: format!(
            "{} batches of ≤ {}; longest delete {:.1} ms (goal ≤ 100 ms); recordUsage {:.0}/s during vs {:.0}/s idle = {:.0}% (goal ≥ 80%){}",
            done.batches,
            api::jobs::maintenance::RETENTION_BATCH,
            done.longest_lock_us as f64 / 1000.0,
            busy.rate,
            idle.rate,
            100.0 * busy.rate / idle.rate.max(1e-9),
            if took.as_secs() < window {
                format!("; the cleanup took {:.1} s of the {window} s window", took.as_secs_f64())
            } else {
                String::new()
            }
        ),
    });

    // Archive write and restore: the audit events, aged past seven years.
    db.batch_execute(&format!(
        "INSERT INTO retention_settings (workspace_id, audit_logs_days, usage_events_days, execution_logs_days,
                 workflow_data_days, user_data_days, archive_before_delete)
         VALUES ('{ws}', 2555, 730, 365, 2555, 2555, true)
         ON CONFLICT (workspace_id) DO UPDATE SET archive_before_delete = true;
         UPDATE audit_events SET created_at = created_at - interval '3000 days' WHERE workspace_id = '{ws}';"
    ))
    .await?;
    db.batch_execute("VACUUM ANALYZE audit_events").await?;
    let now = chrono::Utc::now();
    steps.extend(archive_round("local directory", &pool, &db, &settings.vault, now).await?);
    // Restored rows are held 30 days: the S3 round runs 31 days later.
    let bucket = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let s3_env = tests::moto::bucket_env(&bucket).await;
    let s3_config = config_for(server_url, &s3_env)?;
    let s3 = api::storage::Vault::open(
        &s3_config.archive_url,
        &s3_config.archive_options,
        s3_config.archive_master_key,
    )?;
    steps.extend(
        archive_round(
            "S3 on loopback (moto)",
            &pool,
            &db,
            &s3,
            now + chrono::Duration::days(31),
        )
        .await?,
    );
    let _ = std::fs::remove_dir_all(&dir);

    println!("\nData lifecycle, release build, concurrency {workers} for recordUsage.\n");
    super::print_rows(&[idle, busy]);
    println!();
    print_steps(&steps);
    Ok(())
}
