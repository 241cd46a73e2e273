//! The `worker` binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match worker::run_from_env().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
