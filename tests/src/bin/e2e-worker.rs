//! The `worker` process, built with the test crate so that `cargo test` builds it fresh for
//! the tests that run real processes (`tests::processes`); the same code as `worker`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    worker::main().await
}
