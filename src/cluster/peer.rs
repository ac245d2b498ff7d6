//! The client one node uses to reach its peers: plain HTTP on the internal
//! network, every request carrying the shared secret.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::auth::{Secret, FORWARDED_HEADER, SECRET_HEADER};

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

/// A pooled HTTP client for peers.
#[derive(Clone)]
pub struct PeerClient {
    client: Client<HttpConnector, Empty<Bytes>>,
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
        let mut req = Request::get(url).header(SECRET_HEADER, self.secret.header_value());
        if forwarded {
            req = req.header(FORWARDED_HEADER, self.me.as_str());
        }
        let req = req
            .body(Empty::new())
            .map_err(|_| PeerError::Url(url.to_owned()))?;
        let resp = tokio::time::timeout(ANSWER_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| PeerError::Timeout)??;
        if resp.status() != StatusCode::OK {
            return Err(PeerError::Status(resp.status()));
        }
        Ok(resp)
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
