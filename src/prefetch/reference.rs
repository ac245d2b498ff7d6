//! Image references as operators write them (`alpine:3.19`,
//! `ghcr.io/org/app:v1`, `registry.example/x@sha256:...`), resolved to a
//! configured upstream the way the server resolves a pull: a first
//! component that looks like a host (a dot, a colon, or `localhost`) must
//! name a configured upstream (Docker Hub's other names included), anything
//! else goes to `default_upstream`; on Docker Hub a one-component name gets
//! `library/`. An unconfigured registry is an error, never a guess.

use std::fmt;

use crate::config::Config;
use crate::oci::{Digest, RepoName, Tag};

/// The upstream whose names get `library/`.
const DOCKER_HUB: &str = "docker.io";
/// Other names clients use for Docker Hub.
const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// Why a reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    /// Not a reference at all.
    #[error("{0:?} is not an image reference ({1})")]
    Invalid(String, String),
    /// Names a registry hoard has no upstream for.
    #[error("registry {0:?} is not configured in hoard: add it under [upstreams] in mirror.toml")]
    NotConfigured(String),
}

/// A resolved image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Configured upstream key.
    pub upstream: String,
    /// Repository as named upstream.
    pub repo: RepoName,
    /// Tag (`latest` when neither a tag nor a digest was given).
    pub tag: Option<Tag>,
    /// Digest, when given (`name@sha256:...`, or `name:tag@sha256:...`).
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `text` and resolves it against `config`'s upstreams.
    pub fn resolve(text: &str, config: &Config) -> Result<ImageRef, RefError> {
        let invalid = |why: String| RefError::Invalid(text.to_owned(), why);
        let text = text.trim();
        let (name_tag, digest) = match text.split_once('@') {
            Some((n, d)) => (
                n,
                Some(d.parse::<Digest>().map_err(|e| invalid(e.to_string()))?),
            ),
            None => (text, None),
        };
        let (name, tag) = match name_tag.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (
                n,
                Some(t.parse::<Tag>().map_err(|e| invalid(e.to_string()))?),
            ),
            _ => (name_tag, None),
        };
        let (upstream, path) = match name.split_once('/') {
            Some((host, rest)) if looks_like_host(host) => (canonical(host, config)?, rest),
            _ => (config.default_upstream.clone(), name),
        };
        let mut repo: RepoName = path
            .parse()
            .map_err(|e: crate::oci::NameError| invalid(e.to_string()))?;
        if upstream == DOCKER_HUB {
            repo = repo.with_library();
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(
                "latest"
                    .parse()
                    .map_err(|e: crate::oci::NameError| invalid(e.to_string()))?,
            ),
            _ => tag,
        };
        Ok(ImageRef {
            upstream,
            repo,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.upstream, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn looks_like_host(component: &str) -> bool {
    component.contains(['.', ':']) || component == "localhost"
}

/// The configured upstream key for a registry host.
fn canonical(host: &str, config: &Config) -> Result<String, RefError> {
    if config.upstreams.contains_key(host) {
        return Ok(host.to_owned());
    }
    if DOCKER_HUB_ALIASES.contains(&host) && config.upstreams.contains_key(DOCKER_HUB) {
        return Ok(DOCKER_HUB.to_owned());
    }
    Err(RefError::NotConfigured(host.to_owned()))
}

/// Reads an image list: one reference a line, `#` starts a comment.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = crate::config::DEFAULT_CONFIG.to_owned()
            + "\n[upstreams.\"registry.example:5000\"]\nurl = \"https://registry.example:5000\"\n";
        Config::from_toml(&text).unwrap()
    }

    #[test]
    fn resolves_like_the_server() {
        let c = config();
        let r = |s: &str| ImageRef::resolve(s, &c).map(|r| r.to_string());
        assert_eq!(r("alpine:3.19").unwrap(), "docker.io/library/alpine:3.19");
        assert_eq!(r("alpine").unwrap(), "docker.io/library/alpine:latest");
        assert_eq!(r("team/app:v1").unwrap(), "docker.io/team/app:v1");
        assert_eq!(
            r("docker.io/alpine").unwrap(),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(
            r("index.docker.io/library/alpine:1").unwrap(),
            "docker.io/library/alpine:1"
        );
        assert_eq!(r("ghcr.io/org/app:v1").unwrap(), "ghcr.io/org/app:v1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            r(&format!("registry.example:5000/x@{d}")).unwrap(),
            format!("registry.example:5000/x@{d}")
        );
        assert_eq!(
            r(&format!("alpine:3@{d}")).unwrap(),
            format!("docker.io/library/alpine:3@{d}")
        );
        assert_eq!(
            r("example.org/org/app:v1"),
            Err(RefError::NotConfigured("example.org".into()))
        );
        assert!(r("Alpine:1").is_err());
        assert!(r("alpine@sha256:short").is_err());
        assert!(r("alpine:bad tag").is_err());
    }

    #[test]
    fn lists() {
        assert_eq!(
            parse_list("# images\nalpine:3.19  # base\n\n  team/app:v1\n"),
            vec!["alpine:3.19", "team/app:v1"]
        );
    }
}
