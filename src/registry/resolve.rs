//! Which upstream a request is for, and the repository name to ask it for.
//!
//! In order: `?ns=<registry>` (containerd, k3s); a first path component that
//! names a configured upstream (`/v2/ghcr.io/org/app/...`, path-prefix
//! mirrors); the default upstream. A registry that is not configured is
//! refused: hoard never forwards to a host its operator did not name.

use std::sync::Arc;

use super::ApiError;
use crate::oci::RepoName;
use crate::upstream::Upstream;

/// Other names clients use for Docker Hub.
const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The upstream whose key gets Docker Hub's `library/` rule.
pub const DOCKER_HUB: &str = "docker.io";

/// A resolved request target.
pub struct Target {
    /// The upstream.
    pub upstream: Arc<Upstream>,
    /// The repository as named upstream (`library/alpine`).
    pub repo: RepoName,
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
