//! GraphiQL loads and runs a query in headless Chromium, with every asset served locally.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). The browser
//! is told to resolve no host names at all, so a CDN reference would fail the page.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tests::TestApp;

struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
}

impl Driver {
    async fn start() -> Self {
        let bin = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"])
            .expect("chromedriver not found: install Debian's chromium and chromium-driver (bash .ci/run does)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let d = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        for _ in 0..100 {
            if let Ok(r) = d.http.get(format!("{}/status", d.base)).send().await
                && r.status().is_success()
            {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start");
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("webdriver");
        let v: Value = r.json().await.expect("webdriver json");
        v["value"].clone()
    }
}

async fn poll(driver: &Driver, session: &str, script: &str, what: &str) -> Value {
    for _ in 0..200 {
        let v = driver
            .call(
                reqwest::Method::POST,
                &format!("/session/{session}/execute/sync"),
                json!({"script": script, "args": []}),
            )
            .await;
        if !v.is_null() && v != false && v.get("error").is_none() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn graphiql_loads_and_runs_a_query_without_network() {
    let app = TestApp::spawn().await;
    let token = app.user("browser@example.com");
    let driver = Driver::start().await;
    let chromium =
        find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]).expect("chromium not found");
    let profile =
        std::env::temp_dir().join(format!("graphiql-test-{}", uuid::Uuid::new_v4().simple()));
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    }}});
    let session = driver.call(reqwest::Method::POST, "/session", caps).await;
    let session = session["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {session}"))
        .to_string();
    driver
        .call(
            reqwest::Method::POST,
            &format!("/session/{session}/url"),
            json!({"url": format!("{}/graphiql", app.base)}),
        )
        .await;

    // GraphiQL rendered its editors.
    poll(&driver, &session, "return document.querySelectorAll('.CodeMirror').length >= 3 && !!document.querySelector('.graphiql-execute-button');", "GraphiQL to render").await;

    // Put a real token into the headers editor and a query into the query editor, then run it.
    let set = format!(
        r#"const eds = Array.from(document.querySelectorAll('.CodeMirror')).map(e => e.CodeMirror);
           const headers = eds.find(cm => cm.getValue().includes('PASTE-A-TOKEN-HERE'));
           const query = eds.find(cm => cm.getValue().includes('query Me'));
           if (!headers || !query) return false;
           headers.setValue(JSON.stringify({{Authorization: 'Bearer {token}'}}));
           query.setValue('query Me {{ viewer {{ email }} }}');
           document.querySelector('.graphiql-execute-button').click();
           return true;"#
    );
    poll(&driver, &session, &set, "the editors").await;
    let result = poll(
        &driver,
        &session,
        "const out = Array.from(document.querySelectorAll('.CodeMirror')).map(e => e.CodeMirror.getValue()).find(v => v.includes('\"data\"')); return out || false;",
        "the query result",
    )
    .await;
    let result: Value =
        serde_json::from_str(result.as_str().expect("result text")).expect("result json");
    assert_eq!(
        result["data"]["viewer"]["email"], "browser@example.com",
        "{result}"
    );

    // Every resource came from the API itself.
    let resources = driver
        .call(
            reqwest::Method::POST,
            &format!("/session/{session}/execute/sync"),
            json!({"script": "return performance.getEntriesByType('resource').map(r => r.name);", "args": []}),
        )
        .await;
    let resources = resources.as_array().expect("resources");
    assert!(resources.len() >= 4, "{resources:?}");
    for r in resources {
        assert!(
            r.as_str().unwrap_or_default().starts_with(&app.base),
            "loaded from elsewhere: {r}"
        );
    }
    driver
        .call(
            reqwest::Method::DELETE,
            &format!("/session/{session}"),
            json!({}),
        )
        .await;
    let _ = std::fs::remove_dir_all(profile);
}
