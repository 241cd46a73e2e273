//! The `api` binary: serves GraphQL (and runs the worker in-process unless `--no-worker`).
//! The command line is `api::cli`.

use std::process::ExitCode;

// GraphQL execution allocates many small values per field; mimalloc serves that pattern
// markedly faster than the system allocator across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    api::cli::run().await
}
