//! `mirror.toml` -> validated [`Config`].
//!
//! The config layer owns every section, one file each ([`auth`], [`local`],
//! [`prefetch`], the upstreams), so it sits on the ground floor and imports
//! no feature: the features read their section from here.
//!
//! The embedded default (`mirror.toml` at the repository root) documents every
//! key. Parsing refuses unknown keys; [`Config::validate`] names the key at
//! fault for bad values, so a typo stops hoard at start, not at 3 a.m.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub mod auth;
pub mod cluster;
pub mod local;
pub mod prefetch;
pub mod storage;
mod upstream;

pub use auth::AuthConfig;
pub use cluster::ClusterConfig;
pub use local::LocalConfig;
pub use prefetch::PrefetchConfig;
pub use storage::{StorageConfig, StorageKind};
pub use upstream::{Credentials, UpstreamConfig};

/// The default configuration, compiled in.
pub const DEFAULT_CONFIG: &str = include_str!("../../mirror.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// TOML syntax, unknown key or wrong type (toml names the key).
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A value that parsed but makes no sense.
    #[error("config key `{key}`: {msg}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// What is wrong and what to do.
        msg: String,
    },
    /// A secret file or variable named by the config could not be read.
    #[error("config key `{key}`: {msg}")]
    Secret {
        /// Dotted path of the key.
        key: String,
        /// What is wrong.
        msg: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Cache directory.
    pub cache_dir: PathBuf,
    /// Upstream used when a request names none.
    pub default_upstream: String,
    /// How long tags are served without revalidation.
    #[serde(default = "default_tag_ttl", with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// Log format.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Largest manifest accepted from an upstream.
    #[serde(default = "default_max_manifest")]
    pub max_manifest_size: usize,
    /// Disk budget for cached content.
    #[serde(default = "default_max_size")]
    pub max_size: bytesize::ByteSize,
    /// How long in-flight responses and fills get after SIGTERM.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Most client connections served at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most client connections served at once from one address (IPv6: one /64).
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Longest a client may take to send its request headers.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head accepted.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// TLS listener (optional).
    pub tls: Option<TlsConfig>,
    /// Local (pushed) repositories beside the mirror.
    #[serde(default)]
    pub local: LocalConfig,
    /// Configured upstream registries by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Access control (`[auth]`); off when absent.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Images kept prefetched and pinned (`[prefetch]`, see docs/airgap.md).
    #[serde(default)]
    pub prefetch: PrefetchConfig,
    /// Where blobs and records live (`[storage]`): the disk, or an
    /// S3-compatible bucket with the disk as a tier in front.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Replicas sharing the bucket (`[cluster]`); off when absent.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// A TLS listener beside the plain one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the TLS listener.
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The embedded mirror.toml's value: a tag moves upstream at most five
/// minutes before clients of the mirror see it.
fn default_tag_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_max_size() -> bytesize::ByteSize {
    bytesize::ByteSize::gib(20)
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_connections_per_address() -> usize {
    256
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

fn default_max_manifest() -> usize {
    4 * 1024 * 1024
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The embedded default configuration.
    pub fn embedded() -> Result<Config, ConfigError> {
        Config::from_toml(DEFAULT_CONFIG)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, msg: String| ConfigError::Invalid {
            key: key.to_owned(),
            msg,
        };
        if self.upstreams.is_empty() {
            return Err(invalid(
                "upstreams",
                "at least one upstream is needed".into(),
            ));
        }
        if !self.upstreams.contains_key(&self.default_upstream) {
            return Err(invalid(
                "default_upstream",
                format!(
                    "{:?} is not a key of [upstreams] (configured: {})",
                    self.default_upstream,
                    self.upstreams
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if self.max_size.as_u64() < 1024 * 1024 {
            return Err(invalid(
                "max_size",
                "must be at least 1MiB (e.g. \"50GiB\")".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1".into()));
        }
        if self.max_connections_per_address == 0 {
            return Err(invalid(
                "max_connections_per_address",
                "must be at least 1".into(),
            ));
        }
        if self.max_header_bytes < 8192 {
            return Err(invalid("max_header_bytes", "must be at least 8192".into()));
        }
        if self.header_read_timeout.is_zero() {
            return Err(invalid(
                "header_read_timeout",
                "must be more than 0s".into(),
            ));
        }
        self.local
            .validate()
            .map_err(|(key, msg)| ConfigError::Invalid { key, msg })?;
        if self.cache_dir.as_os_str().is_empty() {
            return Err(invalid("cache_dir", "must not be empty".into()));
        }
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        self.storage.validate()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        for (name, up) in &self.upstreams {
            let key = |k: &str| format!("upstreams.\"{name}\".{k}");
            if !valid_registry_name(name) {
                return Err(invalid(
                    &format!("upstreams.\"{name}\""),
                    "a registry name is a host name with an optional :port, e.g. ghcr.io".into(),
                ));
            }
            let uri: http::Uri = up
                .url
                .parse()
                .map_err(|e| invalid(&key("url"), format!("{e}")))?;
            match uri.scheme_str() {
                Some("http") | Some("https") => {}
                _ => {
                    return Err(invalid(
                        &key("url"),
                        "must start with http:// or https://".into(),
                    ))
                }
            }
            if uri.host().is_none() {
                return Err(invalid(&key("url"), "has no host".into()));
            }
            let secrets = [
                up.password.is_some(),
                up.password_env.is_some(),
                up.password_file.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if secrets > 1 {
                return Err(invalid(
                    &key("password"),
                    "give only one of password, password_env, password_file".into(),
                ));
            }
            if secrets == 1 && up.username.is_none() {
                return Err(invalid(
                    &key("username"),
                    "a password needs a username".into(),
                ));
            }
            if up.token_env.is_some() && up.token_file.is_some() {
                return Err(invalid(
                    &key("token_env"),
                    "give only one of token_env, token_file".into(),
                ));
            }
            if up.connect_timeout.is_zero() {
                return Err(invalid(
                    &key("connect_timeout"),
                    "must be more than 0s".into(),
                ));
            }
            if up.read_timeout.is_zero() {
                return Err(invalid(&key("read_timeout"), "must be more than 0s".into()));
            }
        }
        Ok(())
    }
}

/// Registry names are host names with an optional port: they appear as the
/// first path component and in `ns`, so they must be plain.
fn valid_registry_name(name: &str) -> bool {
    let chars_ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b':'));
    chars_ok && name.len() <= 253 && (name.contains(['.', ':']) || name == "localhost")
}

/// `--listen`: an address, or a host name resolved once at start-up.
/// IPv4 first: `localhost` then means 127.0.0.1, where clients such as
/// dockerd's `registry-mirrors` look for it.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let all: Vec<_> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s}: {e} (expected HOST:PORT, e.g. localhost:5000)"))?
        .collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| format!("{s}: the name resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded().unwrap();
        assert_eq!(c.default_upstream, "docker.io");
        assert!(c.upstreams.contains_key("ghcr.io"));
        assert_eq!(c.max_size.as_u64(), 20 * 1024 * 1024 * 1024);
    }

    #[test]
    fn tag_ttl_defaults_to_the_embedded_value() {
        let embedded = Config::embedded().unwrap();
        let without: String = DEFAULT_CONFIG
            .lines()
            .filter(|l| !l.starts_with("tag_ttl"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(without, DEFAULT_CONFIG);
        let c = Config::from_toml(&without).unwrap();
        assert_eq!(c.tag_ttl, embedded.tag_ttl);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = format!("{DEFAULT_CONFIG}\nlisten_adress = \"x\"\n");
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("listen_adress"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let text = DEFAULT_CONFIG.replace(
            "default_upstream = \"docker.io\"",
            "default_upstream = \"nope.io\"",
        );
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("default_upstream"), "{err}");
        let text = DEFAULT_CONFIG.replace("tag_ttl = \"5m\"", "tag_ttl = \"5 parsecs\"");
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("tag_ttl"), "{err}");
        let text = DEFAULT_CONFIG.replace("max_size = \"20GiB\"", "max_size = \"lots\"");
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("max_size"), "{err}");
        let text = DEFAULT_CONFIG.replace("url = \"https://ghcr.io\"", "url = \"ftp://ghcr.io\"");
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("upstreams.\"ghcr.io\".url"), "{err}");
    }
}
