//! The policy: what happens when the cache does not have something, and
//! the only code that talks to an upstream on the cache's behalf.
//!
//! The cache only coalesces: the first miss of a digest gets a leader
//! permit, the others read the fill in progress
//! ([`Cache::join_fill`](crate::cache::Cache::join_fill)). Everything that
//! talks to an upstream on the cache's behalf lives here, above both:
//! fetching a missed blob and feeding it to the permit ([`fill`]), and
//! carrying a client's read on from the upstream when the cache's disk
//! fails under it ([`read`]); a blob's size ([`blob_size`]); a manifest
//! miss and a tag's revalidation ([`manifest`]); a blob too large for the
//! budget streamed straight into the held set for a pin ([`fetch_held`]);
//! a tag list, or the cached tags when the upstream fails ([`tags`]). The
//! `/v2` handlers and prefetch both come through these functions, so a
//! blob a client pulls while a prefetch fetches it is downloaded once.
//!
//! Layers: `registry`, `prefetch` -> `policy` -> (`cache`, `upstream`).

mod blob;
mod held;
pub mod manifest;
mod passthrough;
mod tags;

use std::sync::Arc;

use crate::oci::RepoName;
use crate::upstream::Upstream;

pub use blob::{fill, size as blob_size, Filling};
pub use held::{fetch_held, HeldError};
pub use passthrough::{read, Read};
pub use tags::tags;

/// A repository on a configured upstream: what a cache miss is fetched
/// from. `registry` resolves one from a request's name, prefetch from an
/// image reference; both hand it down here.
#[derive(Clone)]
pub struct Target {
    /// The upstream.
    pub upstream: Arc<Upstream>,
    /// The repository as named upstream (`library/alpine`).
    pub repo: RepoName,
}
