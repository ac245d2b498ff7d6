//! Which repository a request is for: a local one or an upstream's.
//!
//! In order: `?ns=<registry>` (containerd, k3s) always means that
//! upstream's cache, and pushes with it are refused; a repository that
//! exists locally is served locally; a first path component that names a
//! configured upstream (`/v2/ghcr.io/org/app/...`, path-prefix mirrors)
//! goes to that upstream (pushes refused); anything else is pulled from the
//! default upstream and created locally by a push, unless `[local]`
//! forbids the name. A registry that is not configured is refused: hoard
//! never forwards to a host its operator did not name. A push can only
//! ever write local records, so it cannot change what an upstream's cache
//! serves.

use http::StatusCode;

use super::ApiError;
use crate::oci::{Algorithm, Digest, RepoName};
use crate::policy::Target;

/// Other names clients use for Docker Hub.
const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The upstream whose key gets Docker Hub's `library/` rule.
pub const DOCKER_HUB: &str = "docker.io";

/// Where a read goes.
pub enum Place {
    /// A local (pushed) repository.
    Local(RepoName),
    /// An upstream's cache.
    Remote(Target),
}

/// Resolves a read (`GET`/`HEAD`) of `name` with `ns`. On a store shared
/// by replicas, a name not known here as local is looked up in the store
/// first (another replica may have created it by a push), at most once a
/// second per name (`Local::learn`).
pub async fn place(reg: &super::Registry, name: &str, ns: Option<&str>) -> Result<Place, ApiError> {
    if ns.is_none() {
        let parsed: RepoName = name.parse()?;
        if reg.local.exists(&parsed)
            || (reg.local.learn(&parsed).await && reg.local.exists(&parsed))
        {
            return Ok(Place::Local(parsed));
        }
    }
    resolve(reg, name, ns).map(Place::Remote)
}

/// Resolves a write (upload, manifest `PUT`, `DELETE`) of `name`: the
/// local repository it creates or changes, or why it is refused.
pub fn push_target(
    reg: &super::Registry,
    name: &str,
    ns: Option<&str>,
) -> Result<RepoName, ApiError> {
    let name: RepoName = name.parse()?;
    let denied = |why: String| ApiError::new(StatusCode::FORBIDDEN, "DENIED", why);
    let cfg = reg.local.config();
    if let Some(ns) = ns {
        return Err(denied(format!(
            "pushes with ?ns={ns} are refused: {ns} is mirrored read-only; push without ns to a local repository"
        )));
    }
    if !cfg.push {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "pushing is disabled: set push = true under [local] in mirror.toml",
        ));
    }
    if reg.local.exists(&name) {
        return Ok(name);
    }
    if let Some((first, _)) = name.strip_first() {
        if reg.upstreams.get(first).is_some() {
            return Err(denied(format!(
                "{first} is a mirrored upstream: pushes to {name} are refused (its cache is read-only)"
            )));
        }
        if first.contains('.') || first.contains(':') {
            return Err(denied(format!(
                "{first} looks like a registry host that is not configured: push to a name without a host"
            )));
        }
    }
    if !cfg.may_push(name.as_str()) {
        return Err(denied(format!(
            "{name} is outside the pushable prefixes ([local] push_prefixes)"
        )));
    }
    if !cfg.shadow_docker_hub {
        let hub = reg.default_upstream == DOCKER_HUB;
        let upstream_name = if hub {
            name.clone().with_library()
        } else {
            name.clone()
        };
        let official =
            hub && (!name.as_str().contains('/') || name.as_str().starts_with("library/"));
        let cached = reg
            .cache
            .repositories()
            .iter()
            .any(|(up, repo)| *up == reg.default_upstream && *repo == upstream_name);
        if official || cached {
            return Err(denied(format!(
                "{name} is a name of the default upstream ({}): a local repository must not shadow it; push to a name with a team prefix (team/app) or set shadow_docker_hub = true under [local]",
                reg.default_upstream
            )));
        }
    }
    Ok(name)
}

/// Checks that a digest asked of an upstream's cache is one a mirror can
/// hold: upstream content is addressed (fetched, verified, stored) by
/// sha256; sha512 is for content pushed to local repositories. Anything
/// else is `404` with `code` and a message saying why: the mirror does not
/// have it and never will, and a client with more hosts (containerd) tries
/// the next one.
pub fn mirrored(digest: &Digest, name: &str, code: &'static str) -> Result<(), ApiError> {
    if digest.algorithm() == Algorithm::Sha256 {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        code,
        format!(
            "{} digests are served for local (pushed) repositories only: {name:.100} is mirrored from an upstream, whose content hoard addresses by sha256",
            digest.algorithm()
        ),
    ))
}

/// Resolves `name` (as the client sent it) and `ns`.
pub fn resolve(reg: &super::Registry, name: &str, ns: Option<&str>) -> Result<Target, ApiError> {
    let name: RepoName = name.parse()?;
    let (upstream_name, repo) = match ns {
        Some(ns) => {
            let key = canonical(reg, ns).ok_or_else(|| ApiError::registry_not_configured(ns))?;
            (key, name)
        }
        None => match name.strip_first() {
            Some((first, rest)) if reg.upstreams.get(first).is_some() => (first.to_owned(), rest),
            Some((first, _)) if first.contains('.') && reg.default_upstream == DOCKER_HUB => {
                // Looks like a registry host, and Docker Hub names never
                // start with one: refuse rather than ask Docker Hub for it.
                return Err(ApiError::registry_not_configured(first));
            }
            _ => (reg.default_upstream.clone(), name),
        },
    };
    let upstream = reg
        .upstreams
        .get(&upstream_name)
        .cloned()
        .ok_or_else(|| ApiError::registry_not_configured(&upstream_name))?;
    let repo = if upstream_name == DOCKER_HUB {
        repo.with_library()
    } else {
        repo
    };
    Ok(Target { upstream, repo })
}

/// The configured upstream key for an `ns` value.
fn canonical(reg: &super::Registry, ns: &str) -> Option<String> {
    if reg.upstreams.get(ns).is_some() {
        return Some(ns.to_owned());
    }
    if DOCKER_HUB_ALIASES.contains(&ns) && reg.upstreams.get(DOCKER_HUB).is_some() {
        return Some(DOCKER_HUB.to_owned());
    }
    None
}
