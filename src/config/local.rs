//! The `[local]` table of `mirror.toml`: pushes into local repositories.

use std::time::Duration;

use serde::Deserialize;

/// How local (pushed) repositories behave. Every key has a default, so a
/// configuration without `[local]` still parses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Whether pushes are accepted at all.
    #[serde(default = "yes")]
    pub push: bool,
    /// Who may push when `[auth]` is off: `"loopback"` (the default: only
    /// clients on this host, not relayed by a proxy) or `"anywhere"`.
    /// With `[auth]` on, its rules decide instead.
    #[serde(default)]
    pub push_from: PushFrom,
    /// Name prefixes that may be pushed (`team` allows `team/app`); empty
    /// allows every name the routing rule leaves to local repositories.
    #[serde(default)]
    pub push_prefixes: Vec<String>,
    /// Whether a local repository may take a name that Docker Hub would
    /// answer (one-component names, `library/*`, names the cache holds).
    #[serde(default)]
    pub shadow_docker_hub: bool,
    /// Whether `DELETE` of manifests, tags and blobs is allowed.
    #[serde(default)]
    pub delete: bool,
    /// An upload session idle for this long is dropped with its bytes.
    #[serde(default = "default_upload_timeout", with = "humantime_serde")]
    pub upload_timeout: Duration,
    /// How often the garbage collector runs (it also runs after deletes).
    #[serde(default = "default_gc_interval", with = "humantime_serde")]
    pub gc_interval: Duration,
    /// A blob linked (uploaded or mounted) more recently than this is kept
    /// even if no manifest references it yet: its manifest is on its way.
    #[serde(default = "default_gc_grace", with = "humantime_serde")]
    pub gc_grace: Duration,
    /// Largest manifest accepted in a push, in bytes (larger: 413).
    #[serde(default = "default_max_manifest")]
    pub max_manifest_size: usize,
}

/// Who may push while `[auth]` is off.
///
/// Loopback by default: a mirror listening on `0.0.0.0` with no `[auth]`
/// must not let a stranger create a repository that clients sending no
/// `ns` (dockerd, podman mirrors) would then pull instead of Docker Hub's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushFrom {
    /// Only clients on this host.
    #[default]
    Loopback,
    /// Any client that can reach the listener.
    Anywhere,
}

impl Default for LocalConfig {
    fn default() -> LocalConfig {
        LocalConfig {
            push: true,
            push_from: PushFrom::default(),
            push_prefixes: Vec::new(),
            shadow_docker_hub: false,
            delete: false,
            upload_timeout: default_upload_timeout(),
            gc_interval: default_gc_interval(),
            gc_grace: default_gc_grace(),
            max_manifest_size: default_max_manifest(),
        }
    }
}

impl LocalConfig {
    /// Checks values that parse but make no sense; names the key at fault.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.upload_timeout.is_zero() {
            return Err(("local.upload_timeout".into(), "must be more than 0s".into()));
        }
        if self.gc_interval.is_zero() {
            return Err(("local.gc_interval".into(), "must be more than 0s".into()));
        }
        if self.max_manifest_size < 1024 {
            return Err((
                "local.max_manifest_size".into(),
                "must be at least 1024".into(),
            ));
        }
        if let Some(p) = self
            .push_prefixes
            .iter()
            .find(|p| p.is_empty() || p.starts_with('/') || p.ends_with('/'))
        {
            return Err((
                "local.push_prefixes".into(),
                format!("{p:?}: a prefix is one or more name components, without leading or trailing '/'"),
            ));
        }
        Ok(())
    }

    /// Whether `name` falls under the configured push prefixes.
    pub fn may_push(&self, name: &str) -> bool {
        self.push_prefixes.is_empty()
            || self.push_prefixes.iter().any(|p| {
                name == p
                    || name
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    }
}

fn yes() -> bool {
    true
}

fn default_upload_timeout() -> Duration {
    Duration::from_secs(30 * 60)
}

fn default_gc_interval() -> Duration {
    Duration::from_secs(10 * 60)
}

fn default_gc_grace() -> Duration {
    Duration::from_secs(60 * 60)
}

fn default_max_manifest() -> usize {
    4 * 1024 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_components() {
        let c = LocalConfig {
            push_prefixes: vec!["team".into(), "a/b".into()],
            ..LocalConfig::default()
        };
        assert!(c.may_push("team/app"));
        assert!(c.may_push("a/b/c"));
        assert!(!c.may_push("teamx/app"));
        assert!(!c.may_push("a/bc"));
        assert!(LocalConfig::default().may_push("anything/at/all"));
    }
}
