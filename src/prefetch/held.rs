//! Prefetch's side of a held download (a blob too large for the budget,
//! see [`policy::fetch_held`]): progress events and the operator's words
//! for a failure.

use std::sync::Arc;

use super::{Event, Prefetcher, PROGRESS_STEP};
use crate::cache::Holder;
use crate::oci::{Digest, RepoName};
use crate::policy::{self, HeldError, Target};
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
        let target = Target {
            upstream: upstream.clone(),
            repo: repo.clone(),
        };
        let progress = |bytes: u64| {
            let _ = events.send(Event::Progress {
                image: image.to_owned(),
                bytes,
            });
        };
        policy::fetch_held(
            &self.cache,
            &target,
            digest,
            Holder::Pin,
            PROGRESS_STEP,
            progress,
        )
        .await
        .map_err(|e| match e {
            HeldError::Upstream(upstream::Error::NotFound) => {
                format!("blob {digest}: not known upstream")
            }
            e => format!("blob {digest}: {e}"),
        })
    }
}
