//! Client for the configured upstream registries.
//!
//! Each [`Upstream`] owns an HTTP client (TLS through rustls, with the
//! upstream's extra CA if configured), its credentials and a token cache.
//! Only configured upstreams exist here: there is no way to make hoard
//! contact an arbitrary host, so it can never become an open proxy.

pub mod auth;
mod backoff;
mod transport;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{Config, ConfigError, Credentials, UpstreamConfig};
use crate::http::content_length;
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use auth::Token;

/// Why an upstream request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// 404 from the upstream.
    #[error("not found upstream")]
    NotFound,
    /// 429 from the upstream.
    #[error("upstream {upstream} rate limit reached (429)")]
    RateLimited {
        /// Upstream name.
        upstream: String,
        /// Seconds the upstream asked to wait (its `Retry-After`), if it said.
        retry_after: Option<u64>,
    },
    /// 401 that the token dance could not fix.
    #[error("upstream refused hoard's credentials: {0}")]
    Unauthorized(String),
    /// 403 from the upstream.
    #[error("upstream denied access: {0}")]
    Denied(String),
    /// Connection failed.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The upstream stalled.
    #[error("upstream timed out {0}")]
    Timeout(&'static str),
    /// Any other non-success status.
    #[error("upstream answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Start of the body, for the log.
        body: String,
        /// Seconds the upstream asked to wait (a 503's `Retry-After`).
        retry_after: Option<u64>,
    },
    /// The upstream broke the protocol.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// A manifest larger than allowed.
    #[error("upstream manifest is larger than max_manifest_size ({0} bytes)")]
    TooLarge(usize),
    /// Content did not hash to its digest.
    #[error("upstream content does not match digest {expected} (got {actual})")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
}

impl Error {
    /// Whether a cached copy should be served instead (upstream down,
    /// rate-limited, misbehaving; not "this does not exist").
    pub fn is_transient(&self) -> bool {
        !matches!(self, Error::NotFound | Error::Denied(_))
    }
}

/// Sent on every upstream request, so registry operators can tell hoard apart.
const USER_AGENT: &str = concat!("hoard/", env!("CARGO_PKG_VERSION"));

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A manifest fetched from an upstream.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Exact bytes.
    pub bytes: Bytes,
    /// `Content-Type` as sent.
    pub media_type: String,
    /// Digest of the bytes.
    pub digest: Digest,
}

/// What a manifest `HEAD` told.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`, when sent and valid.
    pub digest: Option<Digest>,
}

/// All configured upstreams by registry name.
pub struct Upstreams {
    map: BTreeMap<String, Arc<Upstream>>,
}

impl Upstreams {
    /// Builds a client for every configured upstream.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Upstreams, ConfigError> {
        let mut map = BTreeMap::new();
        for (name, up) in &config.upstreams {
            map.insert(
                name.clone(),
                Arc::new(Upstream::new(name, up, metrics.clone())?),
            );
        }
        Ok(Upstreams { map })
    }

    /// The upstream configured under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.map.get(name)
    }
}

/// One upstream registry.
pub struct Upstream {
    name: String,
    base: String,
    authority: String,
    creds: Credentials,
    client: HttpClient,
    read_timeout: Duration,
    /// The realm and service learned from the first challenge, so later
    /// requests can carry a cached token without a 401 round trip first.
    /// std lock: held for a clone, never across an await.
    challenge: RwLock<Option<(String, Option<String>)>>,
    tokens: moka::future::Cache<(String, Option<String>, String), Token>,
    /// 5xx and 429 answers remembered briefly, so a storm is not passed on.
    backoff: backoff::Backoff,
    metrics: Arc<Metrics>,
}

impl Upstream {
    fn new(
        name: &str,
        cfg: &UpstreamConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, ConfigError> {
        let key = |k: &str| format!("upstreams.\"{name}\".{k}");
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|e| ConfigError::Secret {
                key: key("ca_file"),
                msg: format!("cannot read {}: {e}", path.display()),
            })?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| ConfigError::Invalid {
                    key: key("ca_file"),
                    msg: format!("bad PEM in {}: {e}", path.display()),
                })?;
                roots.add(cert).map_err(|e| ConfigError::Invalid {
                    key: key("ca_file"),
                    msg: format!("bad certificate in {}: {e}", path.display()),
                })?;
                added += 1;
            }
            if added == 0 {
                return Err(ConfigError::Invalid {
                    key: key("ca_file"),
                    msg: format!("{} holds no PEM certificate", path.display()),
                });
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Invalid {
                key: key("url"),
                msg: format!("TLS setup failed: {e}"),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let uri: Uri = cfg.url.parse().map_err(|e| ConfigError::Invalid {
            key: key("url"),
            msg: format!("{e}"),
        })?;
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        Ok(Upstream {
            name: name.to_owned(),
            base: cfg.url.trim_end_matches('/').to_owned(),
            authority,
            creds: cfg.credentials(name)?,
            client,
            read_timeout: cfg.read_timeout,
            challenge: RwLock::new(None),
            tokens: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            backoff: backoff::Backoff::default(),
            metrics,
        })
    }

    /// The registry name this upstream is configured under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host (and port) hoard connects to, for error details and logs.
    pub fn host(&self) -> &str {
        &self.authority
    }

    /// How long to wait for headers or the next body chunk.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// Fetches a manifest (by tag or digest) with the given `Accept` list,
    /// reading at most `max` bytes.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &[String],
        max: usize,
    ) -> Result<FetchedManifest, Error> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .request(Method::GET, repo, &path, accept_headers(accept))
            .await?;
        let media_type = content_type(resp.headers())?;
        if let Some(len) = content_length(resp.headers()) {
            if len > max as u64 {
                return Err(Error::TooLarge(max));
            }
        }
        // By tag, the upstream's `Docker-Content-Digest` is the only check
        // of the bytes there is: a manifest that does not hash to it was
        // damaged on the way and must not become what the tag means.
        let announced: Option<Digest> = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = self.next_frame(&mut body).await? {
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > max {
                    return Err(Error::TooLarge(max));
                }
                buf.extend_from_slice(&data);
            }
        }
        let bytes = Bytes::from(buf);
        let digest = Digest::of(&bytes);
        if let Some(announced) = announced.filter(|a| *a != digest) {
            return Err(Error::Protocol(format!(
                "manifest {repo}:{reference} from upstream {}: the body hashes to {digest}, the upstream announced {announced}; not cached",
                self.name
            )));
        }
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// `HEAD` of a manifest: revalidates a tag without spending rate-limit quota.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &[String],
    ) -> Result<ManifestHead, Error> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .request(Method::HEAD, repo, &path, accept_headers(accept))
            .await?;
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(ManifestHead { digest })
    }

    /// Starts a blob `GET`; the caller streams the body.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Response<Incoming>, Error> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        self.request(Method::GET, repo, &path, HeaderMap::new())
            .await
    }

    /// Starts a ranged blob `GET` of `start..end` (end exclusive). The
    /// answer may be a 206 or, from a registry without range support, the
    /// whole blob with 200: the caller checks the status.
    pub async fn get_blob_range(
        &self,
        repo: &RepoName,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<Response<Incoming>, Error> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let mut h = HeaderMap::new();
        let range = format!("bytes={start}-{}", end.saturating_sub(1));
        h.insert(
            header::RANGE,
            HeaderValue::from_str(&range).map_err(|e| Error::Protocol(e.to_string()))?,
        );
        self.request(Method::GET, repo, &path, h).await
    }

    /// `HEAD` of a blob: its size.
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, Error> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .request(Method::HEAD, repo, &path, HeaderMap::new())
            .await?;
        Ok(content_length(resp.headers()))
    }

    /// `GET /v2/<repo>/tags/list`, passing pagination through.
    pub async fn tags_list(
        &self,
        repo: &RepoName,
        query: &str,
    ) -> Result<(Bytes, Option<HeaderValue>), Error> {
        let path = if query.is_empty() {
            format!("/v2/{repo}/tags/list")
        } else {
            format!("/v2/{repo}/tags/list?{query}")
        };
        let resp = self
            .request(Method::GET, repo, &path, HeaderMap::new())
            .await?;
        let link = resp.headers().get(header::LINK).cloned();
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = self.next_frame(&mut body).await? {
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > 16 * 1024 * 1024 {
                    return Err(Error::TooLarge(16 * 1024 * 1024));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok((Bytes::from(buf), link))
    }

    /// Waits for the next body frame, at most `read_timeout`.
    pub async fn next_frame(
        &self,
        body: &mut Incoming,
    ) -> Result<Option<hyper::body::Frame<Bytes>>, Error> {
        next_frame_within(self.read_timeout, body).await
    }

    /// A response body as a stream of its data, each piece within
    /// `read_timeout`, so it can outlive the request that started it (a
    /// fill fed from it runs in a task of its own). Ends after an error.
    pub fn body_stream(
        &self,
        body: Incoming,
    ) -> impl futures_util::Stream<Item = Result<Bytes, Error>> + Send + 'static {
        let timeout = self.read_timeout;
        futures_util::stream::try_unfold(body, move |mut body| async move {
            while let Some(frame) = next_frame_within(timeout, &mut body).await? {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some((data, body)));
                }
            }
            Ok(None)
        })
    }
}

/// The next frame of `body`, waiting at most `timeout` for it.
async fn next_frame_within(
    timeout: Duration,
    body: &mut Incoming,
) -> Result<Option<hyper::body::Frame<Bytes>>, Error> {
    match tokio::time::timeout(timeout, body.frame()).await {
        Err(_) => Err(Error::Timeout("waiting for the next body chunk")),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(Error::Unreachable(format!("body broke off: {e}"))),
        Ok(Some(Ok(frame))) => Ok(Some(frame)),
    }
}

fn accept_headers(accept: &[String]) -> HeaderMap {
    let mut h = HeaderMap::new();
    let list: Vec<&str> = if accept.is_empty() {
        crate::oci::MANIFEST_MEDIA_TYPES.to_vec()
    } else {
        accept.iter().map(String::as_str).collect()
    };
    if let Ok(v) = HeaderValue::from_str(&list.join(", ")) {
        h.insert(header::ACCEPT, v);
    }
    h
}

fn content_type(h: &HeaderMap) -> Result<String, Error> {
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::Protocol("manifest without Content-Type".into()))?;
    Ok(ct)
}
