//! Client for the configured upstream registries.
//!
//! Each [`Upstream`] owns an HTTP client (TLS through rustls, with the
//! upstream's extra CA if configured), its credentials and a token cache.
//! Only configured upstreams exist here: there is no way to make hoard
//! contact an arbitrary host, so it can never become an open proxy.

pub mod auth;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{Config, ConfigError, Credentials, UpstreamConfig};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use auth::{Challenge, Token, TokenResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

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
            metrics,
        })
    }

    /// The registry name this upstream is configured under.
    pub fn name(&self) -> &str {
        &self.name
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
        match tokio::time::timeout(self.read_timeout, body.frame()).await {
            Err(_) => Err(Error::Timeout("waiting for the next body chunk")),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(Error::Unreachable(format!("body broke off: {e}"))),
            Ok(Some(Ok(frame))) => Ok(Some(frame)),
        }
    }

    /// Sends a request with authentication and redirects handled, and turns
    /// every non-success answer into an [`Error`].
    async fn request(
        &self,
        method: Method,
        repo: &RepoName,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        let scope = format!("repository:{repo}:pull");
        let mut auth = self.cached_auth(&scope).await;
        let mut refreshed = false;
        loop {
            let resp = self
                .send_following_redirects(&method, path, &headers, auth.as_ref())
                .await?;
            if resp.status() == StatusCode::UNAUTHORIZED && !refreshed {
                refreshed = true;
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(auth::parse_challenge);
                auth = match challenge {
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope: asked,
                    }) => {
                        if let Ok(mut c) = self.challenge.write() {
                            *c = Some((realm.clone(), service.clone()));
                        }
                        let key = (realm.clone(), service.clone(), scope.clone());
                        // A token we sent was refused: forget it before fetching anew.
                        self.tokens.invalidate(&key).await;
                        let token = self
                            .token(key, asked.unwrap_or_else(|| scope.clone()))
                            .await?;
                        Some(bearer(&token.value)?)
                    }
                    Some(Challenge::Basic) => match &self.creds {
                        Credentials::Basic { username, password } => {
                            Some(basic(username, password)?)
                        }
                        _ => {
                            return Err(Error::Unauthorized(
                                "upstream wants Basic credentials; set username and password"
                                    .into(),
                            ))
                        }
                    },
                    None => {
                        return Err(Error::Unauthorized(
                            "401 without a usable WWW-Authenticate challenge".into(),
                        ))
                    }
                };
                continue;
            }
            return check_status(&self.name, resp).await;
        }
    }

    /// The `Authorization` header to send up front, if a token is cached.
    async fn cached_auth(&self, scope: &str) -> Option<HeaderValue> {
        if let Credentials::Token(t) = &self.creds {
            return bearer(t).ok();
        }
        let (realm, service) = self.challenge.read().ok()?.clone()?;
        let token = self.tokens.get(&(realm, service, scope.to_owned())).await?;
        if token.is_fresh() {
            bearer(&token.value).ok()
        } else {
            None
        }
    }

    /// A token for `key`, fetched once however many requests need it at once.
    async fn token(
        &self,
        key: (String, Option<String>, String),
        scope: String,
    ) -> Result<Token, Error> {
        if let Some(t) = self.tokens.get(&key).await {
            if t.is_fresh() {
                return Ok(t);
            }
            self.tokens.invalidate(&key).await;
        }
        let (realm, service, _) = key.clone();
        self.tokens
            .try_get_with(key, self.fetch_token(realm, service, scope))
            .await
            .map_err(|e: Arc<Error>| (*e).clone())
    }

    async fn fetch_token(
        &self,
        realm: String,
        service: Option<String>,
        scope: String,
    ) -> Result<Token, Error> {
        let mut url = realm.clone();
        url.push(if url.contains('?') { '&' } else { '?' });
        if let Some(s) = &service {
            url.push_str(&format!("service={}&", auth::encode_query(s)));
        }
        url.push_str(&format!("scope={}", auth::encode_query(&scope)));
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::Protocol(format!("bad token realm {realm:?}: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
            return Err(Error::Protocol(format!(
                "token realm {realm:?} is not http(s)"
            )));
        }
        let mut req = Request::get(uri).header(header::USER_AGENT, USER_AGENT);
        if let Credentials::Basic { username, password } = &self.creds {
            req = req.header(header::AUTHORIZATION, basic(username, password)?);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.metrics.token_fetch(&self.name);
        let resp = self.timed_send(req).await?;
        let status = resp.status();
        let bytes = tokio::time::timeout(self.read_timeout, resp.into_body().collect())
            .await
            .map_err(|_| Error::Timeout("reading the token"))?
            .map_err(|e| Error::Unreachable(e.to_string()))?
            .to_bytes();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized(format!(
                "token realm answered {status}"
            )));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Error::RateLimited {
                upstream: self.name.clone(),
            });
        }
        if !status.is_success() {
            return Err(Error::Status {
                status: status.as_u16(),
                body: snippet(&bytes),
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Protocol(format!("token response is not JSON: {e}")))?;
        let value = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Protocol("token response has no token".into()))?;
        Ok(Token::new(value, parsed.expires_in))
    }

    /// Sends to `base + path`, following up to 5 redirects. `Authorization`
    /// goes only to the upstream's own host: a blob redirect to a CDN gets a
    /// pre-signed URL and must not see our credentials.
    async fn send_following_redirects(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        auth: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, Error> {
        let mut uri: Uri = format!("{}{}", self.base, path)
            .parse()
            .map_err(|e| Error::Protocol(format!("cannot build upstream URL: {e}")))?;
        for _ in 0..6 {
            let same_host = uri.authority().map(|a| a.as_str()) == Some(self.authority.as_str());
            let mut req = Request::builder()
                .method(method.clone())
                .uri(uri.clone())
                .header(header::USER_AGENT, USER_AGENT);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            if same_host {
                if let Some(a) = auth {
                    req = req.header(header::AUTHORIZATION, a);
                }
            }
            let req = req
                .body(Empty::new())
                .map_err(|e| Error::Protocol(e.to_string()))?;
            let resp = self.timed_send(req).await?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Error::Protocol("redirect without Location".into()))?;
            uri = resolve(&uri, location)?;
        }
        Err(Error::Protocol("more than 5 redirects".into()))
    }

    async fn timed_send(&self, req: Request<Empty<Bytes>>) -> Result<Response<Incoming>, Error> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.read_timeout, self.client.request(req)).await;
        let secs = started.elapsed().as_secs_f64();
        match result {
            Err(_) => {
                self.metrics.upstream(&self.name, None, secs);
                Err(Error::Timeout("waiting for response headers"))
            }
            Ok(Err(e)) => {
                self.metrics.upstream(&self.name, None, secs);
                Err(Error::Unreachable(error_chain(&e)))
            }
            Ok(Ok(resp)) => {
                self.metrics
                    .upstream(&self.name, Some(resp.status().as_u16()), secs);
                let h = resp.headers();
                if h.contains_key("ratelimit-remaining") || h.contains_key("ratelimit-limit") {
                    self.metrics.ratelimit(
                        &self.name,
                        ratelimit(h, "ratelimit-limit"),
                        ratelimit(h, "ratelimit-remaining"),
                    );
                }
                Ok(resp)
            }
        }
    }
}

/// Maps a non-success response to an error (reading a little of its body).
async fn check_status(
    upstream: &str,
    resp: Response<Incoming>,
) -> Result<Response<Incoming>, Error> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|c| snippet(&c.to_bytes()))
        .unwrap_or_default();
    Err(match status {
        StatusCode::NOT_FOUND => Error::NotFound,
        StatusCode::TOO_MANY_REQUESTS => Error::RateLimited {
            upstream: upstream.to_owned(),
        },
        StatusCode::UNAUTHORIZED => Error::Unauthorized(body),
        StatusCode::FORBIDDEN => Error::Denied(body),
        _ => Error::Status {
            status: status.as_u16(),
            body,
        },
    })
}

fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Resolves a `Location` against the URI it came from.
fn resolve(base: &Uri, location: &str) -> Result<Uri, Error> {
    let bad =
        |e: &dyn std::fmt::Display| Error::Protocol(format!("bad redirect {location:?}: {e}"));
    let target: Uri = location.parse().map_err(|e| bad(&e))?;
    if target.scheme().is_some() {
        if !matches!(target.scheme_str(), Some("http") | Some("https")) {
            return Err(bad(&"not http(s)"));
        }
        return Ok(target);
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        format!("{dir}/{location}")
    };
    format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|e| bad(&e))
}

fn bearer(token: &str) -> Result<HeaderValue, Error> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Error::Protocol("token is not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn basic(user: &str, password: &str) -> Result<HeaderValue, Error> {
    let encoded = STANDARD.encode(format!("{user}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| Error::Protocol("credentials are not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
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

/// A Docker Hub rate-limit header (`100;w=21600`) as its count.
fn ratelimit(h: &HeaderMap, name: &str) -> Option<i64> {
    h.get(name)?
        .to_str()
        .ok()?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `Content-Length` of a response, if present and numeric.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve() {
        let base: Uri = "http://127.0.0.1:5000/v2/a/blobs/x".parse().unwrap();
        assert_eq!(
            resolve(&base, "http://cdn:1/p?sig=1").unwrap().to_string(),
            "http://cdn:1/p?sig=1"
        );
        assert_eq!(
            resolve(&base, "/other").unwrap().to_string(),
            "http://127.0.0.1:5000/other"
        );
        assert!(resolve(&base, "file:///etc/passwd").is_err());
    }
}
