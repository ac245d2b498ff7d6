//! The two storage traits over an S3-compatible bucket, through the
//! `object_store` crate (AWS S3, Ceph RGW, SeaweedFS, MinIO).
//!
//! Keys, under an optional prefix:
//!
//! ```text
//! blobs/sha256/<2 hex>/<hex>   verified content, never overwritten once there
//! <record key>                 records, exactly as on disk (tags/..., pins/..., local/..., uploads/...)
//! quarantine/<key>             what set_aside moved out of the way
//! probe/<random>               the start-up probe's scratch object, deleted again
//! ```
//!
//! What hoard relies on, and what it does when a server lacks it, is
//! decided once at start by [`probe`]: create-only writes (`If-None-Match:
//! *`) and compare-and-swap (`If-Match: <etag>`, the ETag bare where the
//! server wants it so). Completing a multipart upload conditionally is
//! never relied on (SeaweedFS and Ceph RGW ignore it): a blob's key is
//! checked with a `HEAD` before its upload completes, and since keys are
//! content addresses, two replicas racing past that check write identical,
//! verified bytes.

#[cfg(test)]
mod bare_if_match;
mod blobs;
mod connect;
mod presign;
mod read;
mod records;

use std::io;
use std::sync::Arc;

use object_store::path::Path;
use object_store::ObjectStore;

use crate::oci::Digest;
pub use blobs::{S3Blobs, S3Staging, PARTS_IN_FLIGHT, PART_SIZE};
pub use connect::{connect, presigner};
pub use presign::Presigner;
pub use records::S3Records;

/// What the server guarantees for conditional writes, as [`probe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guarantees {
    /// A create-only `PUT` of an existing key fails (`If-None-Match: *`).
    pub create_only: bool,
    /// A `PUT` with a stale `If-Match` ETag fails.
    pub compare_and_swap: bool,
    /// `If-Match` must carry the ETag without its quotes. Ceph RGW 16.2
    /// compares the bare value and fails every quoted one, even the ETag
    /// it returned itself, though RFC 9110 quotes it.
    pub bare_if_match: bool,
}

impl Guarantees {
    /// What `object_store`'s in-memory store and AWS S3 give.
    pub const FULL: Guarantees = Guarantees {
        create_only: true,
        compare_and_swap: true,
        bare_if_match: false,
    };

    /// `e_tag` (as the server returned it) as an `If-Match` for this server.
    pub fn if_match(&self, e_tag: &str) -> String {
        match self.bare_if_match {
            true => e_tag.trim_matches('"').to_owned(),
            false => e_tag.to_owned(),
        }
    }
}

/// A bucket (or a prefix of one) and what its server guarantees.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// The client blob reads stream through (see `connect`); `store` by
    /// default.
    reader: Arc<dyn ObjectStore>,
    prefix: Option<String>,
    guarantees: Guarantees,
}

impl Bucket {
    /// `store` under `prefix`, trusting it to give `guarantees` (use
    /// [`probe`] to find out).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Option<&str>, guarantees: Guarantees) -> Self {
        let prefix = prefix
            .map(|p| p.trim_matches('/').to_owned())
            .filter(|p| !p.is_empty());
        Bucket {
            reader: store.clone(),
            store,
            prefix,
            guarantees,
        }
    }

    /// The same bucket, with blob reads through `reader` (a client without
    /// a total request timeout).
    pub fn with_reader(mut self, reader: Arc<dyn ObjectStore>) -> Bucket {
        self.reader = reader;
        self
    }

    /// The object store itself.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The object store blob reads stream from.
    pub fn reader(&self) -> &Arc<dyn ObjectStore> {
        &self.reader
    }

    /// What the server was found to guarantee.
    pub fn guarantees(&self) -> Guarantees {
        self.guarantees
    }

    /// The object path of `key` (a path hoard built, never client text).
    pub fn path(&self, key: &str) -> Path {
        match &self.prefix {
            Some(p) => Path::from(format!("{p}/{key}")),
            None => Path::from(key),
        }
    }

    /// `key` of an object path under the prefix, `None` for one outside it.
    pub fn key_of<'a>(&self, path: &'a Path) -> Option<&'a str> {
        let s = path.as_ref();
        match &self.prefix {
            Some(p) => s.strip_prefix(p.as_str())?.strip_prefix('/'),
            None => Some(s),
        }
    }

    /// Where a blob lives: `blobs/<algorithm>/<2 hex>/<hex>`.
    pub fn blob(&self, digest: &Digest) -> Path {
        let hex = digest.hex();
        let alg = digest.algorithm();
        self.path(&format!("blobs/{alg}/{}/{hex}", &hex[..2]))
    }
}

/// An `object_store` error as the traits report it: absent, exists and
/// precondition failures keep a kind a caller can match on.
pub fn io_error(e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
        object_store::Error::Precondition { .. } => io::ErrorKind::WouldBlock,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// A random hex id (for probe and temporary keys), from the system's RNG.
fn random_id() -> io::Result<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| io::Error::other("no system randomness"))?;
    Ok(hex::encode(b))
}

/// Finds out which conditional writes the server honours, on a scratch
/// key it deletes again: a create-only `PUT` twice (the second must fail)
/// and `If-Match` `PUT`s with a stale ETag (must fail) and the current one
/// (must succeed), the ETag quoted as the server returned it and, should
/// that fail, bare (see [`Guarantees::bare_if_match`]). Logs the answer
/// once; the stores built on the returned [`Bucket`] fall back where a
/// guarantee is missing.
pub async fn probe(store: Arc<dyn ObjectStore>, prefix: Option<&str>) -> io::Result<Bucket> {
    use object_store::PutMode;
    let bucket = Bucket::new(store, prefix, Guarantees::FULL);
    let key = bucket.path(&format!("probe/{}", random_id()?));
    let s = bucket.store();
    s.put_opts(&key, "1".into(), PutMode::Create.into())
        .await
        .map_err(io_error)?;
    let create_only = matches!(
        s.put_opts(&key, "2".into(), PutMode::Create.into()).await,
        Err(object_store::Error::AlreadyExists { .. })
    );
    let mut guarantees = Guarantees {
        create_only,
        compare_and_swap: false,
        bare_if_match: false,
    };
    for bare_if_match in [false, true] {
        let tried = Guarantees {
            compare_and_swap: true,
            bare_if_match,
            ..guarantees
        };
        if swaps(s, &key, tried).await? {
            guarantees = tried;
            break;
        }
    }
    if let Err(e) = s.delete(&key).await {
        tracing::warn!(error = %e, key = %key, "could not delete the probe object");
    }
    tracing::info!(
        create_only = guarantees.create_only,
        compare_and_swap = guarantees.compare_and_swap,
        bare_if_match = guarantees.bare_if_match,
        conditional_multipart = "not relied on",
        "object store probed: {}",
        describe(guarantees)
    );
    Ok(Bucket {
        guarantees,
        ..bucket
    })
}

/// Whether `If-Match` `PUT`s of `key`, with the ETag sent as `g` says,
/// fail on a stale ETag and succeed on the current one.
async fn swaps(s: &Arc<dyn ObjectStore>, key: &Path, g: Guarantees) -> io::Result<bool> {
    use object_store::{PutMode, UpdateVersion};
    let overwrite = |body: &'static str| s.put_opts(key, body.into(), PutMode::Overwrite.into());
    let old = overwrite("3").await.map_err(io_error)?.e_tag;
    let now = overwrite("4").await.map_err(io_error)?.e_tag;
    let (Some(old), Some(now)) = (old, now) else {
        return Ok(false);
    };
    let update = |e_tag: &str| {
        PutMode::Update(UpdateVersion {
            e_tag: Some(g.if_match(e_tag)),
            version: None,
        })
    };
    let stale = s.put_opts(key, "5".into(), update(&old).into()).await;
    let current = s.put_opts(key, "6".into(), update(&now).into()).await;
    Ok(matches!(stale, Err(object_store::Error::Precondition { .. })) && current.is_ok())
}

/// The probe's verdict in words, for the log line.
fn describe(g: Guarantees) -> &'static str {
    match (g.create_only, g.compare_and_swap) {
        (true, true) => "create-only and compare-and-swap writes hold",
        (true, false) => {
            "create-only writes hold; compare-and-swap falls back to a per-process lock"
        }
        (false, true) => "compare-and-swap holds; create-only falls back to HEAD then PUT",
        (false, false) => "no conditional writes: HEAD then PUT and a per-process lock",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn the_in_memory_store_passes_the_probe_and_keeps_nothing() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let bucket = probe(store.clone(), Some("/hoard/")).await.unwrap();
        assert_eq!(bucket.guarantees(), Guarantees::FULL);
        use futures_util::TryStreamExt;
        let left: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert!(left.is_empty(), "{left:?}");
        let p = bucket.path("tags/ab/c.json");
        assert_eq!(p.as_ref(), "hoard/tags/ab/c.json");
        assert_eq!(bucket.key_of(&p), Some("tags/ab/c.json"));
        assert_eq!(bucket.key_of(&Path::from("other/tags/x")), None);
    }

    /// Ceph RGW 16.2 fails every quoted `If-Match`: the probe finds that
    /// the bare ETag works instead of giving compare-and-swap up.
    #[tokio::test]
    async fn a_server_that_wants_a_bare_if_match_is_found_out() {
        let store: Arc<dyn ObjectStore> = Arc::new(bare_if_match::BareIfMatch::default());
        let bucket = probe(store, None).await.unwrap();
        let g = bucket.guarantees();
        assert!(
            g.create_only && g.compare_and_swap && g.bare_if_match,
            "{g:?}"
        );
        assert_eq!(g.if_match("\"abc\""), "abc");
        assert_eq!(Guarantees::FULL.if_match("\"abc\""), "\"abc\"");
    }
}
