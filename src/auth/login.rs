//! Checking a user name and password: rate limit first, then a short-lived
//! cache of recent successes, then bcrypt off the async runtime.
//!
//! The htpasswd file is read again when it changes (checked at most once
//! per [`RELOAD_CHECK`], on a login), so adding or removing a user needs no
//! restart. A file that no longer parses is refused with a warning and the
//! users loaded before stay.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

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

/// How often a login may look at the htpasswd file's modification time.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// What identifies one version of the htpasswd file.
type Stamp = Option<(SystemTime, u64)>;

/// Where the users come from, and which version is loaded.
struct Source {
    path: PathBuf,
    /// Version loaded (or refused) last, and when it was last looked at.
    /// A std mutex: held for a compare and an assignment, never across `.await`.
    seen: Mutex<(Stamp, Instant)>,
}

/// Verifies passwords.
pub struct Logins {
    /// Swapped whole on reload; the lock is held only to clone the `Arc`.
    htpasswd: RwLock<Arc<Htpasswd>>,
    source: Option<Source>,
    limit: FailureLimit,
    /// Hash of (salt, user, password) -> (), for successes only. Hashed
    /// with a per-process salt so no password sits in memory in the clear.
    verified: moka::sync::Cache<[u8; 32], ()>,
    salt: [u8; 32],
}

impl Logins {
    /// `max_failures` per `window`; successes remembered for `cache_ttl`.
    /// `path` is where `htpasswd` was read from, watched for changes.
    pub fn new(
        htpasswd: Htpasswd,
        path: Option<PathBuf>,
        max_failures: u32,
        window: Duration,
        cache_ttl: Duration,
    ) -> Logins {
        let source = path.map(|path| Source {
            seen: Mutex::new((stamp(&path), Instant::now())),
            path,
        });
        Logins {
            htpasswd: RwLock::new(Arc::new(htpasswd)),
            source,
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
        self.reload_if_changed().await;
        let key = self.cache_key(user, password);
        if self.verified.contains_key(&key) {
            return Ok(());
        }
        let htpasswd = self.current();
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

    /// Whether `user` is (still) in the htpasswd file: a token names a user
    /// who may have been removed since it was issued.
    pub async fn user_exists(&self, user: &str) -> bool {
        self.reload_if_changed().await;
        self.current().contains(user)
    }

    fn current(&self) -> Arc<Htpasswd> {
        match self.htpasswd.read() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the htpasswd file again if it changed since it was loaded.
    async fn reload_if_changed(&self) {
        let Some(source) = &self.source else { return };
        let loaded = {
            let Ok(mut seen) = source.seen.lock() else {
                return;
            };
            if seen.1.elapsed() < RELOAD_CHECK {
                return;
            }
            seen.1 = Instant::now();
            seen.0
        };
        let path = source.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            let now = stamp(&path);
            if now == loaded {
                return None;
            }
            // The dummy hash makes parsing cost one bcrypt: off the runtime.
            Some((now, Htpasswd::load(&path)))
        })
        .await;
        let Ok(Some((now, result))) = read else {
            return;
        };
        if let Ok(mut seen) = source.seen.lock() {
            seen.0 = now;
        }
        match result {
            Ok(h) => {
                tracing::info!(users = h.len(), "htpasswd file changed: users reloaded");
                if let Ok(mut cur) = self.htpasswd.write() {
                    *cur = Arc::new(h);
                }
                // A removed user or a changed password must not live on here.
                self.verified.invalidate_all();
            }
            Err(e) => {
                tracing::warn!(error = %e, "htpasswd file changed but cannot be used; keeping the users loaded before");
            }
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

/// Modification time and length of `path`: cheap to compare, and a
/// rewrite within one timestamp tick almost always changes the length.
fn stamp(path: &std::path::Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins(max: u32) -> Logins {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let h = Htpasswd::parse(&format!("alice:{hash}"), "t").unwrap();
        Logins::new(
            h,
            None,
            max,
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
    }

    #[tokio::test]
    async fn failures_lock_out_even_the_right_password() {
        let l = logins(2);
        let peer = Some("127.0.0.1".parse().unwrap());
        assert_eq!(l.check(peer, "alice", "pw").await, Ok(()));
        assert_eq!(l.check(peer, "alice", "x").await, Err(LoginError::Failed));
        assert_eq!(l.check(peer, "nobody", "x").await, Err(LoginError::Failed));
        // From another address the right password still works.
        let other = Some("127.0.0.2".parse().unwrap());
        assert_eq!(l.check(other, "alice", "pw").await, Ok(()));
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
