//! Storage: where every byte hoard keeps lives, behind two traits.
//!
//! This is the ground floor under `cache`, `pins` and `local` (it imports
//! nothing of theirs). Nothing above it builds a path under `cache_dir` or
//! calls `std::fs` on it: they talk to a [`BlobStore`] and a [`Records`]
//! store, constructed once (in `run_listeners` and the CLI commands) and
//! injected. **A new backend (the shared object store of issue 13)
//! implements exactly these two traits, nothing else.**
//!
//! - [`BlobStore`]: content-addressed blobs, verified before they become
//!   visible. Bytes enter through a [`Staging`] obtained from the store
//!   (`stage()` → write → `commit(digest, size)`, which re-checks them;
//!   dropping it aborts). On disk a staging is a temp file in `tmp/` renamed
//!   into `blobs/sha256/<2 hex>/<hex>`; on an object store it will be a
//!   streaming multipart upload completed at commit.
//! - [`Records`]: small keyed records (tag records, manifests' media types,
//!   pins, local repository records, upload sessions, and whatever comes
//!   next) with `get`, `list(prefix)`, `put`, create-only `create` and
//!   compare-and-swap `replace`, so replicas sharing one store can agree on
//!   who wrote last.
//!
//! Who uses what: the cache's fills, pushes (`local::uploads`), imports
//! and held prefetches write blobs through stagings; tag records and
//! manifests' media types (`cache::meta`), pins, local repository records
//! and upload sessions are records (uploads use `create`: a session id is
//! never reused). `hoard verify` reads and sets aside through the
//! [`BlobStore`] too, over [`CacheDir::existing`] so it claims and sweeps
//! nothing beside a serving hoard.
//!
//! What an object store must still provide that the disk gives for free:
//! the fill pipeline and uploads write a staging's [`Staging::local_file`]
//! (positional writes, readers following the file, rewinding a broken
//! chunk), so an object-store staging keeps a local spool file and streams
//! it out as a multipart upload, completing it at `commit`.
//!
//! The disk implementations ([`FsBlobs`], [`FsRecords`]) share one owner of
//! the directory, [`CacheDir`]: it alone knows the layout (below), claims
//! the directory, sweeps `tmp/`, walks sharded directories and moves strays
//! into `quarantine/`. Every write is temp file + fsync + rename + fsync of
//! the directory ([`durable`]), so a crash leaves the old or the new
//! version, never half of one; a second process is kept out by [`CacheLock`].
//!
//! ```text
//! blobs/sha256/<2 hex>/<hex>      verified content (layers, configs, manifests)
//! blobs/sha512/<2 hex>/<hex>      the same, pushed by sha512 digests (local only)
//! manifests/sha256/<2 hex>/<hex>  record: media type of each cached manifest
//! tags/<2 hex>/<hex>.json         record: tag -> digest
//! pins/<hex>.json                 record: a pinned image
//! local/<hex>.json                record: a local (pushed) repository
//! uploads/<id>.json               record: an open upload session
//! tmp/                            stagings and records being written
//! quarantine/                     strays moved aside at start or by verify
//! HOARD_CACHE                     marks the directory as a hoard cache
//! ```

pub mod dir;
pub mod durable;
mod fs_blobs;
mod fs_records;
mod key;
pub mod lock;
mod outage;
pub mod pagecache;
pub mod s3;
mod space;
mod tiered;

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::config::{StorageConfig, StorageKind};
use crate::oci::Digest;
pub use dir::CacheDir;
pub use fs_blobs::FsBlobs;
pub use fs_records::FsRecords;
pub use key::RecordKey;
pub use lock::{CacheLock, LockError};
pub use space::is_out_of_space;
pub use tiered::Tiered;

/// A boxed future, so both traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A reader over a range of a stored blob.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// Where verified blobs live. Content-addressed: a blob is named by its
/// digest and is visible only once [`Staging::commit`] checked it.
pub trait BlobStore: Send + Sync {
    /// Size and last use of a stored blob, `None` when absent. Does not
    /// count as a use.
    fn stat<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<Option<BlobInfo>>>;
    /// Opens `start..end` of a stored blob (`NotFound` when absent).
    fn open<'a>(
        &'a self,
        digest: &'a Digest,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, io::Result<BlobReader>>;
    /// Starts writing a new blob. Nothing is visible until its `commit`.
    fn stage(&self) -> BoxFuture<'_, io::Result<Box<dyn Staging>>>;
    /// Removes a blob (absent is fine).
    fn remove<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<()>>;
    /// Every stored blob; what does not belong is moved aside and counted.
    fn list(&self) -> BoxFuture<'_, io::Result<Listing>>;
    /// Moves a damaged blob out of the store into the quarantine, for an
    /// operator to inspect. Returns where it went, in words.
    fn set_aside<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<String>>;
    /// Room left for new blobs, `None` when the store has no such limit.
    fn free_space(&self) -> BoxFuture<'_, io::Result<Option<u64>>>;
    /// Whether blobs may exist that [`BlobStore::list`] did not return (a
    /// bucket behind a local tier, written by other replicas too): then a
    /// digest the index does not know is asked for with `stat` before it
    /// counts as a miss.
    fn shared(&self) -> bool {
        false
    }
    /// Whether the store can be reached now; `Err` says why not. A local
    /// disk always can (its own failures show as failed writes); a bucket
    /// is asked.
    fn health(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// A URL a client may fetch `digest` from directly instead of through
    /// this node (a presigned bucket URL), `None` when this store has none
    /// to give or serving it here is as cheap (the blob is on local disk).
    fn redirect<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, io::Result<Option<String>>> {
        let _ = digest;
        Box::pin(async { Ok(None) })
    }
}

/// A blob being written: obtained from [`BlobStore::stage`], finished by
/// [`Staging::commit`]. Dropping it uncommitted aborts it (the disk store
/// removes its temp file), so an error path can never leave half a blob.
pub trait Staging: Send + Sync {
    /// Appends `bytes`, hashing them as they pass.
    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, io::Result<()>>;
    /// The local file behind this staging, when there is one (the disk
    /// store's temp file). The fill pipeline writes it at offsets on a
    /// blocking thread and readers follow it while it grows; an upload
    /// rewinds it after a broken chunk. Bytes written there bypass
    /// [`Staging::write`]'s hash: the caller hashes them, and `commit`
    /// re-checks their size only. `None` for a store without local files.
    fn local_file(&mut self) -> Option<Arc<std::fs::File>>;
    /// The slow part of a commit that needs no lock on the store: the
    /// tiered store copies the staged bytes into its bucket here, so a
    /// caller that serialises commits (the cache, against evictions) runs
    /// this first, outside its lock. Makes nothing visible on its own
    /// account; `commit` does it itself when this was not called.
    fn prepare<'a>(&'a mut self, digest: &'a Digest, size: u64) -> BoxFuture<'a, io::Result<()>> {
        let _ = (digest, size);
        Box::pin(async { Ok(()) })
    }
    /// Makes the blob visible as `digest`, after checking that exactly
    /// `size` bytes were written and (for bytes that came through `write`)
    /// that they hash to `digest`. Durable when it returns.
    fn commit(self: Box<Self>, digest: Digest, size: u64) -> BoxFuture<'static, io::Result<()>>;
}

/// A stored blob as found by [`BlobStore::list`] and [`BlobStore::stat`].
#[derive(Debug, Clone)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Last access or modification, unix seconds.
    pub last_use: u64,
}

/// What [`BlobStore::list`] found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Valid blobs.
    pub blobs: Vec<BlobInfo>,
    /// Entries that did not belong and were moved aside.
    pub moved_aside: usize,
}

/// The version of a record as last read or written: an opaque tag that
/// changes whenever the record does (an ETag on an object store; the
/// sha256 of the content on disk). [`Records::replace`] takes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(pub String);

/// A record with the version it was read at.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// Its bytes.
    pub bytes: Bytes,
    /// Its version.
    pub version: Version,
}

/// Why a record write was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// [`Records::create`]: the key exists already.
    #[error("record {0} exists already")]
    Exists(RecordKey),
    /// [`Records::replace`]: the record is not at the expected version
    /// (changed or deleted by another writer since it was read).
    #[error("record {0} changed since it was read")]
    Changed(RecordKey),
    /// The store itself failed.
    #[error("record store: {0}")]
    Io(#[from] io::Error),
}

impl From<RecordError> for io::Error {
    fn from(e: RecordError) -> io::Error {
        match e {
            RecordError::Io(e) => e,
            e @ RecordError::Exists(_) => io::Error::new(io::ErrorKind::AlreadyExists, e),
            e @ RecordError::Changed(_) => io::Error::other(e),
        }
    }
}

/// Small keyed records: each key holds a few KiB at most, read whole and
/// replaced whole. Keys are [`RecordKey`]s (`namespace/...`), built from
/// digests and ids hoard made, never from client text.
pub trait Records: Send + Sync {
    /// The record under `key`, `None` when absent.
    fn get<'a>(
        &'a self,
        key: &'a RecordKey,
    ) -> BoxFuture<'a, Result<Option<Versioned>, RecordError>>;
    /// Every key that starts with `prefix` (`"tags/"`), sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<RecordKey>, RecordError>>;
    /// Writes `value` under `key` whatever was there.
    fn put<'a>(
        &'a self,
        key: &'a RecordKey,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Version, RecordError>>;
    /// Writes `value` under `key` only if the key is absent
    /// ([`RecordError::Exists`] otherwise).
    fn create<'a>(
        &'a self,
        key: &'a RecordKey,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Version, RecordError>>;
    /// Writes `value` under `key` only if the record is still at
    /// `expected` ([`RecordError::Changed`] otherwise): of several writers
    /// that read the same version, exactly one wins.
    fn replace<'a>(
        &'a self,
        key: &'a RecordKey,
        value: Bytes,
        expected: &'a Version,
    ) -> BoxFuture<'a, Result<Version, RecordError>>;
    /// Removes the record (absent is fine).
    fn delete<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<(), RecordError>>;
    /// Moves a record its reader cannot parse out of the way, for an
    /// operator to inspect (the disk store: into `quarantine/`).
    fn set_aside<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, Result<(), RecordError>>;
}

/// The two stores a hoard process works on, built once and injected into
/// the cache, the pins and the local repositories.
#[derive(Clone)]
pub struct Storage {
    /// Verified blobs.
    pub blobs: Arc<dyn BlobStore>,
    /// Small keyed records.
    pub records: Arc<dyn Records>,
    /// The shared tier alone, when there is one (`kind = "s3"`): `blobs`
    /// removes from the local tier only, so the one node that keeps the
    /// bucket's budget (`crate::upkeep`) lists and removes here.
    pub bucket: Option<Arc<dyn BlobStore>>,
}

impl Storage {
    /// The disk backend on `cache_dir`: claims the directory (refusing a
    /// non-empty one that is not a hoard cache), moves strays at its top
    /// level aside and sweeps `tmp/` of what an interrupted run left.
    /// Take the [`CacheLock`] first.
    pub async fn open_disk(cache_dir: &Path) -> io::Result<Storage> {
        let dir = CacheDir::open(cache_dir).await?;
        Ok(Storage {
            blobs: Arc::new(FsBlobs::new(dir.clone())),
            records: Arc::new(FsRecords::new(dir)),
            bucket: None,
        })
    }

    /// The backend `[storage]` names: the disk on `cache_dir`, or a bucket
    /// (blobs and records) with `cache_dir` as the local tier for blobs.
    /// Connecting to a bucket probes what its server guarantees and logs
    /// it. Take the [`CacheLock`] first.
    pub async fn open(cache_dir: &Path, config: &StorageConfig) -> io::Result<Storage> {
        let disk = Storage::open_disk(cache_dir).await?;
        match config.kind {
            StorageKind::Disk => Ok(disk),
            StorageKind::S3 => {
                let bucket = s3::connect(config).await?;
                let presigner = s3::presigner(config, &bucket)?;
                let shared = s3::S3Blobs::new(bucket.clone());
                let tiered = Tiered::new(disk.blobs, shared.clone(), presigner);
                Ok(Storage {
                    blobs: Arc::new(tiered),
                    records: Arc::new(s3::S3Records::new(bucket)),
                    bucket: Some(Arc::new(shared)),
                })
            }
        }
    }
}
