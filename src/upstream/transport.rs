//! The HTTP exchange with an upstream: authentication (cached Bearer
//! tokens, the challenge dance, Basic credentials), redirects that never
//! carry credentials to another host, time-outs, and status mapping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use super::auth::{self, Challenge, Token, TokenResponse};
use super::{Error, Upstream, USER_AGENT};
use crate::config::Credentials;
use crate::oci::RepoName;

impl Upstream {
    /// Sends a request with authentication and redirects handled, and turns
    /// every non-success answer into an [`Error`].
    ///
    /// A 5xx or 429 for `path` is remembered a few seconds (see
    /// [`super::backoff`]): meanwhile requests for it get the same error
    /// without reaching the upstream.
    pub(super) async fn request(
        &self,
        method: Method,
        repo: &RepoName,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        if let Some(e) = self.backoff.recent(path, Instant::now()) {
            tracing::debug!(upstream = %self.name, path, error = %e, "failed recently; not asking again yet");
            return Err(e);
        }
        // Boxed: hyper's client future is about 4 KiB, and an inline one
        // would make every caller's future (each request's, up to the
        // server) that large, copied on every request, hit or miss.
        let result = Box::pin(self.request_now(method, repo, path, headers)).await;
        match &result {
            Ok(_) => self.backoff.succeeded(path),
            Err(e) => self.backoff.failed(path, e, Instant::now()),
        }
        result
    }

    async fn request_now(
        &self,
        method: Method,
        repo: &RepoName,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, Error> {
        let scope = format!("repository:{repo}:pull");
        let mut auth = self.upfront_auth(&scope).await;
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

    /// The `Authorization` header to send up front.
    ///
    /// Once any challenge taught us this upstream's realm and service, a
    /// token for a scope not seen before is fetched *before* the first
    /// request, as containerd's authorizer does: without it every first
    /// request of a new repository costs a 401 round trip. If that fetch
    /// fails the request goes out without a token and the upstream's
    /// challenge decides, as it would have anyway.
    async fn upfront_auth(&self, scope: &str) -> Option<HeaderValue> {
        if let Credentials::Token(t) = &self.creds {
            return bearer(t).ok();
        }
        let (realm, service) = self.challenge.read().ok()?.clone()?;
        match self
            .token((realm, service, scope.to_owned()), scope.to_owned())
            .await
        {
            Ok(token) => bearer(&token.value).ok(),
            Err(e) => {
                tracing::debug!(upstream = %self.name, scope, error = %e, "no token up front; asking the upstream for a challenge");
                None
            }
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
        let retry_after = retry_after(resp.headers());
        let (bytes, more) = tokio::time::timeout(
            self.read_timeout,
            read_capped(resp.into_body(), MAX_TOKEN_BODY),
        )
        .await
        .map_err(|_| Error::Timeout("reading the token"))??;
        if more {
            return Err(Error::Protocol(format!(
                "token response is larger than {MAX_TOKEN_BODY} bytes"
            )));
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized(format!(
                "token realm answered {status}"
            )));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Error::RateLimited {
                upstream: self.name.clone(),
                retry_after,
            });
        }
        if !status.is_success() {
            return Err(Error::Status {
                status: status.as_u16(),
                body: snippet(&bytes),
                retry_after,
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
    let retry_after = retry_after(resp.headers());
    // Only the start is wanted, for the log: the rest is never read, and
    // dropping the body closes the connection instead of draining it.
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        read_capped(resp.into_body(), MAX_ERROR_BODY),
    )
    .await
    .ok()
    .and_then(|r| r.ok())
    .map(|(bytes, _)| snippet(&bytes))
    .unwrap_or_default();
    Err(match status {
        StatusCode::NOT_FOUND => Error::NotFound,
        StatusCode::TOO_MANY_REQUESTS => Error::RateLimited {
            upstream: upstream.to_owned(),
            retry_after,
        },
        StatusCode::UNAUTHORIZED => Error::Unauthorized(body),
        StatusCode::FORBIDDEN => Error::Denied(body),
        _ => Error::Status {
            status: status.as_u16(),
            body,
            retry_after,
        },
    })
}

/// Most of an upstream's error body hoard reads (it only logs the start).
const MAX_ERROR_BODY: usize = 4 * 1024;

/// Largest token response accepted; real ones are a few KiB.
const MAX_TOKEN_BODY: usize = 1024 * 1024;

/// Reads `body` until its end or until `cap` bytes, whichever is first:
/// the bytes (at most `cap`) and whether more followed. What follows the
/// cap is never read, so a hostile upstream's huge body costs `cap` bytes of
/// memory, not its length.
async fn read_capped(mut body: Incoming, cap: usize) -> Result<(Bytes, bool), Error> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Unreachable(format!("body broke off: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > cap {
                buf.extend_from_slice(&data[..cap - buf.len()]);
                return Ok((Bytes::from(buf), true));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok((Bytes::from(buf), false))
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

/// Longest wait passed on from an upstream's `Retry-After`: a client told to
/// come back tomorrow would rather try another mirror.
const MAX_RETRY_AFTER: u64 = 3600;

/// An upstream's `Retry-After` in seconds (delta-seconds or an HTTP date),
/// between 1 and [`MAX_RETRY_AFTER`]; None when absent or unreadable.
fn retry_after(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let secs = match v.parse::<u64>() {
        Ok(s) => s,
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .map_or(0, |d| d.as_secs()),
    };
    Some(secs.clamp(1, MAX_RETRY_AFTER))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_and_bounded() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&m)
        };
        assert_eq!(h("120"), Some(120));
        assert_eq!(h("0"), Some(1));
        assert_eq!(h("999999"), Some(MAX_RETRY_AFTER));
        let soon = std::time::SystemTime::now() + Duration::from_secs(90);
        let secs = h(&httpdate::fmt_http_date(soon)).unwrap();
        assert!((85..=90).contains(&secs), "{secs}");
        assert_eq!(h("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

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
