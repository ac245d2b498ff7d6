//! The client one node uses to reach its peers: plain HTTP on the internal
//! network, every request carrying the shared secret.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::auth::{Secret, FORWARDED_HEADER, SECRET_HEADER};
use crate::body::{self, Body};

/// How long a peer may take to connect and answer with headers: a peer
/// slower than this is treated as down, and the node fetches itself.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a forwarded body may go without a byte.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a peer request failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The URL built from a member's address did not parse.
    #[error("bad peer URL {0}")]
    Url(String),
    /// The secret or the node name cannot be sent as a header value.
    #[error("{0} is not a valid header value")]
    Header(&'static str),
    /// Connecting or sending failed.
    #[error("peer request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    /// No answer within the timeout.
    #[error("peer did not answer in time")]
    Timeout,
    /// The peer answered with something other than 200.
    #[error("peer answered {0}")]
    Status(StatusCode),
    /// The body broke off.
    #[error("peer body failed: {0}")]
    Body(#[from] hyper::Error),
}

impl PeerError {
    /// Whether the peer could not be reached or did not answer at all (as
    /// opposed to answering with an error): it may be gone.
    pub fn unreachable(&self) -> bool {
        matches!(self, PeerError::Request(_) | PeerError::Timeout)
    }
}

/// A pooled HTTP client for peers. Request bodies are [`Body`], so a
/// forwarded upload streams through without being buffered.
#[derive(Clone)]
pub struct PeerClient {
    client: Client<HttpConnector, Body>,
    secret: Secret,
    me: String,
}

impl PeerClient {
    /// A client that authenticates with `secret` and names itself `me`.
    pub fn new(secret: Secret, me: String) -> PeerClient {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(ANSWER_TIMEOUT));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(http);
        PeerClient { client, secret, me }
    }

    /// `GET url` with the secret; `forwarded` marks it as a forwarded
    /// client request, which the peer serves itself (never forwards).
    /// Only a 200 counts as an answer.
    pub async fn get(&self, url: &str, forwarded: bool) -> Result<Response<Incoming>, PeerError> {
        self.ask(Method::GET, url, forwarded).await
    }

    /// `HEAD url`, forwarded, with the secret; only a 200 counts.
    pub async fn head(&self, url: &str) -> Result<Response<Incoming>, PeerError> {
        self.ask(Method::HEAD, url, true).await
    }

    async fn ask(
        &self,
        method: Method,
        url: &str,
        forwarded: bool,
    ) -> Result<Response<Incoming>, PeerError> {
        let req = Request::builder()
            .method(method)
            .uri(url)
            .body(body::empty())
            .map_err(|_| PeerError::Url(url.to_owned()))?;
        let resp = tokio::time::timeout(ANSWER_TIMEOUT, self.send(req, forwarded))
            .await
            .map_err(|_| PeerError::Timeout)??;
        if resp.status() != StatusCode::OK {
            return Err(PeerError::Status(resp.status()));
        }
        Ok(resp)
    }

    /// Sends `req` with the secret (and, when `forwarded`, this node's name
    /// as the forwarding mark) and returns whatever the peer answered. No
    /// time limit of its own: a forwarded upload is answered only once its
    /// whole chunk arrived, which takes as long as the client takes.
    pub async fn send(
        &self,
        mut req: Request<Body>,
        forwarded: bool,
    ) -> Result<Response<Incoming>, PeerError> {
        let h = req.headers_mut();
        let secret = http::HeaderValue::from_str(self.secret.header_value())
            .map_err(|_| PeerError::Header("the cluster secret"))?;
        h.insert(SECRET_HEADER, secret);
        if forwarded {
            let me = http::HeaderValue::from_str(&self.me)
                .map_err(|_| PeerError::Header("the node name"))?;
            h.insert(FORWARDED_HEADER, me);
        }
        Ok(self.client.request(req).await?)
    }

    /// A whole (small) body, e.g. a ping's answer.
    pub async fn get_bytes(&self, url: &str) -> Result<Bytes, PeerError> {
        let resp = self.get(url, false).await?;
        let body = tokio::time::timeout(ANSWER_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| PeerError::Timeout)??;
        Ok(body.to_bytes())
    }
}

/// A response body as a stream of its data, each piece within
/// `READ_TIMEOUT`; ends after an error.
pub fn body_stream(
    body: Incoming,
) -> impl futures_util::Stream<Item = Result<Bytes, PeerError>> + Send + 'static {
    futures_util::stream::try_unfold(body, |mut body| async move {
        loop {
            let frame = tokio::time::timeout(READ_TIMEOUT, body.frame())
                .await
                .map_err(|_| PeerError::Timeout)?;
            match frame {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        return Ok(Some((data, body)));
                    }
                }
            }
        }
    })
}
