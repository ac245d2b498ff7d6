//! Blob upload sessions: bytes stream into a staging of the blob store
//! (its local file), hashed as they pass, so memory stays flat for
//! multi-GiB layers and the digest is known the moment the last byte lands
//! (a sha256 digest, the one clients use; a session finished with a sha512
//! digest reads its bytes back once to hash them with that).
//!
//! Each session is recorded in the [`Records`] store (created at start,
//! deleted at the end) so the sessions in flight can be seen from outside;
//! its bytes and progress are in this process only (a restart drops it: its
//! staging is swept, its record deleted at the next start). Each session
//! takes one request at a time: its state sits behind an async mutex held
//! while a chunk streams in. Sessions idle for `upload_timeout` are dropped
//! with their bytes by [`Uploads::sweep`].
//!
//! In a cluster a session's id names the node holding it
//! (`<hex of the node's name>-<random hex>`, see [`session_node`]), so a
//! replica that gets a request of a session it does not hold knows which
//! member to hand it to; the name is only ever looked up among the current
//! members, never used as an address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::Error;
use crate::cache::Cache;
use crate::oci::{Digest, Hasher, RepoName};
use crate::storage::{RecordKey, Records, Staging};

/// One upload session.
pub struct Session {
    /// Repository it was started in.
    pub repo: RepoName,
    /// Its id (hex, made here: the only text that names its file).
    pub id: String,
    state: tokio::sync::Mutex<State>,
    /// std lock: a timestamp read or written, never across an await.
    touched: Mutex<Instant>,
}

struct State {
    /// The blob being written; `None` once finished or cancelled
    /// (dropping it removes its bytes).
    staging: Option<Box<dyn Staging>>,
    /// The staging's local file, appended to and rewound on a bad chunk.
    file: Option<tokio::fs::File>,
    size: u64,
    hasher: Hasher,
}

/// Every open session.
pub struct Uploads {
    records: Arc<dyn Records>,
    cache: Arc<Cache>,
    timeout: Duration,
    /// This node's name in a cluster: the prefix of every id made here.
    node: Option<String>,
    /// std lock: map operations only.
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl Uploads {
    /// Sessions staged in `cache`'s blob store and recorded in
    /// `records`, whose leftover session records are deleted now (their
    /// bytes were never verified, and are gone with the previous run).
    /// With `node` (a cluster), ids name this node, and only its own
    /// leftovers are deleted: the other replicas' sessions are alive.
    pub async fn open(
        records: Arc<dyn Records>,
        cache: Arc<Cache>,
        timeout: Duration,
        node: Option<String>,
    ) -> std::io::Result<Uploads> {
        let mine = format!(
            "uploads/{}",
            node.as_deref().map(id_prefix).unwrap_or_default()
        );
        for key in records.list("uploads/").await? {
            if key.as_str().starts_with(&mine) {
                records.delete(&key).await?;
            }
        }
        Ok(Uploads {
            records,
            cache,
            timeout,
            node,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Starts a session in `repo`.
    pub async fn start(&self, repo: RepoName) -> Result<Arc<Session>, Error> {
        let id = new_id(self.node.as_deref());
        let key = RecordKey::upload(&id).ok_or(Error::UploadUnknown)?;
        let mut staging = self.cache.stage().await?;
        let file = staging.local_file().ok_or_else(|| {
            std::io::Error::other("the blob store stages no local file for uploads")
        })?;
        let file = tokio::fs::File::from_std(file.try_clone()?);
        let record = serde_json::json!({ "repository": repo.to_string() });
        self.records
            .create(&key, Bytes::from(record.to_string()))
            .await
            .map_err(std::io::Error::from)?;
        let session = Arc::new(Session {
            repo,
            id: id.clone(),
            state: tokio::sync::Mutex::new(State {
                staging: Some(staging),
                file: Some(file),
                size: 0,
                hasher: Hasher::new(),
            }),
            touched: Mutex::new(Instant::now()),
        });
        self.lock().insert(id, session.clone());
        Ok(session)
    }

    /// The live session `id` of `repo`; an expired one is dropped now.
    pub async fn get(&self, repo: &RepoName, id: &str) -> Result<Arc<Session>, Error> {
        let found = self.lock().get(id).cloned();
        let Some(s) = found.filter(|s| &s.repo == repo) else {
            return Err(Error::UploadUnknown);
        };
        if s.idle() > self.timeout {
            self.cancel(&s).await;
            return Err(Error::UploadUnknown);
        }
        s.touch();
        Ok(s)
    }

    /// Bytes received so far.
    pub async fn size(&self, s: &Session) -> u64 {
        s.state.lock().await.size
    }

    /// Appends a chunk. With `range` (`start-end`, inclusive), `start` must
    /// be the current size and the body exactly that long; otherwise
    /// nothing is kept and [`Error::RangeInvalid`] says what we have.
    pub async fn append<B>(
        &self,
        s: &Session,
        range: Option<(u64, u64)>,
        body: B,
        pushed: &crate::metrics::Metrics,
    ) -> Result<u64, Error>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut st = s.state.lock().await;
        let written = st.write_chunk(range, body, pushed).await;
        s.touch();
        written
    }

    /// Takes the final chunk (may be empty; with `range` checked as by
    /// [`Uploads::append`], so a final chunk that does not continue the
    /// session is refused and the session kept), closes the file and checks
    /// the digest. On success the session is gone and its staging, ready to
    /// be committed, is returned with its size. On a wrong digest the
    /// session and its bytes are dropped: nothing is stored.
    pub async fn finish<B>(
        &self,
        s: &Session,
        expected: &Digest,
        range: Option<(u64, u64)>,
        body: B,
        pushed: &crate::metrics::Metrics,
    ) -> Result<(Box<dyn Staging>, u64), Error>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut st = s.state.lock().await;
        st.write_chunk(range, body, pushed).await?;
        let mut file = st.file.take().ok_or(Error::UploadUnknown)?;
        // The commit syncs the staging; this only hands over what tokio buffers.
        file.flush().await?;
        let hasher = std::mem::take(&mut st.hasher);
        // Bytes are hashed with sha256 as they arrive; a client that names
        // another algorithm (sha512) only says so now, so they are read
        // back once and hashed with it.
        let actual = if hasher.algorithm() == expected.algorithm() {
            hasher.finish()
        } else {
            let file = file.into_std().await;
            let (alg, len) = (expected.algorithm(), st.size);
            tokio::task::spawn_blocking(move || crate::oci::digest_file(&file, alg, len))
                .await
                .map_err(std::io::Error::other)??
        };
        let staging = st.staging.take().ok_or(Error::UploadUnknown)?;
        self.forget(s).await;
        if actual != *expected {
            return Err(Error::DigestInvalid {
                expected: expected.clone(),
                actual,
            });
        }
        Ok((staging, st.size))
    }

    /// Drops a session and its bytes.
    pub async fn cancel(&self, s: &Session) {
        self.forget(s).await;
        let mut st = s.state.lock().await;
        st.file = None;
        st.staging = None;
    }

    /// Ends a session: out of the map and its record deleted (a record
    /// left by a failed delete goes at the next start).
    async fn forget(&self, s: &Session) {
        self.lock().remove(&s.id);
        if let Some(key) = RecordKey::upload(&s.id) {
            if let Err(e) = self.records.delete(&key).await {
                tracing::warn!(upload = %s.id, error = %e, "could not delete an upload session's record");
            }
        }
    }

    /// Drops sessions idle longer than the timeout (skipping one that is
    /// receiving a chunk right now). Returns how many went.
    pub async fn sweep(&self) -> usize {
        let expired: Vec<Arc<Session>> = self
            .lock()
            .values()
            .filter(|s| s.idle() > self.timeout)
            .cloned()
            .collect();
        let mut dropped = 0;
        for s in expired {
            if s.state.try_lock().is_ok() {
                self.cancel(&s).await;
                tracing::info!(repo = %s.repo, upload = %s.id, "abandoned upload session dropped");
                dropped += 1;
            }
        }
        dropped
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Session {
    fn idle(&self) -> Duration {
        self.touched.lock().map(|t| t.elapsed()).unwrap_or_default()
    }

    fn touch(&self) {
        if let Ok(mut t) = self.touched.lock() {
            *t = Instant::now();
        }
    }
}

impl State {
    /// Appends one chunk; with `range` (`start-end`, inclusive), `start`
    /// must be the current size and the body exactly that long. A chunk
    /// refused or broken off is undone, so the session stays as it was:
    /// the spec's "out of order chunk: 416", and the client may resume.
    async fn write_chunk<B>(
        &mut self,
        range: Option<(u64, u64)>,
        body: B,
        pushed: &crate::metrics::Metrics,
    ) -> Result<u64, Error>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        if let Some((start, end)) = range {
            if start != self.size || end < start {
                return Err(Error::RangeInvalid { size: self.size });
            }
        }
        let (before, hasher) = (self.size, self.hasher.clone());
        let written = self.write(body, pushed).await;
        let fits = match (&written, range) {
            (Ok(n), Some((start, end))) => *n == end - start + 1,
            _ => true,
        };
        match written {
            Ok(_) if fits => Ok(self.size),
            other => {
                self.rewind(before, hasher).await?;
                other?;
                Err(Error::RangeInvalid { size: before })
            }
        }
    }

    /// Streams `body` to the end of the file, hashing as it goes.
    async fn write<B>(
        &mut self,
        mut body: B,
        pushed: &crate::metrics::Metrics,
    ) -> Result<u64, Error>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let file = self.file.as_mut().ok_or(Error::UploadUnknown)?;
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Body(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            file.write_all(&data).await?;
            self.hasher.update(&data);
            n += data.len() as u64;
            pushed.pushed(data.len() as u64);
        }
        file.flush().await?;
        self.size += n;
        Ok(n)
    }

    /// Undoes a failed chunk: back to `size` bytes and the hash state
    /// before it.
    async fn rewind(&mut self, size: u64, hasher: Hasher) -> Result<(), Error> {
        if let Some(f) = self.file.as_mut() {
            f.set_len(size).await?;
            use tokio::io::AsyncSeekExt;
            f.seek(std::io::SeekFrom::Start(size)).await?;
        }
        self.size = size;
        self.hasher = hasher;
        Ok(())
    }
}

/// How an id made on `node` starts: the name as hex (any name becomes a
/// valid path segment and record key) and a `-`.
fn id_prefix(node: &str) -> String {
    format!("{}-", hex::encode(node.as_bytes()))
}

/// The node an upload id names, if it names one (an id made in a
/// cluster); `None` for any other text. Says nothing about whether that
/// node is a member, or holds the session.
pub fn session_node(id: &str) -> Option<String> {
    let (node, random) = id.split_once('-')?;
    if random.len() != 32 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    String::from_utf8(hex::decode(node).ok()?).ok()
}

/// A session id: 128 random bits from the kernel, as hex, after
/// [`id_prefix`] of `node` in a cluster. Unguessable, so one client cannot
/// write into another's session.
fn new_id(node: Option<&str>) -> String {
    let random = random_hex();
    match node {
        Some(n) => id_prefix(n) + &random,
        None => random,
    }
}

/// 128 random bits as hex.
fn random_hex() -> String {
    use std::io::Read;
    let mut raw = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut raw));
    if random.is_err() {
        // No /dev/urandom: fall back to a hash of time and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seed = format!("{:?}-{n}-{}", Instant::now(), std::process::id());
        raw.copy_from_slice(&Digest::of(seed.as_bytes()).hex().as_bytes()[..16]);
    }
    hex::encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_node_and_nothing_else_parses_as_one() {
        let id = new_id(Some("hoard-0"));
        assert!(RecordKey::upload(&id).is_some(), "{id} is a record key");
        assert!(
            id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "{id}"
        );
        assert_eq!(session_node(&id).as_deref(), Some("hoard-0"));
        let odd = new_id(Some("ä/../x y"));
        assert_eq!(session_node(&odd).as_deref(), Some("ä/../x y"));
        assert_eq!(session_node(&new_id(None)), None);
        assert_eq!(
            session_node("686f6172642d30-1234"),
            None,
            "short random part"
        );
        assert_eq!(session_node("zz-0123456789abcdef0123456789abcdef"), None);
    }
}
