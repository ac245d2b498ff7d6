//! The held set: blobs kept outside the budget (see [`super::index`]), with
//! running totals per holder. The size gauges are published on every
//! commit, hold and release; with totals kept as the set changes they cost
//! the same for ten held blobs as for a site's hundreds of thousands,
//! instead of a walk over all of them each time.

use std::collections::HashMap;
use std::sync::Arc;

use super::index::{Entry, Holder};
use crate::oci::Digest;

/// A blob outside the LRU, and who keeps it there (a bit per [`Holder`]).
#[derive(Debug)]
struct Held {
    entry: Arc<Entry>,
    holders: u8,
}

/// Held blobs by digest, and what they add up to.
#[derive(Debug, Default)]
pub(super) struct HeldSet {
    map: HashMap<Digest, Held>,
    /// Bytes of all held blobs, each counted once.
    bytes: u64,
    /// Bytes and count per holder, indexed by [`slot`].
    by: [(u64, u64); 2],
}

const HOLDERS: [Holder; 2] = [Holder::Local, Holder::Pin];

/// Where `holder`'s totals are in [`HeldSet::by`].
fn slot(holder: Holder) -> usize {
    match holder {
        Holder::Local => 0,
        Holder::Pin => 1,
    }
}

impl HeldSet {
    /// The entry of a held blob.
    pub(super) fn get(&self, digest: &Digest) -> Option<&Arc<Entry>> {
        self.map.get(digest).map(|h| &h.entry)
    }

    /// Whether `digest` is held by anyone.
    pub(super) fn contains(&self, digest: &Digest) -> bool {
        self.map.contains_key(digest)
    }

    /// Whether `holder` keeps `digest`.
    pub(super) fn is_held_by(&self, digest: &Digest, holder: Holder) -> bool {
        self.map
            .get(digest)
            .is_some_and(|h| h.holders & holder.bit() != 0)
    }

    /// Number of held blobs.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Adds `holder` to a blob already held; `false` when it is not held.
    pub(super) fn add_holder(&mut self, digest: &Digest, holder: Holder) -> bool {
        let Some(h) = self.map.get_mut(digest) else {
            return false;
        };
        if h.holders & holder.bit() == 0 {
            h.holders |= holder.bit();
            let t = &mut self.by[slot(holder)];
            t.0 += h.entry.size();
            t.1 += 1;
        }
        true
    }

    /// Holds a blob for `holders`; a blob already held just gains them.
    pub(super) fn insert(&mut self, digest: Digest, entry: Arc<Entry>, holders: &[Holder]) {
        if !self.map.contains_key(&digest) {
            self.bytes += entry.size();
            self.map.insert(digest.clone(), Held { entry, holders: 0 });
        }
        for &h in holders {
            self.add_holder(&digest, h);
        }
    }

    /// Takes `holder` away from `digest`. Returns the entry when that was
    /// its last holder (it is then out of the set), `None` otherwise.
    pub(super) fn drop_holder(&mut self, digest: &Digest, holder: Holder) -> Option<Arc<Entry>> {
        let h = self.map.get_mut(digest)?;
        if h.holders & holder.bit() == 0 {
            return None;
        }
        h.holders &= !holder.bit();
        let t = &mut self.by[slot(holder)];
        t.0 -= h.entry.size();
        t.1 -= 1;
        if h.holders != 0 {
            return None;
        }
        self.remove(digest)
    }

    /// Drops a blob whatever holds it.
    pub(super) fn remove(&mut self, digest: &Digest) -> Option<Arc<Entry>> {
        let h = self.map.remove(digest)?;
        let size = h.entry.size();
        self.bytes -= size;
        for holder in HOLDERS {
            if h.holders & holder.bit() != 0 {
                let t = &mut self.by[slot(holder)];
                t.0 -= size;
                t.1 -= 1;
            }
        }
        Some(h.entry)
    }

    /// Bytes and count of blobs `holder` keeps (a blob both local and
    /// pinned counts for each).
    pub(super) fn held_by(&self, holder: Holder) -> (u64, u64) {
        self.by[slot(holder)]
    }

    /// Bytes of all held blobs, each counted once.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u64) -> Digest {
        Digest::of(&n.to_le_bytes())
    }

    /// The totals a walk over the set finds.
    fn walked(set: &HeldSet) -> (u64, [(u64, u64); 2]) {
        let mut by = [(0, 0); 2];
        for h in set.map.values() {
            for holder in HOLDERS {
                if h.holders & holder.bit() != 0 {
                    by[slot(holder)].0 += h.entry.size();
                    by[slot(holder)].1 += 1;
                }
            }
        }
        (set.map.values().map(|h| h.entry.size()).sum(), by)
    }

    #[test]
    fn running_totals_match_a_walk_after_any_sequence() {
        let mut set = HeldSet::default();
        // A fixed pseudo-random walk over 40 digests and every operation.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digest = d(x % 40);
            let holder = HOLDERS[(x >> 8) as usize % 2];
            match (x >> 16) % 4 {
                0 => set.insert(digest, Arc::new(Entry::new(x % 1000 + 1, 0)), &[holder]),
                1 => {
                    set.add_holder(&digest, holder);
                }
                2 => {
                    set.drop_holder(&digest, holder);
                }
                _ => {
                    set.remove(&digest);
                }
            }
            let (bytes, by) = walked(&set);
            assert_eq!(set.bytes(), bytes);
            assert_eq!(set.held_by(Holder::Local), by[0]);
            assert_eq!(set.held_by(Holder::Pin), by[1]);
        }
    }

    #[test]
    fn the_last_holder_to_let_go_gets_the_entry() {
        let mut set = HeldSet::default();
        set.insert(
            d(1),
            Arc::new(Entry::new(10, 0)),
            &[Holder::Local, Holder::Pin],
        );
        assert!(set.drop_holder(&d(1), Holder::Pin).is_none());
        assert!(
            set.drop_holder(&d(1), Holder::Pin).is_none(),
            "not a holder"
        );
        assert_eq!(
            set.drop_holder(&d(1), Holder::Local).map(|e| e.size()),
            Some(10)
        );
        assert!(!set.contains(&d(1)));
        assert_eq!((set.bytes(), set.held_by(Holder::Local)), (0, (0, 0)));
    }
}
