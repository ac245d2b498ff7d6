//! The real `hoard` binary as a child process, for tests of what only a
//! process has: signals (SIGTERM, SIGHUP), exit codes, start-up errors,
//! and the TLS listener's address.
//!
//! The child logs JSON to stderr; a reader task keeps every line, and
//! [`Hoard::start`] learns the listening addresses from the "hoard
//! listening" lines (the config asks for port 0). Signals go through
//! `kill(1)`. Include beside the shared harness:
//! ```ignore
//! mod common;
//! #[path = "common/process.rs"]
//! mod process;
//! ```

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Deadline for anything these helpers wait on.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The child's stderr, line by line, with a signal for each new line.
#[derive(Clone)]
pub struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    /// Counts lines; `usize::MAX` once stderr ended.
    seen: Arc<watch::Sender<usize>>,
}

impl Log {
    fn capture(child: &mut Child) -> Log {
        let log = Log {
            lines: Arc::default(),
            seen: Arc::new(watch::channel(0).0),
        };
        let stderr = child.stderr.take().expect("stderr is piped");
        let writer = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                writer.lines.lock().unwrap().push(line);
                writer.seen.send_modify(|n| *n += 1);
            }
            writer.seen.send_replace(usize::MAX);
        });
        log
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The whole log as one string (for failure messages).
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a line satisfies `pred` and returns it; `None` when
    /// stderr ended first; panics after the deadline.
    pub async fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> Option<String> {
        let mut seen = self.seen.subscribe();
        let wait = async {
            loop {
                let ended = *seen.borrow_and_update() == usize::MAX;
                if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                    return Some(l);
                }
                if ended || seen.changed().await.is_err() {
                    return None;
                }
            }
        };
        match tokio::time::timeout(DEADLINE, wait).await {
            Ok(found) => found,
            Err(_) => panic!("timed out waiting for log line: {what}\n{}", self.text()),
        }
    }
}

/// The `fields` of a JSON log line whose message is `message`.
pub fn json_fields(line: &str, message: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    (fields.get("message")?.as_str()? == message).then(|| fields.clone())
}

/// Writes `config_toml` (which must not set `log_format`) with JSON logs
/// into `dir/mirror.toml` and returns the path.
pub fn write_config(dir: &Path, config_toml: &str) -> PathBuf {
    let path = dir.join("mirror.toml");
    std::fs::write(&path, format!("log_format = \"json\"\n{config_toml}")).unwrap();
    path
}

/// Starts `hoard serve --config <file>`, stderr piped, killed on drop.
fn spawn(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hoard"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn hoard")
}

/// A running (or exited) `hoard serve`. Dropping it kills the process.
pub struct Hoard {
    child: Child,
    /// The plain-HTTP address.
    pub plain: SocketAddr,
    /// The TLS address, when `[tls]` was configured.
    pub tls: Option<SocketAddr>,
    log: Log,
}

impl Drop for Hoard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- hoard log ----\n{}\n---- end ----", self.log.text());
        }
    }
}

impl Hoard {
    /// Writes the config into `dir`, starts the binary and waits until it
    /// logs its listening addresses (plain, and TLS when `tls` is set) and
    /// that its index is loaded.
    pub async fn start(dir: &Path, config_toml: &str, tls: bool) -> Hoard {
        let config = write_config(dir, config_toml);
        let mut child = spawn(&config);
        let log = Log::capture(&mut child);
        let plain = listening(&log, "http").await;
        let tls = if tls {
            Some(listening(&log, "https").await)
        } else {
            None
        };
        // hoard serves while its index loads; tests start from a complete one.
        log.wait_line("cache index loaded", |l| l.contains("cache index loaded"))
            .await
            .unwrap_or_else(|| panic!("hoard exited while loading its index:\n{}", log.text()));
        Hoard {
            child,
            plain,
            tls,
            log,
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("hoard still running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit; panics after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("hoard did not exit within {limit:?}\n{}", self.log.text()),
        }
    }

    /// The captured log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// `http://<plain><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.plain, path)
    }
}

/// The address of the "hoard listening" line for `scheme`.
async fn listening(log: &Log, scheme: &str) -> SocketAddr {
    let is_it = |l: &str| {
        json_fields(l, "hoard listening").is_some_and(|f| f["scheme"].as_str() == Some(scheme))
    };
    let line = log
        .wait_line(&format!("hoard listening ({scheme})"), is_it)
        .await
        .unwrap_or_else(|| panic!("hoard exited at start:\n{}", log.text()));
    let fields = json_fields(&line, "hoard listening").unwrap();
    fields["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr in {line}"))
}

/// Runs `hoard serve` on a config expected to be refused at start: waits
/// for the exit and returns its status and the whole stderr.
pub async fn start_failure(dir: &Path, config_toml: &str) -> (ExitStatus, String) {
    let config = write_config(dir, config_toml);
    let mut child = spawn(&config);
    let log = Log::capture(&mut child);
    let status = match tokio::time::timeout(DEADLINE, child.wait()).await {
        Ok(s) => s.expect("wait"),
        Err(_) => panic!("hoard did not exit at start\n{}", log.text()),
    };
    // Wait for the reader to reach the end of stderr.
    log.wait_line("end of stderr", |_| false).await;
    (status, log.text())
}

/// Polls `cond` until it holds; panics with `what` after the deadline.
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !cond().await {
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
