//! `hoard export`: images from the cache into one OCI-layout tar.
//!
//! First a plan, with nothing written: every image's manifests are read
//! from the cache (tags through their records) and walked down to each
//! config and layer, so anything missing fails the export before an
//! archive exists, naming the image and the digest. Then one pass writes
//! `oci-layout`, `index.json` and each blob once, streamed from the cache
//! in chunks and re-hashed on the way: damage on disk fails the export
//! instead of travelling to the disconnected site. The archive is written
//! beside its final name and renamed into place only when complete.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::layout::{self, Descriptor, Index, LayoutFile, Needs, Platforms};
use super::progress::Progress;
use super::{blocking, Error};
use crate::cache::{Cache, TagKey};
use crate::oci::{Digest, Hasher};
use crate::pins::Pins;
use crate::prefetch::ImageRef;

/// Where the archive goes.
#[derive(Debug, Clone)]
pub enum Output {
    /// A file, replaced atomically when the export succeeds.
    File(PathBuf),
    /// Standard output (`-o -`), for piping into ssh or a USB writer.
    Stdout,
    /// Chunks for a response body (`POST /_hoard/export`, see
    /// [`super::stream`]); a closed receiver (the client hung up) stops
    /// the export.
    Channel(tokio::sync::mpsc::Sender<Bytes>),
}

/// What an export wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Images named in `index.json`.
    pub images: usize,
    /// Manifests and indexes written.
    pub manifests: usize,
    /// Configs and layers written.
    pub blobs: usize,
    /// Bytes of content (manifests and blobs).
    pub bytes: u64,
}

impl Summary {
    /// The line the CLI prints when an export to `output` is done.
    pub fn line(&self, output: &Path, took: std::time::Duration) -> String {
        format!(
            "exported {} images ({} manifests, {} blobs, {}) to {} in {:.1}s",
            self.images,
            self.manifests,
            self.blobs,
            bytesize::ByteSize::b(self.bytes).to_string_as(true),
            output.display(),
            took.as_secs_f64()
        )
    }
}

/// An archive planned and checked, nothing written yet: everything it
/// needs is in the cache, and its [`Summary`] is known.
pub struct Planned {
    plan: Plan,
    /// What the archive will hold.
    pub summary: Summary,
}

/// What goes into the archive, decided before anything is written.
#[derive(Default)]
struct Plan {
    entries: Vec<Descriptor>,
    manifests: BTreeMap<Digest, Bytes>,
    /// Blob -> (size, the image it was first needed for).
    blobs: BTreeMap<Digest, (u64, String)>,
}

/// Exports `images` from `cache` to `out`, keeping only `platforms` of
/// multi-platform images.
pub async fn export(
    cache: Arc<Cache>,
    images: &[ImageRef],
    platforms: &Platforms,
    out: Output,
    progress: Arc<dyn Progress>,
) -> Result<Summary, Error> {
    let wanted: Vec<_> = images
        .iter()
        .map(|i| (i.clone(), platforms.clone()))
        .collect();
    export_each(cache, &wanted, out, progress).await
}

/// The pinned set as export wants it: each pin by its pinned digest (so a
/// tag exports what it is pinned to, whatever the upstream moved it to),
/// named by its tag when it has one, with the platforms it was pinned for.
pub fn pinned(pins: &Pins) -> Result<Vec<(ImageRef, Platforms)>, Error> {
    pins.list()
        .into_iter()
        .map(|p| {
            let platforms = p
                .platforms
                .join(",")
                .parse()
                .map_err(|e| Error::Reference(format!("pin {}: {e}", p.key())))?;
            let image = ImageRef {
                upstream: p.upstream,
                repo: p.repo,
                tag: p.tag,
                digest: Some(p.digest),
            };
            Ok((image, platforms))
        })
        .collect()
}

/// Exports each image with its own platform selection (what `--pinned`
/// needs: every pin keeps the platforms it was pinned for). An image named
/// twice (on the command line and as a pin) is written once.
pub async fn export_each(
    cache: Arc<Cache>,
    images: &[(ImageRef, Platforms)],
    out: Output,
    progress: Arc<dyn Progress>,
) -> Result<Summary, Error> {
    let planned = plan_each(&cache, images).await?;
    write(cache, planned, out, progress).await
}

/// Plans the archive of `images` (see [`export_each`]): fails, naming the
/// image and digest, if anything is missing, before a byte is written.
pub async fn plan_each(cache: &Cache, images: &[(ImageRef, Platforms)]) -> Result<Planned, Error> {
    let mut plan = Plan::default();
    for (image, platforms) in images {
        plan_image(cache, image, platforms, &mut plan).await?;
    }
    let summary = Summary {
        images: plan.entries.len(),
        manifests: plan.manifests.len(),
        blobs: plan.blobs.len(),
        bytes: plan.manifests.values().map(|b| b.len() as u64).sum::<u64>()
            + plan.blobs.values().map(|(s, _)| s).sum::<u64>(),
    };
    Ok(Planned { plan, summary })
}

/// Writes a planned archive to `out`.
pub async fn write(
    cache: Arc<Cache>,
    planned: Planned,
    out: Output,
    progress: Arc<dyn Progress>,
) -> Result<Summary, Error> {
    let Planned { plan, summary } = planned;
    progress.start(summary.bytes);
    let handle = tokio::runtime::Handle::current();
    let p = progress.clone();
    blocking(move || write_archive(&cache, &handle, plan, out, &*p)).await?;
    progress.finish();
    Ok(summary)
}

/// Adds one image, and everything it needs, to the plan.
async fn plan_image(
    cache: &Cache,
    image: &ImageRef,
    platforms: &Platforms,
    plan: &mut Plan,
) -> Result<(), Error> {
    let name = image.to_string();
    let top = match (&image.digest, &image.tag) {
        (Some(d), _) => d.clone(),
        (None, Some(tag)) => {
            let key = TagKey {
                upstream: image.upstream.clone(),
                repo: image.repo.clone(),
                tag: tag.clone(),
            };
            cache
                .tag(&key)
                .ok_or_else(|| Error::NoTag {
                    image: name.clone(),
                })?
                .digest
        }
        (None, None) => return Err(Error::Reference(format!("{name}: no tag or digest"))),
    };
    let missing = |what: &str, digest: &Digest, hint: &str| Error::Missing {
        image: name.clone(),
        what: what.to_owned(),
        digest: digest.clone(),
        hint: hint.to_owned(),
    };
    let Some((bytes, media_type)) = cache.manifest(&top).await? else {
        return Err(missing("manifest", &top, ""));
    };
    // Named twice (say on the command line and as a pin): one entry, but
    // still walked, for platforms the first mention did not keep.
    let named = entry(image, &top, &media_type, bytes.len() as u64);
    let seen = |e: &Descriptor| e.digest == named.digest && e.annotations == named.annotations;
    if !plan.entries.iter().any(seen) {
        plan.entries.push(named);
    }
    // Depth-first over index -> manifests -> blobs.
    let mut stack = vec![(top, bytes, media_type.to_string())];
    while let Some((digest, bytes, media_type)) = stack.pop() {
        let needs = layout::needs(&digest, &media_type, &bytes)?;
        plan.manifests.insert(digest.clone(), bytes);
        match needs {
            Needs::Children(children) => {
                for child in children {
                    if !platforms.wants(child.platform.as_ref())
                        || plan.manifests.contains_key(&child.digest)
                    {
                        continue;
                    }
                    let Some((bytes, mt)) = cache.manifest(&child.digest).await? else {
                        let what = match &child.platform {
                            Some(p) => format!("manifest for {p}"),
                            None => "child manifest".to_owned(),
                        };
                        let hint = if platforms.all() {
                            ", or export only the platforms you have with --platform"
                        } else {
                            ""
                        };
                        return Err(missing(&what, &child.digest, hint));
                    };
                    stack.push((child.digest, bytes, mt.to_string()));
                }
            }
            Needs::Blobs(blobs) => {
                for blob in blobs {
                    match cache.lookup(&blob.digest).await {
                        Some(size) => {
                            if blob.size.is_some_and(|s| s != size) {
                                return Err(Error::Manifest {
                                    digest,
                                    why: format!(
                                        "says {} {} has {} bytes, the cached one has {size}",
                                        blob.role,
                                        blob.digest,
                                        blob.size.unwrap_or(0)
                                    ),
                                });
                            }
                            plan.blobs
                                .entry(blob.digest)
                                .or_insert_with(|| (size, name.clone()));
                        }
                        None if blob.foreign => {}
                        None => return Err(missing(blob.role.as_str(), &blob.digest, "")),
                    }
                }
            }
        }
    }
    Ok(())
}

/// The `index.json` entry naming `image`.
fn entry(image: &ImageRef, digest: &Digest, media_type: &str, size: u64) -> Descriptor {
    let mut annotations = BTreeMap::from([
        (layout::HOARD_UPSTREAM.to_owned(), image.upstream.clone()),
        (layout::HOARD_REPOSITORY.to_owned(), image.repo.to_string()),
    ]);
    if let Some(tag) = &image.tag {
        // `upstream/repo:tag`: what skopeo's `oci-archive:bundle.tar:<name>`
        // and containerd's import name the image by.
        let name = format!("{}/{}:{tag}", image.upstream, image.repo);
        annotations.insert(layout::HOARD_TAG.to_owned(), tag.to_string());
        annotations.insert(layout::REF_NAME.to_owned(), name.clone());
        annotations.insert(layout::CONTAINERD_NAME.to_owned(), name);
    }
    Descriptor {
        media_type: Some(media_type.to_owned()),
        digest: digest.to_string(),
        size,
        annotations,
        ..Descriptor::default()
    }
}

/// Writes the planned archive (blocking; blobs are read through `handle`).
fn write_archive(
    cache: &Cache,
    handle: &tokio::runtime::Handle,
    plan: Plan,
    out: Output,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let (sink, partial, target): (Box<dyn Write + Send>, _, _) = match out {
        Output::Stdout => (Box::new(io::stdout()), None, PathBuf::from("<stdout>")),
        Output::Channel(tx) => (
            Box::new(super::stream::ChannelWriter::new(tx)),
            None,
            PathBuf::from("<response>"),
        ),
        Output::File(path) => {
            let partial = Partial::create(&path)?;
            (Box::new(partial.file()?), Some(partial), path)
        }
    };
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, sink));
    write_entries(&mut tar, cache, handle, &plan, progress, &target)?;
    let io = Error::file(&target);
    tar.into_inner().and_then(|mut w| w.flush()).map_err(io)?;
    match partial {
        Some(p) => p.commit().map_err(Error::file(&target)),
        None => Ok(()),
    }
}

/// `oci-layout`, `index.json`, then every manifest and blob once, sorted by
/// digest (the same cache content always makes the same archive).
fn write_entries(
    tar: &mut tar::Builder<impl Write>,
    cache: &Cache,
    handle: &tokio::runtime::Handle,
    plan: &Plan,
    progress: &dyn Progress,
    target: &Path,
) -> Result<(), Error> {
    let io = |e: io::Error| Error::File {
        path: target.to_owned(),
        source: e,
    };
    let json = |v: serde_json::Result<Vec<u8>>| v.map_err(io::Error::other).map_err(io);
    let layout_file = json(serde_json::to_vec(&LayoutFile {
        image_layout_version: layout::LAYOUT_VERSION.to_owned(),
    }))?;
    let index = json(serde_json::to_vec_pretty(&Index {
        schema_version: 2,
        media_type: Some(layout::OCI_INDEX.to_owned()),
        manifests: plan.entries.clone(),
    }))?;
    let mut append = |path: &str, size: u64, data: &mut dyn Read| {
        tar.append_data(&mut header(path, size), path, data)
            .map_err(io)
    };
    append(
        layout::OCI_LAYOUT,
        layout_file.len() as u64,
        &mut &layout_file[..],
    )?;
    append(layout::INDEX_JSON, index.len() as u64, &mut &index[..])?;
    append("blobs/", 0, &mut io::empty())?;
    append("blobs/sha256/", 0, &mut io::empty())?;
    for (digest, bytes) in &plan.manifests {
        progress.item(&format!("manifest {digest}"));
        append(&blob_path(digest), bytes.len() as u64, &mut &bytes[..])?;
        progress.add(bytes.len() as u64);
    }
    for (digest, (size, image)) in &plan.blobs {
        progress.item(&format!("blob {digest}"));
        let reader = handle
            .block_on(cache.open_blob(digest, 0, *size))?
            .ok_or_else(|| Error::Missing {
                image: image.clone(),
                what: "blob".into(),
                digest: digest.clone(),
                hint: " (it left the cache during the export)".into(),
            })?;
        let mut hashing = Hashing {
            inner: tokio_util::io::SyncIoBridge::new_with_handle(reader, handle.clone()),
            hasher: Hasher::new(),
            read: 0,
            progress,
        };
        append(&blob_path(digest), *size, &mut hashing)?;
        let (read, actual) = (hashing.read, hashing.hasher.finish());
        if read != *size || actual != *digest {
            return Err(Error::Damaged {
                image: image.clone(),
                digest: digest.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// A GNU header (sizes past 8 GiB fit), time 0 so the same cache content
/// always makes the same archive: a directory for a path ending in `/`,
/// else a regular file readable by all.
fn header(path: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mtime(0);
    if path.ends_with('/') {
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
    } else {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
    }
    h
}

/// `blobs/sha256/<hex>`.
fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Re-hashes a blob as it goes into the archive, and counts it.
struct Hashing<'a, R> {
    inner: R,
    hasher: Hasher,
    read: u64,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        self.progress.add(n as u64);
        Ok(n)
    }
}

/// The archive being written beside its final name; removed unless
/// committed, so a failed export leaves no half archive behind.
pub(crate) struct Partial {
    tmp: PathBuf,
    target: PathBuf,
    done: bool,
}

impl Partial {
    pub(crate) fn create(target: &Path) -> Result<Partial, Error> {
        let name = target
            .file_name()
            .ok_or_else(|| Error::Reference(format!("-o {}: not a file name", target.display())))?
            .to_string_lossy();
        let tmp = target.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        Ok(Partial {
            tmp,
            target: target.to_owned(),
            done: false,
        })
    }

    pub(crate) fn file(&self) -> Result<std::fs::File, Error> {
        std::fs::File::create(&self.tmp).map_err(Error::file(&self.tmp))
    }

    pub(crate) fn commit(mut self) -> io::Result<()> {
        std::fs::File::open(&self.tmp)?.sync_all()?;
        std::fs::rename(&self.tmp, &self.target)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
