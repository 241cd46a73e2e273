//! A real SMTP server on loopback for the notification tests: Python's `aiosmtpd` (from PyPI,
//! `pip install aiosmtpd`, or Debian's `python3-aiosmtpd`) with a small handler that appends
//! every message it accepts to a file, one JSON object a line.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The handler: `python3 -c SCRIPT HOST PORT FILE`.
const SCRIPT: &str = r#"
import json, sys, time
from aiosmtpd.controller import Controller

class Sink:
    async def handle_DATA(self, server, session, envelope):
        line = json.dumps({
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
        })
        with open(sys.argv[3], "a") as f:
            f.write(line + "\n")
        return "250 OK: stored"

controller = Controller(Sink(), hostname=sys.argv[1], port=int(sys.argv[2]))
controller.start()
while True:
    time.sleep(3600)
"#;

/// A message the sink accepted.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Mail {
    /// The envelope sender.
    pub from: String,
    /// The envelope recipients.
    pub to: Vec<String>,
    /// The message as received (headers and body).
    pub data: String,
}

/// An SMTP server on 127.0.0.1 that keeps what it receives; killed when dropped.
pub struct SmtpSink {
    /// Its port.
    pub port: u16,
    child: Child,
    file: PathBuf,
}

impl SmtpSink {
    /// Starts one and waits until it accepts connections. Panics with how to install
    /// `aiosmtpd` when Python cannot import it.
    pub async fn start() -> Self {
        let import = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            import.is_ok_and(|s| s.success()),
            "the SMTP sink needs python3 with aiosmtpd: `pip install aiosmtpd` or `apt-get install python3-aiosmtpd`"
        );
        let port = crate::processes::free_port();
        let file =
            std::env::temp_dir().join(format!("smtp-sink-{}.jsonl", uuid::Uuid::new_v4().simple()));
        let child = Command::new("python3")
            .args(["-c", SCRIPT, "127.0.0.1", &port.to_string()])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 for the SMTP sink");
        let sink = Self { port, child, file };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the SMTP sink did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sink
    }

    /// `SMTP_URL` of this sink (plain text).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The messages received so far (whole lines only).
    pub fn messages(&self) -> Vec<Mail> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until at least `n` messages arrived (at most `timeout`); all of them.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the SMTP sink received {} of {n} messages: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}
