//! The `api` command line, built with the test crate so that `cargo test` builds it fresh
//! for the tests that run real processes (`tests::processes`); the same code as `api`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    api::cli::run().await
}
