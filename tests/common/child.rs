//! The real `hoard` binary as a child process, for what an in-process server cannot
//! show: signals (SIGTERM drains, SIGHUP reloads TLS files, SIGKILL mid-fill), exit
//! codes and start-up refusals, a file-size limit (RLIMIT_FSIZE) on the process, and
//! `hoard verify` run beside a serving hoard.
//!
//! The child logs JSON (`write_config` sets `log_format`); two reader tasks keep every
//! line of its stdout and stderr, and [`Launch::start`] learns the listening addresses
//! from the "hoard listening" lines (the config asks for port 0). When a test panics
//! while a child is alive, the tail of its log is printed, so a failure comes with what
//! the server said. Every wait is on a condition with the harness's deadline.

use std::ffi::{OsStr, OsString};
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::{client, write_config, Cfg, FakeRegistry, Server, DEADLINE};

/// The binary under test, built by cargo for this test target.
pub const HOARD: &str = env!("CARGO_BIN_EXE_hoard");

/// Lines of the child's log printed when a test fails.
const LOG_TAIL: usize = 80;

/// A fake upstream (as `docker.io`, token-protected like Docker Hub) and a directory
/// holding the mirror's cache and, beside it (not inside: it would be a stray), its
/// config file.
pub struct Site {
    pub hub: FakeRegistry,
    pub dir: tempfile::TempDir,
    pub cache: PathBuf,
    pub config: PathBuf,
}

impl Site {
    /// A site whose cache is `<tmp>/cache`; `extra` are top-level config keys as TOML
    /// (`("max_size", "\"4MiB\"")`).
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
        let mut cfg = Cfg::new(&self.cache).upstream("docker.io", &self.hub.url());
        // A short grace keeps SIGTERM in tests quick; callers may override.
        if !extra.iter().any(|(k, _)| *k == "shutdown_grace") {
            cfg = cfg.top("shutdown_grace", "\"2s\"");
        }
        for (k, v) in extra {
            cfg = cfg.top(k, v);
        }
        write_config(self.dir.path(), &cfg.toml());
    }

    /// Starts `hoard serve --config <config>`.
    pub async fn start(&self) -> Hoard {
        Launch::new(&self.config).start().await
    }

    /// Where the blob `digest` (`sha256:<hex>`) lives in this cache.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        super::blob_file(&self.cache, digest)
    }
}

/// How to start the binary.
pub struct Launch {
    args: Vec<OsString>,
    file_size_limit: Option<u64>,
    tls: bool,
    env_removed: Vec<&'static str>,
}

impl Launch {
    /// `hoard serve --config <config>`.
    pub fn new(config: &Path) -> Launch {
        Launch::args(["serve".as_ref(), "--config".as_ref(), config.as_os_str()])
    }

    /// `hoard <args>`.
    pub fn args<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Launch {
        Launch {
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            file_size_limit: None,
            tls: false,
            env_removed: Vec::new(),
        }
    }

    /// Adds command-line arguments after the ones given so far.
    pub fn extra_args(mut self, args: &[&str]) -> Launch {
        self.args.extend(args.iter().map(Into::into));
        self
    }

    /// Starts the child without the variable `name` (e.g. `NO_COLOR`, which
    /// the harness otherwise sets), as a user's shell might.
    pub fn without_env(mut self, name: &'static str) -> Launch {
        self.env_removed.push(name);
        self
    }

    /// Limits the size of any file the process writes (RLIMIT_FSIZE): a write past it
    /// fails with EFBIG, a full disk as hoard sees it.
    pub fn file_size_limit(mut self, bytes: u64) -> Launch {
        self.file_size_limit = Some(bytes);
        self
    }

    /// [`Launch::start`] also waits for the TLS listener (the config has `[tls]`).
    pub fn tls(mut self) -> Launch {
        self.tls = true;
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
        for name in &self.env_removed {
            cmd.env_remove(name);
        }
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

    /// Starts the server and waits until it listens (plain HTTP, and TLS when asked
    /// for) and its index is loaded (hoard serves while it loads; tests start from a
    /// complete one).
    pub async fn start(self) -> Hoard {
        let mut child = self.command().spawn().expect("spawn hoard");
        let log = Log::capture(&mut child);
        let pid = child.id().expect("child pid");
        let addr = listening(&log, "http").await;
        let tls = match self.tls {
            true => Some(listening(&log, "https").await),
            false => None,
        };
        let mut hoard = Hoard {
            child,
            pid,
            addr,
            tls,
            client: client(),
            log,
        };
        hoard.wait_ready().await;
        hoard
    }

    /// Runs the command to its end (it must end within the deadline).
    pub async fn run_to_exit(self) -> Exited {
        let mut child = self.command().spawn().expect("spawn hoard");
        let log = Log::capture(&mut child);
        let status = match tokio::time::timeout(DEADLINE, child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("hoard did not exit within {DEADLINE:?}:\n{}", log.text()),
        };
        // Both streams read to their end.
        log.wait_line("the end of the output", |_| false).await;
        Exited {
            status,
            stdout: log.stream(Stream::Stdout),
            stderr: log.stream(Stream::Stderr),
        }
    }
}

/// A command that ran to its end.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Exited {
    /// Everything it printed, stdout first.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `hoard verify <args>` to its end.
pub async fn hoard_verify<S: AsRef<OsStr>>(args: &[S]) -> Exited {
    let verify: &OsStr = "verify".as_ref();
    Launch::args(std::iter::once(verify).chain(args.iter().map(AsRef::as_ref)))
        .run_to_exit()
        .await
}

/// Writes `config_toml` into `dir`, runs `hoard serve` on it (a config expected to be
/// refused at start) and returns the exit status and everything the process printed.
pub async fn start_failure(dir: &Path, config_toml: &str) -> (ExitStatus, String) {
    let run = Launch::new(&write_config(dir, config_toml))
        .run_to_exit()
        .await;
    (run.status, run.output())
}

/// Which of the child's output streams a line came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// The child's stdout and stderr, line by line, with a signal for each new line.
#[derive(Clone)]
pub struct Log {
    lines: Arc<Mutex<Vec<(Stream, String)>>>,
    /// Counts lines; `usize::MAX` once both streams ended.
    seen: Arc<watch::Sender<usize>>,
}

impl Log {
    fn capture(child: &mut Child) -> Log {
        let log = Log {
            lines: Arc::default(),
            seen: Arc::new(watch::channel(0).0),
        };
        let ended = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        log.follow(Stream::Stdout, out, ended.clone());
        log.follow(Stream::Stderr, err, ended);
        log
    }

    /// Reads `stream` line by line; the second stream to end marks the log ended.
    fn follow(
        &self,
        which: Stream,
        stream: impl AsyncRead + Unpin + Send + 'static,
        ended: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let log = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().push((which, line));
                log.seen
                    .send_modify(|n| *n = n.saturating_add(1).min(usize::MAX - 1));
            }
            if ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                log.seen.send_replace(usize::MAX);
            }
        });
    }

    /// The lines; a poisoned lock only means a reader task panicked mid-push.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Stream, String)>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every line so far, both streams in the order they were read.
    pub fn lines(&self) -> Vec<String> {
        self.lock().iter().map(|(_, l)| l.clone()).collect()
    }

    fn stream(&self, which: Stream) -> String {
        let lines = self.lock();
        let mut out = String::new();
        for (_, line) in lines.iter().filter(|(s, _)| *s == which) {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The whole log as one string (for failure messages and searches).
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits until a line satisfies `pred` and returns it; `None` when both streams
    /// ended first; panics after the deadline.
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

/// The address of the "hoard listening" line for `scheme`, from a JSON log
/// line or, for the tests that read the text format, a text one.
async fn listening(log: &Log, scheme: &str) -> SocketAddr {
    let line = log
        .wait_line(&format!("hoard listening ({scheme})"), |l| {
            listening_addr(l, scheme).is_some()
        })
        .await
        .unwrap_or_else(|| panic!("hoard exited at start:\n{}", log.text()));
    listening_addr(&line, scheme).unwrap_or_else(|| panic!("no addr in {line}"))
}

/// The `addr` of a "hoard listening" line for `scheme`, if `line` is one.
fn listening_addr(line: &str, scheme: &str) -> Option<SocketAddr> {
    if let Some(f) = json_fields(line, "hoard listening") {
        return (f["scheme"].as_str() == Some(scheme))
            .then(|| f["addr"].as_str().and_then(|a| a.parse().ok()))
            .flatten();
    }
    let field = |name: &str| {
        let rest = &line[line.find(&format!(" {name}="))? + name.len() + 2..];
        Some(rest.split_whitespace().next()?.trim_matches('"').to_owned())
    };
    (line.contains("hoard listening") && field("scheme")? == scheme)
        .then(|| field("addr")?.parse().ok())
        .flatten()
}

/// A running (or exited) `hoard serve`. Dropping it kills the process.
pub struct Hoard {
    child: Child,
    pid: u32,
    /// The plain-HTTP address.
    pub addr: SocketAddr,
    /// The TLS address, when started with [`Launch::tls`].
    pub tls: Option<SocketAddr>,
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

impl Server for Hoard {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

impl Hoard {
    /// Writes `config_toml` into `dir`, starts the binary on it and waits as
    /// [`Launch::start`] does (for the TLS listener too when `tls`).
    pub async fn start(dir: &Path, config_toml: &str, tls: bool) -> Hoard {
        let launch = Launch::new(&write_config(dir, config_toml));
        match tls {
            true => launch.tls().start().await,
            false => launch.start().await,
        }
    }

    /// The captured log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The last `n` lines of the log (for assertion messages).
    pub fn log_tail(&self, n: usize) -> String {
        self.log.tail(n)
    }

    /// Waits for the log to say the index is complete. No request is sent: a pooled
    /// connection would take one of the slots the connection-limit tests count.
    async fn wait_ready(&mut self) {
        let loaded = self
            .log
            .wait_line("cache index loaded", |l| l.contains("cache index loaded"))
            .await;
        if loaded.is_none() {
            let status = self.child.try_wait();
            panic!(
                "hoard exited ({status:?}) while loading its index:\n{}",
                self.log.text()
            );
        }
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`, `KILL`).
    pub fn signal(&self, name: &str) {
        let signal = match name {
            "TERM" => libc::SIGTERM,
            "HUP" => libc::SIGHUP,
            "INT" => libc::SIGINT,
            "KILL" => libc::SIGKILL,
            other => panic!("no signal {other} in the harness"),
        };
        // SAFETY: plain syscall on the pid of a child we have not reaped.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, signal) };
        assert_eq!(
            rc,
            0,
            "kill -{name} {}: {}",
            self.pid,
            io::Error::last_os_error()
        );
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit; panics after `limit`.
    pub async fn wait_exit(&mut self, limit: std::time::Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("hoard did not exit within {limit:?}\n{}", self.log.text()),
        }
    }

    /// `kill -9`: no chance to clean up.
    pub async fn kill9(mut self) {
        self.signal("KILL");
        let status = self.wait_exit(DEADLINE).await;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(mut self) {
        // No pooled keep-alive connections for the server to drain.
        self.client = client();
        self.signal("TERM");
        let status = self.wait_exit(DEADLINE).await;
        assert!(status.success(), "hoard exited with {status} after SIGTERM");
    }
}
