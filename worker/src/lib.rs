//! The background worker process: runs the jobs of `api::jobs` until stopped.
//!
//! The same jobs also run inside `api` (unless it is started with `--no-worker`), so one
//! process is the whole system on a laptop while production scales the two apart.

use tokio::sync::watch;

/// Runs the worker with configuration from the environment until SIGINT or SIGTERM.
pub async fn run_from_env() -> anyhow::Result<()> {
    let config = api::config::Config::from_env()?;
    api::telemetry::init_tracing(config.log_format);
    let pool = api::prepare_database(&config, Default::default()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let settings = api::jobs::Settings::new(&config)?;
    let worker = tokio::spawn(api::jobs::run(pool, settings, stop_rx));
    api::shutdown_signal().await;
    let _ = stop_tx.send(true);
    // Work in flight gets SHUTDOWN_TIMEOUT_SECS; a stuck job must not keep the process alive.
    match tokio::time::timeout(config.shutdown_timeout, worker).await {
        Ok(joined) => joined?,
        Err(_) => tracing::warn!("shutdown deadline passed; exiting with work still running"),
    }
    Ok(())
}

/// The `worker` process: runs until SIGINT or SIGTERM; its exit code.
pub async fn main() -> std::process::ExitCode {
    match run_from_env().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
