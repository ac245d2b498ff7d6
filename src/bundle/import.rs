//! `hoard import`: an OCI-layout tar (hoard's own, or one `skopeo copy ...
//! oci-archive:` made) into a cache.
//!
//! Three phases, and nothing reaches the cache before the third:
//! 1. **Stage.** One pass over the tar: each `blobs/sha256/<hex>` entry is
//!    streamed to a temp file in the cache's `tmp/` while being hashed;
//!    its digest and length must match its name and header. Blobs the
//!    cache already has are hashed and dropped. A corrupt or truncated
//!    archive fails here, naming the entry; the drop guard removes every
//!    staged file.
//! 2. **Check.** Each image `index.json` names is placed (upstream,
//!    repository, tag) and walked: every manifest must be in the archive
//!    (an index may lack platforms: exports can be filtered), every config
//!    and layer of a present manifest must be too.
//! 3. **Commit.** Blobs by rename, held for pins; then manifests with their
//!    media types; then tag records. Pinned, so the budget of the cache
//!    they land in cannot evict what was carried in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::layout::{self, Descriptor, Index, LayoutFile, Needs};
use super::progress::Progress;
use super::{blocking, Error};
use crate::cache::{Cache, Holder, TagKey, TagRecord};
use crate::config::Config;
use crate::oci::{is_index, Digest, Hasher, RepoName, Tag};
use crate::pins::{Pin, Pins};
use crate::upstream::FetchedManifest;

/// Largest `index.json` or `oci-layout` read into memory.
const MAX_INDEX: u64 = 16 * 1024 * 1024;

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

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
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

/// A verified blob from the archive.
enum Have {
    /// Staged in the cache's `tmp/`, not yet committed.
    Staged(PathBuf, u64),
    /// Already in the cache.
    Present(u64),
}

impl Have {
    fn size(&self) -> u64 {
        match self {
            Have::Staged(_, s) | Have::Present(s) => *s,
        }
    }
}

/// Everything read from the archive. Dropping it removes staged files that
/// were not committed.
#[derive(Default)]
struct Staged {
    blobs: HashMap<Digest, Have>,
    index: Option<Index>,
    layout_seen: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        for have in self.blobs.values() {
            if let Have::Staged(path, _) = have {
                let _ = std::fs::remove_file(path);
            }
        }
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
    quiet: bool,
) -> Result<Summary, Error> {
    let total = std::fs::metadata(archive)
        .map_err(Error::file(archive))?
        .len();
    let progress = Arc::new(Progress::new("importing", total, quiet));
    let staged = {
        let (cache, path, p) = (cache.clone(), archive.to_owned(), progress.clone());
        blocking(move || stage(&cache, &path, &p)).await?
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
                digest: d.digest(&entry)?,
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

/// Phase 1: reads the whole archive, staging and verifying every blob.
fn stage(cache: &Cache, archive: &Path, progress: &Progress) -> Result<Staged, Error> {
    let file = std::fs::File::open(archive).map_err(Error::file(archive))?;
    let counted = Counted {
        inner: io::BufReader::with_capacity(1 << 20, file),
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
        let tmp = keep.then(|| cache.temp_path("import"));
        let result = copy_verified(&mut entry, &name, &digest, size, tmp.as_deref());
        if let Err(e) = result {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            return Err(e);
        }
        let have = match tmp {
            Some(t) => Have::Staged(t, size),
            None => Have::Present(size),
        };
        staged.blobs.entry(digest).or_insert(have);
    }
    Ok(staged)
}

/// Streams one blob entry into `to` (or nowhere), checking its length and
/// digest; `to` is synced so a later rename makes it durable.
fn copy_verified(
    entry: &mut impl Read,
    name: &str,
    digest: &Digest,
    size: u64,
    to: Option<&Path>,
) -> Result<(), Error> {
    let mut out = match to {
        Some(p) => Some((std::fs::File::create(p).map_err(Error::file(p))?, p)),
        None => None,
    };
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
        if let Some((f, p)) = &mut out {
            f.write_all(&buf[..n]).map_err(Error::file(p))?;
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
    if let Some((f, p)) = out {
        f.sync_all().map_err(Error::file(p))?;
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

/// Where an `index.json` entry goes: `None` for an unnamed image (kept by
/// digest only). Names hoard wrote win; then the OCI `ref.name` (or
/// containerd's name): a full reference, or only a tag, in which case the
/// repository must come from `--repo`.
fn place(
    d: &Descriptor,
    config: &Config,
    placement: &Placement,
) -> Result<Option<(String, RepoName, Option<Tag>)>, String> {
    let (mut upstream, mut repo, tag): (Option<String>, Option<String>, Option<String>) = match (
        d.annotation(layout::HOARD_UPSTREAM),
        d.annotation(layout::HOARD_REPOSITORY),
    ) {
        (Some(u), Some(r)) => (
            Some(u.to_owned()),
            Some(r.to_owned()),
            d.annotation(layout::HOARD_TAG).map(str::to_owned),
        ),
        _ => {
            let name = d
                .annotation(layout::REF_NAME)
                .or_else(|| d.annotation(layout::CONTAINERD_NAME));
            match name {
                None => (None, None, None),
                Some(n) if !n.contains('/') && n.parse::<Tag>().is_ok() => {
                    (None, None, Some(n.to_owned()))
                }
                Some(n) => split_name(n, config)?,
            }
        }
    };
    if let Some(u) = &placement.upstream {
        upstream = Some(u.clone());
    }
    if let Some(r) = &placement.repo {
        repo = Some(r.clone());
    }
    let Some(repo) = repo else {
        return match tag {
            Some(t) => Err(format!(
                "the image is named only by the tag {t:?}: say which repository it belongs to with --repo NAME (and --upstream NAME, else the default upstream {:?})",
                config.default_upstream
            )),
            None => Ok(None),
        };
    };
    let named = upstream.unwrap_or_else(|| config.default_upstream.clone());
    let upstream = canonical_upstream(&named, config).ok_or_else(|| {
        format!("the image belongs to registry {named:?}, which is not configured: add it to [upstreams] or import with --upstream NAME")
    })?;
    let repo: RepoName = repo
        .parse()
        .map_err(|e| format!("repository {repo:?}: {e}"))?;
    let repo = if upstream == "docker.io" {
        repo.with_library()
    } else {
        repo
    };
    let tag = tag
        .map(|t| t.parse::<Tag>().map_err(|e| format!("tag {t:?}: {e}")))
        .transpose()?;
    Ok(Some((upstream, repo, tag)))
}

/// Splits `[registry/]repo[:tag]` as written in an archive; the registry
/// is kept as written (checked against the config by the caller).
#[allow(clippy::type_complexity)]
fn split_name(
    n: &str,
    config: &Config,
) -> Result<(Option<String>, Option<String>, Option<String>), String> {
    let slash = n.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match n[slash..].rfind(':') {
        Some(i) => (&n[..slash + i], Some(n[slash + i + 1..].to_owned())),
        None => (n, None),
    };
    Ok(match name.split_once('/') {
        Some((first, rest))
            if canonical_upstream(first, config).is_some() || looks_like_host(first) =>
        {
            (Some(first.to_owned()), Some(rest.to_owned()), tag)
        }
        _ => (None, Some(name.to_owned()), tag),
    })
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
            image.descriptor.media_type.clone(),
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
                present_platforms.extend(platform.map(|p: layout::Platform| p.to_string()));
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
                            None if n.optional => {}
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
        Some(Have::Staged(path, size)) => {
            let entry = format!("blobs/sha256/{}", digest.hex());
            if *size > config.max_manifest_size as u64 {
                return Err(Error::archive(
                    entry,
                    format!("a manifest of {size} bytes is larger than max_manifest_size"),
                ));
            }
            let bytes = tokio::fs::read(path).await.map_err(Error::file(path))?;
            Ok(Some(Bytes::from(bytes)))
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
            Some(Have::Staged(path, size)) => {
                let committed = cache.commit_held(digest, &path, size, Holder::Pin).await;
                if committed.is_err() {
                    let _ = std::fs::remove_file(&path);
                }
                committed?;
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
                .put_manifest(&FetchedManifest {
                    bytes: bytes.clone(),
                    media_type: media_type.clone(),
                    digest: digest.clone(),
                })
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
            Some(_) => {}
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

/// The `[upstreams]` key for a registry name, Docker Hub's other names
/// included (as `prefetch::reference` resolves them).
fn canonical_upstream(name: &str, config: &Config) -> Option<String> {
    if config.upstreams.contains_key(name) {
        return Some(name.to_owned());
    }
    let hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    (hub.contains(&name) && config.upstreams.contains_key("docker.io")).then(|| "docker.io".into())
}

/// Whether a first name component is a registry host, as the Docker
/// reference grammar decides.
fn looks_like_host(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost"
}

/// Counts archive bytes as the tar reader consumes them.
struct Counted<'a, R> {
    inner: R,
    progress: &'a Progress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}
