//! One writer per cache directory.
//!
//! `hoard serve` and the offline commands (`hoard prefetch`, `pin`, `unpin`
//! without `--server`) take an exclusive `flock` on the cache directory
//! itself before opening it, so a running server and a CLI never write one
//! directory at once. Locking the directory (not a file in it) leaves the
//! cache layout untouched and works on a new, still empty directory. The
//! kernel drops the lock when the process dies, so a crash never leaves a
//! stale lock behind.

use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// Held for as long as this process may write the cache directory.
#[derive(Debug)]
pub struct CacheLock {
    _dir: File,
    path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("the cache directory {0} is in use by another hoard process (a running `hoard serve`?): stop it, or pass --server URL to work through it")]
    Busy(PathBuf),
    /// The directory could not be created or opened.
    #[error("cannot lock the cache directory {0}: {1}")]
    Io(PathBuf, io::Error),
}

impl CacheLock {
    /// Creates `dir` if needed and locks it, failing at once when another
    /// process holds the lock (never waits: the other one may run for days).
    pub fn acquire(dir: &Path) -> Result<CacheLock, LockError> {
        let io_err = |e| LockError::Io(dir.to_owned(), e);
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let file = File::open(dir).map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => Ok(CacheLock {
                _dir: file,
                path: dir.to_owned(),
            }),
            Err(TryLockError::WouldBlock) => Err(LockError::Busy(dir.to_owned())),
            Err(TryLockError::Error(e)) => Err(io_err(e)),
        }
    }

    /// The locked directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let first = CacheLock::acquire(&cache).unwrap();
        let err = CacheLock::acquire(&cache).unwrap_err();
        assert!(matches!(err, LockError::Busy(_)), "{err}");
        assert!(err.to_string().contains("--server"), "{err}");
        drop(first);
        CacheLock::acquire(&cache).unwrap();
        // The directory stays empty: a new cache can still be claimed.
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    }
}
