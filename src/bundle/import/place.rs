//! Where an imported image goes: its upstream, repository and tag, from
//! its name in the archive, `--upstream`/`--repo` and the configured
//! upstreams.

use super::Placement;
use crate::bundle::layout::{self, Descriptor};
use crate::config::Config;
use crate::oci::{RepoName, Tag};

/// Where an `index.json` entry goes: `None` for an unnamed image (kept by
/// digest only). Names hoard wrote win; then the OCI `ref.name` (or
/// containerd's name): a full reference, or only a tag, in which case the
/// repository must come from `--repo`.
pub(super) fn place(
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
