//! Failures remembered for a few seconds (issue 14, defect 7).
//!
//! During an upstream storm of 5xx answers every client retry used to
//! become another upstream request (150 client GETs cost 121–135 upstream
//! GETs): the upstream, already failing, got the whole load. Concurrent
//! requests for one blob already share one fill; this remembers a 5xx for
//! the path it came from, so the requests that follow within [`REMEMBER`]
//! (or the upstream's `Retry-After`, up to [`REMEMBER_AT_MOST`]) get the
//! same error without asking.
//!
//! A 5xx is remembered for [`REMEMBER`], or the upstream's `Retry-After`
//! up to [`REMEMBER_AT_MOST`]. A 429 is remembered too, but never longer
//! than [`REMEMBER`] whatever its `Retry-After` (which the client is still
//! given): a storm of retries against a rate-limited upstream costs one
//! request per path every few seconds, and a lifted limit is used within
//! seconds (cached tags are served stale meanwhile). A 404 is an answer; a
//! connection that failed is retried at once (the upstream may just have
//! come back); a body that broke off mid-stream is the fill's business.

use std::time::{Duration, Instant};

use super::Error;

/// How long a 5xx without `Retry-After` is remembered, and a 429 at most.
pub const REMEMBER: Duration = Duration::from_secs(3);
/// The longest a failure is remembered, whatever `Retry-After` said: the
/// client gets the upstream's wait, but hoard asks again sooner.
pub const REMEMBER_AT_MOST: Duration = Duration::from_secs(60);
/// Paths remembered at once (one per failing blob or manifest).
const CAPACITY: u64 = 10_000;

/// Recent failures by upstream path.
pub struct Backoff {
    recent: moka::sync::Cache<String, (Instant, Error)>,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            recent: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(REMEMBER_AT_MOST)
                .build(),
        }
    }
}

impl Backoff {
    /// The failure remembered for `path`, if it is recent enough at `now`.
    pub fn recent(&self, path: &str, now: Instant) -> Option<Error> {
        let (until, err) = self.recent.get(path)?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())?;
        Some(err)
    }

    /// Remembers `err` for `path` when it is a failure worth remembering.
    pub fn failed(&self, path: &str, err: &Error, now: Instant) {
        let Some(wait) = wait_for(err) else { return };
        self.recent
            .insert(path.to_owned(), (now + wait, err.clone()));
    }

    /// Forgets `path` (it succeeded).
    pub fn succeeded(&self, path: &str) {
        self.recent.invalidate(path);
    }
}

/// How long `err` is remembered, `None` when it is not.
fn wait_for(err: &Error) -> Option<Duration> {
    let asked = |retry_after: &Option<u64>| retry_after.map(Duration::from_secs);
    match err {
        Error::Status {
            status,
            retry_after,
            ..
        } if *status >= 500 => {
            Some(asked(retry_after).map_or(REMEMBER, |d| d.min(REMEMBER_AT_MOST)))
        }
        Error::RateLimited { retry_after, .. } => {
            Some(asked(retry_after).map_or(REMEMBER, |d| d.min(REMEMBER)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<u64>) -> Error {
        Error::Status {
            status,
            body: String::new(),
            retry_after,
        }
    }

    #[test]
    fn a_5xx_and_a_429_are_remembered_briefly_a_404_and_an_outage_not_at_all() {
        let b = Backoff::default();
        let t0 = Instant::now();
        b.failed("/a", &status(503, None), t0);
        b.failed("/b", &Error::NotFound, t0);
        b.failed("/c", &Error::Unreachable("refused".into()), t0);
        b.failed("/d", &status(418, None), t0);
        let limited = |retry_after| Error::RateLimited {
            upstream: "hub".into(),
            retry_after,
        };
        b.failed("/f", &limited(Some(7)), t0);
        b.failed("/g", &limited(None), t0);
        b.failed("/h", &limited(Some(1)), t0);
        assert!(matches!(
            b.recent("/a", t0),
            Some(Error::Status { status: 503, .. })
        ));
        let almost = t0 + REMEMBER - Duration::from_millis(1);
        for p in ["/a", "/f", "/g"] {
            assert!(b.recent(p, almost).is_some(), "{p}");
            assert!(b.recent(p, t0 + REMEMBER).is_none(), "{p}");
        }
        assert!(
            matches!(
                b.recent("/f", t0),
                Some(Error::RateLimited {
                    retry_after: Some(7),
                    ..
                })
            ),
            "the client still gets the upstream's Retry-After"
        );
        assert!(
            b.recent("/h", t0 + Duration::from_secs(1)).is_none(),
            "a shorter Retry-After"
        );
        for p in ["/b", "/c", "/d", "/e"] {
            assert!(b.recent(p, t0).is_none(), "{p}");
        }
        b.failed("/a", &status(500, None), t0);
        b.succeeded("/a");
        assert!(b.recent("/a", t0).is_none());
    }

    #[test]
    fn retry_after_is_honoured_up_to_a_minute() {
        let b = Backoff::default();
        let t0 = Instant::now();
        b.failed("/a", &status(503, Some(20)), t0);
        assert!(b.recent("/a", t0 + Duration::from_secs(19)).is_some());
        assert!(b.recent("/a", t0 + Duration::from_secs(20)).is_none());
        b.failed("/b", &status(503, Some(3600)), t0);
        assert!(b
            .recent("/b", t0 + REMEMBER_AT_MOST - Duration::from_secs(1))
            .is_some());
        assert!(b.recent("/b", t0 + REMEMBER_AT_MOST).is_none());
    }
}
