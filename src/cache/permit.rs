//! The cache's side of a miss: it coalesces, the caller fetches.
//!
//! As in pingora-cache's lock, the first caller to miss a digest becomes
//! the leader and gets a [`FillPermit`]; every later caller becomes a
//! follower and reads the same in-progress [`Fill`]. The leader fetches the
//! blob from wherever its layer decides (`crate::policy` asks a registry)
//! and feeds the body to the permit, which runs the fill pipeline: tee to
//! readers, hash, write, verify, commit. A permit dropped unfinished (its
//! leader failed or went away) marks the fill failed, so followers abort
//! instead of waiting forever or ending with a short 200.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use super::fill::{self, Fill, FillError, FillGuard};
use super::Cache;

/// The result of asking the cache to fill a digest.
pub enum Join {
    /// First to ask: fetch the blob and feed it to the permit.
    Leader(FillPermit),
    /// Someone is fetching it already: read the fill in progress.
    Follower(Arc<Fill>),
}

/// The right, and the duty, to fill one digest. Dropping it unfinished
/// fails the fill (its guard's `Drop`).
pub struct FillPermit {
    guard: FillGuard,
    cache: Arc<Cache>,
}

impl FillPermit {
    pub(super) fn new(guard: FillGuard, cache: Arc<Cache>) -> FillPermit {
        FillPermit { guard, cache }
    }

    /// The fill this permit feeds: the leader's own client reads it like
    /// any follower.
    pub fn fill(&self) -> &Arc<Fill> {
        self.guard.fill()
    }

    /// Runs the fill with `body` (`size` bytes when the origin announced
    /// it): readers follow it as it arrives, and it is verified against the
    /// digest and committed. Returns when the fill is over, whoever still
    /// reads it; run it in a task of its own, so a client that hangs up
    /// does not cancel it.
    pub async fn feed(self, size: Option<u64>, body: Body) {
        fill::run(self.guard, size, body, &*self.cache).await;
    }

    /// The origin could not deliver the blob: the fill fails with `err`
    /// and its followers see the same cause.
    pub fn fail(mut self, err: OriginError) {
        self.guard.fail(FillError::Origin(err));
    }
}

/// The body a leader feeds into its fill: the blob's bytes in order, or the
/// origin's failure.
pub type Body = Pin<Box<dyn Stream<Item = Result<Bytes, OriginError>> + Send>>;

/// Why the origin of a fill (whatever its leader fetched from) failed, kept
/// whole and named: the layer that chose the origin turns it into a
/// response (`crate::error`), and every follower sees the same cause, from
/// the same origin, as the leader.
#[derive(Debug, Clone)]
pub struct OriginError {
    origin: Arc<str>,
    source: Arc<dyn std::error::Error + Send + Sync>,
    absent: bool,
}

impl OriginError {
    /// The origin named `origin` (an upstream's key) failed with `source`.
    pub fn new(
        origin: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> OriginError {
        OriginError {
            origin: origin.into(),
            source: Arc::new(source),
            absent: false,
        }
    }

    /// The origin does not have the blob: an answer, not a fault, so it is
    /// logged quietly.
    pub fn absent(
        origin: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> OriginError {
        OriginError {
            absent: true,
            ..OriginError::new(origin, source)
        }
    }

    /// Whether the origin said it does not have the blob.
    pub fn is_absent(&self) -> bool {
        self.absent
    }

    /// The name of the origin that failed.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The origin's own error, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.source.downcast_ref::<E>()
    }
}

impl std::fmt::Display for OriginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for OriginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
