//! The `[cluster]` table of `mirror.toml`: replicas that share one bucket
//! and agree, by rendezvous hashing, which of them fetches a blob.
//!
//! Off when absent: a hoard without `[cluster]` forwards nothing and
//! answers no peer. The shared secret never appears here: it comes from the
//! file `secret_file` names or from the environment variable `secret_env`
//! (`HOARD_CLUSTER_SECRET` by default), so a config can be shown or
//! committed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// The `[cluster]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name: how it appears in `peers` and how it answers a
    /// peer's ping (with DNS discovery, peers learn names from pings).
    /// Defaults to the host name, which in a Kubernetes StatefulSet is the
    /// pod's stable name (`hoard-0`), so one ConfigMap serves every replica.
    #[serde(default = "host_name")]
    pub node: String,
    /// Static members by name (`b = "http://10.0.0.2:5000"`); this node
    /// may be listed too (it is skipped).
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    /// A DNS name whose addresses are the members (a Kubernetes headless
    /// Service), re-resolved every `refresh`; needs `port`.
    pub dns: Option<String>,
    /// The port peers found through `dns` serve plain HTTP on.
    pub port: Option<u16>,
    /// How often peers are re-resolved and pinged.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// A file holding the shared secret (surrounding whitespace ignored).
    pub secret_file: Option<PathBuf>,
    /// The environment variable holding the shared secret when
    /// `secret_file` is not set.
    #[serde(default = "default_secret_env")]
    pub secret_env: String,
}

/// The kernel's host name (empty when it cannot be read, which `validate`
/// then refuses, asking for `node`).
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn default_refresh() -> Duration {
    Duration::from_secs(5)
}

fn default_secret_env() -> String {
    "HOARD_CLUSTER_SECRET".into()
}

/// The shortest secret accepted: a guessable one would make the internal
/// path an open door.
pub const MIN_SECRET_LEN: usize = 16;

impl ClusterConfig {
    /// Checks the keys, naming the one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, msg: &str| ConfigError::Invalid {
            key: format!("cluster.{key}"),
            msg: msg.into(),
        };
        if self.node.is_empty() || self.node.contains(char::is_whitespace) {
            return Err(invalid(
                "node",
                "must be a non-empty name without spaces (set it when the host name cannot be read)",
            ));
        }
        for (name, url) in &self.peers {
            if !url.starts_with("http://") {
                return Err(invalid(
                    &format!("peers.{name}"),
                    "must be an http:// URL (peers talk plain HTTP on the internal network)",
                ));
            }
        }
        match (&self.dns, self.port) {
            (Some(d), _) if d.is_empty() => return Err(invalid("dns", "must not be empty")),
            (Some(_), None) => return Err(invalid("port", "dns discovery needs a port")),
            (None, Some(_)) => return Err(invalid("port", "only used with dns")),
            _ => {}
        }
        if self.refresh < Duration::from_millis(100) {
            return Err(invalid("refresh", "must be at least 100ms"));
        }
        Ok(())
    }

    /// Reads the shared secret from `secret_file` or `secret_env`.
    pub fn secret(&self) -> Result<String, ConfigError> {
        let (key, raw) = match &self.secret_file {
            Some(path) => (
                "cluster.secret_file".to_owned(),
                std::fs::read_to_string(path).map_err(|e| ConfigError::Secret {
                    key: "cluster.secret_file".into(),
                    msg: format!("{}: {e}", path.display()),
                })?,
            ),
            None => (
                format!("cluster.secret_env ({})", self.secret_env),
                std::env::var(&self.secret_env).unwrap_or_default(),
            ),
        };
        let secret = raw.trim().to_owned();
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::Secret {
                key,
                msg: format!("the shared secret must be at least {MIN_SECRET_LEN} bytes"),
            });
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ClusterConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn static_and_dns_peers_validate() {
        let c = parse("node = \"a\"\npeers = { b = \"http://127.0.0.1:1\" }\nrefresh = \"2s\"");
        assert!(c.validate().is_ok());
        assert_eq!(c.refresh, Duration::from_secs(2));
        let c = parse("node = \"a\"\ndns = \"hoard-peers\"\nport = 5000");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_node_name_defaults_to_the_host_name() {
        let c = parse("peers = { b = \"http://127.0.0.1:1\" }");
        assert_eq!(c.node, host_name());
        assert!(!c.node.is_empty(), "this machine has a host name");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_keys_are_named() {
        let err = |t: &str| parse(t).validate().unwrap_err().to_string();
        assert!(err("node = \"\"").contains("cluster.node"));
        assert!(err("node = \"a\"\npeers = { b = \"https://x\" }").contains("cluster.peers.b"));
        assert!(err("node = \"a\"\ndns = \"x\"").contains("cluster.port"));
        assert!(toml::from_str::<ClusterConfig>("node = \"a\"\nsecret = \"x\"").is_err());
    }

    #[test]
    fn short_or_missing_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "short\n").unwrap();
        let mut c = parse("node = \"a\"");
        c.secret_file = Some(path.clone());
        assert!(c.secret().unwrap_err().to_string().contains("secret_file"));
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert_eq!(c.secret().unwrap(), "0123456789abcdef0123");
        c.secret_file = None;
        c.secret_env = "HOARD_TEST_CLUSTER_SECRET_UNSET".into();
        assert!(c.secret().is_err());
    }
}
