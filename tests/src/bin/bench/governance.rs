//! The governance rows (`BENCH_ONLY=governance`, or after the others): the nested query and
//! `recordUsage` on the seeded workspace without policies, and with every policy on — an IP
//! allow-list of 50 CIDRs (the client's address matching the last), MFA required and a
//! session timeout (a person's token with `amr: ["mfa"]` and a fresh `auth_time`), a rate
//! limit high enough not to trip — called by that person and by an API key. The three
//! variants alternate twice on the same workspace and data (the settings row is written or
//! deleted between runs, and the run waits out the settings cache), so drift of the machine
//! weighs on all alike. Each row is the mean of its two runs, with its SQL statements per
//! request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use super::{
    Body, DB, Row, SECRET, http_row_as, mean, own_api, print_rows, reset_database, seed,
    start_server, vacuum_analyze,
};

const NESTED: &str = "query Nested($w: ID!) { workspace(id: $w) { name organizations(first: 100) { edges { node { id name depth
    parent { id name } children(first: 10) { edges { node { id name } } } ancestors { id name }
    usage { resource direct subtree limit effectiveLimit available } } } } } }";

/// 49 networks that do not hold the bench client, then loopback: the gate scans them all.
fn allow_list() -> Vec<String> {
    let mut nets: Vec<String> = (0..40).map(|i| format!("10.{i}.0.0/16")).collect();
    nets.extend((0..9).map(|i| format!("2001:db8:{i:x}::/48")));
    nets.push("127.0.0.0/8".into());
    nets
}

/// A person's token with MFA and a fresh sign-in.
fn mfa_token() -> anyhow::Result<String> {
    let now = tests::tokens::now();
    let claims = json!({
        "sub": "bench|owner", "email": "owner@bench.example", "name": "Bench", "email_verified": true,
        "iss": api::auth::DEV_ISSUER, "aud": api::auth::DEV_AUDIENCE,
        "iat": now, "auth_time": now, "amr": ["pwd", "mfa"], "exp": now + 86_400,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

/// An OWNER API key of `ws`, written as `createApiKey` writes one; its secret.
async fn api_key(db: &tokio_postgres::Client, ws: uuid::Uuid) -> anyhow::Result<String> {
    let k = api::domain::governance::api_keys::generate();
    let (key, user, member) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let ws = ws.to_string();
    db.execute(
        "INSERT INTO users (id, subject, email, name, email_verified, service_account)
         VALUES ($1::text::uuid, $2, $3, 'bench key', true, true)",
        &[
            &user,
            &format!("apikey|{key}"),
            &format!("{}@api-keys.invalid", k.prefix),
        ],
    )
    .await?;
    db.execute(
        "INSERT INTO members (id, workspace_id, user_id, role)
         VALUES ($1::text::uuid, $2::text::uuid, $3::text::uuid, 'OWNER')",
        &[&member, &ws, &user],
    )
    .await?;
    db.execute(
        "INSERT INTO api_keys (id, workspace_id, user_id, name, role, prefix, secret_hash)
         VALUES ($1::text::uuid, $2::text::uuid, $3::text::uuid, 'bench key', 'OWNER', $4, $5)",
        &[&key, &ws, &user, &k.prefix, &k.hash],
    )
    .await?;
    Ok(k.secret)
}

/// Turns every policy of `ws` on or off, then waits out the settings cache.
async fn policies(db: &tokio_postgres::Client, ws: uuid::Uuid, on: bool) -> anyhow::Result<()> {
    let ws = ws.to_string();
    if on {
        db.execute(
            "INSERT INTO workspace_settings (workspace_id, mfa_required, session_timeout_minutes,
                    ip_allow_list, rate_limit_per_minute, api_key_rate_limit_per_minute)
             VALUES ($1::text::uuid, true, 720, $2, 1000000, 1000000)
             ON CONFLICT (workspace_id) DO NOTHING",
            &[&ws, &allow_list()],
        )
        .await?;
    } else {
        db.execute(
            "DELETE FROM workspace_settings WHERE workspace_id = $1::text::uuid",
            &[&ws],
        )
        .await?;
    }
    // `GOVERNANCE_CACHE_MS` is 2 s by default.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    Ok(())
}

/// Runs the governance rows on a fresh database and prints their table.
pub async fn run(server_url: &str, workers: usize, seconds: u64) -> anyhow::Result<()> {
    reset_database(server_url).await?;
    let seeding = start_server(server_url, &own_api()?, &[]).await?;
    let seeded = seed(&seeding, workers).await?;
    drop(seeding);
    vacuum_analyze(server_url).await?;
    let ws = api::ids::WorkspaceId::decode(&seeded.ws)
        .context("workspace id")?
        .0;
    let (db, conn) =
        tokio_postgres::connect(&format!("{server_url}/{DB}"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let key = api_key(&db, ws).await?;
    let person = mfa_token()?;
    let server = Arc::new(start_server(server_url, &own_api()?, &[]).await?);
    let plain = server.token.clone();

    let text = json!({"query": NESTED, "variables": {"w": seeded.ws}, "operationName": "Nested"})
        .to_string();
    let nested: Body = Arc::new(move |_, _| text.clone());
    let leaves = Arc::new(seeded.leaves.clone());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let sequence = Arc::new(AtomicU64::new(0));
    let record: Body = Arc::new(move |w, _| {
        let n = sequence.fetch_add(1, Ordering::Relaxed);
        json!({
            "query": "mutation Alloc($o: ID!, $k: String!) { recordUsage(input: {organizationId: $o, resource: \"locations\", delta: 1, idempotencyKey: $k}) { organization { id } } }",
            "variables": {"o": leaves[w % leaves.len()], "k": format!("{run}-{n}")},
        })
        .to_string()
    });
    // Warm-up of every path (connections, statement caches, identity and key caches).
    for token in [&plain, &person, &key] {
        for _ in 0..10 {
            let r: serde_json::Value = server
                .http
                .post(format!("{}/graphql", server.base))
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(nested(0, 0))
                .send()
                .await?
                .json()
                .await?;
            anyhow::ensure!(r.get("errors").is_none(), "warm-up failed: {r}");
        }
    }

    let variants: [(&str, bool, &String); 3] = [
        ("no policies, a person", false, &plain),
        ("every policy on, a person with MFA", true, &person),
        ("every policy on, an API key", true, &key),
    ];
    let mut nested_runs: Vec<Vec<Row>> = (0..3).map(|_| Vec::new()).collect();
    let mut record_runs: Vec<Vec<Row>> = (0..3).map(|_| Vec::new()).collect();
    for _ in 0..2 {
        for (i, (name, on, token)) in variants.iter().enumerate() {
            policies(&db, ws, *on).await?;
            nested_runs[i].push(
                http_row_as(
                    &server,
                    token,
                    &format!("nested query, {name}"),
                    "requests/s",
                    workers,
                    seconds,
                    nested.clone(),
                )
                .await?,
            );
            record_runs[i].push(
                http_row_as(
                    &server,
                    token,
                    &format!("recordUsage, {name}"),
                    "allocations/s",
                    workers,
                    seconds,
                    record.clone(),
                )
                .await?,
            );
        }
    }
    let nested: Vec<Row> = nested_runs.into_iter().map(mean).collect();
    let record: Vec<Row> = record_runs.into_iter().map(mean).collect();
    println!(
        "\nGovernance: the same workspace without and with every policy on (IP allow-list of 50 \
         CIDRs, MFA, session timeout, rate limit 1,000,000/min), concurrency {workers}, \
         {seconds} s per run, mean of two alternating runs.\n"
    );
    let mut rows = Vec::new();
    rows.extend(nested.iter().map(copy));
    rows.extend(record.iter().map(copy));
    print_rows(&rows);
    for (what, rows) in [("nested query", &nested), ("recordUsage", &record)] {
        for r in &rows[1..] {
            println!(
                "{what}: {} reaches {:.0}% of the rate without policies (goal ≥ 90%), {:+.2} statements per request.",
                r.name,
                100.0 * r.rate / rows[0].rate.max(1e-9),
                r.statements.unwrap_or_default() - rows[0].statements.unwrap_or_default(),
            );
        }
    }
    Ok(())
}

fn copy(r: &Row) -> Row {
    Row {
        name: r.name.clone(),
        unit: r.unit,
        rate: r.rate,
        p50: r.p50,
        p99: r.p99,
        statements: r.statements,
        errors: r.errors,
    }
}
