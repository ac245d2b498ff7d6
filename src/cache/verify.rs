//! `hoard verify`: re-hash every stored blob.
//!
//! Runs beside a serving hoard on the same store without disturbing it: it
//! only reads, and moves a damaged blob aside with
//! [`BlobStore::set_aside`]. The server's index may still list a moved
//! blob; its next read finds it gone, drops it from the index and fetches
//! it again.

use std::io;

use tokio::io::AsyncReadExt;

use crate::oci::{Digest, Hasher};
use crate::storage::BlobStore;

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    /// Blobs checked.
    pub checked: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Blobs whose content did not match their name, and where they went.
    pub damaged: Vec<(Digest, String)>,
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
pub type Progress<'a> = &'a mut (dyn FnMut(u64, u64, u64, u64) + Send);

/// [`verify`] for a caller outside any runtime (the `hoard verify`
/// command): runs it on a small runtime of its own.
pub fn verify_blocking(store: &dyn BlobStore, progress: Progress<'_>) -> io::Result<Report> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(verify(store, progress))
}

/// Re-hashes every blob of `store`, in digest order.
pub async fn verify(store: &dyn BlobStore, progress: Progress<'_>) -> io::Result<Report> {
    let mut blobs = store.list().await?.blobs;
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    let total_bytes: u64 = blobs.iter().map(|b| b.size).sum();
    let total = blobs.len() as u64;
    let mut report = Report::default();
    let mut buf = vec![0u8; 1024 * 1024];
    for blob in blobs {
        let digest = blob.digest;
        let mut hasher = Hasher::for_digest(&digest);
        let read = async {
            let mut reader = store.open(&digest, 0, blob.size).await?;
            loop {
                let k = reader.read(&mut buf).await?;
                if k == 0 {
                    return Ok::<_, io::Error>(());
                }
                hasher.update(&buf[..k]);
                report.bytes += k as u64;
            }
        }
        .await;
        report.checked += 1;
        match read {
            // Removed by an eviction while we looked: not damage.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => report.unreadable.push((digest, e.to_string())),
            Ok(()) => {
                let actual = hasher.finish();
                if actual != digest {
                    let to = store.set_aside(&digest).await?;
                    tracing::error!(%digest, %actual, moved_to = %to, "damaged blob moved aside");
                    report.damaged.push((digest, to));
                }
            }
        }
        progress(report.checked, total, report.bytes, total_bytes);
    }
    Ok(report)
}
