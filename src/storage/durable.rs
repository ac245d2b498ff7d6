//! Durable file writes: temp file + fsync + rename + fsync of the directory.
//!
//! After a crash a file written this way is either complete or absent.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Renames `from` to `to`, creating `to`'s directory, and syncs the directory
/// so the rename itself survives a power cut.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    let dir = to
        .parent()
        .ok_or_else(|| io::Error::other("target has no parent directory"))?;
    fs::create_dir_all(dir)?;
    fs::rename(from, to)?;
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `to` atomically and durably through the temp file
/// `tmp` (on the same filesystem), which is gone afterwards either way.
pub fn write_durable(tmp: &Path, to: &Path, bytes: &[u8]) -> io::Result<()> {
    let result = (|| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        rename_durable(tmp, to)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Removes `path` (absent is fine) and syncs its directory so the removal
/// survives a power cut.
pub fn remove_durable(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
