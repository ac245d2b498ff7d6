//! Phase 1 of an import: one pass over the tar, staging and verifying
//! every blob in the cache's blob store (see [`super`]).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::bundle::layout::{self, Index, LayoutFile};
use crate::bundle::progress::Progress;
use crate::bundle::Error;
use crate::cache::Cache;
use crate::oci::{Digest, Hasher};
use crate::storage::Staging;

/// Largest `index.json` or `oci-layout` read into memory.
const MAX_INDEX: u64 = 16 * 1024 * 1024;

/// A verified blob from the archive.
pub(super) enum Have {
    /// Staged in the cache's store, not yet committed, with the staging's
    /// file (manifests are read back from it).
    Staged(Box<dyn Staging>, Arc<std::fs::File>, u64),
    /// Already in the cache.
    Present(u64),
}

impl Have {
    pub(super) fn size(&self) -> u64 {
        match self {
            Have::Staged(_, _, s) | Have::Present(s) => *s,
        }
    }
}

/// Everything read from the archive. Dropping it aborts the stagings that
/// were not committed.
#[derive(Default)]
pub(super) struct Staged {
    pub(super) blobs: HashMap<Digest, Have>,
    pub(super) index: Option<Index>,
    pub(super) layout_seen: bool,
}

/// Phase 1: reads the whole archive (a file, or a request body bridged to
/// std I/O), staging and verifying every blob. Runs on a blocking thread of
/// the runtime (it reads the tar with std I/O).
pub(super) fn stage(
    cache: &Cache,
    archive: impl Read,
    progress: &dyn Progress,
) -> Result<Staged, Error> {
    let counted = Counted {
        inner: io::BufReader::with_capacity(1 << 20, archive),
        progress,
    };
    let mut tar = tar::Archive::new(counted);
    let mut staged = Staged::default();
    let entries = tar
        .entries()
        .map_err(|e| Error::archive("(start)", format!("not a tar archive: {e}")))?;
    let mut last = String::from("(start)");
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            Error::archive(
                format!("after {last}"),
                format!("damaged or truncated tar: {e}"),
            )
        })?;
        let raw = entry.path().map(|p| p.to_string_lossy().into_owned());
        let path = raw.unwrap_or_default();
        let name = path.trim_start_matches("./").to_owned();
        last = name.clone();
        progress.item(&name);
        let kind = entry.header().entry_type();
        if kind.is_dir() || name.is_empty() || name.ends_with('/') {
            continue;
        }
        let size = entry.size();
        if name == layout::OCI_LAYOUT || name == layout::INDEX_JSON {
            let bytes = read_small(&mut entry, &name, size)?;
            if name == layout::INDEX_JSON {
                let index: Index = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::archive(&name, format!("not an OCI index: {e}")))?;
                staged.index = Some(index);
            } else {
                let l: LayoutFile = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::archive(&name, format!("not an oci-layout file: {e}")))?;
                if l.image_layout_version != layout::LAYOUT_VERSION {
                    return Err(Error::archive(
                        &name,
                        format!(
                            "layout version {} is not {}",
                            l.image_layout_version,
                            layout::LAYOUT_VERSION
                        ),
                    ));
                }
                staged.layout_seen = true;
            }
            continue;
        }
        let Some(hex) = name.strip_prefix("blobs/sha256/") else {
            tracing::warn!(entry = %name, "archive entry is not part of an OCI layout (or not sha256); skipped");
            continue;
        };
        let digest: Digest = format!("sha256:{hex}")
            .parse()
            .map_err(|e| Error::archive(&name, format!("not a blob name: {e}")))?;
        if !kind.is_file() {
            return Err(Error::archive(
                &name,
                "is a link or special file; blobs must be regular files",
            ));
        }
        let keep = !staged.blobs.contains_key(&digest) && cache.blob_size(&digest).is_none();
        let mut staging = match keep {
            true => Some(tokio::runtime::Handle::current().block_on(cache.stage())?),
            false => None,
        };
        let file = staging.as_mut().and_then(|s| s.local_file());
        // An error drops the staging, and its bytes with it.
        copy_verified(&mut entry, &name, &digest, size, file.as_deref())?;
        let have = match (staging, file) {
            (Some(s), Some(f)) => Have::Staged(s, f, size),
            (Some(_), None) => {
                return Err(Error::Cache(
                    io::Error::other("the blob store stages no local file to import into").into(),
                ))
            }
            (None, _) => Have::Present(size),
        };
        staged.blobs.entry(digest).or_insert(have);
    }
    Ok(staged)
}

/// Streams one blob entry into `to` (or nowhere), checking its length and
/// digest (the staging's commit syncs the file).
fn copy_verified(
    entry: &mut impl Read,
    name: &str,
    digest: &Digest,
    size: u64,
    mut out: Option<&std::fs::File>,
) -> Result<(), Error> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(|e| {
            Error::archive(
                name,
                format!("unreadable after {read} of {size} bytes: {e}"),
            )
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
        if let Some(f) = &mut out {
            f.write_all(&buf[..n])
                .map_err(|e| Error::Cache(crate::cache::Error::Io(e)))?;
        }
    }
    if read != size {
        return Err(Error::archive(
            name,
            format!("truncated: {read} of {size} bytes"),
        ));
    }
    let actual = hasher.finish();
    if actual != *digest {
        return Err(Error::archive(
            name,
            format!("content hashes to {actual}, not to its name"),
        ));
    }
    Ok(())
}

fn read_small(entry: &mut impl Read, name: &str, size: u64) -> Result<Vec<u8>, Error> {
    if size > MAX_INDEX {
        return Err(Error::archive(name, format!("{size} bytes is too large")));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut buf)
        .map_err(|e| Error::archive(name, format!("unreadable: {e}")))?;
    if buf.len() as u64 != size {
        return Err(Error::archive(
            name,
            format!("truncated: {} of {size} bytes", buf.len()),
        ));
    }
    Ok(buf)
}

/// Counts archive bytes as the tar reader consumes them.
struct Counted<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}
