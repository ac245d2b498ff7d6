//! The CLI's side of the operator API: `hoard prefetch --server URL` and
//! friends talk to a running server, so its index and pins stay right.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::prefetch::Event;

/// A client of one server's `/_hoard/` API (plain HTTP: the API answers
/// loopback peers only, so it is reached as `http://127.0.0.1:PORT`).
pub struct Client {
    base: String,
    http: HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client of the server at `url` (`http://127.0.0.1:5000`).
    pub fn new(url: &str) -> Result<Client, String> {
        if !url.starts_with("http://") {
            return Err(format!("--server {url}: give the server's plain-HTTP address, e.g. http://127.0.0.1:5000 (the operator API answers loopback clients only)"));
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
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let url = format!("{}/_hoard/{what}", self.base);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| format!("{url}: {e}"))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| format!("cannot reach hoard at {}: {e}", self.base))?;
        if resp.status() == StatusCode::OK {
            return Ok(resp);
        }
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
        Err(format!("hoard answered {status}: {message}"))
    }

    /// A request whose answer is one JSON document.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        what: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, String> {
        let resp = self.send(method, what, body).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading hoard's answer: {e}"))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("hoard's answer is not the expected JSON: {e}"))
    }

    /// Streams the archive of `body` (an [`super::export::ExportRequest`])
    /// into `output` (`-`: standard output), complete or not at all (see
    /// [`crate::bundle::stream`]). Returns the server's summary and the
    /// bytes received.
    pub async fn export(
        &self,
        body: serde_json::Value,
        output: &std::path::Path,
    ) -> Result<(crate::bundle::export::Summary, u64), String> {
        use crate::bundle::stream;
        let resp = self.send(Method::POST, "export", Some(body)).await?;
        let summary = stream::summary(resp.headers()).unwrap_or_default();
        let frames = http_body_util::BodyStream::new(resp.into_body()).filter_map(|f| async move {
            match f {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(e)),
            }
        });
        let n = stream::receive(Box::pin(frames), output)
            .await
            .map_err(|e| e.to_string())?;
        Ok((summary, n))
    }

    /// Starts a prefetch and hands each progress event to `on_event` as it
    /// arrives. Ends at the summary (an error if the stream ends without).
    pub async fn prefetch(
        &self,
        body: serde_json::Value,
        mut on_event: impl FnMut(Event),
    ) -> Result<(), String> {
        let resp = self.send(Method::POST, "prefetch", Some(body)).await?;
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut summary = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("the progress stream broke: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let ev: Event = serde_json::from_slice(&line)
                    .map_err(|e| format!("unexpected progress line from hoard: {e}"))?;
                summary |= matches!(ev, Event::Summary(_));
                on_event(ev);
            }
        }
        if summary {
            Ok(())
        } else {
            Err("the progress stream ended before the summary (did hoard stop?)".into())
        }
    }
}

/// `hoard export --server URL`: the archive streamed from a running hoard
/// (see [`crate::bundle::stream`]). Prints the summary line on stderr.
pub async fn export(
    url: &str,
    images: Vec<String>,
    pinned: bool,
    platform: Option<String>,
    output: &std::path::Path,
) -> Result<bool, String> {
    let platforms: Vec<String> = platform
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::to_owned)
        .collect();
    let req = super::export::ExportRequest {
        images,
        platforms,
        pinned,
    };
    let body = serde_json::to_value(&req).map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let (s, _) = Client::new(url)?.export(body, output).await?;
    eprintln!("{} (from {url})", s.line(output, started.elapsed()));
    Ok(true)
}
