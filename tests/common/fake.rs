//! An in-process upstream registry that behaves like Docker Hub's API host.
//!
//! It holds images in memory, answers the distribution API on 127.0.0.1:0,
//! optionally demands Bearer tokens from its own `/token` realm, and logs every
//! request it sees so a test can assert exactly what hoard sent upstream.
//! Failure modes are switches: `go_down` (the port refuses connections),
//! `set_rate_limited` (429 `TOOMANYREQUESTS`), `corrupt` (same length, other
//! bytes), `redirect_blobs_to_cdn` (307 to a second listener) and a gate that
//! pauses every blob body after its first chunk until the test opens it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::Method;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::fake_http::{base64, AuthPolicy, Role, Server, Shared};

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The service name Docker Hub puts in its challenge.
pub const SERVICE: &str = "registry.docker.io";

/// Blob bodies are sent in chunks of this size; the gate pauses after the first.
pub const CHUNK: usize = 64 * 1024;

/// What a logged request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ping,
    Token,
    Manifest,
    Blob,
    Tags,
    /// A blob GET on the CDN listener (after a redirect).
    Cdn,
    Other,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub kind: Kind,
    pub method: Method,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub accept: Vec<String>,
    pub range: Option<String>,
}

/// A blob as stored upstream.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub data: Bytes,
}

/// A single-platform image: manifest, config blob and layers.
#[derive(Clone, Debug)]
pub struct Image {
    pub repo: String,
    pub manifest: Bytes,
    pub digest: String,
    pub media_type: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// The config blob followed by the layers.
    pub fn blobs(&self) -> Vec<Blob> {
        let mut all = vec![self.config.clone()];
        all.extend(self.layers.iter().cloned());
        all
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// `sha512:<hex>` of `data` (pushed content may use it).
pub fn sha512_digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The fake upstream registry. Dropping it closes its ports.
pub struct FakeRegistry {
    shared: Arc<Shared>,
    server: Mutex<Option<Server>>,
    cdn: Mutex<Option<Server>>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        if let Some(s) = self.server.lock().unwrap().take() {
            s.abort();
        }
        if let Some(s) = self.cdn.lock().unwrap().take() {
            s.abort();
        }
    }
}

impl FakeRegistry {
    /// Starts an empty registry on 127.0.0.1:0 without auth.
    pub async fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake registry");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            addr,
            store: Mutex::default(),
            auth: Mutex::new(None),
            rate_limited: AtomicBool::new(false),
            redirect: AtomicBool::new(false),
            cdn_addr: Mutex::new(None),
            gate: watch::channel(true).0,
            paused: AtomicUsize::new(0),
            events: watch::channel(0).0,
        });
        let server = Server::spawn(listener, shared.clone(), Role::Registry);
        FakeRegistry {
            shared,
            server: Mutex::new(Some(server)),
            cdn: Mutex::new(None),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.shared.addr.to_string()
    }

    // ----- content -----

    /// Stores `data` as a blob of `repo` and returns it with its digest.
    pub fn add_blob(&self, repo: &str, data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        let digest = sha256_digest(&data);
        let mut store = self.shared.store.lock().unwrap();
        store.blobs.insert(digest.clone(), data.clone());
        store.blob_repos.insert((repo.to_string(), digest.clone()));
        Blob { digest, data }
    }

    /// Stores manifest bytes under their digest and, if given, under `tag`.
    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: impl Into<Bytes>,
    ) -> String {
        let bytes = bytes.into();
        let digest = sha256_digest(&bytes);
        let mut store = self.shared.store.lock().unwrap();
        store.manifests.insert(
            (repo.to_string(), digest.clone()),
            (media_type.to_string(), bytes),
        );
        if let Some(tag) = tag {
            store
                .tags
                .insert((repo.to_string(), tag.to_string()), digest.clone());
        }
        digest
    }

    /// Points `tag` at an already stored manifest digest.
    pub fn set_tag(&self, repo: &str, tag: &str, digest: &str) {
        let mut store = self.shared.store.lock().unwrap();
        store
            .tags
            .insert((repo.to_string(), tag.to_string()), digest.to_string());
    }

    /// Builds a Docker v2 image whose layers hold `layers` and a config that
    /// mentions `seed` (so two images never share a config), stores it all
    /// and tags it.
    pub fn add_image(&self, repo: &str, tag: &str, seed: u64, layers: &[Vec<u8>]) -> Image {
        let config_json = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Env": [format!("SEED={seed}")] },
            "rootfs": { "type": "layers", "diff_ids": [] },
        }))
        .unwrap();
        let config = self.add_blob(repo, config_json);
        let layers: Vec<Blob> = layers
            .iter()
            .map(|l| self.add_blob(repo, l.clone()))
            .collect();
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": { "mediaType": DOCKER_CONFIG, "size": config.data.len(), "digest": config.digest },
            "layers": layers.iter().map(|l| json!({
                "mediaType": DOCKER_LAYER, "size": l.data.len(), "digest": l.digest,
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        let manifest = Bytes::from(manifest);
        let digest = self.add_manifest(repo, Some(tag), DOCKER_MANIFEST, manifest.clone());
        Image {
            repo: repo.to_string(),
            manifest,
            digest,
            media_type: DOCKER_MANIFEST.to_string(),
            config,
            layers,
        }
    }

    /// A small image with two little layers, distinct per seed.
    pub fn add_simple_image(&self, repo: &str, tag: &str, seed: u64) -> Image {
        self.add_image(
            repo,
            tag,
            seed,
            &[
                pseudo_random(seed * 2 + 1, 1500),
                pseudo_random(seed * 2 + 2, 700),
            ],
        )
    }

    /// An OCI image index over `children` (which must live in `repo`), tagged.
    /// Returns (digest, bytes).
    pub fn add_index(&self, repo: &str, tag: &str, children: &[&Image]) -> (String, Bytes) {
        let arches = ["amd64", "arm64", "riscv64", "s390x"];
        let index = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": children.iter().enumerate().map(|(i, c)| json!({
                "mediaType": c.media_type,
                "size": c.manifest.len(),
                "digest": c.digest,
                "platform": { "architecture": arches[i % arches.len()], "os": "linux" },
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        let bytes = Bytes::from(index);
        let digest = self.add_manifest(repo, Some(tag), OCI_INDEX, bytes.clone());
        (digest, bytes)
    }

    /// The sorted tags of `repo`.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let store = self.shared.store.lock().unwrap();
        store
            .tags
            .keys()
            .filter(|(r, _)| r == repo)
            .map(|(_, t)| t.clone())
            .collect()
    }

    // ----- switches -----

    /// Requires Bearer tokens from `/token` for everything under `/v2/`.
    pub fn require_auth(&self) {
        *self.shared.auth.lock().unwrap() = Some(AuthPolicy { basic: None });
    }

    /// Like `require_auth`, and the token endpoint also demands these Basic credentials.
    pub fn require_auth_with_basic(&self, user: &str, password: &str) {
        let basic = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
        *self.shared.auth.lock().unwrap() = Some(AuthPolicy { basic: Some(basic) });
    }

    /// Forgets every token handed out, as if they had all expired.
    pub fn revoke_tokens(&self) {
        self.shared.store.lock().unwrap().tokens.clear();
    }

    /// Manifest and blob requests answer 429 `TOOMANYREQUESTS` while on.
    pub fn set_rate_limited(&self, on: bool) {
        self.shared.rate_limited.store(on, Ordering::SeqCst);
    }

    /// Serves other bytes of the same length for this blob or manifest digest
    /// (the last byte flipped, so a bad fill is only detectable at the very end).
    pub fn corrupt(&self, digest: &str) {
        self.shared
            .store
            .lock()
            .unwrap()
            .corrupt
            .insert(digest.to_string());
    }

    /// Serves the right bytes again.
    pub fn uncorrupt(&self, digest: &str) {
        self.shared.store.lock().unwrap().corrupt.remove(digest);
    }

    /// Starts a second listener (the "CDN") and answers every blob GET with a
    /// 307 to it. The CDN serves blobs without auth and logs as `Kind::Cdn`.
    pub async fn redirect_blobs_to_cdn(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind cdn");
        let addr = listener.local_addr().unwrap();
        *self.shared.cdn_addr.lock().unwrap() = Some(addr);
        *self.cdn.lock().unwrap() = Some(Server::spawn(listener, self.shared.clone(), Role::Cdn));
        self.shared.redirect.store(true, Ordering::SeqCst);
        addr
    }

    /// From now on every blob body stops after its first chunk until `open_gate`.
    pub fn close_gate(&self) {
        self.shared.gate.send_replace(false);
    }

    /// Lets paused and future blob bodies run to the end.
    pub fn open_gate(&self) {
        self.shared.gate.send_replace(true);
    }

    /// How many times a blob body has stopped at the closed gate.
    pub fn paused(&self) -> usize {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// Closes the listener and all connections: the port refuses from now on.
    pub async fn go_down(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            server.stop().await;
        }
        let cdn = self.cdn.lock().unwrap().take();
        if let Some(cdn) = cdn {
            cdn.stop().await;
        }
    }

    /// Listens again on the same port after `go_down`.
    pub async fn come_up(&self) {
        let listener = TcpListener::bind(self.shared.addr)
            .await
            .expect("rebind fake registry port");
        *self.server.lock().unwrap() =
            Some(Server::spawn(listener, self.shared.clone(), Role::Registry));
    }

    // ----- observations -----

    /// Every request seen so far, in order.
    pub fn log(&self) -> Vec<Seen> {
        self.shared.store.lock().unwrap().log.clone()
    }

    /// Requests of this kind and method.
    pub fn count(&self, kind: Kind, method: Method) -> usize {
        self.log()
            .iter()
            .filter(|s| s.kind == kind && s.method == method)
            .count()
    }

    pub fn manifest_gets(&self) -> usize {
        self.count(Kind::Manifest, Method::GET)
    }

    pub fn manifest_heads(&self) -> usize {
        self.count(Kind::Manifest, Method::HEAD)
    }

    pub fn blob_gets(&self) -> usize {
        self.count(Kind::Blob, Method::GET)
    }

    pub fn cdn_gets(&self) -> usize {
        self.count(Kind::Cdn, Method::GET)
    }

    pub fn token_fetches(&self) -> usize {
        self.log().iter().filter(|s| s.kind == Kind::Token).count()
    }

    /// Requests for registry content (anything but `/v2/` pings and token fetches).
    pub fn content_requests(&self) -> usize {
        self.log()
            .iter()
            .filter(|s| !matches!(s.kind, Kind::Ping | Kind::Token))
            .count()
    }

    /// Paths of content requests, e.g. `GET /v2/library/alpine/manifests/latest`.
    pub fn content_paths(&self) -> Vec<String> {
        self.log()
            .iter()
            .filter(|s| !matches!(s.kind, Kind::Ping | Kind::Token))
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }

    /// Distinct paths of content requests, in first-seen order (any method).
    pub fn targets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in self
            .log()
            .iter()
            .filter(|s| !matches!(s.kind, Kind::Ping | Kind::Token))
        {
            if !out.contains(&s.path) {
                out.push(s.path.clone());
            }
        }
        out
    }

    /// Whether the CDN listener ever received an `Authorization` header.
    pub fn cdn_saw_authorization(&self) -> bool {
        self.log()
            .iter()
            .any(|s| s.kind == Kind::Cdn && s.authorization.is_some())
    }

    /// Waits (without sleeping: each request it sees wakes it) until `pred` holds; fails
    /// the test after the harness's deadline.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&FakeRegistry) -> bool) {
        let mut events = self.shared.events.subscribe();
        let wait = async {
            loop {
                if pred(self) {
                    return;
                }
                if events.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(super::DEADLINE, wait).await.is_err() {
            panic!(
                "timed out waiting for upstream: {what}; upstream saw {:?}",
                self.content_paths()
            );
        }
    }
}

/// Upstream blob GETs that carried a token, i.e. that could transfer
/// bytes (hoard's first try without one only earns a 401), as their
/// `Range` headers, in order; of `digest` only, if given.
pub fn blob_transfers(hub: &FakeRegistry, digest: Option<&str>) -> Vec<Option<String>> {
    hub.log()
        .into_iter()
        .filter(|s| s.kind == Kind::Blob && s.method == hyper::Method::GET)
        .filter(|s| s.authorization.is_some())
        .filter(|s| digest.is_none_or(|d| s.path.ends_with(d)))
        .map(|s| s.range)
        .collect()
}

/// How many blob GETs went upstream with a token.
pub fn transfers(hub: &FakeRegistry) -> usize {
    blob_transfers(hub, None).len()
}
