# Everyday recipes. The README's two commands work without `just`.

export JWT_HS256_SECRET := env_var_or_default("JWT_HS256_SECRET", "local-development-secret-change-me")
db_url := env_var_or_default("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/workspaces")

# Install GraphiQL's pinned assets (compiled into the api binary).
assets:
    npm ci --prefix api/graphiql --no-audit --no-fund

# Run the API with the in-process worker.
run: assets
    cargo run --release -p api

# Run the whole test suite.
test: assets
    cargo test --workspace

# Regenerate schema.graphql from the code.
schema:
    cargo run -q -p api -- print-schema > schema.graphql

# Create and migrate the database.
migrate:
    cargo run -q -p api -- migrate

# Formatting and lints, as CI wants them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Drop and recreate the development database.
db-reset:
    psql "{{ replace(db_url, '/' + file_name(db_url), '/postgres') }}" -c 'DROP DATABASE IF EXISTS "{{ file_name(db_url) }}" WITH (FORCE)'
    cargo run -q -p api -- migrate

# Benchmark: seeds a workspace, starts the release api, prints one table (BENCH_SECONDS, BENCH_CONCURRENCY).
bench:
    cargo build --release -p api -p tests
    ./target/release/bench

# Print a development token for EMAIL.
token email:
    cargo run -q -p api -- dev-token --email {{ email }}
