//! The response body type shared by every handler.
//!
//! A body that yields an error makes hyper abort the connection: with a
//! `Content-Length` set, the client sees a short read, never a clean end.
//! That is how a failed fill reaches its readers. A streamed body holds
//! its error back for one poll ([`FlushFirst`]), so that the client has
//! the head and every byte before the error: a cut-off answer, never a
//! connection closed without one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

/// Every response body hoard sends.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body from bytes in memory.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body streamed from chunks; an `Err` aborts the response.
pub fn stream<S>(s: S) -> Body
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    use futures_util::StreamExt;
    let s = FlushFirst {
        inner: s,
        held: None,
    };
    StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
}

pin_project_lite::pin_project! {
    /// Holds an error back for one poll. hyper aborts the connection on a
    /// body error without writing what it has buffered, so an error in the
    /// same poll as the head (a fill that failed as its response began)
    /// left the client without an answer. Seeing the body pending, hyper
    /// flushes the head and the bytes before; the wake-up brings it back
    /// at once for the error.
    struct FlushFirst<S> {
        #[pin]
        inner: S,
        held: Option<io::Error>,
    }
}

impl<S> Stream for FlushFirst<S>
where
    S: Stream<Item = io::Result<Bytes>>,
{
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if let Some(e) = this.held.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Err(e))) => {
                *this.held = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;

    /// A body whose error is ready in the same poll as the head and the
    /// bytes before it: the client still gets the head and those bytes,
    /// then a cut-off body (without [`FlushFirst`], hyper closed the
    /// connection with nothing written: `IncompleteMessage`).
    #[tokio::test]
    async fn an_error_ready_with_the_head_still_leaves_the_client_an_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|_req| async {
                let items = [
                    Ok(Bytes::from_static(b"abc")),
                    Err(io::Error::other("the fill failed")),
                ];
                let mut resp = hyper::Response::new(stream(futures_util::stream::iter(items)));
                resp.headers_mut()
                    .insert(hyper::header::CONTENT_LENGTH, 10.into());
                Ok::<_, std::convert::Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
        let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(socket))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.expect("an answer");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = body
            .frame()
            .await
            .expect("a frame")
            .expect("the first bytes");
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"abc"));
        assert!(body.collect().await.is_err(), "the body is cut off");
    }
}
