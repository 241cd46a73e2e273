# Everyday recipes. The README's two commands work without `just`.

export JWT_HS256_SECRET := env_var_or_default("JWT_HS256_SECRET", "local-development-secret-change-me")
db_url := env_var_or_default("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/workspaces")

# Fetch again the npm tarballs GraphiQL's assets are extracted from (api/graphiql/packages),
# as package-lock.json pins them; after a version change, update the names in api/build.rs.
graphiql-assets:
    cd api/graphiql && npm install --package-lock-only --no-audit --no-fund
    cd api/graphiql && rm -f packages/*.tgz && npm pack --silent --pack-destination packages $(node -p "['graphiql','react','react-dom'].map(n => n + '@' + require('./package-lock.json').packages['node_modules/' + n].version).join(' ')")

# Run the API with the in-process worker.
run:
    cargo run --release -p api

# Run the whole test suite.
test:
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
