//! Checking a user name and password: rate limit first, then a short-lived
//! cache of recent successes, then bcrypt off the async runtime.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::htpasswd::Htpasswd;
use super::limit::FailureLimit;
use super::token::random_bytes;

/// Why a login did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// Unknown user or wrong password: the same answer for both.
    Failed,
    /// Too many recent failures from this address or for this name.
    RateLimited,
}

/// Verifies passwords.
pub struct Logins {
    htpasswd: Arc<Htpasswd>,
    limit: FailureLimit,
    /// Hash of (salt, user, password) -> (), for successes only. Hashed
    /// with a per-process salt so no password sits in memory in the clear.
    verified: moka::sync::Cache<[u8; 32], ()>,
    salt: [u8; 32],
}

impl Logins {
    /// `max_failures` per `window`; successes remembered for `cache_ttl`.
    pub fn new(
        htpasswd: Htpasswd,
        max_failures: u32,
        window: Duration,
        cache_ttl: Duration,
    ) -> Logins {
        Logins {
            htpasswd: Arc::new(htpasswd),
            limit: FailureLimit::new(max_failures, window),
            verified: moka::sync::Cache::builder()
                .time_to_live(cache_ttl)
                .max_capacity(10_000)
                .build(),
            salt: random_bytes(),
        }
    }

    /// Checks `user`/`password` for a client at `peer`.
    pub async fn check(
        &self,
        peer: Option<IpAddr>,
        user: &str,
        password: &str,
    ) -> Result<(), LoginError> {
        if self.limit.limited(peer, user) {
            return Err(LoginError::RateLimited);
        }
        let key = self.cache_key(user, password);
        if self.verified.contains_key(&key) {
            return Ok(());
        }
        let htpasswd = self.htpasswd.clone();
        let (u, p) = (user.to_owned(), password.to_owned());
        // bcrypt takes tens of milliseconds of CPU on purpose.
        let ok = tokio::task::spawn_blocking(move || htpasswd.verify(&u, &p))
            .await
            .unwrap_or(false);
        if ok {
            self.verified.insert(key, ());
            Ok(())
        } else {
            self.limit.failed(peer, user);
            Err(LoginError::Failed)
        }
    }

    fn cache_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        // Length-prefixed so ("ab","c") and ("a","bc") differ.
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins(max: u32) -> Logins {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let h = Htpasswd::parse(&format!("alice:{hash}"), "t").unwrap();
        Logins::new(h, max, Duration::from_secs(60), Duration::from_secs(60))
    }

    #[tokio::test]
    async fn failures_lock_out_even_the_right_password() {
        let l = logins(2);
        let peer = Some("127.0.0.1".parse().unwrap());
        assert_eq!(l.check(peer, "alice", "pw").await, Ok(()));
        assert_eq!(l.check(peer, "alice", "x").await, Err(LoginError::Failed));
        assert_eq!(l.check(peer, "nobody", "x").await, Err(LoginError::Failed));
        assert_eq!(
            l.check(peer, "alice", "pw").await,
            Err(LoginError::RateLimited)
        );
    }

    #[tokio::test]
    async fn cache_keys_separate_user_and_password() {
        let l = logins(5);
        assert_ne!(l.cache_key("ab", "c"), l.cache_key("a", "bc"));
        assert_eq!(l.cache_key("a", "b"), l.cache_key("a", "b"));
    }
}
