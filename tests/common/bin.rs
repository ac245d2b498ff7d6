//! The real `hoard` binary as a child process, for what an in-process
//! server cannot show: a SIGKILL in the middle of a fill, a file-size limit
//! (RLIMIT_FSIZE) on the process, `hoard verify` run beside a serving hoard,
//! and start-up refusals that must end the process.
//!
//! A test file includes it next to the shared harness:
//! ```ignore
//! mod common;
//! #[path = "common/bin.rs"]
//! mod bin;
//! ```
//! The child logs to a pipe this module reads into memory; when a test
//! panics while a child is alive, the tail of its log is printed, so a
//! failure comes with what the server said. Every wait is on a condition
//! with a deadline.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::common::{client, Cfg, FakeRegistry, Metrics, DEADLINE};

/// The binary under test, built by cargo for this test target.
pub const HOARD: &str = env!("CARGO_BIN_EXE_hoard");

/// Lines of the child's log printed when a test fails.
const LOG_TAIL: usize = 80;

/// A fake upstream (as `docker.io`) and a directory holding the mirror's
/// cache and, beside it (not inside: it would be a stray), its config file.
pub struct Site {
    pub hub: FakeRegistry,
    pub dir: tempfile::TempDir,
    pub cache: PathBuf,
    pub config: PathBuf,
}

impl Site {
    /// A site whose cache is `<tmp>/cache`; `extra` are top-level config
    /// keys as TOML (`("max_size", "\"4MiB\"")`).
    pub async fn new(extra: &[(&str, &str)]) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = dir.path().join("cache");
        Site::with_cache_dir(dir, cache, extra).await
    }

    /// A site whose cache lives at `cache` (which may be a mount point).
    pub async fn with_cache_dir(
        dir: tempfile::TempDir,
        cache: PathBuf,
        extra: &[(&str, &str)],
    ) -> Site {
        let hub = FakeRegistry::start().await;
        // Token-protected like Docker Hub: hoard must do the token dance.
        hub.require_auth();
        let config = dir.path().join("mirror.toml");
        let site = Site {
            hub,
            dir,
            cache,
            config,
        };
        site.write_config(extra);
        site
    }

    /// (Re)writes the config file; a restart picks up the new keys.
    pub fn write_config(&self, extra: &[(&str, &str)]) {
        let cfg = Cfg::new(&self.cache).upstream("docker.io", &self.hub.url());
        // A short grace keeps SIGTERM in tests quick; callers may override.
        let mut text = String::new();
        if !extra.iter().any(|(k, _)| *k == "shutdown_grace") {
            text.push_str("shutdown_grace = \"2s\"\n");
        }
        for (k, v) in extra {
            text.push_str(&format!("{k} = {v}\n"));
        }
        // Top-level keys must come before the [upstreams] tables.
        text.push_str(&cfg.toml());
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Starts `hoard serve --config <config>`.
    pub async fn start(&self) -> Hoard {
        Launch::new(&self.config).start().await
    }

    /// Where the blob `digest` (`sha256:<hex>`) lives in this cache.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        blob_file(&self.cache, digest)
    }
}

/// How to start the binary.
pub struct Launch {
    args: Vec<std::ffi::OsString>,
    file_size_limit: Option<u64>,
}

impl Launch {
    /// `hoard serve --config <config>`.
    pub fn new(config: &Path) -> Launch {
        Launch {
            args: vec!["serve".into(), "--config".into(), config.into()],
            file_size_limit: None,
        }
    }

    /// Limits the size of any file the process writes (RLIMIT_FSIZE): a
    /// write past it fails with EFBIG, a full disk as hoard sees it.
    pub fn file_size_limit(mut self, bytes: u64) -> Launch {
        self.file_size_limit = Some(bytes);
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(HOARD);
        cmd.args(&self.args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(limit) = self.file_size_limit {
            // SAFETY: runs in the forked child before exec; setrlimit is
            // async-signal-safe and nothing here allocates.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit as libc::rlim_t,
                        rlim_max: limit as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd
    }

    /// Starts the server and waits until it answers `/v2/`.
    pub async fn start(self) -> Hoard {
        let mut child = self.command().spawn().expect("spawn hoard");
        let log = Log::default();
        log.follow(0, child.stdout.take().expect("stdout piped"));
        log.follow(1, child.stderr.take().expect("stderr piped"));
        let pid = child.id().expect("child pid");
        let mut hoard = Hoard {
            child,
            pid,
            addr: "127.0.0.1:0".parse().expect("addr"),
            client: client(),
            log,
        };
        hoard.addr = hoard.wait_listening().await;
        hoard.wait_ready().await;
        hoard
    }

    /// Runs the command to its end (it must end within the deadline);
    /// returns its status and everything it printed.
    pub async fn run_to_exit(self) -> (ExitStatus, String) {
        let out = run_output(self.command()).await;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status, text)
    }
}

/// What `hoard verify` did.
#[derive(Debug)]
pub struct VerifyRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `hoard verify <args>` to its end.
pub async fn hoard_verify<S: AsRef<OsStr>>(args: &[S]) -> VerifyRun {
    let mut cmd = Command::new(HOARD);
    cmd.arg("verify")
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = run_output(cmd).await;
    VerifyRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn run_output(mut cmd: Command) -> std::process::Output {
    match tokio::time::timeout(DEADLINE, cmd.output()).await {
        Ok(out) => out.expect("run hoard"),
        Err(_) => panic!("hoard did not exit within {DEADLINE:?}"),
    }
}

/// The child's stdout and stderr, as read so far.
#[derive(Clone)]
struct Log {
    text: Arc<Mutex<String>>,
    /// Bumped on every line and when a stream ends.
    changed: Arc<watch::Sender<u64>>,
    /// Set when both streams reached their end (the child is exiting).
    ended: Arc<[AtomicBool; 2]>,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            text: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            ended: Arc::new([AtomicBool::new(false), AtomicBool::new(false)]),
        }
    }
}

impl Log {
    /// Reads `stream` line by line; `slot` (0 or 1) marks its end.
    fn follow(&self, slot: usize, stream: impl AsyncRead + Unpin + Send + 'static) {
        let log = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = strip_ansi(&line);
                {
                    let mut text = log.text.lock().unwrap_or_else(|p| p.into_inner());
                    text.push_str(&line);
                    text.push('\n');
                }
                log.changed.send_modify(|n| *n += 1);
            }
            log.ended[slot].store(true, Ordering::SeqCst);
            log.changed.send_modify(|n| *n += 1);
        });
    }

    fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn ended(&self) -> bool {
        self.ended.iter().all(|e| e.load(Ordering::SeqCst))
    }

    fn tail(&self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Removes terminal colour sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The plain-HTTP address from a `hoard listening addr=...` log line.
fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("hoard listening"))
        .filter(|l| !l.contains("https"))
        .find_map(|l| {
            let rest = &l[l.find("addr=")? + "addr=".len()..];
            let token = rest.split_whitespace().next()?;
            token.trim_matches('"').parse().ok()
        })
}

/// A running `hoard serve`. Dropping it kills the process.
pub struct Hoard {
    child: Child,
    pid: u32,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    log: Log,
}

impl Drop for Hoard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- hoard (pid {}) log, last {LOG_TAIL} lines ----\n{}\n---- end of hoard log ----",
                self.pid,
                self.log.tail(LOG_TAIL)
            );
        }
    }
}

impl Hoard {
    /// Everything the server printed so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// The last `n` lines of the log (for assertion messages).
    pub fn log_tail(&self, n: usize) -> String {
        self.log.tail(n)
    }

    async fn wait_listening(&mut self) -> SocketAddr {
        let mut changed = self.log.changed.subscribe();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(addr) = listening_addr(&self.log.text()) {
                return addr;
            }
            if self.log.ended() {
                let status = tokio::time::timeout(DEADLINE, self.child.wait()).await;
                panic!(
                    "hoard exited before listening ({status:?}):\n{}",
                    self.log.text()
                );
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                panic!(
                    "hoard logged no `hoard listening addr=...` within {DEADLINE:?}:\n{}",
                    self.log.text()
                );
            }
        }
    }

    /// Waits for `/v2/` to answer 200 and the index to be complete (hoard
    /// serves while it loads; tests look at the cache as the load left it).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let last = match self.client.get(self.url("/v2/")).send().await {
                Ok(r) if r.status() == 200 && self.log.text().contains("cache index loaded") => {
                    return
                }
                Ok(r) => format!("status {}", r.status()),
                Err(e) => e.to_string(),
            };
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("hoard exited ({status}) while starting:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("GET /v2/ did not answer 200 within {DEADLINE:?} ({last})");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `kill -9`: no chance to clean up.
    pub async fn kill9(mut self) {
        // SAFETY: plain syscall on the pid of a child we have not reaped.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        assert_eq!(
            rc,
            0,
            "kill -9 {}: {}",
            self.pid,
            io::Error::last_os_error()
        );
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("hoard reaped after SIGKILL")
            .expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(mut self) {
        // No pooled keep-alive connections for the server to drain.
        self.client = client();
        // SAFETY: plain syscall on the pid of a child we have not reaped.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        assert_eq!(
            rc,
            0,
            "kill -TERM {}: {}",
            self.pid,
            io::Error::last_os_error()
        );
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("hoard did not exit within {DEADLINE:?} of SIGTERM"))
            .expect("wait");
        assert!(status.success(), "hoard exited with {status} after SIGTERM");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn get_range(&self, path: &str, range: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("Range", range)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} ({range}): {e}"))
    }

    /// GET that must answer 200 with a complete body; returns the body.
    pub async fn get_ok(&self, path: &str) -> bytes::Bytes {
        let resp = self.get(path).await;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: body broke off: {e}"));
        assert_eq!(
            status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
        body
    }

    /// GET that must answer 200, then waits until no fill is in flight:
    /// a client gets its last byte once the blob is verified, and the blob
    /// enters the store just after (synced, renamed, indexed). Tests that
    /// look at the store or its gauges right after a pull use this.
    pub async fn get_cached(&self, path: &str) -> bytes::Bytes {
        let body = self.get_ok(path).await;
        self.settle().await;
        body
    }

    /// Waits until every fill in flight is committed (or failed).
    pub async fn settle(&self) {
        self.wait_metrics("fills committed", |m| {
            m.sum("hoard_fills_in_flight", &[]) == 0.0
        })
        .await;
    }

    pub async fn metrics(&self) -> Metrics {
        let resp = self.get("/metrics").await;
        assert_eq!(resp.status(), 200, "GET /metrics");
        Metrics(resp.text().await.expect("metrics body"))
    }

    /// The value of an unlabelled metric (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics().await.sum(name, &[])
    }

    /// Polls `/metrics` until `pred` holds; fails the test after the deadline.
    pub async fn wait_metrics(&self, what: &str, pred: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let m = self.metrics().await;
            if pred(&m) {
                return m;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for metrics: {what}\n{}", m.0);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `/readyz`: `None` when this build has no such route (404).
    pub async fn readyz(&self) -> Option<u16> {
        let status = self.get("/readyz").await.status().as_u16();
        (status != 404).then_some(status)
    }
}

// ----- what the upstream saw -----

/// Upstream blob GETs that carried a token, i.e. that could transfer
/// bytes (hoard's first try without one only earns a 401), as their
/// `Range` headers, in order; of `digest` only, if given.
pub fn blob_transfers(hub: &FakeRegistry, digest: Option<&str>) -> Vec<Option<String>> {
    hub.log()
        .into_iter()
        .filter(|s| s.kind == crate::common::Kind::Blob && s.method == hyper::Method::GET)
        .filter(|s| s.authorization.is_some())
        .filter(|s| digest.is_none_or(|d| s.path.ends_with(d)))
        .map(|s| s.range)
        .collect()
}

/// How many blob GETs went upstream with a token.
pub fn transfers(hub: &FakeRegistry) -> usize {
    blob_transfers(hub, None).len()
}

// ----- the cache directory as files -----

/// `cache/blobs/sha256/<2 hex>/<hex>` of a `sha256:<hex>` digest.
pub fn blob_file(cache: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    cache.join("blobs").join("sha256").join(&hex[..2]).join(hex)
}

/// Every regular file under `dir`, recursively (none if `dir` is absent).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(entry.path()),
                Ok(t) if t.is_file() => out.push(entry.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Sum of the sizes of the regular files under `dir`.
pub fn bytes_under(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Files under `dir` whose name is `name`.
pub fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()) == Some(name))
        .collect()
}

/// `sha256:<hex>` of a file's content.
pub fn file_digest(path: &Path) -> String {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    crate::common::sha256_digest(&data)
}

/// Polls `cond` until it holds; fails the test after the deadline with
/// `what` and the last `explain()`.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool, explain: impl Fn() -> String) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        if Instant::now() > deadline {
            panic!(
                "timed out after {DEADLINE:?} waiting for {what}: {}",
                explain()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A human-readable listing of the files under `dir`, with sizes.
pub fn listing(dir: &Path) -> String {
    files_under(dir)
        .iter()
        .map(|p| {
            let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            format!(
                "  {} ({len} bytes)",
                p.strip_prefix(dir).unwrap_or(p).display()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
