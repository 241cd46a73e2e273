//! The `api` command line: serve (the default), migrate, print the schema, mint a
//! development token. The `api` binary is this and an allocator.

use std::process::ExitCode;

use crate::config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "api", about = "Workspace and billing GraphQL API")]
struct Cli {
    /// Do not run the background worker in this process (production runs `worker` separately).
    #[arg(long, global = true)]
    no_worker: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate the database and serve HTTP (the default).
    Serve,
    /// Create the database if needed, apply pending migrations, and exit.
    Migrate,
    /// Print the GraphQL schema (SDL) and exit.
    PrintSchema,
    /// List jobs that failed for good (`Failed`, `Killed`), newest first, one JSON object a
    /// line: id, queue, status, attempts, runs, doneAt, error, payload.
    FailedJobs {
        /// Only this queue (e.g. `stripe-events`, `billing-intents`).
        #[arg(long)]
        queue: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Put a failed job back on its queue (fresh attempts and run count).
    RetryJob {
        /// The job's id (from `failed-jobs`).
        id: String,
    },
    /// Print a signed development token (needs JWT_HS256_SECRET).
    DevToken {
        /// E-mail of the user.
        #[arg(long)]
        email: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Subject (`sub`); defaults to `dev|<email>`.
        #[arg(long)]
        sub: Option<String>,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 12)]
        hours: u64,
    },
}

/// Runs the `api` command line (`api [--no-worker] [serve|migrate|print-schema|failed-jobs|retry-job|dev-token]`)
/// and returns the process's exit code.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::PrintSchema) = cli.command {
        print!("{}", crate::graphql::sdl());
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Commands that print data keep stdout for it: no logs.
    if !matches!(
        cli.command,
        Some(Command::FailedJobs { .. } | Command::RetryJob { .. } | Command::DevToken { .. })
    ) {
        crate::telemetry::init_tracing(config.log_format);
    }
    let result = match cli.command {
        Some(Command::DevToken {
            email,
            name,
            sub,
            hours,
        }) => {
            let sub = sub.unwrap_or_else(|| format!("dev|{email}"));
            crate::auth::dev_token(&config, &sub, &email, name.as_deref(), hours * 3600)
                .map(|t| println!("{t}"))
        }
        Some(Command::Migrate) => crate::prepare_database(&config, Default::default())
            .await
            .map(|_| ())
            .map_err(Into::into),
        Some(Command::FailedJobs { queue, limit }) => failed_jobs(&config, queue, limit).await,
        Some(Command::RetryJob { id }) => retry_job(&config, &id).await,
        Some(Command::Serve) | None => serve(config, !cli.no_worker).await,
        Some(Command::PrintSchema) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line on stderr (logs may be JSON; this is for the operator).
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, with_worker: bool) -> anyhow::Result<()> {
    if let Err(e) = config.require_token_verification() {
        anyhow::bail!("{e}");
    }
    let statements = crate::db::StatementCounter::default();
    let pool = crate::prepare_database(&config, statements.clone()).await?;
    let addr = config.bind_addr;
    let state = crate::AppState::new(config, pool.clone(), statements)?;
    let grace = state.config.shutdown_timeout;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let settings = crate::jobs::Settings::new(&state.config)?;
    let worker = with_worker
        .then(|| tokio::spawn(crate::jobs::run(pool.clone(), settings, stop_rx.clone())));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (BIND_ADDR): {e}"))?;
    tracing::info!("listening on http://{addr} (GraphiQL at http://{addr}/graphiql)");
    // On SIGINT/SIGTERM: stop accepting, give work in flight `grace`, then exit regardless
    // (a stuck request or job must not keep a stopping process alive).
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        tracing::info!(grace_secs = grace.as_secs(), "shutting down");
        let _ = stop_tx.send(true);
        tokio::time::sleep(grace + std::time::Duration::from_secs(1)).await;
        tracing::error!("shutdown deadline passed; exiting with work still running");
        std::process::exit(1);
    });
    let mut stopping = stop_rx;
    let stopped = crate::http::server::serve(
        listener,
        crate::router(state.clone()),
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        },
        grace,
    )
    .await;
    if let crate::http::server::Stopped::DeadlinePassed(open) = stopped {
        tracing::warn!(
            connections = open,
            "closed connections still open at the shutdown deadline"
        );
    }
    // The requests served since the last periodic flush.
    if let Err(e) = state.flush_api_usage().await {
        tracing::warn!(error = %e, "storing the API usage counters at shutdown failed");
    }
    if let Some(w) = worker {
        let _ = w.await;
    }
    Ok(())
}

async fn failed_jobs(config: &Config, queue: Option<String>, limit: i64) -> anyhow::Result<()> {
    let pool = crate::prepare_database(config, Default::default()).await?;
    let mut conn = pool.get().await?;
    for job in
        crate::db::repo::jobs::failed(&mut conn, queue.as_deref(), limit.clamp(1, 10_000)).await?
    {
        println!(
            "{}",
            serde_json::json!({
                "id": job.id, "queue": job.queue, "status": job.status, "attempts": job.attempts,
                "runs": job.runs, "doneAt": job.done_at, "error": job.error, "payload": job.payload,
            })
        );
    }
    Ok(())
}

async fn retry_job(config: &Config, id: &str) -> anyhow::Result<()> {
    let pool = crate::prepare_database(config, Default::default()).await?;
    let mut conn = pool.get().await?;
    if crate::db::repo::jobs::retry(&mut conn, id).await? {
        println!("job {id} is queued again");
        Ok(())
    } else {
        anyhow::bail!("no failed or killed job {id}")
    }
}
