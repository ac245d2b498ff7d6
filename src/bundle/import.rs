//! `hoard import`: an OCI-layout tar (hoard's own, or one `skopeo copy ...
//! oci-archive:` made) into a cache.
//!
//! Three phases, and nothing reaches the cache before the third:
//! 1. **Stage** (`stage`). One pass over the tar: each
//!    `blobs/sha256/<hex>` entry is streamed to a temp file in the cache's
//!    `tmp/` while being hashed; its digest and length must match its name
//!    and header. Blobs the cache already has are hashed and dropped. A
//!    corrupt or truncated archive fails here, naming the entry; the drop
//!    guard removes every staged file.
//! 2. **Check.** Each image `index.json` names is placed (`place`:
//!    upstream, repository, tag) and walked: every manifest must be in the archive
//!    (an index may lack platforms: exports can be filtered), every config
//!    and layer of a present manifest must be too.
//! 3. **Commit.** Blobs by rename, held for pins; then manifests with their
//!    media types; then tag records. Pinned, so the budget of the cache
//!    they land in cannot evict what was carried in.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::layout::{self, Descriptor, Needs};
use super::progress::Progress;
use super::{blocking, Error};
use crate::cache::{Cache, Holder, TagKey, TagRecord};
use crate::config::Config;
use crate::oci::{is_index, Digest, RepoName, Tag};
use crate::pins::{Pin, Pins};

mod place;
mod stage;

use place::place;
use stage::{stage, Have, Staged};
/// Where images whose names do not say it go.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Puts every image under this upstream (`--upstream`).
    pub upstream: Option<String>,
    /// Puts every image in this repository (`--repo`); needed when the
    /// archive names images only by a tag (as `skopeo copy ...
    /// oci-archive:bundle.tar:v1` does).
    pub repo: Option<String>,
}

/// What an import did (also the JSON answer of `POST /_hoard/import`).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Images (`index.json` entries) imported.
    pub images: usize,
    /// Tag records written.
    pub tags: Vec<String>,
    /// Blobs (manifests included) added to the cache.
    pub new_blobs: usize,
    /// Their bytes.
    pub new_bytes: u64,
    /// Blobs the cache already had (now pinned too).
    pub present_blobs: usize,
    /// Archive entries no image needed (left out).
    pub unreferenced: usize,
    /// Platforms of indexes that the archive does not carry.
    pub absent_children: usize,
    /// Images with no name: reachable by digest only, and not pinned past
    /// the next start.
    pub unnamed: Vec<Digest>,
    /// Pins recorded (`upstream/repo:tag` or `upstream/repo@digest`).
    pub pins: Vec<String>,
}

impl Summary {
    /// What the import did, for the operator: a line of totals, then a
    /// line per tag, pin, unnamed image and what was left out.
    pub fn report(&self, archive: &str, elapsed: std::time::Duration) -> String {
        let mut out = format!(
            "imported {} images from {archive} in {:.1}s: {} blobs new ({}), {} already cached",
            self.images,
            elapsed.as_secs_f64(),
            self.new_blobs,
            bytesize::ByteSize::b(self.new_bytes).to_string_as(true),
            self.present_blobs,
        );
        for tag in &self.tags {
            out.push_str(&format!("\ntagged {tag}"));
        }
        for pin in &self.pins {
            out.push_str(&format!("\npinned {pin}"));
        }
        for d in &self.unnamed {
            out.push_str(&format!(
                "\nno name for {d}: pull it by digest; not pinned (import with --repo to pin it)"
            ));
        }
        if self.absent_children > 0 {
            out.push_str(&format!("\n{} platform manifests of multi-platform images are not in the archive (exported with --platform)", self.absent_children));
        }
        if self.unreferenced > 0 {
            out.push_str(&format!(
                "\n{} blobs in the archive belong to no image and were left out",
                self.unreferenced
            ));
        }
        out
    }
}

/// An image to import: where it goes and what `index.json` says it is.
struct Image {
    entry: String,
    descriptor: Descriptor,
    digest: Digest,
    place: Option<(String, RepoName, Option<Tag>)>,
}

/// Imports `archive` into `cache`, placing images by their names in the
/// archive, `placement` and `config`'s upstreams, and records a pin for
/// each named image in `pins` (so it survives restarts and the budget, and
/// its tag does not move).
pub async fn import(
    cache: Arc<Cache>,
    config: &Config,
    archive: &Path,
    placement: &Placement,
    pins: &Pins,
    progress: Arc<dyn Progress>,
) -> Result<Summary, Error> {
    let file = std::fs::File::open(archive).map_err(Error::file(archive))?;
    let total = file.metadata().map_err(Error::file(archive))?.len();
    import_from(cache, config, file, total, placement, pins, progress).await
}

/// Imports the archive `reader` yields (`total` bytes, for the progress
/// bar; a running server's `POST /_hoard/import` reads it from the request
/// body), as [`import`] does: complete or not at all, since nothing reaches
/// the cache before the whole archive was read and checked.
pub async fn import_from(
    cache: Arc<Cache>,
    config: &Config,
    reader: impl io::Read + Send + 'static,
    total: u64,
    placement: &Placement,
    pins: &Pins,
    progress: Arc<dyn Progress>,
) -> Result<Summary, Error> {
    progress.start(total);
    let staged = {
        let (cache, p) = (cache.clone(), progress.clone());
        blocking(move || stage(&cache, reader, &*p)).await?
    };
    progress.finish();
    let mut summary = Summary::default();
    let index = staged.index.as_ref().ok_or_else(|| {
        Error::archive(
            layout::INDEX_JSON,
            "missing: this is not an OCI image layout archive",
        )
    })?;
    if !staged.layout_seen {
        tracing::warn!("the archive has no oci-layout file; reading it anyway");
    }
    let images = index
        .manifests
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let entry = format!("index.json manifests[{i}]");
            Ok(Image {
                digest: layout::digest(d, &entry)?,
                place: place(d, config, placement).map_err(|why| Error::archive(&entry, why))?,
                descriptor: d.clone(),
                entry,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let (manifests, blobs, contents) =
        check(&cache, &staged, &images, config, &mut summary).await?;
    commit(&cache, staged, &images, manifests, blobs, &mut summary).await?;
    pin(&cache, pins, &images, contents, &mut summary).await?;
    Ok(summary)
}

type Manifests = BTreeMap<Digest, (Bytes, String)>;

/// What one image of the archive consists of, for its pin.
#[derive(Default)]
struct Content {
    /// Child manifests present (an index's selected platforms).
    children: Vec<Digest>,
    /// Configs and layers.
    blobs: Vec<Digest>,
    /// Bytes of all of it, the top manifest included.
    bytes: u64,
    /// Platforms of the children present, when some are absent (a
    /// filtered export); empty when the image is complete.
    platforms: Vec<String>,
}

/// Phase 2: every image's manifests are in the archive (or the cache), and
/// so is every config and layer they need. Returns every manifest (parsed
/// once), every blob, and each image's content.
async fn check(
    cache: &Cache,
    staged: &Staged,
    images: &[Image],
    config: &Config,
    summary: &mut Summary,
) -> Result<(Manifests, BTreeSet<Digest>, Vec<Content>), Error> {
    let mut manifests = Manifests::new();
    let mut blobs = BTreeSet::new();
    let mut contents = Vec::new();
    for image in images {
        let mut content = Content::default();
        let mut seen = BTreeSet::new();
        let mut present_platforms = Vec::new();
        let mut absent = 0;
        let top = &image.digest;
        let mut stack = vec![(
            top.clone(),
            image.descriptor.size,
            image.descriptor.media_type.clone().unwrap_or_default(),
            None,
        )];
        while let Some((digest, size, hint, platform)) = stack.pop() {
            if !seen.insert(digest.clone()) {
                continue;
            }
            let (bytes, media_type) = match manifests.get(&digest) {
                Some((b, t)) => (b.clone(), t.clone()),
                None => match manifest_bytes(cache, staged, &digest, config).await? {
                    Some(b) => {
                        let t = layout::media_type_of(&hint, &b);
                        (b, t)
                    }
                    None if digest == *top => {
                        return Err(Error::archive(
                            &image.entry,
                            format!("its manifest {digest} is not in the archive"),
                        ))
                    }
                    None => {
                        absent += 1;
                        continue;
                    }
                },
            };
            if bytes.len() as u64 != size {
                return Err(Error::archive(
                    &image.entry,
                    format!(
                        "manifest {digest} has {} bytes, its descriptor says {size}",
                        bytes.len()
                    ),
                ));
            }
            content.bytes += size;
            if digest != *top {
                content.children.push(digest.clone());
                present_platforms.extend(platform.map(|p: crate::oci::Platform| p.to_string()));
            }
            match layout::needs(&digest, &media_type, &bytes)? {
                Needs::Children(children) => {
                    for c in children {
                        stack.push((c.digest, c.size, c.media_type, c.platform));
                    }
                }
                Needs::Blobs(needed) => {
                    for n in needed {
                        match staged.blobs.get(&n.digest) {
                            Some(have) if n.size.is_some_and(|s| s != have.size()) => {
                                return Err(Error::archive(
                                    format!("blobs/sha256/{}", n.digest.hex()),
                                    format!(
                                        "{} bytes, manifest {digest} says {}",
                                        have.size(),
                                        n.size.unwrap_or(0)
                                    ),
                                ))
                            }
                            Some(have) => {
                                if !content.blobs.contains(&n.digest) {
                                    content.bytes += have.size();
                                    content.blobs.push(n.digest.clone());
                                }
                                blobs.insert(n.digest);
                            }
                            None if n.foreign => {}
                            None => {
                                return Err(Error::archive(
                                    &image.entry,
                                    format!(
                                        "{} {} of manifest {digest} is not in the archive",
                                        n.role, n.digest
                                    ),
                                ))
                            }
                        }
                    }
                }
            }
            manifests.entry(digest).or_insert((bytes, media_type));
        }
        if absent > 0 {
            summary.absent_children += absent;
            content.platforms = present_platforms;
        }
        contents.push(content);
    }
    Ok((manifests, blobs, contents))
}

/// A manifest's bytes from the archive (or the cache, which had them).
async fn manifest_bytes(
    cache: &Cache,
    staged: &Staged,
    digest: &Digest,
    config: &Config,
) -> Result<Option<Bytes>, Error> {
    match staged.blobs.get(digest) {
        None => Ok(None),
        Some(Have::Present(_)) => Ok(cache.read_small(digest).await?),
        Some(Have::Staged(_, file, size)) => {
            let entry = format!("blobs/sha256/{}", digest.hex());
            if *size > config.max_manifest_size as u64 {
                return Err(Error::archive(
                    entry,
                    format!("a manifest of {size} bytes is larger than max_manifest_size"),
                ));
            }
            let (file, len) = (file.clone(), *size as usize);
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, 0).map(|()| buf)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| Error::Cache(e.into()))?;
            Ok(Some(Bytes::from(read)))
        }
    }
}

/// Phase 3: blobs, then manifests (children before indexes), then tags.
async fn commit(
    cache: &Cache,
    mut staged: Staged,
    images: &[Image],
    manifests: Manifests,
    blobs: BTreeSet<Digest>,
    summary: &mut Summary,
) -> Result<(), Error> {
    summary.unreferenced = staged
        .blobs
        .keys()
        .filter(|d| !blobs.contains(*d) && !manifests.contains_key(*d))
        .count();
    let order = blobs
        .iter()
        .chain(
            manifests
                .iter()
                .filter(|(_, (_, t))| !is_index(t))
                .map(|(d, _)| d),
        )
        .chain(
            manifests
                .iter()
                .filter(|(_, (_, t))| is_index(t))
                .map(|(d, _)| d),
        );
    for digest in order {
        match staged.blobs.remove(digest) {
            Some(Have::Staged(staging, _, size)) => {
                cache
                    .commit_held(digest, staging, size, Holder::Pin)
                    .await?;
                summary.new_blobs += 1;
                summary.new_bytes += size;
            }
            Some(Have::Present(_)) => {
                if !cache.hold(digest, Holder::Pin) {
                    return Err(Error::Cache(
                        io::Error::other(format!(
                            "{digest} left the cache during the import; run the import again"
                        ))
                        .into(),
                    ));
                }
                summary.present_blobs += 1;
            }
            None => {}
        }
        if let Some((bytes, media_type)) = manifests.get(digest) {
            cache
                .put_manifest(digest, bytes.clone(), media_type)
                .await?;
        }
    }
    for image in images {
        summary.images += 1;
        match &image.place {
            Some((upstream, repo, Some(tag))) => {
                let key = TagKey {
                    upstream: upstream.clone(),
                    repo: repo.clone(),
                    tag: tag.clone(),
                };
                let record = TagRecord {
                    digest: image.digest.clone(),
                    checked_at: SystemTime::now(),
                };
                cache.put_tag(key, record).await?;
                summary
                    .tags
                    .push(format!("{upstream}/{repo}:{tag}@{}", image.digest));
            }
            // Named by digest only: linked, so it is served through its
            // repository (a tag record links what it names).
            Some((upstream, repo, None)) => {
                cache.link_manifest(upstream, repo, &image.digest).await;
            }
            None => summary.unnamed.push(image.digest.clone()),
        }
    }
    Ok(())
}

/// Records a pin for each image that has a name (upstream and repository):
/// by its tag, or by digest when the archive gave none. Unnamed images are
/// held only until the next start (reported in the summary).
async fn pin(
    cache: &Cache,
    pins: &Pins,
    images: &[Image],
    contents: Vec<Content>,
    summary: &mut Summary,
) -> Result<(), Error> {
    for (image, content) in images.iter().zip(contents) {
        let Some((upstream, repo, tag)) = &image.place else {
            continue;
        };
        let pin = Pin {
            upstream: upstream.clone(),
            repo: repo.clone(),
            tag: tag.clone(),
            digest: image.digest.clone(),
            manifests: content.children,
            blobs: content.blobs,
            platforms: content.platforms,
            bytes: content.bytes,
            pinned_at: SystemTime::now(),
        };
        summary.pins.push(pin.key());
        pins.put(cache, pin).await?;
    }
    Ok(())
}
