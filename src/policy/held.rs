//! A blob downloaded straight into the held set, for blobs too large for
//! the budget (prefetch's pins).
//!
//! A fill commits into the LRU; a blob larger than `max_size` would be
//! evicted by its own commit before the pin could hold it (and would flush
//! every unpinned blob on the way). Such blobs are streamed here instead:
//! written into a staging of the cache's store, which hashes them as they
//! pass and checks them against their digest when they are committed with
//! [`Cache::commit_held`], so the budget never sees them. Concurrent pulls
//! of the same blob are not coalesced with this download.

use std::io;

use super::Target;
use crate::cache::{self, Cache, Holder};
use crate::oci::Digest;
use crate::upstream;

/// Why a held download failed; each says what it wraps, unchanged.
#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    /// The upstream refused or broke off.
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    /// The cache could not stage or commit it.
    #[error(transparent)]
    Cache(#[from] cache::Error),
    /// Writing into the staging failed.
    #[error(transparent)]
    Write(#[from] io::Error),
}

/// `GET`s `digest` from `target` and commits it held for `holder`.
/// `progress` is told the bytes staged since it was last told, once at
/// least `step` have gathered and once more when the body ends (before the
/// commit, so a commit that fails has reported every byte it received).
/// Returns its size.
pub async fn fetch_held(
    cache: &Cache,
    target: &Target,
    digest: &Digest,
    holder: Holder,
    step: u64,
    mut progress: impl FnMut(u64),
) -> Result<u64, HeldError> {
    let upstream = &target.upstream;
    let resp = upstream.get_blob(&target.repo, digest).await?;
    // Dropped uncommitted on any error below: its bytes go with it.
    let mut staged = cache.stage().await?;
    let mut body = resp.into_body();
    let (mut size, mut unreported) = (0u64, 0u64);
    while let Some(frame) = upstream.next_frame(&mut body).await? {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = data.len() as u64;
        staged.write(data).await?;
        size += len;
        unreported += len;
        if unreported >= step {
            progress(std::mem::take(&mut unreported));
        }
    }
    if unreported > 0 {
        progress(unreported);
    }
    // The commit re-checks the bytes against `digest`.
    cache.commit_held(digest, staged, size, holder).await?;
    Ok(size)
}
