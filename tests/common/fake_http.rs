//! The fake registry's HTTP side: shared state, the accept loop, and the
//! handlers for `/token`, `/v2/` and manifests, blobs and tags (plus the CDN).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};

use super::fake::{Kind, Seen, CHUNK, DOCKER_MANIFEST, OCI_MANIFEST, SERVICE};

pub type Body = BoxBody<Bytes, std::io::Error>;

pub(crate) struct AuthPolicy {
    /// `Authorization` value the token endpoint demands, if any.
    pub(crate) basic: Option<String>,
}

#[derive(Default)]
pub(crate) struct Store {
    pub(crate) blobs: HashMap<String, Bytes>,
    pub(crate) blob_repos: HashSet<(String, String)>,
    /// (repo, digest) -> (media type, bytes)
    pub(crate) manifests: HashMap<(String, String), (String, Bytes)>,
    /// (repo, tag) -> digest
    pub(crate) tags: BTreeMap<(String, String), String>,
    /// token -> granted scopes
    pub(crate) tokens: HashMap<String, Vec<String>>,
    pub(crate) corrupt: HashSet<String>,
    pub(crate) log: Vec<Seen>,
    /// Tokens handed out so far (names stay unique after a revocation).
    pub(crate) issued: usize,
}

pub(crate) struct Shared {
    pub(crate) addr: SocketAddr,
    pub(crate) store: Mutex<Store>,
    pub(crate) auth: Mutex<Option<AuthPolicy>>,
    pub(crate) rate_limited: AtomicBool,
    pub(crate) redirect: AtomicBool,
    pub(crate) cdn_addr: Mutex<Option<SocketAddr>>,
    /// `true` = open. Blob bodies wait on it before every chunk but the first.
    pub(crate) gate: watch::Sender<bool>,
    /// How many times a blob body has stopped at the closed gate.
    pub(crate) paused: AtomicUsize,
    /// Bumped on every logged request and every pause, so waiters wake up.
    pub(crate) events: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn bump(&self) {
        self.events.send_modify(|n| *n += 1);
    }

    pub(crate) fn record(&self, seen: Seen) {
        // Short section without .await: a std Mutex is fine.
        self.store.lock().unwrap().log.push(seen);
        self.bump();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Registry,
    Cdn,
}

/// A running accept loop plus its connections, so `stop` can close them all.
pub(crate) struct Server {
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Server {
    pub(crate) fn spawn(listener: TcpListener, shared: Arc<Shared>, role: Role) -> Server {
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let tracked = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, role, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                let mut list = tracked.lock().unwrap();
                list.retain(|h| !h.is_finished());
                list.push(conn.abort_handle());
            }
        });
        Server { accept, conns }
    }

    /// Closes the listener (the port then refuses) and every open connection.
    pub(crate) async fn stop(self) {
        self.accept.abort();
        let _ = self.accept.await;
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    pub(crate) fn abort(&self) {
        self.accept.abort();
        for conn in self.conns.lock().unwrap().iter() {
            conn.abort();
        }
    }
}

// ----- request handling -----

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(
        &json!({"errors": [{"code": code, "message": message, "detail": null}]}),
    )
    .unwrap();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(full(body))
        .unwrap()
}

fn classify(role: Role, path: &str) -> Kind {
    if role == Role::Cdn {
        return Kind::Cdn;
    }
    if path == "/token" {
        return Kind::Token;
    }
    if path == "/v2/" || path == "/v2" {
        return Kind::Ping;
    }
    match parse_route(path) {
        Some((kind, _, _)) => kind,
        None => Kind::Other,
    }
}

/// `/v2/<repo>/{manifests/<ref>|blobs/<digest>|tags/list}`, matched from the right.
fn parse_route(path: &str) -> Option<(Kind, String, String)> {
    let rest = path.strip_prefix("/v2/")?;
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        return Some((Kind::Tags, repo.to_string(), String::new()));
    }
    let (head, reference) = rest.rsplit_once('/')?;
    let (repo, what) = head.rsplit_once('/')?;
    let kind = match what {
        "manifests" => Kind::Manifest,
        "blobs" => Kind::Blob,
        _ => return None,
    };
    Some((kind, repo.to_string(), reference.to_string()))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(shared: Arc<Shared>, role: Role, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let kind = classify(role, &path);
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    shared.record(Seen {
        kind,
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        authorization: header_str(&headers, header::AUTHORIZATION),
        accept,
        range: header_str(&headers, header::RANGE),
    });

    if role == Role::Cdn {
        // `/cdn/<digest>`: no auth, like a pre-signed URL.
        let digest = path.strip_prefix("/cdn/").unwrap_or("");
        return blob(&shared, &method, None, digest, &headers);
    }
    if kind == Kind::Token {
        return token(&shared, &query, &headers);
    }
    if kind == Kind::Ping {
        if let Some(challenge) = check_auth(&shared, None, &headers) {
            return challenge;
        }
        return Response::builder()
            .header("Docker-Distribution-API-Version", "registry/2.0")
            .header(header::CONTENT_TYPE, "application/json")
            .body(full("{}"))
            .unwrap();
    }
    let Some((kind, repo, reference)) = parse_route(&path) else {
        return oci_error(StatusCode::NOT_FOUND, "UNSUPPORTED", "no such route");
    };
    if let Some(challenge) = check_auth(&shared, Some(&repo), &headers) {
        return challenge;
    }
    if kind != Kind::Tags && shared.rate_limited.load(Ordering::SeqCst) {
        let mut resp = oci_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            "You have reached your pull rate limit.",
        );
        resp.headers_mut()
            .insert("ratelimit-remaining", HeaderValue::from_static("0;w=21600"));
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("7"));
        return resp;
    }
    match (kind, &method) {
        (Kind::Manifest, &Method::GET | &Method::HEAD) => {
            manifest(&shared, &method, &repo, &reference, &headers)
        }
        (Kind::Blob, &Method::GET | &Method::HEAD) => {
            blob(&shared, &method, Some(&repo), &reference, &headers)
        }
        (Kind::Tags, &Method::GET) => tags_list(&shared, &repo),
        _ => oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "read-only fake",
        ),
    }
}

/// `None` when the request may proceed, else the 401 challenge.
fn check_auth(shared: &Shared, repo: Option<&str>, headers: &HeaderMap) -> Option<Response<Body>> {
    if shared.auth.lock().unwrap().is_none() {
        return None;
    }
    let scope = repo.map(|r| format!("repository:{r}:pull"));
    let presented = header_str(headers, header::AUTHORIZATION);
    if let Some(token) = presented.as_deref().and_then(|v| v.strip_prefix("Bearer ")) {
        let store = shared.store.lock().unwrap();
        if let Some(granted) = store.tokens.get(token) {
            if scope.as_ref().is_none_or(|s| granted.contains(s)) {
                return None;
            }
        }
    }
    let mut challenge = format!(
        "Bearer realm=\"http://{}/token\",service=\"{SERVICE}\"",
        shared.addr
    );
    if let Some(scope) = &scope {
        challenge.push_str(&format!(",scope=\"{scope}\""));
    }
    let mut resp = oci_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).unwrap(),
    );
    Some(resp)
}

fn token(shared: &Shared, query: &str, headers: &HeaderMap) -> Response<Body> {
    let params = parse_query(query);
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str());
    if service != Some(SERVICE) {
        return oci_error(StatusCode::BAD_REQUEST, "DENIED", "unknown service");
    }
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let expected_basic = shared
        .auth
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|a| a.basic.clone());
    if let Some(expected) = expected_basic {
        if header_str(headers, header::AUTHORIZATION).as_deref() != Some(expected.as_str()) {
            return oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "bad credentials");
        }
    }
    let mut store = shared.store.lock().unwrap();
    store.issued += 1;
    let token = format!("tok{}", store.issued);
    store.tokens.insert(token.clone(), scopes);
    let body = serde_json::to_vec(&json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
        "issued_at": "2024-01-01T00:00:00Z",
    }))
    .unwrap();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .unwrap()
}

/// The media types a client accepts, from every `Accept` header line.
fn accepted(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn flip_last(data: &Bytes) -> Bytes {
    let mut v = data.to_vec();
    if let Some(last) = v.last_mut() {
        *last ^= 0xff;
    }
    Bytes::from(v)
}

fn manifest(
    shared: &Shared,
    method: &Method,
    repo: &str,
    reference: &str,
    headers: &HeaderMap,
) -> Response<Body> {
    let store = shared.store.lock().unwrap();
    let digest = if reference.contains(':') {
        reference.to_string()
    } else {
        match store.tags.get(&(repo.to_string(), reference.to_string())) {
            Some(d) => d.clone(),
            None => {
                return oci_error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    "manifest unknown",
                )
            }
        }
    };
    let Some((media_type, bytes)) = store.manifests.get(&(repo.to_string(), digest.clone())) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        );
    };
    // Like distribution: without an Accept header only image manifests are
    // served; an index or list must be asked for.
    let accepts = accepted(headers);
    let acceptable = if accepts.is_empty() {
        media_type == DOCKER_MANIFEST || media_type == OCI_MANIFEST
    } else {
        accepts.iter().any(|a| a == media_type || a == "*/*")
    };
    if !acceptable {
        return oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest type not accepted",
        );
    }
    let bytes = if store.corrupt.contains(&digest) {
        flip_last(bytes)
    } else {
        bytes.clone()
    };
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, media_type.as_str())
        .header("Docker-Content-Digest", digest.as_str())
        .header(header::CONTENT_LENGTH, bytes.len())
        .header("ratelimit-limit", "100;w=21600")
        .header("ratelimit-remaining", "99;w=21600");
    let body = if method == Method::HEAD {
        full(Bytes::new())
    } else {
        full(bytes)
    };
    builder.body(body).unwrap()
}

/// `bytes=a-b` or `bytes=a-` within `len`, else `None` (served whole).
fn simple_range(range: Option<String>, len: usize) -> Option<(usize, usize)> {
    let spec = range?.strip_prefix("bytes=")?.to_string();
    let (a, b) = spec.split_once('-')?;
    let start: usize = a.parse().ok()?;
    let end: usize = if b.is_empty() {
        len.checked_sub(1)?
    } else {
        b.parse::<usize>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

fn blob(
    shared: &Arc<Shared>,
    method: &Method,
    repo: Option<&str>,
    digest: &str,
    headers: &HeaderMap,
) -> Response<Body> {
    let data = {
        let store = shared.store.lock().unwrap();
        let known = match repo {
            Some(repo) => store
                .blob_repos
                .contains(&(repo.to_string(), digest.to_string())),
            None => store.blobs.contains_key(digest),
        };
        match store.blobs.get(digest) {
            Some(data) if known => {
                if store.corrupt.contains(digest) {
                    flip_last(data)
                } else {
                    data.clone()
                }
            }
            _ => {
                return oci_error(
                    StatusCode::NOT_FOUND,
                    "BLOB_UNKNOWN",
                    "blob unknown to registry",
                )
            }
        }
    };
    if repo.is_some() && method == Method::GET && shared.redirect.load(Ordering::SeqCst) {
        if let Some(cdn) = *shared.cdn_addr.lock().unwrap() {
            return Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(
                    header::LOCATION,
                    format!("http://{cdn}/cdn/{digest}?X-Signature=abc123"),
                )
                .body(full(Bytes::new()))
                .unwrap();
        }
    }
    let total = data.len();
    let builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("Docker-Content-Digest", digest)
        .header(header::ACCEPT_RANGES, "bytes");
    if method == Method::HEAD {
        return builder
            .header(header::CONTENT_LENGTH, total)
            .body(full(Bytes::new()))
            .unwrap();
    }
    match simple_range(header_str(headers, header::RANGE), total) {
        Some((start, end)) => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{total}"),
            )
            .header(header::CONTENT_LENGTH, end + 1 - start)
            .body(stream_body(shared, data.slice(start..=end)))
            .unwrap(),
        None => builder
            .header(header::CONTENT_LENGTH, total)
            .body(stream_body(shared, data))
            .unwrap(),
    }
}

/// Streams `data` in `CHUNK`s; before every chunk but the first, waits for the gate.
fn stream_body(shared: &Arc<Shared>, data: Bytes) -> Body {
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut offset = 0;
        while offset < data.len() {
            if offset > 0 {
                let mut gate = shared.gate.subscribe();
                if !*gate.borrow_and_update() {
                    shared.paused.fetch_add(1, Ordering::SeqCst);
                    shared.bump();
                    tokio::select! {
                        opened = gate.wait_for(|open| *open) => { let _ = opened.map(|_| ()); }
                        _ = tx.closed() => return,
                    }
                }
            }
            let end = (offset + CHUNK).min(data.len());
            if tx
                .send(Ok(Frame::data(data.slice(offset..end))))
                .await
                .is_err()
            {
                return;
            }
            offset = end;
        }
    });
    BodyExt::boxed(StreamBody::new(futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })))
}

fn tags_list(shared: &Shared, repo: &str) -> Response<Body> {
    let store = shared.store.lock().unwrap();
    let tags: Vec<&String> = store
        .tags
        .keys()
        .filter(|(r, _)| r == repo)
        .map(|(_, t)| t)
        .collect();
    if tags.is_empty() {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        );
    }
    let body = serde_json::to_vec(&json!({"name": repo, "tags": tags})).unwrap();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .unwrap()
}

// ----- small codecs (no extra dev-dependencies) -----

/// `k=v&k2=v2`, percent- and plus-decoded.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
