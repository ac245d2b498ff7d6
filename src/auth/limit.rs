//! Failed-login limits: after `max_failures` failures within
//! `failure_window` from one client address, further logins from that
//! address are refused without looking at the password.
//!
//! Counting per address stops one client guessing. Failures are not counted
//! per user name across addresses: that let any stranger lock a user out
//! (issue 14) by failing as them, and the user's right password from their
//! own address then got 429. A failure without a known address (no peer)
//! counts against the name alone. Unknown names are counted like known ones,
//! so the limit reveals nothing about which names exist. The refusal happens
//! before bcrypt runs, so a flood of guesses cannot eat the CPU either.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest user name kept as a key: the name comes from the client, and a
/// spray of huge names must not grow memory (names past this share a key).
const MAX_NAME: usize = 128;

/// What is counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Peer(IpAddr),
    User(String),
}

/// Fixed windows of failure counts; an entry expires `window` after the
/// first failure it counts.
pub struct FailureLimit {
    max: u32,
    counts: moka::sync::Cache<Key, Arc<AtomicU32>>,
}

impl FailureLimit {
    /// `max` failures per `window`.
    pub fn new(max: u32, window: Duration) -> FailureLimit {
        FailureLimit {
            max,
            counts: moka::sync::Cache::builder()
                .time_to_live(window)
                // Bounded, so a spray of names cannot grow memory without end.
                .max_capacity(100_000)
                .build(),
        }
    }

    /// Whether a login from `peer` as `user` is refused for now.
    pub fn limited(&self, peer: Option<IpAddr>, user: &str) -> bool {
        let over = |k: Key| {
            self.counts
                .get(&k)
                .is_some_and(|c| c.load(Ordering::Relaxed) >= self.max)
        };
        over(key(peer, user))
    }

    /// Counts a failed login.
    pub fn failed(&self, peer: Option<IpAddr>, user: &str) {
        self.counts
            .get_with(key(peer, user), || Arc::new(AtomicU32::new(0)))
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// The counter a failure goes to: the address (IPv4-mapped unmapped), or
/// the name when there is no address.
fn key(peer: Option<IpAddr>, user: &str) -> Key {
    match peer {
        Some(p) => Key::Peer(p.to_canonical()),
        None => user_key(user),
    }
}

fn user_key(user: &str) -> Key {
    let mut end = user.len().min(MAX_NAME);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    Key::User(user[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_peer_and_never_locks_a_user_out_elsewhere() {
        let l = FailureLimit::new(2, Duration::from_secs(60));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        l.failed(Some(a), "alice");
        assert!(!l.limited(Some(a), "bob"));
        l.failed(Some(a), "bob");
        // Peer a is over, for any name; another peer is not.
        assert!(l.limited(Some(a), "carol"));
        assert!(l.limited(Some("::ffff:127.0.0.1".parse().unwrap()), "carol"));
        assert!(!l.limited(Some(b), "carol"));
        // Issue 14: failing as alice from a does not lock alice out on b.
        l.failed(Some(a), "alice");
        assert!(!l.limited(Some(b), "alice"));
    }

    #[test]
    fn long_names_are_cut_on_a_char_boundary() {
        let long = "é".repeat(200);
        let Key::User(k) = user_key(&long) else {
            panic!()
        };
        assert!(k.len() <= MAX_NAME && long.starts_with(&k));
    }
}
