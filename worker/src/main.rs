//! The `worker` binary.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    worker::main().await
}
