//! Closes a connection that has had no request in flight for the idle
//! timeout, on HTTP/1 and HTTP/2 alike.
//!
//! hyper's `header_read_timeout` only exists on its HTTP/1 side; an HTTP/2
//! connection that sent just the preface (or a SETTINGS frame, or PINGs)
//! would otherwise hold a `max_connections` slot for ever. Idleness is
//! counted in requests, not bytes, so a peer that trickles frames without
//! opening streams is still idle. A request is in flight from the moment
//! hyper calls the service until its response body is dropped, so a long
//! blob download or a slow push is never cut by this timer.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::time::Instant;

use crate::body::Body;

/// Requests in flight on one connection and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Requests started since the connection opened.
    started: AtomicUsize,
    /// std Mutex: held only to read or store an `Instant`, never across `.await`.
    last: Mutex<Instant>,
}

impl Activity {
    /// A connection that just opened: idle since now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        })
    }

    /// Marks a request started; the returned guard ends it when dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(self.clone())
    }

    /// Requests started so far on this connection.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    fn touch(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = Instant::now();
        }
    }

    /// When the last request started or ended (or the connection opened).
    pub fn idle_since(&self) -> Instant {
        self.last
            .lock()
            .map(|l| *l)
            .unwrap_or_else(|_| Instant::now())
    }

    /// Resolves once no request has been in flight for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = if self.in_flight.load(Ordering::SeqCst) > 0 {
                // Busy: look again later; the end of the request moves `last`.
                Instant::now() + timeout
            } else {
                self.idle_since() + timeout
            };
            tokio::time::sleep_until(deadline).await;
            if self.in_flight.load(Ordering::SeqCst) == 0
                && self.idle_since() + timeout <= Instant::now()
            {
                return;
            }
        }
    }
}

/// One request in flight; dropping it (with the response body) ends it.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until hyper
/// has sent it (or dropped it).
pub struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl TrackedBody {
    /// Wraps `inner`, holding `in_flight` for the body's life.
    pub fn new(inner: Body, in_flight: InFlight) -> TrackedBody {
        TrackedBody {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_last_request_to_end() {
        let a = Activity::new();
        let guard = a.start();
        let timeout = Duration::from_millis(50);
        let idle = a.idle_for(timeout);
        tokio::pin!(idle);
        // A request in flight for longer than the timeout keeps it open.
        assert!(tokio::time::timeout(Duration::from_millis(200), &mut idle)
            .await
            .is_err());
        drop(guard);
        let ended = Instant::now();
        idle.await;
        assert!(Instant::now() >= ended + timeout);
    }
}
