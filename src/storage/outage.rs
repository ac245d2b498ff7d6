//! A bucket that failed is left alone for a few seconds: meanwhile the
//! disk tier treats it as holding nothing, so lookups and misses do not
//! wait on a dead bucket's retries (issue 13 item 4). A health check
//! (`/readyz`) asks it again and ends the outage when it answers.

use std::future::Future;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a bucket that failed is left alone before it is asked again.
const BACKOFF: Duration = Duration::from_secs(5);
/// How long a health check waits for the bucket.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Until when the bucket is treated as down, and why.
#[derive(Default)]
pub struct Outage(Mutex<Option<(Instant, String)>>);

impl Outage {
    /// Why the bucket is being left alone, while it is.
    pub fn active(&self) -> Option<String> {
        let mut o = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*o {
            Some((until, why)) if Instant::now() < *until => Some(why.clone()),
            Some(_) => {
                *o = None;
                None
            }
            None => None,
        }
    }

    /// Notes a bucket failure (an answer like "not found" is none).
    pub fn failed(&self, e: &io::Error) {
        if e.kind() != io::ErrorKind::NotFound {
            let mut o = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if o.is_none() {
                tracing::warn!(error = %e, "bucket unreachable: serving from the disk tier and streaming misses from the upstream");
            }
            *o = Some((Instant::now() + BACKOFF, e.to_string()));
        }
    }

    /// Runs `ask` (a request for an object that is not there: any answer
    /// but an error means the bucket is reachable) within
    /// [`HEALTH_TIMEOUT`], and starts or ends the outage by its result.
    pub async fn check<T>(&self, ask: impl Future<Output = io::Result<T>>) -> Result<(), String> {
        let result = match tokio::time::timeout(HEALTH_TIMEOUT, ask).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("the bucket is unreachable: {e}")),
            Err(_) => Err(format!(
                "the bucket did not answer within {HEALTH_TIMEOUT:?}"
            )),
        };
        let mut o = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(()) => {
                if o.take().is_some() {
                    tracing::info!("bucket reachable again");
                }
            }
            Err(why) => *o = Some((Instant::now() + BACKOFF, why.clone())),
        }
        result
    }
}
