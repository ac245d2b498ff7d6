//! The CLI's side of the operator API: `hoard prefetch --server URL` and
//! friends talk to a running server, so its index and pins stay right.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use super::Error;
use crate::prefetch::Event;
use crate::upstream::auth::encode_query;

/// A client of one server's `/_hoard/` API (plain HTTP: the API answers
/// loopback peers only, so it is reached as `http://127.0.0.1:PORT`).
pub struct Client {
    base: String,
    http: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client of the server at `url` (`http://127.0.0.1:5000`).
    pub fn new(url: &str) -> Result<Client, Error> {
        if !url.starts_with("http://") {
            return Err(Error::ServerUrl(url.to_owned()));
        }
        Ok(Client {
            base: url.trim_end_matches('/').to_owned(),
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
        })
    }

    async fn send(
        &self,
        method: Method,
        what: &str,
        body: Option<serde_json::Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Error> {
        let url = format!("{}/_hoard/{what}", self.base);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| self.unreachable(e))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status() == StatusCode::OK {
            return Ok(resp);
        }
        Err(refused(resp).await)
    }

    /// A request whose answer is one JSON document.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        what: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, Error> {
        self.answer(self.send(method, what, body).await?).await
    }

    fn unreachable(&self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Unreachable {
            server: self.base.clone(),
            source: e.into(),
        }
    }

    /// The server's answer is broken or not what this CLI understands.
    fn broken(&self, what: String) -> Error {
        Error::Answer {
            server: self.base.clone(),
            what,
        }
    }

    /// The one JSON document of an answer.
    async fn answer<T: DeserializeOwned>(
        &self,
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> Result<T, Error> {
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.broken(format!("reading hoard's answer: {e}")))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| {
            self.broken(format!(
                "hoard's answer is not the expected JSON (a hoard of another version?): {e}"
            ))
        })
    }

    /// Streams the archive of `body` (an [`crate::admin::export::ExportRequest`])
    /// into `output` (`-`: standard output), complete or not at all (see
    /// [`crate::bundle::stream`]). Returns the server's summary and the
    /// bytes received.
    pub async fn export(
        &self,
        body: serde_json::Value,
        output: &std::path::Path,
    ) -> Result<(crate::bundle::export::Summary, u64), Error> {
        use crate::bundle::stream;
        let resp = self.send(Method::POST, "export", Some(body)).await?;
        let summary = stream::summary(resp.headers()).unwrap_or_default();
        let frames = http_body_util::BodyStream::new(resp.into_body()).filter_map(|f| async move {
            match f {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(e)),
            }
        });
        let n = stream::receive(Box::pin(frames), output).await?;
        Ok((summary, n))
    }

    /// Sends `archive` to the server's `POST /_hoard/import`, streamed
    /// from the file, and returns the server's summary once all of it is
    /// in. Complete or nothing: the server commits only a whole, verified
    /// archive, so a failure at any point leaves its cache as it was.
    pub async fn import(
        &self,
        archive: &std::path::Path,
        placement: &crate::bundle::import::Placement,
    ) -> Result<crate::bundle::import::Summary, Error> {
        use futures_util::TryStreamExt;
        use http_body_util::{combinators::BoxBody, StreamBody};
        let cannot = |source| Error::ReadFile {
            path: archive.to_owned(),
            source,
        };
        let file = tokio::fs::File::open(archive).await.map_err(cannot)?;
        let len = file.metadata().await.map_err(cannot)?.len();
        let frames = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map_ok(hyper::body::Frame::data);
        let body: BoxBody<Bytes, std::io::Error> = BodyExt::boxed(StreamBody::new(frames));
        let mut url = format!("{}/_hoard/import", self.base);
        let query: Vec<String> = [("upstream", &placement.upstream), ("repo", &placement.repo)]
            .into_iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", encode_query(v.as_deref()?))))
            .collect();
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        let req = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/x-tar")
            .header(http::header::CONTENT_LENGTH, len)
            .body(body)
            .map_err(|e| self.unreachable(e))?;
        // A client of its own: this one's requests stream a body.
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        let resp = http.request(req).await.map_err(|e| self.unreachable(e))?;
        if resp.status() != StatusCode::OK {
            return Err(refused(resp).await);
        }
        self.answer(resp).await
    }

    /// Starts a prefetch and hands each progress event to `on_event` as it
    /// arrives. Ends at the summary (an error if the stream ends without).
    pub async fn prefetch(
        &self,
        body: serde_json::Value,
        mut on_event: impl FnMut(Event),
    ) -> Result<(), Error> {
        let resp = self.send(Method::POST, "prefetch", Some(body)).await?;
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut summary = false;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| self.broken(format!("the progress stream broke: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let ev: Event = serde_json::from_slice(&line).map_err(|e| {
                    self.broken(format!("unexpected progress line from hoard: {e}"))
                })?;
                summary |= matches!(ev, Event::Summary(_));
                on_event(ev);
            }
        }
        if summary {
            Ok(())
        } else {
            Err(self
                .broken("the progress stream ended before the summary (did hoard stop?)".into()))
        }
    }
}

/// What hoard said when it refused a request: the OCI error's message,
/// else the body as text, with the status.
async fn refused<B: hyper::body::Body>(resp: hyper::Response<B>) -> Error {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Error::Refused { status, message }
}

/// `hoard export --server URL`: the archive streamed from a running hoard
/// (see [`crate::bundle::stream`]). Prints the summary line on stderr.
pub async fn export(
    url: &str,
    images: Vec<String>,
    pinned: bool,
    platform: Option<String>,
    output: &std::path::Path,
) -> Result<bool, Error> {
    let platforms: Vec<String> = platform
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::to_owned)
        .collect();
    let req = crate::admin::export::ExportRequest {
        images,
        platforms,
        pinned,
    };
    let body = serde_json::json!(req);
    let started = std::time::Instant::now();
    let (s, _) = Client::new(url)?.export(body, output).await?;
    eprintln!("{} (from {url})", s.line(output, started.elapsed()));
    Ok(true)
}

/// `hoard import --server URL`: the archive sent to a running hoard, which
/// imports it complete or not at all. Prints the summary on stderr.
pub async fn import(
    url: &str,
    archive: &std::path::Path,
    placement: &crate::bundle::import::Placement,
) -> Result<bool, Error> {
    let started = std::time::Instant::now();
    let s = Client::new(url)?.import(archive, placement).await?;
    let report = s.report(&archive.display().to_string(), started.elapsed());
    eprintln!("{report} (into {url})");
    Ok(true)
}
