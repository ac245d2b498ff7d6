//! Downloading a blob straight into the held set, for blobs too large for
//! the budget.
//!
//! A fill commits into the LRU; a blob larger than `max_size` would be
//! evicted by its own commit before the pin could hold it (and would flush
//! every unpinned blob on the way). Such blobs are streamed here instead:
//! written into a staging of the cache's store, which hashes them as they
//! pass and checks them against their digest when they are committed with
//! [`Cache::commit_held`], so the budget never sees them. Concurrent pulls of the same blob are not
//! coalesced with this download.

use std::sync::Arc;

use super::{Event, Prefetcher, PROGRESS_STEP};
use crate::cache::Holder;
use crate::oci::{Digest, RepoName};
use crate::upstream::{self, Upstream};

impl Prefetcher {
    /// Downloads `digest` and commits it held for the pin. Returns its size.
    pub(super) async fn download_held(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        image: &str,
        events: &super::Events,
    ) -> Result<u64, String> {
        let fail = |e: &dyn std::fmt::Display| format!("blob {digest}: {e}");
        let resp = upstream.get_blob(repo, digest).await.map_err(|e| match e {
            upstream::Error::NotFound => fail(&"not known upstream"),
            e => fail(&e),
        })?;
        // Dropped uncommitted on any error below: its bytes go with it.
        let mut staged = self.cache.stage().await.map_err(|e| fail(&e))?;
        let mut body = resp.into_body();
        let (mut size, mut unreported) = (0u64, 0u64);
        while let Some(frame) = upstream.next_frame(&mut body).await.map_err(|e| fail(&e))? {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = data.len() as u64;
            staged.write(data).await.map_err(|e| fail(&e))?;
            size += len;
            unreported += len;
            if unreported >= PROGRESS_STEP {
                let _ = events.send(Event::Progress {
                    image: image.to_owned(),
                    bytes: std::mem::take(&mut unreported),
                });
            }
        }
        if unreported > 0 {
            let _ = events.send(Event::Progress {
                image: image.to_owned(),
                bytes: unreported,
            });
        }
        // The commit re-checks the bytes against `digest`.
        self.cache
            .commit_held(digest, staged, size, Holder::Pin)
            .await
            .map_err(|e| fail(&e))?;
        Ok(size)
    }
}
