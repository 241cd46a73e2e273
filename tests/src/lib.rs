//! End-to-end test harness: a real server on a random port over a real PostgreSQL
//! database cloned from a migrated template, and a small GraphQL client.

pub mod fake_stripe;
pub mod moto;
pub mod processes;
pub mod smtp;
pub mod tokens;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::LazyLock;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

pub use tokens::Tokens;

/// The PostgreSQL server the tests use (no database name).
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_SERVER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Issuer and audience the test server requires.
pub const ISSUER: &str = "https://issuer.test/";
/// Audience the test server requires.
pub const AUDIENCE: &str = "workspaces-api-test";
/// HS256 secret of the test server.
pub const HS256_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

/// `CREATE DATABASE … TEMPLATE` takes a cluster-wide lock: a few at a time.
static CREATE_DB: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(2));

fn template_name() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<_> = walk(&dir);
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    api::db::QUEUE_SCHEMA.hash(&mut h);
    for f in files {
        f.hash(&mut h);
        std::fs::read(&f).unwrap_or_default().hash(&mut h);
    }
    format!("wstpl_{:016x}", h.finish())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn admin() -> AsyncPgConnection {
    AsyncPgConnection::establish(&format!("{}/postgres", server_url()))
        .await
        .expect("cannot connect to PostgreSQL for tests (is it running? TEST_DATABASE_SERVER)")
}

/// Creates the migrated template database once (guarded by an advisory lock so that
/// concurrent test processes do not race).
async fn ensure_template() -> String {
    let name = template_name();
    let mut conn = admin().await;
    diesel::sql_query("SELECT pg_advisory_lock(727274)")
        .execute(&mut conn)
        .await
        .expect("advisory lock");
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let exists: N = diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(&name)
        .get_result(&mut conn)
        .await
        .expect("query pg_database");
    if exists.n == 0 {
        let building = format!("{name}_building");
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {building}"))
            .execute(&mut conn)
            .await
            .expect("drop");
        diesel::sql_query(format!("CREATE DATABASE {building}"))
            .execute(&mut conn)
            .await
            .expect("create template");
        api::db::migrate(&format!("{}/{building}", server_url()))
            .await
            .expect("migrate template");
        diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {name}"))
            .execute(&mut conn)
            .await
            .expect("rename");
        diesel::sql_query(format!("ALTER DATABASE {name} WITH is_template = true"))
            .execute(&mut conn)
            .await
            .expect("mark");
    }
    diesel::sql_query("SELECT pg_advisory_unlock(727274)")
        .execute(&mut conn)
        .await
        .expect("unlock");
    name
}

/// A fresh database cloned from the template; dropped when the value is dropped.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDb {
    /// Clones the template.
    pub async fn new() -> Self {
        let template = ensure_template().await;
        let name = format!("wst_{}", uuid::Uuid::new_v4().simple());
        let _permit = CREATE_DB.acquire().await.expect("semaphore");
        let mut conn = admin().await;
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        Self {
            url: format!("{}/{name}", server_url()),
            name,
        }
    }

    /// Drops the database now (terminating its connections), e.g. to test readiness.
    pub async fn drop_now(&self) {
        let mut conn = admin().await;
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .expect("drop test database");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Async work cannot run in Drop: do it on a short-lived runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) =
                    AsyncPgConnection::establish(&format!("{}/postgres", server_url())).await
                {
                    let _ =
                        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

/// The `file://` URL of the archive directory of the test database `db` (under the system's
/// temporary directory).
pub fn archive_url_for(db: &str) -> String {
    let dir = std::env::temp_dir()
        .join("workspaces-test-archives")
        .join(db);
    format!("file://{}/", dir.display())
}

/// A running server and its database.
pub struct TestApp {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub base: String,
    /// HTTP client.
    pub http: reqwest::Client,
    /// Token minting for this server.
    pub tokens: Tokens,
    /// Its database.
    pub db: TestDb,
    /// The server's pool.
    pub pool: api::db::DbPool,
    /// The server's configuration.
    pub config: api::config::Config,
    /// The server's state (e.g. to flush its API usage counters now).
    pub state: api::AppState,
}

/// Options for `TestApp::with`.
#[derive(Default)]
pub struct Options {
    /// Extra environment variables for the server's configuration.
    pub env: HashMap<String, String>,
}

impl TestApp {
    /// Starts a server on a fresh database.
    pub async fn spawn() -> Self {
        Self::with(Options::default()).await
    }

    /// Starts a server with extra configuration.
    pub async fn with(options: Options) -> Self {
        // Server logs go to the test's captured output (shown when it fails); RUST_LOG filters.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let db = TestDb::new().await;
        let jwks_addr = tokens::serve_jwks().await;
        let mut env: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".into(), db.url.clone()),
            ("DATABASE_POOL_SIZE".into(), "8".into()),
            // Debug builds resolve slowly: give loaders time to collect a whole level.
            ("GRAPHQL_LOADER_DELAY_MS".into(), "15".into()),
            ("JWT_HS256_SECRET".into(), HS256_SECRET.into()),
            (
                "JWT_JWKS_URL".into(),
                format!("http://{jwks_addr}/.well-known/jwks.json"),
            ),
            ("JWT_ISSUER".into(), ISSUER.into()),
            ("JWT_AUDIENCE".into(), AUDIENCE.into()),
            // Archives and exports of each test go to a directory of their own.
            ("ARCHIVE_URL".into(), archive_url_for(&db.name)),
        ]);
        // The suite runs with the one-step path on and off (`.ci/run`): the process's choice
        // reaches every server the tests start.
        if let Ok(v) = std::env::var("GRAPHQL_ONE_STEP") {
            env.insert("GRAPHQL_ONE_STEP".into(), v);
        }
        env.extend(options.env);
        let config =
            api::config::Config::from_lookup(|k| env.get(k).cloned()).expect("test config");
        let statements = api::db::StatementCounter::default();
        let pool = api::db::build_pool(&config, statements.clone()).expect("pool");
        let state =
            api::AppState::new(config.clone(), pool.clone(), statements.clone()).expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let grace = state.config.shutdown_timeout;
        tokio::spawn(api::http::server::serve(
            listener,
            api::router(state.clone()),
            std::future::pending(),
            grace,
        ));
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            tokens: Tokens::new(),
            db,
            pool,
            config,
            state,
        }
    }

    /// Stores the server's API usage counters now (as its periodic flush and its shutdown
    /// do); the counters written.
    pub async fn flush_api_usage(&self) -> usize {
        self.state
            .flush_api_usage()
            .await
            .expect("flushing API usage counters")
    }

    /// Waits (at most a minute) until job `id`, as `token` reads it, has ended (`SUCCEEDED` or
    /// `FAILED`); the job's `{ id kind status attempts lastError }`.
    pub async fn job_ended(&self, token: &str, id: &str) -> Value {
        let started = std::time::Instant::now();
        loop {
            let r = self
                .gql(
                    token,
                    "query($id: ID!) { job(id: $id) { id kind status attempts lastError } }",
                    json!({"id": id}),
                )
                .await;
            match r["data"]["job"]["status"].as_str() {
                Some("SUCCEEDED" | "FAILED") => return r["data"]["job"].clone(),
                _ if started.elapsed() > std::time::Duration::from_secs(60) => {
                    panic!("job {id} never ended: {r}")
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }

    /// [`TestApp::job_ended`], and it succeeded.
    pub async fn job_succeeded(&self, token: &str, id: &str) -> Value {
        let job = self.job_ended(token, id).await;
        assert_eq!(job["status"], "SUCCEEDED", "job {id} failed: {job}");
        job
    }

    /// The server's object store of archives and exports.
    pub fn vault(&self) -> api::storage::Vault {
        api::storage::Vault::open(
            &self.config.archive_url,
            &self.config.archive_options,
            self.config.archive_master_key,
        )
        .expect("archive store")
    }

    /// Archives (and deletes) every audit event of workspace `ws` now, as retention cleanup
    /// does with `archiveBeforeDelete`; what it did.
    pub async fn archive_audit_events(&self, ws: uuid::Uuid) -> api::domain::archives::Retired {
        let now = chrono::Utc::now();
        api::domain::archives::retire(
            &mut self.pool.get().await.expect("connection"),
            &self.vault(),
            ws,
            api::domain::archives::Category::AuditEvents,
            now + chrono::Duration::minutes(1),
            now,
            1_000,
            true,
        )
        .await
        .expect("archive")
    }

    /// The plaintext of the archive of workspace `ws` at `path`.
    pub async fn archive_text(&self, ws: uuid::Uuid, path: &str) -> String {
        let vault = self.vault();
        let key = vault
            .existing_key(&mut self.pool.get().await.expect("connection"), ws)
            .await
            .expect("key")
            .expect("the workspace has a key");
        let opened = vault.get(&key, path, 1 << 30).await.expect("open");
        String::from_utf8(opened.plaintext).expect("utf-8")
    }

    /// Sends a GraphQL operation as `token` and returns the whole JSON body.
    pub async fn gql(&self, token: &str, query: &str, variables: Value) -> Value {
        self.gql_raw(Some(token), json!({"query": query, "variables": variables}))
            .await
            .1
    }

    /// Sends any JSON body to `/graphql`; returns status and JSON body.
    pub async fn gql_raw(&self, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}/graphql", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.json().await.expect("json body");
        (status, body)
    }

    /// Signs in a user (a verified HS256 token for `email`) and returns its token.
    pub fn user(&self, email: &str) -> String {
        self.tokens.hs256(&format!("auth0|{email}"), email, true)
    }

    /// A signed-in token for `email` (the subject [`TestApp::user`] gives it) with `extra`
    /// claims (a JSON object) added or replacing the standard ones, e.g. `amr`, `auth_time`.
    pub fn user_with_claims(&self, email: &str, extra: Value) -> String {
        let mut claims = Tokens::claims(&format!("auth0|{email}"), email, true);
        for (k, v) in extra.as_object().expect("extra claims are a JSON object") {
            claims[k] = v.clone();
        }
        self.tokens.hs256_claims(&claims)
    }

    /// Writes workspace settings of `ws` with SQL (to set up policies without their
    /// mutations): `columns` of `workspace_settings` (`"a, b"`) take `values` (SQL, `"1, 'x'"`),
    /// inserting the row or updating those columns of it.
    pub async fn set_workspace_settings(&self, ws: &str, columns: &str, values: &str) {
        let id = workspace_uuid(ws);
        self.sql_exec(&format!(
            "INSERT INTO workspace_settings (workspace_id, {columns}) VALUES ('{id}', {values})
             ON CONFLICT (workspace_id) DO UPDATE SET ({columns}) = ROW({values})"
        ))
        .await;
    }

    /// Creates a workspace as `token`; returns its id.
    pub async fn create_workspace(&self, token: &str, name: &str) -> String {
        let r = self
            .gql(
                token,
                "mutation($n: String!) { createWorkspace(input: {name: $n, billingMode: SINGLE}) { workspace { id } } }",
                json!({"n": name}),
            )
            .await;
        r["data"]["createWorkspace"]["workspace"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createWorkspace failed: {r}"))
            .to_string()
    }

    /// Adds `email` to `ws` with `role` as `token`: invites them, and they accept (signed in
    /// as [`TestApp::user`]); returns the member id.
    pub async fn add_member(&self, token: &str, ws: &str, email: &str, role: &str) -> String {
        let invitation = self.invite(token, ws, email, role).await;
        let r = self.accept_invitation(&self.user(email), &invitation).await;
        r["data"]["acceptInvitation"]["member"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("acceptInvitation failed: {r}"))
            .to_string()
    }

    /// Adds `email` to `ws` with `role` as `token` ([`TestApp::add_member`]); returns the
    /// new member's token ([`TestApp::user`]).
    pub async fn member_token(&self, token: &str, ws: &str, email: &str, role: &str) -> String {
        self.add_member(token, ws, email, role).await;
        self.user(email)
    }

    /// Invites `email` to `ws` with `role` as `token`; returns the invitation's id.
    pub async fn invite(&self, token: &str, ws: &str, email: &str, role: &str) -> String {
        let r = self.try_add_member(token, ws, email, role).await;
        r["data"]["addMember"]["invitation"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("addMember failed: {r}"))
            .to_string()
    }

    /// Accepts `invitation` as `token`; returns the whole body.
    pub async fn accept_invitation(&self, token: &str, invitation: &str) -> Value {
        self.gql(
            token,
            "mutation($i: ID!) { acceptInvitation(input: {invitationId: $i}) { member { id role } } }",
            json!({"i": invitation}),
        )
        .await
    }

    /// Tries to add (invite) a member; returns the whole body.
    pub async fn try_add_member(&self, token: &str, ws: &str, email: &str, role: &str) -> Value {
        self.gql(
            token,
            "mutation($w: ID!, $e: String!, $r: Role!) { addMember(input: {workspaceId: $w, email: $e, role: $r}) { invitation { id role email } } }",
            json!({"w": ws, "e": email, "r": role}),
        )
        .await
    }

    /// The member id of `email` in `ws`, as seen by `token`.
    pub async fn member_id(&self, token: &str, ws: &str, email: &str) -> String {
        let r = self
            .gql(
                token,
                "query($w: ID!) { workspace(id: $w) { members(first: 100) { edges { node { id user { email } } } } } }",
                json!({"w": ws}),
            )
            .await;
        r["data"]["workspace"]["members"]["edges"]
            .as_array()
            .and_then(|edges| edges.iter().find(|e| e["node"]["user"]["email"] == email))
            .and_then(|e| e["node"]["id"].as_str())
            .unwrap_or_else(|| panic!("{email} is not a member: {r}"))
            .to_string()
    }

    /// Runs a SQL statement against the test database (to set up state the API cannot);
    /// the rows it touched.
    pub async fn sql_exec(&self, sql: &str) -> usize {
        let mut conn = AsyncPgConnection::establish(&self.db.url)
            .await
            .expect("connect");
        diesel::sql_query(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Every text, JSON and text-array column of every table (of every schema) holding one of
    /// `needles` (case-insensitively), as `schema.table.column`: where a secret or a person's
    /// data is kept.
    pub async fn columns_containing(&self, needles: &[&str]) -> Vec<String> {
        #[derive(diesel::QueryableByName)]
        struct Hit {
            #[diesel(sql_type = diesel::sql_types::Text)]
            col: String,
        }
        let needles: Vec<String> = needles.iter().map(|n| n.to_lowercase()).collect();
        let mut conn = AsyncPgConnection::establish(&self.db.url)
            .await
            .expect("connect");
        let hits: Vec<Hit> = diesel::sql_query(
            "SELECT c.table_schema || '.' || c.table_name || '.' || c.column_name AS col
               FROM information_schema.columns c
               JOIN information_schema.tables t
                 ON t.table_schema = c.table_schema AND t.table_name = c.table_name
                AND t.table_type = 'BASE TABLE'
              WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema')
                AND (c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb')
                     OR (c.data_type = 'ARRAY' AND c.udt_name IN ('_text', '_varchar')))
                AND (xpath('/row/n/text()', query_to_xml(format(
                        'SELECT count(*) AS n FROM %I.%I WHERE EXISTS (SELECT 1 FROM unnest(%L::text[]) x WHERE strpos(lower(%I::text), x) > 0)',
                        c.table_schema, c.table_name, $1, c.column_name), false, true, '')))[1]::text::bigint > 0
              ORDER BY 1",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&needles)
        .load(&mut conn)
        .await
        .expect("search every table");
        hits.into_iter().map(|h| h.col).collect()
    }

    /// Runs SQL against the test database (for assertions on stored state).
    pub async fn sql_count(&self, sql: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = AsyncPgConnection::establish(&self.db.url)
            .await
            .expect("connect");
        let r: N = diesel::sql_query(sql)
            .get_result(&mut conn)
            .await
            .expect("count query");
        r.n
    }
}

/// The UUID behind a workspace's `ws_…` id (its `workspace_id` in the database).
pub fn workspace_uuid(ws: &str) -> uuid::Uuid {
    api::ids::WorkspaceId::decode(ws).expect("workspace id").0
}

/// The UUID behind any prefixed GraphQL id (`ws_…`, `ak_…`, `apr_…`: the hex after the
/// first `_`), e.g. to find its row with SQL.
pub fn id_uuid(id: &str) -> uuid::Uuid {
    let hex = id.split_once('_').expect("prefixed id").1;
    uuid::Uuid::try_parse(hex).expect("uuid")
}

/// The `extensions.code` of the first error, if any.
pub fn error_code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

/// Asserts that the body failed with `code`.
#[track_caller]
pub fn assert_code(body: &Value, code: &str) {
    assert_eq!(error_code(body), Some(code), "expected {code}, got {body}");
}

/// Asserts that the body has no errors.
#[track_caller]
pub fn assert_ok(body: &Value) {
    assert!(
        body.get("errors").is_none_or(Value::is_null),
        "unexpected errors: {body}"
    );
}

/// Organization helpers.
impl TestApp {
    /// Creates an organization (under `parent`, or a root); returns its id.
    pub async fn create_org(
        &self,
        token: &str,
        ws: &str,
        parent: Option<&str>,
        name: &str,
    ) -> String {
        let r = self.try_create_org(token, ws, parent, name).await;
        r["data"]["createOrganization"]["organization"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createOrganization failed: {r}"))
            .to_string()
    }

    /// Tries to create an organization; returns the whole body.
    pub async fn try_create_org(
        &self,
        token: &str,
        ws: &str,
        parent: Option<&str>,
        name: &str,
    ) -> Value {
        self.gql(
            token,
            "mutation($w: ID!, $p: ID, $n: String!) { createOrganization(input: {workspaceId: $w, parentId: $p, name: $n}) { organization { id depth } } }",
            json!({"w": ws, "p": parent, "n": name}),
        )
        .await
    }

    /// Records usage; returns the whole body.
    pub async fn record(&self, token: &str, org: &str, resource: &str, delta: i64) -> Value {
        self.gql(
            token,
            "mutation($o: ID!, $r: String!, $d: Int!) { recordUsage(input: {organizationId: $o, resource: $r, delta: $d}) { organization { id } } }",
            json!({"o": org, "r": resource, "d": delta}),
        )
        .await
    }

    /// Sets (or with `None` removes) a cap; returns the whole body.
    pub async fn set_limit(
        &self,
        token: &str,
        org: &str,
        resource: &str,
        limit: Option<i64>,
    ) -> Value {
        self.gql(
            token,
            "mutation($o: ID!, $r: String!, $l: Int) { setOrganizationLimit(input: {organizationId: $o, resource: $r, limit: $l}) { organization { id } } }",
            json!({"o": org, "r": resource, "l": limit}),
        )
        .await
    }

    /// The usage entry of `resource` at `org`.
    pub async fn usage(&self, token: &str, org: &str, resource: &str) -> Value {
        let r = self
            .gql(
                token,
                "query($o: ID!) { organization(id: $o) { usage { resource direct subtree limit effectiveLimit available overLimit windowStart } } }",
                json!({"o": org}),
            )
            .await;
        r["data"]["organization"]["usage"]
            .as_array()
            .and_then(|u| u.iter().find(|e| e["resource"] == resource).cloned())
            .unwrap_or_else(|| panic!("no usage of {resource} at {org}: {r}"))
    }

    /// (direct, subtree) of `resource` at `org`.
    pub async fn numbers(&self, token: &str, org: &str, resource: &str) -> (i64, i64) {
        let u = self.usage(token, org, resource).await;
        (
            u["direct"].as_i64().unwrap_or(-1),
            u["subtree"].as_i64().unwrap_or(-1),
        )
    }

    /// Recomputes every subtree counter from the direct ones (within each window) and
    /// asserts they agree: subtree(X) = direct(X) + Σ direct(descendants of X).
    pub async fn assert_usage_invariant(&self) {
        let wrong = self
            .sql_count(
                "SELECT count(*) AS n FROM usage_counters c
                   JOIN organizations o ON o.id = c.organization_id
                  WHERE c.subtree <> (
                        SELECT COALESCE(sum(d.direct), 0) FROM usage_counters d
                          JOIN organizations od ON od.id = d.organization_id
                         WHERE d.resource = c.resource AND d.period_start = c.period_start
                           AND (od.id = o.id OR od.ancestors @> ARRAY[o.id]))",
            )
            .await;
        assert_eq!(
            wrong, 0,
            "subtree counters disagree with the direct usage they sum"
        );
        let negative = self
            .sql_count(
                "SELECT count(*) AS n FROM usage_counters WHERE direct < 0 OR subtree < direct",
            )
            .await;
        assert_eq!(negative, 0);
    }

    /// A counter of `/metrics` by its full name with labels (0 when absent).
    pub async fn metric(&self, series: &str) -> u64 {
        self.metric_value(series).await.unwrap_or(0)
    }

    async fn metric_value(&self, series: &str) -> Option<u64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// SQL statements the server has sent so far (from `/metrics`).
    pub async fn statements(&self) -> u64 {
        self.metric_value("db_statements_total")
            .await
            .expect("db_statements_total in /metrics")
    }

    /// The configuration of a second server on this test's database (tokens of this one
    /// are accepted), with `extra` variables.
    pub fn config_for(&self, extra: &[(&str, &str)]) -> api::config::Config {
        let url = self.db.url.clone();
        api::config::Config::from_lookup(|k| match k {
            "DATABASE_URL" => Some(url.clone()),
            "JWT_HS256_SECRET" => Some(HS256_SECRET.into()),
            "JWT_ISSUER" => Some(ISSUER.into()),
            "JWT_AUDIENCE" => Some(AUDIENCE.into()),
            _ => extra
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string()),
        })
        .expect("config")
    }
}

/// JSON read with its object keys in the order they were sent (serde_json's `Value` sorts
/// them), for tests of the response's key order.
#[derive(Debug, Clone, PartialEq)]
pub enum Ordered {
    /// Anything but an object or array, as serde_json reads it.
    Scalar(Value),
    /// An array.
    List(Vec<Ordered>),
    /// An object, keys in order.
    Object(Vec<(String, Ordered)>),
}

impl Ordered {
    /// Parses JSON text.
    pub fn parse(text: &str) -> Self {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// The value at `path` (object keys, or array indices written as numbers).
    pub fn at(&self, path: &[&str]) -> &Ordered {
        path.iter().fold(self, |v, p| match v {
            Ordered::Object(kv) => kv
                .iter()
                .find(|(k, _)| k == p)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no key {p} in {v:?}")),
            Ordered::List(items) => p
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .unwrap_or_else(|| panic!("no index {p} in {v:?}")),
            Ordered::Scalar(_) => panic!("cannot index {v:?} with {p}"),
        })
    }

    /// The keys of the object at `path`, in order.
    pub fn keys(&self, path: &[&str]) -> Vec<String> {
        match self.at(path) {
            Ordered::Object(kv) => kv.iter().map(|(k, _)| k.clone()).collect(),
            other => panic!("not an object: {other:?}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(json!(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(json!(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(json!(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::String(v.into())))
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = a.next_element()? {
                    items.push(v);
                }
                Ok(Ordered::List(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Ordered, A::Error> {
                let mut kv = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Ordered>()? {
                    kv.push((k, v));
                }
                Ok(Ordered::Object(kv))
            }
        }
        d.deserialize_any(V)
    }
}

impl TestApp {
    /// Sends a GraphQL operation as `token` and returns the body as text.
    pub async fn gql_text(&self, token: &str, query: &str, variables: Value) -> String {
        self.http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(token)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    }
}
