//! `hoard verify`: re-hash every cached blob and manifest.
//!
//! Runs beside a serving hoard on the same directory without disturbing it:
//! it only reads, and moves a damaged blob aside with one rename. The
//! server's index may still list a moved blob; its next read finds the file
//! gone, drops it from the index and fetches it again.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::oci::{Digest, Hasher};

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    /// Blobs checked.
    pub checked: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Blobs whose content did not match their name, and where they went.
    pub damaged: Vec<(Digest, PathBuf)>,
    /// Blobs that could not be read.
    pub unreadable: Vec<(Digest, String)>,
}

impl Report {
    /// Whether the cache is intact.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.unreadable.is_empty()
    }
}

/// Progress callback: (blobs done, blobs total, bytes done, bytes total).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64, u64, u64);

/// Re-hashes every blob under `cache_dir` (blocking; run it on a thread).
pub fn verify(cache_dir: &Path, progress: Progress<'_>) -> io::Result<Report> {
    let blobs = list(cache_dir)?;
    let total_bytes: u64 = blobs.iter().map(|(_, _, s)| s).sum();
    let total = blobs.len() as u64;
    let mut report = Report::default();
    let mut buf = vec![0u8; 1024 * 1024];
    for (digest, path, _) in blobs {
        let mut hasher = Hasher::new();
        let read = (|| -> io::Result<u64> {
            let mut f = std::fs::File::open(&path)?;
            let mut n = 0;
            loop {
                let k = f.read(&mut buf)?;
                if k == 0 {
                    return Ok(n);
                }
                hasher.update(&buf[..k]);
                n += k as u64;
                report.bytes += k as u64;
            }
        })();
        report.checked += 1;
        match read {
            // Removed by an eviction while we looked: not damage.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => report.unreadable.push((digest, e.to_string())),
            Ok(_) => {
                let actual = hasher.finish();
                if actual != digest {
                    let to = super::layout::quarantine(cache_dir, &path)?;
                    tracing::error!(%digest, %actual, moved_to = %to.display(), "damaged blob moved aside");
                    report.damaged.push((digest, to));
                }
            }
        }
        progress(report.checked, total, report.bytes, total_bytes);
    }
    Ok(report)
}

fn list(cache_dir: &Path) -> io::Result<Vec<(Digest, PathBuf, u64)>> {
    let root = cache_dir.join("blobs").join("sha256");
    let mut out = Vec::new();
    for shard in std::fs::read_dir(&root)? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(shard.path())? {
            let entry = entry?;
            let digest = entry
                .file_name()
                .to_str()
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok());
            if let Some(d) = digest {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((d, entry.path(), size));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}
