//! Database access: the connection pool, migrations and the repositories that hold the SQL.

pub mod budget;
pub mod cached;
pub mod models;
pub mod repo;
pub mod row;
pub mod schema;
pub mod text_enum;

use std::time::Duration;

use diesel::connection::InstrumentationEvent;
use diesel::sql_types::Text;
use diesel::{QueryableByName, sql_query};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::{Config, POOL_WAIT, redact_url};

/// The migrations in `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// How long the server lets a session sit inside a transaction between statements before it
/// ends the session (`idle_in_transaction_session_timeout`).
pub const IDLE_IN_TRANSACTION_MS: u64 = 60_000;

/// The connection pool used everywhere. Its only way to a connection is [`DbPool::get`], which
/// hands out a [`DbConn`]: no code can hold a pooled connection without its drop guard.
#[derive(Clone)]
pub struct DbPool(Pool<AsyncPgConnection>);

/// Why no connection could be had (the pool's wait or create timeout, or the server refused).
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

impl DbPool {
    /// A connection of the pool, guarded (see [`DbConn`]).
    pub async fn get(&self) -> Result<DbConn, PoolError> {
        self.0.get().await.map(|conn| DbConn(Some(conn)))
    }

    /// The pool's size, idle connections and waiters now (for the metrics).
    pub fn status(&self) -> deadpool::managed::Status {
        self.0.status()
    }
}

/// A pooled connection that never goes back to the pool inside a transaction.
///
/// A request's future can be dropped at any await (the client hung up, its deadline passed)
/// in the middle of a transaction, after BEGIN and before COMMIT or ROLLBACK. Returned to the
/// pool as it is, the connection would stay `idle in transaction`, holding its row locks until
/// the pool hands it out again (or forever in a quiet process), and every other request on
/// those rows would wait behind it. When a `DbConn` is dropped with a transaction open (or its
/// transaction manager broken), it is taken out of the pool and closed instead: PostgreSQL
/// rolls the transaction back and releases its locks at once. Only [`DbPool::get`] makes one.
pub struct DbConn(Option<Object<AsyncPgConnection>>);

impl std::ops::Deref for DbConn {
    type Target = AsyncPgConnection;

    fn deref(&self) -> &AsyncPgConnection {
        self.0.as_deref().expect("a connection until it is dropped")
    }
}

impl std::ops::DerefMut for DbConn {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        self.0
            .as_deref_mut()
            .expect("a connection until it is dropped")
    }
}

impl Drop for DbConn {
    fn drop(&mut self) {
        use diesel_async::pooled_connection::PoolableConnection as _;
        let Some(mut conn) = self.0.take() else {
            return;
        };
        if conn.is_broken() {
            // Out of the pool and closed: the server rolls back and releases the locks now.
            drop(Object::take(conn));
            tracing::warn!(
                "a connection was let go inside a transaction (its work stopped, or the connection failed): closed, so the server rolls it back"
            );
        }
    }
}

/// Failures while preparing or reaching the database at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The server could not be reached or refused the connection.
    #[error(
        "cannot connect to PostgreSQL at {url}: {reason}. Is PostgreSQL running and does DATABASE_URL point to it? \
         Start it (e.g. `pg_ctlcluster 15 main start`) or set DATABASE_URL=postgres://user@host:port/database"
    )]
    Unreachable {
        /// The URL tried, password hidden.
        url: String,
        /// What the driver said.
        reason: String,
    },
    /// Creating the database failed.
    #[error("database {name} does not exist and could not be created at {url}: {reason}")]
    CreateFailed {
        /// Database name.
        name: String,
        /// The server URL tried.
        url: String,
        /// What the server said.
        reason: String,
    },
    /// A migration failed.
    #[error("migrating {url} failed: {reason}")]
    Migration {
        /// The URL, password hidden.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The pool could not be built.
    #[error("building the connection pool failed: {0}")]
    Pool(String),
}

/// Splits `postgres://.../name?opts` into (URL of the `postgres` maintenance database, name).
fn maintenance_url(url: &str) -> Option<(String, String)> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let slash = base.rfind('/')?;
    if slash < base.find("://")? + 3 {
        return None;
    }
    let name = base[slash + 1..].to_string();
    if name.is_empty() {
        return None;
    }
    let mut maint = format!("{}/postgres", &base[..slash]);
    if let Some(q) = query {
        maint.push('?');
        maint.push_str(q);
    }
    Some((maint, name))
}

/// Connects once, creating the database first if the server says it does not exist.
pub async fn ensure_database(url: &str) -> Result<(), StartupError> {
    match AsyncPgConnection::establish(url).await {
        Ok(_) => Ok(()),
        Err(e)
            if e.to_string().contains("does not exist") && e.to_string().contains("database") =>
        {
            let (maint, name) = maintenance_url(url).ok_or_else(|| StartupError::Unreachable {
                url: redact_url(url),
                reason: e.to_string(),
            })?;
            let mut conn = AsyncPgConnection::establish(&maint).await.map_err(|e| {
                StartupError::Unreachable {
                    url: redact_url(&maint),
                    reason: e.to_string(),
                }
            })?;
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            match sql_query(format!("CREATE DATABASE {quoted}"))
                .execute(&mut conn)
                .await
            {
                Ok(_) => {
                    tracing::info!(database = %name, "created database");
                    Ok(())
                }
                // Another process created it at the same moment.
                Err(e) if e.to_string().contains("already exists") => Ok(()),
                Err(e) => Err(StartupError::CreateFailed {
                    name,
                    url: redact_url(&maint),
                    reason: e.to_string(),
                }),
            }
        }
        Err(e) => Err(StartupError::Unreachable {
            url: redact_url(url),
            reason: e.to_string(),
        }),
    }
}

/// The job queue's schema version (apalis-postgres migrates its own `apalis` schema); part
/// of what identifies a migrated database, like the embedded migrations.
pub const QUEUE_SCHEMA: &str = "apalis-postgres 1.0.0, payload and id checks";

/// Runs every pending embedded migration, then the job queue's (apalis-postgres keeps its
/// own schema, `apalis`, and migration table).
pub async fn migrate(url: &str) -> Result<usize, StartupError> {
    let applied = migrate_own(url).await?;
    let queue =
        apalis_postgres::PgPool::connect(url)
            .await
            .map_err(|e| StartupError::Migration {
                url: redact_url(url),
                reason: e.to_string(),
            })?;
    let setup = apalis_postgres::PostgresStorage::setup(&queue).await;
    queue.close().await;
    setup.map_err(|e| StartupError::Migration {
        url: redact_url(url),
        reason: format!("job queue schema: {e}"),
    })?;
    guard_job_rows(url).await?;
    Ok(applied)
}

/// A job row whose payload the workers cannot decode, or whose id is not a ULID, stops the
/// worker that fetches it and blocks its whole batch, again after every restart
/// (apalis-postgres 1.0). Our code only enqueues JSON with ULIDs; these constraints make
/// any other row impossible to store, whoever writes it (casting a payload that is not
/// UTF-8 JSON raises, which refuses the row like a failed check).
async fn guard_job_rows(url: &str) -> Result<(), StartupError> {
    let fail = |e: &dyn std::fmt::Display| StartupError::Migration {
        url: redact_url(url),
        reason: format!("job queue constraints: {e}"),
    };
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| fail(&e))?;
    conn.batch_execute(
        "DO $$ BEGIN
            ALTER TABLE apalis.jobs ADD CONSTRAINT jobs_payload_is_json
                CHECK (convert_from(job, 'UTF8')::jsonb IS NOT NULL);
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN
            ALTER TABLE apalis.jobs ADD CONSTRAINT jobs_id_is_ulid
                CHECK (id ~ '^[0-9A-HJKMNP-TV-Z]{26}$');
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
    )
    .await
    .map_err(|e| fail(&e))
}

async fn migrate_own(url: &str) -> Result<usize, StartupError> {
    let conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| StartupError::Unreachable {
            url: redact_url(url),
            reason: e.to_string(),
        })?;
    let url_owned = url.to_string();
    // diesel's migration harness is synchronous: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        harness
            .run_pending_migrations(MIGRATIONS)
            .map(|applied| applied.len())
            .map_err(|e| StartupError::Migration {
                url: redact_url(&url_owned),
                reason: e.to_string(),
            })
    })
    .await
    .map_err(|e| StartupError::Migration {
        url: redact_url(url),
        reason: e.to_string(),
    })?
}

/// Counts the SQL statements (including BEGIN and COMMIT) sent by a pool's connections.
pub type StatementCounter = std::sync::Arc<std::sync::atomic::AtomicU64>;

/// Builds the pool (connections are opened lazily).
pub fn build_pool(config: &Config, statements: StatementCounter) -> Result<DbPool, StartupError> {
    build_pool_for(
        &config.database_url,
        config.database_pool_size,
        config.lock_timeout,
        statements,
    )
}

/// Builds a pool for `url` with `size` connections. Every connection waits at most
/// `lock_timeout` for a row lock, and counts its statements into `statements`.
pub fn build_pool_for(
    url: &str,
    size: usize,
    lock_timeout: std::time::Duration,
    statements: StatementCounter,
) -> Result<DbPool, StartupError> {
    let lock_timeout_ms = lock_timeout.as_millis().max(1);
    let mut setup = ManagerConfig::<AsyncPgConnection>::default();
    // Checking a connection with `SELECT 1` on every checkout would cost a round trip per
    // checkout; broken connections are detected by the driver and dropped by the pool.
    setup.recycling_method = RecyclingMethod::Fast;
    setup.custom_setup = Box::new(move |url: &str| {
        let url = url.to_string();
        let statements = statements.clone();
        Box::pin(async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            // A session left inside a transaction (a process that stalls or dies between
            // statements) is ended by the server after a minute: the last line behind
            // `DbConn`'s drop guard.
            conn.batch_execute(&format!(
                "SET lock_timeout = {lock_timeout_ms}; SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}"
            ))
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
                if let InstrumentationEvent::StartQuery { query, .. } = event {
                    statements.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    budget::count();
                    tracing::trace!(target: "sql", %query, "statement");
                }
            });
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, setup);
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map(DbPool)
        .map_err(|e| StartupError::Pool(e.to_string()))
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = Text)]
    version: String,
}

/// Readiness: the database answers and every embedded migration is applied.
pub async fn check_ready(pool: &DbPool) -> Result<(), String> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| format!("no database connection: {e}"))?;
    let applied: Vec<Version> = sql_query("SELECT version FROM __diesel_schema_migrations")
        .load(&mut conn)
        .await
        .map_err(|e| format!("cannot read migrations: {e}"))?;
    let applied: std::collections::HashSet<String> =
        applied.into_iter().map(|v| v.version).collect();
    let pending = diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|m| !applied.contains(&m.name().version().to_string()))
        .count();
    if pending > 0 {
        return Err(format!("{pending} migration(s) not applied"));
    }
    Ok(())
}

/// Whether a diesel error is a transient concurrency failure worth retrying the transaction
/// (serialization failure or deadlock).
pub fn is_retryable(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        Error::DatabaseError(_, info) => info.message().contains("deadlock detected"),
        _ => false,
    }
}
