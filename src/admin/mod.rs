//! The operator API under `/_hoard/`: prefetch, pins, listing, readiness.
//!
//! | method and path            | body (JSON)                           | answer |
//! |----------------------------|---------------------------------------|--------|
//! | `POST /_hoard/prefetch`    | `{"images":[..],"platforms":[..],"jobs":4}` | NDJSON progress events, a `summary` last |
//! | `GET /_hoard/pins`         |                                       | `{"pins":[..]}` |
//! | `POST /_hoard/pins`        | `{"image":"alpine:3.19","platforms":[..]}` | the pin (image must be cached) |
//! | `DELETE /_hoard/pins`      | `{"image":"alpine:3.19"}`             | the removed pin |
//! | `GET /_hoard/ls`           |                                       | `{"images":[..]}` |
//! | `POST /_hoard/check`       | `{"images":[..],"platforms":[..]}`    | `{"ready":bool,"images":[..]}` |
//! | `POST /_hoard/export`      | `{"images":[..],"platforms":[..],"pinned":false}` | the OCI-layout tar `hoard export` writes, streamed |
//! | `POST /_hoard/import[?upstream=&repo=]` | the OCI-layout tar `hoard import` reads | the import's summary, once all of it is in |
//!
//! Only loopback peers may call it for now: it makes hoard download and
//! keep whatever is asked. TODO(issue 7): an admin permission from the
//! auth layer, so operators can call it from elsewhere.
//!
//! A prefetch runs in its own task: a client that hangs up stops seeing
//! progress, not the prefetch.

pub mod export;
pub mod import;
pub mod ls;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

use crate::auth::Auth;
use crate::body::{self, Body};
use crate::error::ApiError;
use crate::http::{ConnInfo, Route};
use crate::pins::Pin;
use crate::prefetch::{Event, Options, Platform, Prefetcher, DEFAULT_JOBS};

/// Largest request body accepted (an image list of thousands of lines).
const MAX_BODY: usize = 1024 * 1024;

/// Why an operator request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Not from a loopback address.
    #[error("the operator API answers loopback clients only")]
    Forbidden,
    /// No such endpoint or method.
    #[error("no such operator endpoint: see docs/airgap.md")]
    NotFound,
    /// Unreadable body.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The image is not pinned / not cached.
    #[error("{0}")]
    Conflict(String),
    /// The server could not do it (its disk, its store).
    #[error("{0}")]
    Failed(String),
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        let (status, code) = match e {
            AdminError::Forbidden => (StatusCode::FORBIDDEN, "DENIED"),
            AdminError::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "UNSUPPORTED"),
            AdminError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// A list of images, with platforms and a job count.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ImagesRequest {
    /// References.
    #[serde(default)]
    pub images: Vec<String>,
    /// Platforms (`linux/arm64`); empty: all.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Blobs fetched at once.
    #[serde(default)]
    pub jobs: Option<usize>,
}

/// One image, for pin and unpin.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ImageRequest {
    /// Reference.
    pub image: String,
    /// Platforms to pin; empty: all.
    #[serde(default)]
    pub platforms: Vec<String>,
}

/// A pin as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinView {
    /// `upstream/repo:tag` or `upstream/repo@digest`.
    pub image: String,
    /// Top manifest.
    pub digest: String,
    /// Child manifests kept.
    pub manifests: usize,
    /// Configs and layers.
    pub blobs: usize,
    /// Bytes held.
    pub bytes: u64,
    /// Platforms asked for (empty: all).
    pub platforms: Vec<String>,
    /// Unix seconds.
    pub pinned_at: u64,
}

impl From<&Pin> for PinView {
    fn from(p: &Pin) -> PinView {
        PinView {
            image: p.key(),
            digest: p.digest.to_string(),
            manifests: p.manifests.len(),
            blobs: p.blobs.len(),
            bytes: p.bytes,
            platforms: p.platforms.clone(),
            pinned_at: p
                .pinned_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// The operator API over one prefetch engine.
pub struct Admin {
    engine: Arc<Prefetcher>,
    /// Access control shared with the `/v2` side: operator requests need
    /// the `admin` permission when it is on.
    auth: Auth,
}

impl Admin {
    /// The API over `engine`.
    pub fn new(engine: Arc<Prefetcher>) -> Admin {
        Admin {
            engine,
            auth: Auth::off(),
        }
    }

    /// Puts operator requests under `auth` (the default is [`Auth::off`]).
    pub fn with_auth(mut self, auth: Auth) -> Admin {
        self.auth = auth;
        self
    }

    /// The engine (the server's `[prefetch]` schedule uses it too).
    pub fn engine(&self) -> &Arc<Prefetcher> {
        &self.engine
    }

    /// Answers `/_hoard/<rest>`. Never fails: errors become OCI error bodies.
    pub async fn handle<B>(&self, req: Request<B>, rest: &str) -> Response<Body>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // The `admin` permission when access control is on, and a loopback
        // peer always (checked below).
        if let Err(e) = self
            .auth
            .authorize(&req, &Route::Admin { rest }, None)
            .await
        {
            return e.into_response(false);
        }
        let method = req.method().clone();
        // Loopback only, IPv4-mapped included; a request relayed by a proxy
        // on this host is not the operator, whatever its peer address.
        let resp = if ConnInfo::is_local(&req) {
            self.route(req, rest).await
        } else {
            Err(AdminError::Forbidden)
        };
        // Logged once, like every request, by the server's request log
        // (`server::log`) when the answer has been sent.
        resp.unwrap_or_else(|e| ApiError::from(e).into_response(method == Method::HEAD))
    }

    async fn route<B>(&self, req: Request<B>, rest: &str) -> Result<Response<Body>, AdminError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = req.method().clone();
        let query = req.uri().query().map(str::to_owned);
        match (rest.trim_end_matches('/'), method) {
            ("prefetch", Method::POST) => {
                let body: ImagesRequest = read_json(req).await?;
                self.prefetch(body)
            }
            ("export", Method::POST) => {
                let body: export::ExportRequest = read_json(req).await?;
                export::export(&self.engine, body).await
            }
            ("import", Method::POST) => import::import(&self.engine, req).await,
            ("check", Method::POST) => {
                let body: ImagesRequest = read_json(req).await?;
                let platforms = platforms(&body.platforms)?;
                let mut images = Vec::new();
                for image in &body.images {
                    images.push(self.engine.check(image, &platforms).await);
                }
                let ready = images.iter().all(|r| r.ready);
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({"ready": ready, "images": images}),
                ))
            }
            ("pins", Method::GET) => {
                let pins: Vec<PinView> = self
                    .engine
                    .pins()
                    .list()
                    .iter()
                    .map(PinView::from)
                    .collect();
                Ok(json(StatusCode::OK, &serde_json::json!({ "pins": pins })))
            }
            ("pins", Method::POST) => {
                let body: ImageRequest = read_json(req).await?;
                let pin = self
                    .engine
                    .pin_cached(&body.image, &platforms(&body.platforms)?)
                    .await
                    .map_err(AdminError::Conflict)?;
                Ok(json(StatusCode::OK, &PinView::from(&pin)))
            }
            ("pins", Method::DELETE) => {
                let image = match crate::http::query_param(query.as_deref(), "image") {
                    Some(i) => i,
                    None => read_json::<ImageRequest, B>(req).await?.image,
                };
                let pin = self
                    .engine
                    .unpin(&image)
                    .await
                    .map_err(AdminError::Conflict)?;
                Ok(json(StatusCode::OK, &PinView::from(&pin)))
            }
            ("ls", Method::GET) => {
                let images = ls::list(&self.engine).await;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "images": images }),
                ))
            }
            _ => Err(AdminError::NotFound),
        }
    }

    /// Starts a prefetch in its own task and streams its events.
    fn prefetch(&self, body: ImagesRequest) -> Result<Response<Body>, AdminError> {
        if body.images.is_empty() {
            return Err(AdminError::BadRequest("no images given".into()));
        }
        let opts = Options {
            platforms: platforms(&body.platforms)?,
            jobs: body.jobs.unwrap_or(DEFAULT_JOBS).clamp(1, 64),
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let engine = self.engine.clone();
        tokio::spawn(async move {
            engine.run(&body.images, &opts, &tx).await;
        });
        let lines = futures_util::stream::unfold(rx, |mut rx| async move {
            let ev = rx.recv().await?;
            let mut line = serde_json::to_vec(&ev).unwrap_or_default();
            line.push(b'\n');
            Some((Ok(Bytes::from(line)), rx))
        });
        let mut resp = Response::new(body::stream(lines));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        Ok(resp)
    }
}

fn platforms(list: &[String]) -> Result<Vec<Platform>, AdminError> {
    Platform::parse_list(list).map_err(|e| AdminError::BadRequest(e.to_string()))
}

async fn read_json<T, B>(req: Request<B>) -> Result<T, AdminError>
where
    T: serde::de::DeserializeOwned,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| AdminError::BadRequest(format!("cannot read the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| AdminError::BadRequest(format!("body is not the expected JSON: {e}")))
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let len = bytes.len();
    let mut r = Response::new(body::full(bytes.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    async fn admin(dir: &std::path::Path) -> Admin {
        let mut config = crate::Config::embedded().unwrap();
        config.cache_dir = dir.to_owned();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let storage = crate::storage::Storage::open_disk(dir).await.unwrap();
        let pins = crate::load_pins(&storage).await.unwrap();
        let held = std::collections::HashMap::new();
        let cache = crate::cache::Cache::open_holding(&storage, 1 << 30, metrics.clone(), &held)
            .await
            .unwrap();
        let upstreams =
            Arc::new(crate::upstream::Upstreams::new(&config, metrics.clone()).unwrap());
        Admin::new(Arc::new(Prefetcher::new(
            config, upstreams, cache, pins, metrics,
        )))
    }

    fn req(method: Method, peer: Option<&str>) -> Request<Full<Bytes>> {
        let mut r = Request::builder()
            .method(method)
            .uri("/_hoard/pins")
            .body(Full::new(Bytes::from_static(b"{\"image\":\"alpine\"}")))
            .unwrap();
        if let Some(p) = peer {
            r.extensions_mut().insert(ConnInfo {
                peer: p.parse().unwrap(),
                tls: false,
            });
        }
        r
    }

    #[tokio::test]
    async fn only_loopback_peers_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin(dir.path()).await;
        for peer in [Some("10.1.2.3:40000"), Some("[2001:db8::1]:1"), None] {
            let resp = admin.handle(req(Method::GET, peer), "pins").await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{peer:?}");
        }
        let resp = admin
            .handle(req(Method::GET, Some("127.0.0.1:1")), "pins")
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = admin
            .handle(req(Method::GET, Some("[::1]:1")), "pins")
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = admin
            .handle(req(Method::PUT, Some("127.0.0.1:1")), "pins")
            .await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let resp = admin
            .handle(req(Method::POST, Some("127.0.0.1:1")), "pins")
            .await;
        assert_eq!(resp.status(), StatusCode::CONFLICT, "alpine is not cached");
    }

    #[tokio::test]
    async fn mapped_loopback_is_answered_and_proxied_requests_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin(dir.path()).await;
        // IPv4 clients of a dual-stack [::] listener (issue 14, defect 6).
        let resp = admin
            .handle(req(Method::GET, Some("[::ffff:127.0.0.1]:1")), "pins")
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = admin
            .handle(req(Method::GET, Some("[::ffff:10.1.2.3]:1")), "pins")
            .await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        // A reverse proxy on this host: loopback peer, but not the operator.
        for header in ["x-forwarded-for", "forwarded", "x-real-ip"] {
            let mut r = req(Method::GET, Some("127.0.0.1:1"));
            r.headers_mut()
                .insert(header, http::HeaderValue::from_static("203.0.113.7"));
            let resp = admin.handle(r, "pins").await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{header}");
        }
    }
}
