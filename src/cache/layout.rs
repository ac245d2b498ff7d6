//! What belongs in the cache directory, and where strays go.
//!
//! At start hoard checks the layout. Anything it did not write (a stray
//! file, a misnamed blob, an unreadable record) is moved into
//! `quarantine/<time>-<pid>/` with its relative path kept, and reported:
//! never deleted silently, never served.

use std::io;
use std::path::{Path, PathBuf};

/// Top-level entries hoard owns.
/// `local/` holds local (pushed) repositories' records, `uploads/` their
/// upload sessions, `pins/` the records of pinned images.
pub const TOP_LEVEL: &[&str] = &[
    "blobs",
    "manifests",
    "tags",
    "tmp",
    "quarantine",
    "local",
    "uploads",
    "pins",
    MARKER,
];

/// The file that marks a directory as a hoard cache.
pub const MARKER: &str = "HOARD_CACHE";

/// Makes sure `root` is a hoard cache (or a new, empty directory that
/// becomes one). A non-empty directory that is not a cache is refused:
/// pointing `cache_dir` at `/home` by mistake must not move files around.
pub fn claim(root: &Path) -> io::Result<()> {
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
    super::atomic::write_durable(root, &marker, b"hoard cache, layout 1\n")
}

/// Moves `path` (inside `root`) aside into the quarantine, keeping its
/// relative path. Returns where it went.
pub fn quarantine(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let session = format!("{}-{}", super::index::now_secs(), std::process::id());
    let target = root.join("quarantine").join(session).join(rel);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(path, &target)?;
    tracing::warn!(from = %path.display(), to = %target.display(), "moved a stray cache entry aside");
    Ok(target)
}

/// Moves aside top-level entries that are not part of the layout.
pub fn check_top_level(root: &Path) -> io::Result<usize> {
    let mut moved = 0;
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| TOP_LEVEL.contains(&n)) {
            quarantine(root, &entry.path())?;
            moved += 1;
        }
    }
    Ok(moved)
}
