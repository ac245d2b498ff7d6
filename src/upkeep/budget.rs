//! The bucket's budget for mirrored content: what to evict, decided from a
//! listing of the bucket and what pins and local repositories hold.
//!
//! Held blobs (pinned, pushed) are outside the budget and never evicted,
//! like on the disk. Everything else is mirrored content the upstream can
//! give again. The bucket knows when an object was written, not when it
//! was last read (every replica reads it; none could afford to write a
//! use time per read), so eviction goes oldest-written first, and nothing
//! written within the grace is touched.

use std::collections::HashSet;

use crate::oci::Digest;
use crate::storage::BlobInfo;

/// What one look at the bucket found and decided.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    /// Bytes of mirrored (budgeted) blobs in the bucket.
    pub budgeted: u64,
    /// Bytes of held blobs (pins, local repositories).
    pub held: u64,
    /// The blobs to remove, oldest first, to bring `budgeted` under the
    /// budget (it may stay over when the rest is within the grace).
    pub evict: Vec<BlobInfo>,
}

impl Plan {
    /// Bytes the eviction frees.
    pub fn freed(&self) -> u64 {
        self.evict.iter().map(|b| b.size).sum()
    }
}

/// Decides what to evict from `listing` to keep unheld blobs within
/// `budget` bytes at `now` (unix seconds), sparing what `held` names and
/// what was written less than `grace_secs` ago.
pub fn plan(
    listing: Vec<BlobInfo>,
    held: &HashSet<Digest>,
    budget: u64,
    now: u64,
    grace_secs: u64,
) -> Plan {
    let mut out = Plan::default();
    let mut candidates = Vec::new();
    for blob in listing {
        if held.contains(&blob.digest) {
            out.held += blob.size;
            continue;
        }
        out.budgeted += blob.size;
        if now.saturating_sub(blob.last_use) >= grace_secs {
            candidates.push(blob);
        }
    }
    // Oldest first; the digest breaks ties so every run (and a second
    // holder in a moment of overlap) picks the same blobs.
    candidates.sort_by(|a, b| (a.last_use, &a.digest).cmp(&(b.last_use, &b.digest)));
    let mut over = out.budgeted.saturating_sub(budget);
    for blob in candidates {
        if over == 0 {
            break;
        }
        over = over.saturating_sub(blob.size);
        out.evict.push(blob);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, size: u64, written: u64) -> BlobInfo {
        let digest = format!("sha256:{}", format!("{n:02x}").repeat(32));
        BlobInfo {
            digest: digest.parse().expect("digest"),
            size,
            last_use: written,
        }
    }

    #[test]
    fn evicts_the_oldest_unheld_blobs_until_under_the_budget() {
        let listing = vec![
            blob(1, 100, 10),
            blob(2, 100, 20),
            blob(3, 100, 30),
            blob(4, 100, 40),
            blob(5, 500, 5),
        ];
        let held: HashSet<Digest> = [blob(5, 0, 0).digest].into();
        let p = plan(listing, &held, 250, 1000, 60);
        assert_eq!(p.budgeted, 400);
        assert_eq!(p.held, 500, "the pinned blob is outside the budget");
        let evicted: Vec<u64> = p.evict.iter().map(|b| b.last_use).collect();
        assert_eq!(evicted, vec![10, 20], "oldest first, just enough");
        assert_eq!(p.freed(), 200);
    }

    #[test]
    fn nothing_within_the_grace_or_under_the_budget_is_evicted() {
        let listing = vec![blob(1, 100, 950), blob(2, 100, 990)];
        let p = plan(listing.clone(), &HashSet::new(), 50, 1000, 60);
        assert!(p.evict.is_empty(), "both written within the grace: {p:?}");
        assert_eq!(p.budgeted, 200, "still counted");
        let p = plan(listing, &HashSet::new(), 200, 5000, 60);
        assert!(p.evict.is_empty(), "within the budget");
    }
}
