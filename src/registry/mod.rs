//! The `/v2` protocol: routing, the handlers that apply the cache policy,
//! and the push side (uploads, manifest pushes, deletes) of local
//! repositories.
//!
//! Handlers never touch the filesystem or the HTTP client directly: they ask
//! [`Cache`] and [`Upstream`](crate::upstream::Upstream). Every error goes
//! through [`ApiError`], which picks the status and OCI code in one place.

mod blobs;
mod listing;
mod manifests;
mod push;
mod pushed;
pub mod range;
mod resolve;
mod upload_owner;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::body::{self, Body};
use crate::cache::{Cache, TagKey};
use crate::cluster::Caller;
use crate::config::Config;
pub use crate::error::ApiError;
use crate::http::Route;
use crate::local::Local;
use crate::metrics::Metrics;
use crate::upstream::Upstreams;
pub use push::ReqBody;
use resolve::Place;

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
    upstreams: Arc<Upstreams>,
    default_upstream: String,
    config: Config,
    cache: Arc<Cache>,
    local: Arc<Local>,
    metrics: Arc<Metrics>,
    /// One revalidation or fetch per tag at a time; idle locks expire.
    tag_locks: moka::sync::Cache<TagKey, Arc<tokio::sync::Mutex<()>>>,
    /// Access control; checked before any handler runs.
    auth: crate::auth::Auth,
    /// Pinned images (air-gap): their tags never move.
    pins: Option<Arc<crate::pins::Pins>>,
    /// The other replicas (`[cluster]`): a blob miss goes to its owner.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Registry {
    /// Builds the protocol layer over an opened cache.
    pub fn new(
        config: Config,
        upstreams: Arc<Upstreams>,
        cache: Arc<Cache>,
        local: Arc<Local>,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry {
            upstreams,
            default_upstream: config.default_upstream.clone(),
            config,
            cache,
            local,
            metrics,
            tag_locks: moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(120))
                .build(),
            auth: crate::auth::Auth::off(),
            pins: None,
            cluster: None,
        }
    }

    /// Forwards blob misses to their owner among `cluster`'s members and
    /// answers peers that carry its secret.
    pub fn with_cluster(mut self, cluster: Arc<crate::cluster::Cluster>) -> Registry {
        self.cluster = Some(cluster);
        self
    }

    /// Puts requests under `auth` (the default is [`crate::auth::Auth::off`]).
    pub fn with_auth(mut self, auth: crate::auth::Auth) -> Registry {
        self.auth = auth;
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
    /// The body is streamed by the handlers that take one (uploads,
    /// manifest pushes, operator requests) and ignored by the rest.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Response<Body>
    where
        B: ReqBody + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, ());
        let head = req.method() == Method::HEAD;
        let ns = crate::http::query_param(req.uri().query(), "ns").filter(|s| !s.is_empty());
        // Parsed once: dispatch, authorization and the latency label share it.
        let route = Route::parse(req.uri().path());
        let mut resp = match self.dispatch(&req, route, body, ns.as_deref()).await {
            Ok(r) => r,
            Err(e) => failed(e, head),
        };
        resp.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        // A refused request may leave its body unread; over HTTP/1 the
        // connection then cannot carry another request, so say so rather
        // than let the client's pool reuse it and fail its next request.
        if !resp.status().is_success()
            && req.version() <= http::Version::HTTP_11
            && has_body(req.headers())
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // The request log line is written by the server once the body has
        // been sent (`server::log`); the histogram is time to headers.
        let kind = route_kind(&route);
        self.metrics
            .request_duration(kind, started.elapsed().as_secs_f64());
        resp
    }

    async fn dispatch<B: ReqBody + 'static>(
        &self,
        req: &Request<()>,
        route: Route<'_>,
        body: B,
        ns: Option<&str>,
    ) -> Result<Response<Body>, ApiError> {
        let method = req.method();
        let head = method == Method::HEAD;
        // Cluster headers are checked before anything else: a claim to be
        // a peer without the right secret is refused outright.
        let secret = self.cluster.as_ref().map(|c| c.secret());
        let caller = crate::cluster::admit(secret, req.headers())
            .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "DENIED", e.to_string()))?;
        if matches!(
            route,
            Route::Admin {
                rest: crate::cluster::PING_REST
            }
        ) {
            return match (&self.cluster, caller) {
                (Some(c), Caller::Peer | Caller::Forwarded) => {
                    Ok(json_response(c.ping_body(), head))
                }
                _ => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "DENIED",
                    "the cluster ping is for peers with the shared secret",
                )),
            };
        }
        let forwarded = caller == Caller::Forwarded;
        // The rarely taken branches below are boxed: a future holds the
        // state of its largest branch inline, and hyper moves the request's
        // future by value, so a push session's state inlined here was
        // copied on every manifest GET (callgrind: a quarter of the
        // instructions of a cached manifest GET; benches/instructions.py).
        let grant = match forwarded {
            true => crate::auth::Grant::peer(),
            false => Box::pin(self.auth.authorize(req, &route, ns)).await?,
        };
        if route == Route::Token {
            return Box::pin(self.auth.token_endpoint(req)).await;
        }
        if is_write(&route, method) {
            return Box::pin(self.write_local(req, &route, body, ns, forwarded)).await;
        }
        if !(method == Method::GET || head) {
            return Err(ApiError::method_not_allowed());
        }
        let mut resp = match route {
            Route::Base => Ok(json_response(b"{}".to_vec(), head)),
            Route::Health => Ok(json_response(b"{\"status\":\"ok\"}".to_vec(), head)),
            // Not ready means "send pulls elsewhere": the cache cannot store
            // what it fetches. 503 with the reason, so a probe log says why.
            Route::Ready => Box::pin(self.ready(head)).await,
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
            Route::Catalog => listing::catalog(self, req.uri().query(), head, &grant),
            Route::Tags { name } => Box::pin(self.tags(name, ns, req.uri().query(), head)).await,
            Route::Manifest { name, reference } => {
                let reference = parse_reference(reference)?;
                match resolve::place(self, name, ns).await? {
                    Place::Local(repo) => Box::pin(pushed::get(self, &repo, reference, head)).await,
                    Place::Remote(target) => {
                        if let crate::oci::Reference::Digest(d) = &reference {
                            resolve::mirrored(d, name, "MANIFEST_UNKNOWN")?;
                        }
                        let accept = accept_list(req.headers());
                        manifests::get(self, &target, reference, accept, head, forwarded)
                            .await
                            .map_err(|e| e.at_upstream(&target.upstream))
                    }
                }
            }
            Route::Blob { name, digest } => {
                let digest = digest.parse()?;
                let range = req
                    .headers()
                    .get(header::RANGE)
                    .map(|v| v.to_str().unwrap_or("invalid"));
                match resolve::place(self, name, ns).await? {
                    Place::Local(repo) => {
                        Box::pin(blobs::get_local(self, &repo, digest, range, head)).await
                    }
                    // Before pushing a layer, clients HEAD it in the
                    // target repository: for a name a push would create
                    // locally, the answer must be about the local
                    // repository (absent), not the upstream's namesake, or
                    // the client skips the upload and its manifest fails.
                    Place::Remote(_) if head && resolve::push_target(self, name, ns).is_ok() => {
                        Err(ApiError::new(
                            StatusCode::NOT_FOUND,
                            "BLOB_UNKNOWN",
                            format!("blob {digest} is not in local repository {name}"),
                        ))
                    }
                    Place::Remote(target) => {
                        resolve::mirrored(&digest, name, "BLOB_UNKNOWN")?;
                        blobs::get(self, &target, digest, range, head, forwarded)
                            .await
                            .map_err(|e| e.at_upstream(&target.upstream))
                    }
                }
            }
            Route::Referrers { name, digest } => {
                let digest = digest.parse()?;
                match resolve::place(self, name, ns).await? {
                    Place::Local(repo) => {
                        pushed::referrers(self, &repo, digest, req.uri().query(), head)
                    }
                    // Upstream repositories: no referrers known here; an
                    // empty index is the spec's answer for "none".
                    Place::Remote(_) => {
                        let repo: crate::oci::RepoName = name.parse()?;
                        pushed::referrers(self, &repo, digest, req.uri().query(), head)
                    }
                }
            }
            Route::Uploads { .. } | Route::Upload { .. } => Err(ApiError::method_not_allowed()),
            Route::Token | Route::Admin { .. } | Route::Unknown => Err(ApiError::not_found_route()),
        }?;
        if let Some(ns) = ns {
            if let Ok(v) = HeaderValue::from_str(ns) {
                resp.headers_mut().insert("oci-namespace", v);
            }
        }
        Ok(resp)
    }

    /// `/readyz`: not ready means "send pulls elsewhere": the cache cannot
    /// store what it fetches. 503 with the reason, so a probe log says why.
    async fn ready(&self, head: bool) -> Result<Response<Body>, ApiError> {
        match self.cache.readiness().await {
            Ok(()) => Ok(match self.cache.degraded().await {
                None => json_response(b"{\"status\":\"ready\"}".to_vec(), head),
                Some(why) => {
                    let body = serde_json::json!({"status": "degraded", "reason": why});
                    json_response(body.to_string().into_bytes(), head)
                }
            }),
            Err(why) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                why,
            )),
        }
    }

    /// `tags/list` of a local or an upstream repository.
    async fn tags(
        &self,
        name: &str,
        ns: Option<&str>,
        query: Option<&str>,
        head: bool,
    ) -> Result<Response<Body>, ApiError> {
        match resolve::place(self, name, ns).await? {
            Place::Local(repo) => {
                // Tags pushed through another replica (a shared store).
                self.local.learn(&repo).await;
                listing::local_tags(self, &repo, query, head)
            }
            Place::Remote(target) => listing::tags(self, &target, name, query, head)
                .await
                .map_err(|e| e.at_upstream(&target.upstream)),
        }
    }

    /// Every write lands in a local repository, or is refused here. A
    /// request a peer `forwarded` (with the cluster secret) passed the
    /// peer's loopback check already: the client is not the peer.
    async fn write_local<B: ReqBody + 'static>(
        &self,
        req: &Request<()>,
        route: &Route<'_>,
        body: B,
        ns: Option<&str>,
        forwarded: bool,
    ) -> Result<Response<Body>, ApiError> {
        if !self.auth.is_on()
            && !forwarded
            && self.local.config().push_from == crate::local::PushFrom::Loopback
            && !crate::http::ConnInfo::is_local(req)
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "DENIED",
                "without [auth], pushes are accepted only from this host: configure [auth], or set push_from = \"anywhere\" under [local]",
            ));
        }
        let repo = |name: &str| resolve::push_target(self, name, ns);
        match route {
            Route::Uploads { name } => push::start(self, req, repo(name)?, body).await,
            Route::Upload { name, id } => {
                let repo = repo(name)?;
                match upload_owner::holder(self, id, forwarded) {
                    upload_owner::Holder::Here => push::session(self, req, repo, id, body).await,
                    upload_owner::Holder::Peer(m) => {
                        upload_owner::forward(self, req, &m, body).await
                    }
                    upload_owner::Holder::Nobody => Err(crate::local::Error::UploadUnknown.into()),
                }
            }
            Route::Manifest { name, reference } if req.method() == Method::PUT => {
                pushed::put(self, req, repo(name)?, reference.parse()?, body).await
            }
            Route::Manifest { name, reference } => {
                pushed::delete(self, &repo(name)?, reference.parse()?).await
            }
            Route::Blob { name, digest } => {
                pushed::delete_blob(self, &repo(name)?, digest.parse()?).await
            }
            _ => Err(ApiError::method_not_allowed()),
        }
    }

    /// Tag TTL of an upstream.
    fn tag_ttl(&self, upstream: &str) -> Duration {
        self.config
            .upstreams
            .get(upstream)
            .map_or(self.config.tag_ttl, |u| u.tag_ttl(self.config.tag_ttl))
    }
}

/// The reference of a manifest `GET`/`HEAD`. A reference that is not a
/// valid tag names no manifest the repository could hold, so the answer is
/// the spec's "not found" (`404 MANIFEST_UNKNOWN`, as distribution answers),
/// not a complaint about the request; a malformed digest is still
/// `DIGEST_INVALID`, since the client clearly meant a digest.
fn parse_reference(reference: &str) -> Result<crate::oci::Reference, ApiError> {
    reference.parse().map_err(|e| match e {
        crate::oci::NameError::Tag => ApiError::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!(
                "manifest {reference:.80} is not known: it is neither a valid tag nor a digest"
            ),
        ),
        other => other.into(),
    })
}

/// Writes: uploads, manifest pushes, deletes; the rest is the read path.
fn is_write(route: &Route<'_>, method: &Method) -> bool {
    matches!(
        (route, method),
        (Route::Uploads { .. }, &Method::POST)
            | (Route::Upload { .. }, _)
            | (Route::Manifest { .. }, &Method::PUT | &Method::DELETE)
            | (Route::Blob { .. }, &Method::DELETE)
    )
}

/// The `kind` label of a request's latency.
fn route_kind(route: &Route<'_>) -> crate::metrics::Kind {
    use crate::metrics::Kind;
    match route {
        Route::Manifest { .. } => Kind::Manifest,
        Route::Blob { .. } => Kind::Blob,
        Route::Uploads { .. } | Route::Upload { .. } => Kind::Upload,
        _ => Kind::Other,
    }
}

/// Whether a request announced a body.
fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || crate::http::content_length(h).is_some_and(|n| n > 0)
}

/// The response for an error. An upstream failure is logged here, once,
/// naming the upstream, and its key goes to the request log line.
fn failed(e: ApiError, head: bool) -> Response<Body> {
    let Some(f) = e.upstream.as_deref().cloned() else {
        return e.into_response(head);
    };
    tracing::warn!(upstream = %f.upstream, host = %f.host, cause = %f.cause, "upstream failed");
    let mut resp = e.into_response(head);
    resp.extensions_mut().insert(ServedBy {
        outcome: crate::metrics::Outcome::Error,
        upstream: f.upstream,
    });
    resp
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
