//! The one owner of the cache directory: every path under `cache_dir` is
//! derived here, and only here (see the layout in [`super`]).
//!
//! At start [`CacheDir::open`] checks the layout. Anything hoard did not
//! write (a stray file, a misnamed blob, an unreadable record) is moved into
//! `quarantine/<time>-<pid>/` with its relative path kept, and reported:
//! never deleted silently, never served.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::key::{RecordKey, NAMESPACES};
use crate::oci::{Algorithm, Digest};

/// Top-level entries hoard owns besides the record namespaces.
const OWN: &[&str] = &["blobs", "tmp", "quarantine", MARKER];

/// The file that marks a directory as a hoard cache.
pub const MARKER: &str = "HOARD_CACHE";

/// Numbers temp files apart within this process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A claimed cache directory.
#[derive(Debug)]
pub struct CacheDir {
    root: PathBuf,
    /// Opened by the process that writes it (holding the lock), rather
    /// than by a reader beside a serving hoard (`hoard verify`).
    claimed: bool,
}

impl CacheDir {
    /// Claims `root` (see [`CacheDir::claim`]), creates the layout, moves
    /// strays at the top level aside and sweeps `tmp/`.
    pub async fn open(root: &Path) -> io::Result<Arc<CacheDir>> {
        let dir = CacheDir {
            root: root.to_owned(),
            claimed: true,
        };
        tokio::task::spawn_blocking(move || {
            dir.claim()?;
            // `blobs/sha512` appears with the first blob pushed by a sha512 digest.
            for sub in [
                dir.blobs_root(Algorithm::Sha256),
                dir.root.join("manifests/sha256"),
                dir.tmp(),
            ] {
                std::fs::create_dir_all(sub)?;
            }
            let moved = dir.check_top_level()?;
            let removed = dir.clean_tmp()?;
            if moved > 0 {
                tracing::warn!(moved, dir = %dir.root.join("quarantine").display(), "entries that do not belong in the cache were moved aside; inspect and delete them");
            }
            tracing::debug!(removed_temp_files = removed, "tmp/ swept");
            Ok(Arc::new(dir))
        })
        .await
        .map_err(io::Error::other)?
    }

    /// An existing cache directory for a reader beside a serving hoard:
    /// nothing is claimed, swept or moved at start, and walks leave strays
    /// where they are. `None` when `root` holds no hoard cache.
    pub fn existing(root: &Path) -> Option<Arc<CacheDir>> {
        let dir = CacheDir {
            root: root.to_owned(),
            claimed: false,
        };
        dir.root.join("blobs").is_dir().then(|| Arc::new(dir))
    }

    /// Whether this process claimed the directory (see [`CacheDir::existing`]).
    pub fn is_claimed(&self) -> bool {
        self.claimed
    }

    /// The directory itself (for messages, and the lock).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where verified blobs of one algorithm live: `blobs/sha256` (and
    /// `blobs/sha512` for content pushed with sha512 digests).
    pub fn blobs_root(&self, algorithm: Algorithm) -> PathBuf {
        self.root.join("blobs").join(algorithm.as_str())
    }

    /// The path of a blob: derived only from a validated digest.
    pub fn blob(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs_root(digest.algorithm())
            .join(&hex[..2])
            .join(hex)
    }

    /// The path of a record: its validated key, relative to the root.
    pub fn record(&self, key: &RecordKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// The directory of a record namespace (`tags`, `pins`, ...).
    pub fn namespace(&self, ns: &str) -> Option<PathBuf> {
        NAMESPACES.contains(&ns).then(|| self.root.join(ns))
    }

    /// Where stagings and records are written before their rename: on the
    /// same filesystem, so the rename is atomic. Emptied at start.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh, unique path in [`CacheDir::tmp`].
    pub fn temp_path(&self, prefix: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.tmp()
            .join(format!("{prefix}-{}-{n}", std::process::id()))
    }

    /// Makes sure the root is a hoard cache (or a new, empty directory that
    /// becomes one). A non-empty directory that is not a cache is refused:
    /// pointing `cache_dir` at `/home` by mistake must not move files around.
    fn claim(&self) -> io::Result<()> {
        let root = &self.root;
        std::fs::create_dir_all(root)?;
        let marker = root.join(MARKER);
        if marker.exists() {
            return Ok(());
        }
        let empty = std::fs::read_dir(root)?.next().is_none();
        if !empty && !root.join("blobs").is_dir() {
            return Err(io::Error::other(format!(
                "{} is not empty and is not a hoard cache (no {MARKER} file): point cache_dir at an empty or new directory",
                root.display()
            )));
        }
        std::fs::create_dir_all(self.tmp())?;
        super::durable::write_durable(
            &self.temp_path("marker"),
            &marker,
            b"hoard cache, layout 1\n",
        )
    }

    /// Moves `path` (inside the root) aside into the quarantine, keeping
    /// its relative path. Returns where it went.
    pub fn quarantine(&self, path: &Path) -> io::Result<PathBuf> {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let session = format!("{now}-{}", std::process::id());
        let target = self.root.join("quarantine").join(session).join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(path, &target)?;
        tracing::warn!(from = %path.display(), to = %target.display(), "moved a stray cache entry aside");
        Ok(target)
    }

    /// Moves aside top-level entries that are not part of the layout.
    fn check_top_level(&self) -> io::Result<usize> {
        let mut moved = 0;
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name();
            let ours = name
                .to_str()
                .is_some_and(|n| OWN.contains(&n) || NAMESPACES.contains(&n));
            if !ours {
                self.quarantine(&entry.path())?;
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Removes temp files left by fills and writes that a crash interrupted:
    /// they were never verified, so they are not content.
    fn clean_tmp(&self) -> io::Result<usize> {
        let tmp = self.tmp();
        std::fs::create_dir_all(&tmp)?;
        let mut removed = 0;
        // A file that vanishes between the listing and its removal is gone,
        // which is all this wants (an in-process restart can race the old
        // instance's last fill deleting its own temp file).
        let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            match entry.file_type() {
                Ok(t) if t.is_file() => {}
                Ok(_) => continue,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// The one sharded walker: files `blobs/<algorithm>/<2 hex>/<hex>`,
    /// each handed to `found` with the digest its name spells. Anything else (a shard that
    /// is not two hex digits, a name that is not a digest, a blob in the
    /// wrong shard, a directory where a file belongs) is moved into the
    /// quarantine when `strays` says so, else skipped; returns how many.
    pub fn walk_sharded(
        &self,
        algorithm: Algorithm,
        strays: Strays,
        mut found: impl FnMut(Digest, &std::fs::DirEntry) -> io::Result<()>,
    ) -> io::Result<usize> {
        let mut odd = 0;
        let mut stray = |path: &Path| -> io::Result<()> {
            odd += 1;
            match strays {
                Strays::Quarantine => self.quarantine(path).map(drop),
                Strays::Skip => Ok(()),
            }
        };
        let shards = match std::fs::read_dir(self.blobs_root(algorithm)) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for shard in shards {
            let shard = shard?;
            let shard_name = shard.file_name();
            let shard_ok = shard.file_type()?.is_dir()
                && shard_name.to_str().is_some_and(|n| {
                    n.len() == 2
                        && n.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                });
            if !shard_ok {
                stray(&shard.path())?;
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                let parsed = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| Digest::from_parts(algorithm.as_str(), n).ok())
                    .filter(|d| Some(&d.hex()[..2]) == shard_name.to_str());
                match parsed {
                    Some(digest) if entry.file_type()?.is_file() => found(digest, &entry)?,
                    _ => stray(&entry.path())?,
                }
            }
        }
        Ok(odd)
    }

    /// Every file under a record namespace (or the directory a `prefix`
    /// like `links/<id>/` names in it), as the key it is stored under;
    /// a file whose name is not a valid key is logged and left alone.
    pub fn walk_records(&self, prefix: &str) -> io::Result<Vec<RecordKey>> {
        let mut out = Vec::new();
        let ns = prefix.split('/').next().unwrap_or_default();
        let Some(mut top) = self.namespace(ns) else {
            return Ok(out);
        };
        // A prefix naming a directory inside the namespace (one
        // repository's links) walks that directory only.
        if let Some(sub) = prefix.rsplit_once('/').and_then(|(d, _)| RecordKey::new(d)) {
            top = self.record(&sub);
        }
        let mut dirs = vec![top];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let key = path
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(|rel| rel.to_str())
                    .and_then(RecordKey::new);
                match key {
                    Some(k) => out.push(k),
                    None => {
                        tracing::warn!(path = %path.display(), "unexpected file among records, left alone")
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// What [`CacheDir::walk_sharded`] does with what does not belong.
#[derive(Debug, Clone, Copy)]
pub enum Strays {
    /// Move it into the quarantine (at start: it is not content).
    Quarantine,
    /// Leave it (a reader beside a serving hoard).
    Skip,
}
