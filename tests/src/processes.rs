//! Real `api` and `worker` processes on a test's database, for tests that need several
//! processes or kill one (`kill -9`).
//!
//! The binaries are `e2e-api` and `e2e-worker`, the `api` and `worker` command lines built
//! by this crate (`src/bin/`): cargo builds a crate's binaries before its integration tests,
//! so `cargo test` always runs them fresh. Each process's output goes to a log file, printed
//! when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The process binary `name` (`api` or `worker`): this crate's `e2e-<name>`, built next to
/// the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/debug/deps/e2e-… → target/debug/e2e-<name>
    let mut dir = exe.parent().expect("the test executable's directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("the target directory");
    }
    let path = dir.join(format!("e2e-{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} not found: cargo builds it with the tests crate (`cargo test -p tests`)",
        path.display()
    );
    path
}

/// A port on 127.0.0.1 free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The environment of an `api` or `worker` process on `database_url`: what `TestApp`
/// configures (tokens of `TestApp::tokens` are accepted), plain-text logs, plus `extra` (which
/// wins). Nothing else is inherited but `RUST_LOG` and `GRAPHQL_ONE_STEP`.
pub fn env_for(database_url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), database_url.into()),
        ("DATABASE_POOL_SIZE".into(), "4".into()),
        ("JWT_HS256_SECRET".into(), crate::HS256_SECRET.into()),
        ("JWT_ISSUER".into(), crate::ISSUER.into()),
        ("JWT_AUDIENCE".into(), crate::AUDIENCE.into()),
        ("NO_COLOR".into(), "1".into()),
        (
            "RUST_LOG".into(),
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,tokio_postgres=warn".into()),
        ),
    ];
    if let Ok(v) = std::env::var("GRAPHQL_ONE_STEP") {
        env.push(("GRAPHQL_ONE_STEP".into(), v));
    }
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// A child process, killed with SIGKILL and reaped when dropped; its stdout and stderr go to
/// a log file, printed when the test fails (and deleted otherwise).
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `bin` with `args` and exactly the environment `env`; `name` labels its log.
    pub fn spawn(name: &str, bin: &Path, args: &[&str], env: &[(String, String)]) -> Self {
        let log =
            std::env::temp_dir().join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let out = std::fs::File::create(&log).expect("create the process log");
        let err = out.try_clone().expect("clone the process log");
        let child = Command::new(bin)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Self {
            name: name.into(),
            child,
            log,
        }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9` (SIGKILL: no shutdown, no cleanup) and waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (what process managers send to stop a service).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits until it exits, at most `timeout`; its exit status, `None` while still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits until its output contains `needle`; panics (with the output) after `timeout` or
    /// when it exits first.
    pub async fn wait_for_output(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.output().contains(needle) {
                return;
            }
            assert!(
                self.is_running(),
                "{} exited before printing {needle:?} (its output follows)",
                self.name
            );
            assert!(
                start.elapsed() < timeout,
                "{} did not print {needle:?} within {timeout:?} (its output follows)",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let output = self.output();
            let lines: Vec<&str> = output.lines().collect();
            let tail = lines[lines.len().saturating_sub(200)..].join("\n");
            eprintln!(
                "----- {} (pid {}), last lines -----\n{tail}\n----- end of {} -----",
                self.name,
                self.child.id(),
                self.name
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Starts the `worker` binary on `database_url` (see [`env_for`] for `extra`).
pub fn spawn_worker(name: &str, database_url: &str, extra: &[(&str, &str)]) -> Process {
    Process::spawn(name, &binary("worker"), &[], &env_for(database_url, extra))
}

/// A running `api` process.
pub struct ApiProcess {
    /// The process.
    pub process: Process,
    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub base: String,
    /// An HTTP client.
    pub http: reqwest::Client,
}

/// Starts `api --no-worker` (HTTP only) on `database_url` and waits until it is ready.
pub async fn spawn_api_without_worker(
    name: &str,
    database_url: &str,
    extra: &[(&str, &str)],
) -> ApiProcess {
    spawn_api(name, database_url, &["--no-worker"], extra).await
}

/// Starts `api` with `args` on `database_url`, on a free port, and waits until `/readyz`
/// answers 200 (database reachable, migrations applied); panics with its output when it
/// does not within 60 s.
pub async fn spawn_api(
    name: &str,
    database_url: &str,
    args: &[&str],
    extra: &[(&str, &str)],
) -> ApiProcess {
    let bin = binary("api");
    let http = reqwest::Client::new();
    // Another test may take the free port before the api binds it: then try another.
    for _ in 0..3 {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut env_extra = extra.to_vec();
        env_extra.push(("BIND_ADDR", addr.as_str()));
        let mut process = Process::spawn(name, &bin, args, &env_for(database_url, &env_extra));
        let base = format!("http://{addr}");
        let start = Instant::now();
        while process.is_running() && start.elapsed() < Duration::from_secs(60) {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                return ApiProcess {
                    process,
                    base,
                    http,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if process.is_running() || !process.output().contains("cannot listen") {
            panic!("{name} did not become ready on {addr} (its output follows)");
        }
    }
    panic!("{name} found no free port");
}
