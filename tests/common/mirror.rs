//! The real `hoard::run` in process on 127.0.0.1:0 ([`TestMirror`], [`Env`]), the
//! [`Server`] requests every kind of mirror answers, and the checks of what came back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Cfg, FakeRegistry, Metrics, DEADLINE, POLL};

/// A running hoard on 127.0.0.1:0.
pub struct TestMirror {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), hoard::Error>>>,
}

/// Dropping a mirror shuts it down and, on a multi-thread runtime, waits (up to
/// the deadline) for `run` to return: `run` finishes its fills before it
/// returns, so nothing writes into the cache directory after the test's
/// `TempDir` (dropped after the mirror) has removed it. Aborting instead left
/// a committing fill to recreate the directory under /tmp.
impl Drop for TestMirror {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let Some(task) = self.task.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| {
                    let _ = handle.block_on(tokio::time::timeout(DEADLINE, task));
                });
            }
            _ => task.abort(),
        }
    }
}

/// Cache directories of the mirrors this test binary started.
static SWEPT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes a mirror's cache directory once more when the test binary exits. The test's
/// `TempDir` removes it first, but a write hoard started before its shutdown (a tag
/// record, a shard directory) may land just after and recreate the path; at exit every
/// test's runtime is gone, and with it every writer. Only directories under the
/// temporary directory are taken.
fn sweep_at_exit(cache_dir: &Path) {
    static REGISTER: Once = Once::new();
    extern "C" fn sweep() {
        let dirs = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
        let tmp = std::env::temp_dir();
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
            // Parents a late write recreated too, up to the temporary directory.
            let mut up = dir.parent();
            while let Some(parent) = up.filter(|p| *p != tmp && p.starts_with(&tmp)) {
                if std::fs::remove_dir(parent).is_err() {
                    break;
                }
                up = parent.parent();
            }
        }
    }
    if !cache_dir.starts_with(std::env::temp_dir()) {
        return;
    }
    REGISTER.call_once(|| {
        // SAFETY: registers a plain function; it runs at exit on one thread.
        unsafe { libc::atexit(sweep) };
    });
    SWEPT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(cache_dir.to_path_buf());
}

/// A client that never follows redirects (hoard must not send clients
/// elsewhere), ignores proxy variables and has a generous overall timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(3 * DEADLINE)
        .build()
        .unwrap()
}

impl TestMirror {
    /// Parses `config_toml`, binds 127.0.0.1:0 and spawns `hoard::run`.
    pub async fn start(config_toml: &str) -> TestMirror {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mirror");
        TestMirror::start_on(listener, config_toml).await
    }

    /// As [`TestMirror::start`], on a listener bound already (when the
    /// address must be known before the config is written: cluster peers).
    pub async fn start_on(listener: TcpListener, config_toml: &str) -> TestMirror {
        let config = match hoard::Config::from_toml(config_toml) {
            Ok(c) => c,
            Err(e) => panic!("config rejected: {e:?}\n---\n{config_toml}"),
        };
        sweep_at_exit(&config.cache_dir);
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(hoard::run(listener, config, async move {
            let _ = rx.await;
        }));
        TestMirror {
            addr,
            client: client(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Why `run` ended, if it has (a failed start): `None` while it runs.
    pub async fn ended(&mut self) -> Option<String> {
        let task = self.task.take_if(|t| t.is_finished())?;
        Some(format!("hoard::run ended: {:?}", task.await))
    }

    /// Resolves the shutdown future and waits for `run` to return `Ok`.
    pub async fn stop(mut self) {
        self.client = client(); // drop pooled keep-alive connections
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().unwrap();
        match tokio::time::timeout(DEADLINE, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("hoard::run returned an error: {e:?}"),
            Ok(Err(e)) => panic!("hoard::run panicked: {e:?}"),
            Err(_) => panic!("hoard::run did not return within {DEADLINE:?} after shutdown"),
        }
    }
}

/// The requests a test sends to a mirror, in process ([`TestMirror`]) or as a child
/// process (`Hoard`), written once. An implementor names its address and client.
pub trait Server {
    /// Where it listens (plain HTTP).
    fn addr(&self) -> SocketAddr;

    /// The client its requests go through (keeps connections alive).
    fn client(&self) -> &reqwest::Client;

    /// `http://<addr><path>`
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.get_with(path, &[]).await
    }

    async fn head(&self, path: &str) -> reqwest::Response {
        self.client()
            .head(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("HEAD {path}: {e}"))
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.client().get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} {headers:?}: {e:?}"))
    }

    async fn get_range(&self, path: &str, range: &str) -> reqwest::Response {
        self.get_with(path, &[("Range", range)]).await
    }

    /// GET that must answer 200 with a complete body; returns the body.
    async fn get_ok(&self, path: &str) -> Bytes {
        let resp = self.get(path).await;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: body broke off: {e}"));
        assert_eq!(
            status,
            200,
            "GET {path}: body {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
        body
    }

    /// GET that must answer 200, then waits until no fill is in flight: a client gets
    /// its last byte once the blob is verified, and the blob enters the store just after
    /// (synced, renamed, indexed). Tests that look at the store or its gauges right
    /// after a pull use this.
    async fn get_cached(&self, path: &str) -> Bytes {
        let body = self.get_ok(path).await;
        self.settle().await;
        body
    }

    /// Waits until every fill in flight is committed (or failed).
    async fn settle(&self) {
        self.wait_metrics("fills committed", |m| {
            m.sum("hoard_fills_in_flight", &[]) == 0.0
        })
        .await;
    }

    async fn metrics(&self) -> Metrics {
        let resp = self.get("/metrics").await;
        assert_eq!(resp.status(), 200, "GET /metrics");
        Metrics(resp.text().await.expect("metrics body"))
    }

    /// The value of an unlabelled metric (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        self.metrics().await.sum(name, &[])
    }

    /// Polls `/metrics` until `pred` holds; fails the test after the deadline.
    async fn wait_metrics(&self, what: &str, pred: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let m = self.metrics().await;
            if pred(&m) {
                return m;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for metrics: {what}\n{}", m.0);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `/readyz`: `None` when this build has no such route (404).
    async fn readyz(&self) -> Option<u16> {
        let status = self.get("/readyz").await.status().as_u16();
        (status != 404).then_some(status)
    }
}

impl Server for TestMirror {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// A fake Docker Hub and a mirror with it as `docker.io` (the default).
pub struct Env {
    pub hub: FakeRegistry,
    pub mirror: TestMirror,
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Default config: `tag_ttl = "5m"`.
    pub async fn start() -> Env {
        Env::start_with(|c| c).await
    }

    /// `tweak` adjusts the config after the `docker.io` upstream is added.
    pub async fn start_with(tweak: impl FnOnce(Cfg) -> Cfg) -> Env {
        let hub = FakeRegistry::start().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = tweak(Cfg::new(dir.path()).upstream("docker.io", &hub.url()));
        let mirror = TestMirror::start(&cfg.toml()).await;
        Env { hub, mirror, dir }
    }
}

/// Reads a header as a string ("" when absent).
pub fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
        .unwrap_or_default()
}

/// Asserts an OCI error response: `status` and an `{"errors":[{"code":..}]}`
/// body whose first code is one of `codes`. Returns the code.
pub async fn assert_oci_error(resp: reqwest::Response, status: u16, codes: &[&str]) -> String {
    let got = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    check_oci_error(got, &body, status, codes)
}

/// Like `assert_oci_error` for an already read status and body.
pub fn check_oci_error(got: u16, body: &[u8], status: u16, codes: &[&str]) -> String {
    let text = String::from_utf8_lossy(body);
    assert_eq!(got, status, "status (body: {text})");
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text:?}"));
    let first = &json["errors"][0];
    let code = first["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no errors[0].code in {text}"));
    assert!(
        first["message"].is_string(),
        "errors[0].message must be a string: {text}"
    );
    assert!(
        codes.contains(&code),
        "code {code}, expected one of {codes:?}: {text}"
    );
    code.to_string()
}

/// The OCI error code of a 4xx, or panic; for checks that accept any 4xx.
pub fn check_client_error(got: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    assert!(
        (400..500).contains(&got),
        "expected a 4xx, got {got}: {text}"
    );
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text:?}"));
    json["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no errors[0].code in {text}"))
        .to_string()
}

/// A response read by `raw_request`.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// Sends one request with the path exactly as given (no dot-segment
/// normalisation, no percent-decoding), over a fresh HTTP/1.1 connection.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect mirror");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).expect("request");
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: body timed out"))
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    RawResponse {
        status,
        headers,
        body,
    }
}

/// Reads a whole body, returning the error if the stream broke.
pub async fn read_body(resp: reqwest::Response) -> Result<Bytes, reqwest::Error> {
    resp.bytes().await
}

/// Reads chunks until at least `n` bytes arrived; returns them and the rest of the response.
pub async fn read_at_least(resp: &mut reqwest::Response, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(DEADLINE, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => got.extend_from_slice(&chunk),
            Ok(Ok(None)) => panic!("body ended after {} bytes, wanted {n}", got.len()),
            Ok(Err(e)) => panic!("body error after {} bytes: {e}", got.len()),
            Err(_) => panic!("no progress after {} bytes, wanted {n}", got.len()),
        }
    }
    got
}

/// `/v2/<name>/blobs/<digest>`
pub fn blob_path(name: &str, digest: &str) -> String {
    format!("/v2/{name}/blobs/{digest}")
}

/// A monolithic upload (`POST ?digest=` with the body) of `data` as
/// `digest` (sha256 or sha512), asserting the `201` and its headers.
pub async fn push_blob_as(m: &TestMirror, repo: &str, data: &[u8], digest: &str) {
    let resp = m
        .client
        .post(m.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "monolithic upload to {repo}");
    assert_eq!(header(&resp, "Docker-Content-Digest"), digest);
    assert_eq!(
        header(&resp, "Location"),
        format!("/v2/{repo}/blobs/{digest}")
    );
}

/// `/v2/<name>/manifests/<reference>`
pub fn manifest_path(name: &str, reference: &str) -> String {
    format!("/v2/{name}/manifests/{reference}")
}

/// What a spawned client got: status, `Content-Range`, and the body (or the
/// error that broke it).
pub type Outcome = (reqwest::StatusCode, String, Result<Bytes, reqwest::Error>);

/// Concurrent clients of the mirror, each in its own task.
#[derive(Default)]
pub struct Clients {
    headers_in: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<JoinHandle<Outcome>>,
}

impl Clients {
    pub fn new() -> Clients {
        Clients::default()
    }

    /// Starts a GET of `path` (with `Range` if given).
    pub fn spawn(&mut self, mirror: &TestMirror, path: &str, range: Option<&str>) {
        let mut req = mirror.client.get(mirror.url(path));
        if let Some(range) = range {
            req = req.header("Range", range);
        }
        let headers_in = self.headers_in.clone();
        self.tasks.push(tokio::spawn(async move {
            let resp = req.send().await.expect("send");
            headers_in.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (status, content_range) = (resp.status(), header(&resp, "Content-Range"));
            (status, content_range, resp.bytes().await)
        }));
    }

    /// Waits until every client is attached to hoard: all have their
    /// response headers, or hoard's blob request counters (miss + hit +
    /// coalesced) reached `counted`.
    pub async fn wait_attached(&self, mirror: &TestMirror, counted: f64) {
        let n = self.tasks.len();
        mirror
            .wait_metrics("all clients attached", |m| {
                self.headers_in.load(std::sync::atomic::Ordering::SeqCst) >= n
                    || m.blob_requests("miss")
                        + m.blob_requests("hit")
                        + m.blob_requests("coalesced")
                        >= counted
            })
            .await;
    }

    /// Waits for every client to finish, in spawn order.
    pub async fn join(self) -> Vec<Outcome> {
        let mut out = Vec::new();
        for task in self.tasks {
            out.push(
                tokio::time::timeout(DEADLINE, task)
                    .await
                    .expect("client finished")
                    .expect("client task"),
            );
        }
        out
    }
}
