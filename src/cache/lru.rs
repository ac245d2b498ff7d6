//! A compact least-recently-used list of blob digests and sizes.
//!
//! The budget index holds every cached blob, a million or more on a big
//! site. moka spent about 530 bytes per entry (a `String` digest, an `Arc`
//! entry, its own node and timer bookkeeping). This keeps one fixed-size
//! slot per blob in a `Vec` — the raw 32-byte digest, the size, the last use
//! and the two links of the recency list — and a hash table of 4-byte slot
//! numbers that hashes the slot's digest, so the digest is stored once and
//! nothing is allocated per entry: about 70 bytes per blob in all.
//!
//! Not thread-safe by itself: [`super::index::BlobIndex`] keeps it behind a
//! mutex, and every operation here is O(1) but [`Lru::oldest`].

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// The raw sha256 of a blob.
pub type Key = [u8; 32];

/// Which end of the recency list an insert goes to.
#[derive(Clone, Copy)]
enum End {
    Newest,
    Oldest,
}

/// Marks the end of the recency list.
const NONE: u32 = u32::MAX;

/// One blob. 56 bytes.
#[derive(Clone, Copy)]
struct Slot {
    key: Key,
    size: u64,
    /// Toward the most recently used end, or [`NONE`].
    newer: u32,
    /// Toward the least recently used end, or [`NONE`] (or the next free
    /// slot while this one is free).
    older: u32,
    /// Unix seconds of the last use (u32 lasts until 2106).
    last_use: u32,
}

/// The list. See the module doc.
pub struct Lru {
    table: HashTable<u32>,
    slots: Vec<Slot>,
    /// Head of the chain of free slots (linked through `older`).
    free: u32,
    /// Most recently used.
    newest: u32,
    /// Least recently used: the next victim.
    oldest: u32,
    len: usize,
    bytes: u64,
    /// Keyed hashing: digests of content an upstream chose must not be able
    /// to pile into one bucket.
    hasher: std::hash::RandomState,
}

impl Default for Lru {
    fn default() -> Lru {
        Lru {
            table: HashTable::new(),
            slots: Vec::new(),
            free: NONE,
            newest: NONE,
            oldest: NONE,
            len: 0,
            bytes: 0,
            hasher: std::hash::RandomState::new(),
        }
    }
}

fn secs(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

impl Lru {
    /// Makes room for `more` entries at once (the start-up load knows the
    /// count), so the slot vector does not overshoot by doubling.
    pub fn reserve(&mut self, more: usize) {
        self.slots.reserve_exact(more);
        let (hasher, slots) = (&self.hasher, &self.slots);
        self.table
            .reserve(more, |&i| hasher.hash_one(slots[i as usize].key));
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Sum of the entries' sizes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn find(&self, key: &Key) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.table
            .find(hash, |&i| self.slots[i as usize].key == *key)
            .copied()
    }

    /// Whether `key` is listed (its recency unchanged).
    pub fn contains(&self, key: &Key) -> bool {
        self.find(key).is_some()
    }

    /// Size of `key`, marking it the most recently used at `now`.
    pub fn touch(&mut self, key: &Key, now: u64) -> Option<u64> {
        let i = self.find(key)?;
        self.unlink(i);
        self.link_newest(i);
        let slot = &mut self.slots[i as usize];
        slot.last_use = secs(now);
        Some(slot.size)
    }

    /// Adds `key` as the most recently used; `false` (and nothing changed)
    /// if it is already listed.
    pub fn insert(&mut self, key: Key, size: u64, last_use: u64) -> bool {
        self.insert_at(key, size, last_use, End::Newest)
    }

    /// Adds `key` as the least recently used (the start-up load, newest
    /// first, behind whatever was used while it ran); `false` if listed.
    pub fn insert_oldest(&mut self, key: Key, size: u64, last_use: u64) -> bool {
        self.insert_at(key, size, last_use, End::Oldest)
    }

    fn insert_at(&mut self, key: Key, size: u64, last_use: u64, end: End) -> bool {
        let hash = self.hasher.hash_one(key);
        if self
            .table
            .find(hash, |&i| self.slots[i as usize].key == key)
            .is_some()
        {
            return false;
        }
        let slot = Slot {
            key,
            size,
            newer: NONE,
            older: NONE,
            last_use: secs(last_use),
        };
        let i = if self.free != NONE {
            let i = self.free;
            self.free = self.slots[i as usize].older;
            self.slots[i as usize] = slot;
            i
        } else {
            // More than 4 billion blobs would not fit a u32 slot number;
            // no cache directory comes near it.
            let i = u32::try_from(self.slots.len()).unwrap_or(NONE - 1);
            self.slots.push(slot);
            i
        };
        let (hasher, slots) = (&self.hasher, &self.slots);
        self.table
            .insert_unique(hash, i, |&j| hasher.hash_one(slots[j as usize].key));
        match end {
            End::Newest => self.link_newest(i),
            End::Oldest => self.link_oldest(i),
        }
        self.len += 1;
        self.bytes += size;
        true
    }

    /// Removes `key`: its size and last use.
    pub fn remove(&mut self, key: &Key) -> Option<(u64, u64)> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        let entry = self
            .table
            .find_entry(hash, |&i| slots[i as usize].key == *key)
            .ok()?;
        let (i, _) = entry.remove();
        Some(self.release(i))
    }

    /// Removes the least recently used entry.
    pub fn pop_oldest(&mut self) -> Option<(Key, u64)> {
        let i = self.oldest;
        if i == NONE {
            return None;
        }
        let key = self.slots[i as usize].key;
        let hash = self.hasher.hash_one(key);
        if let Ok(entry) = self.table.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        let (size, _) = self.release(i);
        Some((key, size))
    }

    /// The entries with the oldest last use first, until their sizes add up
    /// to `want` (the last one crosses it). Sorts a copy of every entry's
    /// last use (8 bytes each): it runs only when the disk is full.
    pub fn oldest(&self, want: u64) -> Vec<(Key, u64)> {
        let mut order: Vec<(u32, u32)> = Vec::with_capacity(self.len);
        let mut i = self.oldest;
        while i != NONE {
            let slot = &self.slots[i as usize];
            order.push((slot.last_use, i));
            i = slot.newer;
        }
        // Stable: among equal last uses, the less recently used goes first.
        order.sort_by_key(|(t, _)| *t);
        let mut out = Vec::new();
        let mut freed = 0;
        for (_, i) in order {
            if freed >= want {
                break;
            }
            let slot = &self.slots[i as usize];
            freed += slot.size;
            out.push((slot.key, slot.size));
        }
        out
    }

    /// Unlinks slot `i`, puts it on the free chain and returns its size and
    /// last use. The table entry must already be gone.
    fn release(&mut self, i: u32) -> (u64, u64) {
        self.unlink(i);
        let slot = &mut self.slots[i as usize];
        let out = (slot.size, u64::from(slot.last_use));
        slot.older = self.free;
        self.free = i;
        self.len -= 1;
        self.bytes -= out.0;
        out
    }

    fn unlink(&mut self, i: u32) {
        let Slot { newer, older, .. } = self.slots[i as usize];
        if newer == NONE {
            self.newest = older;
        } else {
            self.slots[newer as usize].older = older;
        }
        if older == NONE {
            self.oldest = newer;
        } else {
            self.slots[older as usize].newer = newer;
        }
        let slot = &mut self.slots[i as usize];
        slot.newer = NONE;
        slot.older = NONE;
    }

    fn link_oldest(&mut self, i: u32) {
        let tail = self.oldest;
        {
            let slot = &mut self.slots[i as usize];
            slot.older = NONE;
            slot.newer = tail;
        }
        if tail == NONE {
            self.newest = i;
        } else {
            self.slots[tail as usize].older = i;
        }
        self.oldest = i;
    }

    fn link_newest(&mut self, i: u32) {
        let head = self.newest;
        {
            let slot = &mut self.slots[i as usize];
            slot.newer = NONE;
            slot.older = head;
        }
        if head == NONE {
            self.oldest = i;
        } else {
            self.slots[head as usize].newer = i;
        }
        self.newest = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u32) -> Key {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&n.to_le_bytes());
        key
    }

    /// The recency list, least recently used first.
    fn order(lru: &Lru) -> Vec<u32> {
        let mut out = Vec::new();
        let mut i = lru.oldest;
        while i != NONE {
            let key = lru.slots[i as usize].key;
            out.push(u32::from_le_bytes([key[0], key[1], key[2], key[3]]));
            i = lru.slots[i as usize].newer;
        }
        out
    }

    #[test]
    fn slot_is_small() {
        assert_eq!(std::mem::size_of::<Slot>(), 56);
    }

    #[test]
    fn recency_order_and_totals() {
        let mut lru = Lru::default();
        for n in 0..5 {
            assert!(lru.insert(k(n), 10 + u64::from(n), 100));
        }
        assert!(!lru.insert(k(2), 99, 0), "a second insert changes nothing");
        assert_eq!((lru.len(), lru.bytes()), (5, 60));
        assert_eq!(order(&lru), [0, 1, 2, 3, 4]);
        assert_eq!(lru.touch(&k(1), 200), Some(11));
        assert_eq!(order(&lru), [0, 2, 3, 4, 1]);
        assert_eq!(lru.remove(&k(3)), Some((13, 100)));
        assert_eq!(lru.remove(&k(3)), None);
        assert_eq!(order(&lru), [0, 2, 4, 1]);
        assert_eq!(lru.pop_oldest(), Some((k(0), 10)));
        assert_eq!(lru.oldest(13), vec![(k(2), 12), (k(4), 14)]);
        lru.touch(&k(2), 300);
        assert_eq!(lru.oldest(1), vec![(k(4), 14)], "by last use");
        assert_eq!((lru.len(), lru.bytes()), (3, 37));
        assert!(lru.contains(&k(1)) && !lru.contains(&k(0)));
    }

    #[test]
    fn insert_oldest_goes_behind_everything() {
        let mut lru = Lru::default();
        lru.insert(k(1), 1, 0);
        lru.insert_oldest(k(2), 1, 0);
        lru.insert_oldest(k(3), 1, 0);
        lru.insert(k(4), 1, 0);
        assert_eq!(order(&lru), [3, 2, 1, 4]);
        assert_eq!(lru.pop_oldest().map(|(key, _)| key), Some(k(3)));
    }

    #[test]
    fn freed_slots_are_reused() {
        let mut lru = Lru::default();
        for n in 0..100 {
            lru.insert(k(n), 1, 0);
        }
        for n in 0..50 {
            lru.remove(&k(n));
        }
        for n in 100..150 {
            lru.insert(k(n), 1, 0);
        }
        assert_eq!(
            lru.slots.len(),
            100,
            "no slot allocated while free ones remain"
        );
        assert_eq!(order(&lru), (50..150).collect::<Vec<_>>());
    }

    #[test]
    fn matches_a_naive_model_under_random_operations() {
        let mut lru = Lru::default();
        let mut model: Vec<(u32, u64)> = Vec::new(); // oldest first
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 300) as u32;
            match (x >> 32) % 4 {
                0 | 1 => {
                    let fresh = !model.iter().any(|(m, _)| *m == n);
                    assert_eq!(lru.insert(k(n), u64::from(n), 0), fresh);
                    if fresh {
                        model.push((n, u64::from(n)));
                    }
                }
                2 => {
                    let pos = model.iter().position(|(m, _)| *m == n);
                    assert_eq!(lru.touch(&k(n), 1).is_some(), pos.is_some());
                    if let Some(p) = pos {
                        let e = model.remove(p);
                        model.push(e);
                    }
                }
                _ => {
                    if n.is_multiple_of(2) {
                        let got = lru.pop_oldest().map(|(key, _)| key);
                        let want = (!model.is_empty()).then(|| k(model.remove(0).0));
                        assert_eq!(got, want);
                    } else {
                        let pos = model.iter().position(|(m, _)| *m == n);
                        assert_eq!(lru.remove(&k(n)).is_some(), pos.is_some());
                        if let Some(p) = pos {
                            model.remove(p);
                        }
                    }
                }
            }
        }
        assert_eq!(
            order(&lru),
            model.iter().map(|(m, _)| *m).collect::<Vec<_>>()
        );
        assert_eq!(lru.bytes(), model.iter().map(|(_, s)| s).sum::<u64>());
    }
}
