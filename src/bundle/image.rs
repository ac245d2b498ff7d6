//! Image references as operators type them (`alpine:3.19`,
//! `docker.io/library/alpine@sha256:...`, `ghcr.io/org/app:v1`), resolved
//! to the (upstream, repository) hoard keys its cache by, and the names
//! written into an archive's `index.json`.
//!
//! Resolution follows the server's (`registry::resolve`): a first component
//! that names a configured upstream (or a Docker Hub alias) picks it;
//! otherwise the default upstream, unless the first component looks like a
//! registry host, which is refused rather than guessed. The upstream named
//! `docker.io` gets Docker Hub's `library/` rule.

use std::fmt;

use crate::config::Config;
use crate::oci::{Digest, RepoName, Tag};

/// The upstream key that gets Docker Hub's `library/` rule (as in
/// `registry::resolve`, which serves what this resolves).
const DOCKER_HUB: &str = "docker.io";

/// Other names clients use for Docker Hub.
const DOCKER_HUB_ALIASES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// An image in the cache's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Upstream key (a key of `[upstreams]`).
    pub upstream: String,
    /// Repository as named upstream.
    pub repo: RepoName,
    /// The tag, when one was given (or implied: `latest`).
    pub tag: Option<Tag>,
    /// The digest, when one was given.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `text` against `config`'s upstreams. No tag and no digest
    /// means `latest`.
    pub fn parse(text: &str, config: &Config) -> Result<ImageRef, String> {
        let bad = |why: &str| format!("image reference {text:?}: {why}");
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (text, None),
        };
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[slash + i + 1..];
                (
                    &rest[..slash + i],
                    Some(tag.parse::<Tag>().map_err(|e| bad(&e.to_string()))?),
                )
            }
            None => (rest, None),
        };
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".parse().map_err(|_| bad("no tag"))?),
            (t, _) => t,
        };
        let (upstream, repo) = split_upstream(name, config).map_err(|e| bad(&e))?;
        Ok(ImageRef {
            upstream,
            repo,
            tag,
            digest,
        })
    }

    /// `upstream/repo:tag` (the tag-less form `upstream/repo@digest` when
    /// there is no tag): what `index.json` names the image by, so skopeo
    /// can address it as `oci-archive:bundle.tar:<name>`.
    pub fn full_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}/{}:{t}", self.upstream, self.repo),
            (None, Some(d)) => format!("{}/{}@{d}", self.upstream, self.repo),
            (None, None) => format!("{}/{}", self.upstream, self.repo),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full_name())?;
        if let (Some(_), Some(d)) = (&self.tag, &self.digest) {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Splits a repository name into the configured upstream it names (or the
/// default one) and the repository as named there.
pub fn split_upstream(name: &str, config: &Config) -> Result<(String, RepoName), String> {
    let (upstream, repo) = match name.split_once('/') {
        Some((first, rest)) => match canonical_upstream(first, config) {
            Some(key) => (key, rest),
            None if looks_like_host(first) => {
                return Err(format!(
                    "registry {first:?} is not configured: add it to [upstreams] in the config"
                ))
            }
            None => (config.default_upstream.clone(), name),
        },
        None => (config.default_upstream.clone(), name),
    };
    let repo: RepoName = repo.parse().map_err(|e| format!("{e}"))?;
    let repo = if upstream == DOCKER_HUB {
        repo.with_library()
    } else {
        repo
    };
    Ok((upstream, repo))
}

/// The `[upstreams]` key for a registry name, Docker Hub aliases included.
pub fn canonical_upstream(name: &str, config: &Config) -> Option<String> {
    if config.upstreams.contains_key(name) {
        return Some(name.to_owned());
    }
    if DOCKER_HUB_ALIASES.contains(&name) && config.upstreams.contains_key(DOCKER_HUB) {
        return Some(DOCKER_HUB.to_owned());
    }
    None
}

/// Whether a first name component is a registry host (`registry.local`,
/// `host:5000`, `localhost`), as the Docker reference grammar decides.
pub fn looks_like_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut c = Config::embedded().expect("embedded config");
        c.upstreams
            .insert("127.0.0.1:5001".into(), c.upstreams["ghcr.io"].clone());
        c
    }

    fn parse(s: &str) -> Result<ImageRef, String> {
        ImageRef::parse(s, &config())
    }

    #[test]
    fn resolves_like_docker() {
        let r = parse("alpine").unwrap();
        assert_eq!(r.full_name(), "docker.io/library/alpine:latest");
        let r = parse("index.docker.io/team/app:v1").unwrap();
        assert_eq!(r.full_name(), "docker.io/team/app:v1");
        let r = parse("ghcr.io/org/app:1.2").unwrap();
        assert_eq!(
            (r.upstream.as_str(), r.repo.as_str()),
            ("ghcr.io", "org/app")
        );
        let r = parse("127.0.0.1:5001/team/app:v1").unwrap();
        assert_eq!(r.upstream, "127.0.0.1:5001");
        assert_eq!(r.tag.unwrap().as_str(), "v1");
    }

    #[test]
    fn digests_and_tags() {
        let d = Digest::of(b"x");
        let r = parse(&format!("alpine@{d}")).unwrap();
        assert_eq!((r.tag.clone(), r.digest.clone()), (None, Some(d.clone())));
        assert_eq!(r.full_name(), format!("docker.io/library/alpine@{d}"));
        let r = parse(&format!("alpine:3@{d}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/alpine:3@{d}"));
    }

    #[test]
    fn refuses_what_it_cannot_place() {
        assert!(parse("registry.example.com/app:1")
            .unwrap_err()
            .contains("not configured"));
        assert!(parse("localhost/app").is_err());
        assert!(parse("Alpine").is_err());
        assert!(parse("alpine:bad tag").is_err());
        assert!(parse("alpine@sha256:00").is_err());
    }
}
