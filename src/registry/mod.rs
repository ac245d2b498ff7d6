//! The `/v2` protocol: routing, and the handlers that apply the cache policy.
//!
//! Handlers never touch the filesystem or the HTTP client directly: they ask
//! [`Cache`] and [`Upstream`](crate::upstream::Upstream). Every error goes
//! through [`ApiError`], which picks the status and OCI code in one place.

mod blobs;
mod listing;
mod manifests;
pub mod range;
mod resolve;
pub mod route;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::body::{self, Body};
use crate::cache::{Cache, TagKey};
use crate::config::Config;
pub use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::upstream::Upstreams;
use route::Route;

/// How a manifest or blob request was served, for the request log line.
#[derive(Clone, Debug)]
pub struct ServedBy {
    /// Cache outcome.
    pub outcome: crate::metrics::Outcome,
    /// The upstream the request was routed to.
    pub upstream: String,
}

/// Shared state of the protocol layer.
pub struct Registry {
    upstreams: Upstreams,
    default_upstream: String,
    config: Config,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    /// One revalidation or fetch per tag at a time; idle locks expire.
    tag_locks: moka::sync::Cache<TagKey, Arc<tokio::sync::Mutex<()>>>,
    /// Pinned images (air-gap): their tags never move.
    pins: Option<Arc<crate::pins::Pins>>,
    /// The operator API under `/_hoard/` (prefetch, pins, ls, check).
    admin: Option<Arc<crate::admin::Admin>>,
}

impl Registry {
    /// Builds the protocol layer over an opened cache.
    pub fn new(
        config: Config,
        upstreams: Upstreams,
        cache: Arc<Cache>,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry {
            upstreams,
            default_upstream: config.default_upstream.clone(),
            config,
            cache,
            metrics,
            tag_locks: moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(120))
                .build(),
            pins: None,
            admin: None,
        }
    }

    /// Answers `/_hoard/` with the operator API.
    pub fn with_admin(mut self, admin: Arc<crate::admin::Admin>) -> Registry {
        self.admin = Some(admin);
        self
    }

    /// Serves pinned tags as their pinned digests (see [`crate::pins`]).
    pub fn with_pins(mut self, pins: Arc<crate::pins::Pins>) -> Registry {
        self.pins = Some(pins);
        self
    }

    /// The pinned digest of a tag, if it is pinned.
    fn pinned_tag(&self, key: &TagKey) -> Option<crate::oci::Digest> {
        self.pins.as_ref()?.tag(key)
    }

    /// Answers one request. Never fails: errors become OCI error responses.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let (Route::Admin { rest }, Some(admin)) = (Route::parse(req.uri().path()), &self.admin)
        {
            let rest = rest.to_owned();
            return admin.handle(req, &rest).await;
        }
        let started = Instant::now();
        let head = req.method() == Method::HEAD;
        let ns = route::query_param(req.uri().query(), "ns").filter(|s| !s.is_empty());
        let mut resp = match self.dispatch(&req, ns.as_deref()).await {
            Ok(r) => r,
            Err(e) => e.into_response(head),
        };
        resp.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        let elapsed = started.elapsed();
        self.metrics.request_duration(elapsed.as_secs_f64());
        let served = resp.extensions().get::<ServedBy>();
        tracing::info!(
            method = %req.method(),
            path = req.uri().path(),
            ns = ns.as_deref().unwrap_or(""),
            status = resp.status().as_u16(),
            bytes = response_len(resp.headers()),
            ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            cache = served.map_or("", |s| s.outcome.as_str()),
            upstream = served.map_or("", |s| s.upstream.as_str()),
            "request"
        );
        resp
    }

    async fn dispatch<B>(
        &self,
        req: &Request<B>,
        ns: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        let method = req.method();
        let head = method == Method::HEAD;
        let route = Route::parse(req.uri().path());
        if matches!(route, Route::Uploads { .. } | Route::Upload { .. }) {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "pushing is not supported: hoard is a pull-through mirror",
            ));
        }
        if !(method == Method::GET || head) {
            return Err(ApiError::method_not_allowed());
        }
        let mut resp = match route {
            Route::Base => Ok(json_response(b"{}".to_vec(), head)),
            Route::Health => Ok(json_response(b"{\"status\":\"ok\"}".to_vec(), head)),
            // Not ready means "send pulls elsewhere": the cache cannot store
            // what it fetches. 503 with the reason, so a probe log says why.
            Route::Ready => match self.cache.readiness().await {
                Ok(()) => Ok(json_response(b"{\"status\":\"ready\"}".to_vec(), head)),
                Err(why) => Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    why,
                )),
            },
            Route::Metrics => {
                let text = self.metrics.render();
                let mut r = Response::new(if head {
                    body::empty()
                } else {
                    body::full(text.into())
                });
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(r)
            }
            Route::Catalog => listing::catalog(self, req.uri().query(), head),
            Route::Tags { name } => {
                let target = resolve::resolve(self, name, ns)?;
                listing::tags(self, &target, name, req.uri().query(), head).await
            }
            Route::Manifest { name, reference } => {
                let reference = reference.parse()?;
                let target = resolve::resolve(self, name, ns)?;
                manifests::get(self, &target, reference, accept_list(req.headers()), head).await
            }
            Route::Blob { name, digest } => {
                let digest = digest.parse()?;
                let target = resolve::resolve(self, name, ns)?;
                let range = req
                    .headers()
                    .get(header::RANGE)
                    .map(|v| v.to_str().unwrap_or("invalid"));
                blobs::get(self, &target, digest, range, head).await
            }
            Route::Uploads { .. } | Route::Upload { .. } => Err(ApiError::method_not_allowed()),
            Route::Referrers { .. } | Route::Token | Route::Admin { .. } | Route::Unknown => {
                Err(ApiError::not_found_route())
            }
        }?;
        if let Some(ns) = ns {
            if let Ok(v) = HeaderValue::from_str(ns) {
                resp.headers_mut().insert("oci-namespace", v);
            }
        }
        Ok(resp)
    }

    /// Tag TTL of an upstream.
    fn tag_ttl(&self, upstream: &str) -> Duration {
        self.config
            .upstreams
            .get(upstream)
            .map_or(self.config.tag_ttl, |u| u.tag_ttl(self.config.tag_ttl))
    }
}

fn response_len(h: &HeaderMap) -> u64 {
    crate::upstream::content_length(h).unwrap_or(0)
}

/// Every media type in every `Accept` header (clients send several lines).
fn accept_list(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn json_response(bytes: Vec<u8>, head: bool) -> Response<Body> {
    let len = bytes.len();
    let mut r = Response::new(if head {
        body::empty()
    } else {
        body::full(bytes.into())
    });
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}
