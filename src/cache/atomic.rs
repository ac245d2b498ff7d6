//! Durable file writes: temp file + fsync + rename + fsync of the directory.
//!
//! After a crash a file written this way is either complete or absent.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique file name for a temp file in `tmp_dir`.
pub fn temp_path(tmp_dir: &Path, prefix: &str) -> std::path::PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    tmp_dir.join(format!("{prefix}-{}-{n}", std::process::id()))
}

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

/// Writes `bytes` to `to` atomically and durably, staging in `tmp_dir`.
pub fn write_durable(tmp_dir: &Path, to: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(tmp_dir, "meta");
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        rename_durable(&tmp, to)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
