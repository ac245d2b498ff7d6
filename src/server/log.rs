//! The request log: one line per request, written when its response body
//! has been sent (or given up), not when the headers leave.
//!
//! Logging at the end is what lets the line say what a reader of it
//! expects: the bytes actually sent (a `HEAD` sends none, `/metrics` sends
//! its text although it has no `Content-Length`), the time to headers and
//! the total time (a cold 30 MB blob answers its headers in milliseconds
//! and takes seconds to stream), and whether the body was sent whole.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};

use crate::body::Body;
use crate::registry::ServedBy;

/// What the line says about the request, taken before it is answered.
pub struct Line {
    method: http::Method,
    path: String,
    ns: Option<String>,
    peer: SocketAddr,
    started: Instant,
}

impl Line {
    /// Starts the line of `req`, from `peer`.
    pub fn start<B>(req: &Request<B>, peer: SocketAddr) -> Line {
        Line {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            ns: crate::http::query_param(req.uri().query(), "ns").filter(|s| !s.is_empty()),
            peer,
            started: Instant::now(),
        }
    }

    /// The response whose body writes the line once it is sent or dropped.
    pub fn finish(self, resp: Response<Body>) -> Response<Body> {
        let headers_ms = ms(self.started);
        let served = resp.extensions().get::<ServedBy>().cloned();
        let status = resp.status().as_u16();
        let length = crate::http::content_length(resp.headers());
        resp.map(|inner| {
            LoggedBody {
                inner,
                line: self,
                status,
                served,
                headers_ms,
                length,
                bytes: 0,
                ended: false,
            }
            .boxed_unsync()
        })
    }
}

/// Milliseconds since `t`, to the microsecond.
fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// A response body that counts what it yields and logs the request when
/// hyper drops it.
struct LoggedBody {
    inner: Body,
    line: Line,
    status: u16,
    served: Option<ServedBy>,
    headers_ms: f64,
    /// The `Content-Length`, if sent: hyper stops polling once it has
    /// that many bytes, so the body never sees its own end.
    length: Option<u64>,
    bytes: u64,
    ended: bool,
}

impl hyper::body::Body for LoggedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.ended = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // hyper does not poll a body that says it is over (an empty one,
        // the body of a HEAD): that is a whole answer too.
        let complete = self.ended || self.inner.is_end_stream() || self.length == Some(self.bytes);
        let l = &self.line;
        tracing::info!(
            method = %l.method,
            path = %l.path,
            ns = l.ns.as_deref(),
            peer = %l.peer,
            status = self.status,
            bytes = self.bytes,
            complete,
            headers_ms = self.headers_ms,
            total_ms = ms(l.started),
            cache = self.served.as_ref().map(|s| s.outcome.as_str()),
            upstream = self.served.as_ref().map(|s| s.upstream.as_str()),
            "request"
        );
    }
}
