//! A real S3-compatible server on loopback for the tests: `moto_server` (PyPI's
//! `moto[server]`, which `.ci/run` installs), one per test process, started on first use and
//! stopped when the test process ends.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

/// The endpoint, and the watching shell (kept: it ends with the test process).
static SERVER: OnceCell<(String, std::sync::Mutex<std::process::Child>)> = OnceCell::const_new();

/// The endpoint of this process's S3 server (`http://127.0.0.1:PORT`), started on first use.
pub async fn endpoint() -> String {
    SERVER.get_or_init(start).await.0.clone()
}

// The watching shell lives as long as this test process (it is never waited for: it exits
// after the process does).
#[allow(clippy::zombie_processes)]
async fn start() -> (String, std::sync::Mutex<std::process::Child>) {
    let port = crate::processes::free_port();
    // A shell watches this test process and stops moto when it is gone (a static is never
    // dropped, and a killed test run must not leave servers behind).
    let script = format!(
        "moto_server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $m",
        parent = std::process::id()
    );
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh for moto_server (pip install 'moto[server]')");
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if http.get(format!("{endpoint}/")).send().await.is_ok() {
            return (endpoint, std::sync::Mutex::new(shell));
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = shell.kill();
            let _ = shell.wait();
            panic!(
                "moto_server did not start on port {port} (is `moto[server]` installed? .ci/run installs it)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new bucket on the server; the environment that points `ARCHIVE_URL` at it.
pub async fn bucket_env(bucket: &str) -> Vec<(String, String)> {
    let endpoint = endpoint().await;
    let r = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("create bucket");
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    vec![
        ("ARCHIVE_URL".into(), format!("s3://{bucket}/archives")),
        ("AWS_ENDPOINT".into(), endpoint),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ]
}

/// The keys of the objects of `bucket` (its `ListObjectsV2`, first page).
pub async fn list(bucket: &str) -> Vec<String> {
    let endpoint = endpoint().await;
    let body = reqwest::Client::new()
        .get(format!("{endpoint}/{bucket}?list-type=2"))
        .send()
        .await
        .expect("list bucket")
        .text()
        .await
        .expect("list body");
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_string)
        .collect()
}
