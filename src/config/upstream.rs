//! One `[upstreams."<registry>"]` table and the credentials it names.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// One upstream registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL (`https://registry-1.docker.io`).
    pub url: String,
    /// Username for the token realm.
    pub username: Option<String>,
    /// Password given inline (prefer `password_env` or `password_file`).
    pub password: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding a static bearer token.
    pub token_env: Option<String>,
    /// File holding a static bearer token.
    pub token_file: Option<PathBuf>,
    /// Extra CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Per-upstream tag TTL.
    #[serde(default, with = "humantime_serde")]
    pub tag_ttl: Option<Duration>,
    /// Connect time-out.
    #[serde(default = "default_connect", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for headers or the next body chunk.
    #[serde(default = "default_read", with = "humantime_serde")]
    pub read_timeout: Duration,
}

fn default_connect() -> Duration {
    Duration::from_secs(10)
}

fn default_read() -> Duration {
    Duration::from_secs(60)
}

/// Credentials resolved from the config at start.
#[derive(Clone)]
pub enum Credentials {
    /// Anonymous.
    None,
    /// Basic credentials sent to the token realm (or the registry itself).
    Basic {
        /// User.
        username: String,
        /// Password or personal access token.
        password: String,
    },
    /// A static bearer token.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl UpstreamConfig {
    /// Tag TTL for this upstream.
    pub fn tag_ttl(&self, global: Duration) -> Duration {
        self.tag_ttl.unwrap_or(global)
    }

    /// Reads the credentials named by the config (env vars, files).
    pub fn credentials(&self, name: &str) -> Result<Credentials, ConfigError> {
        let key = |k: &str| format!("upstreams.\"{name}\".{k}");
        let from_env = |k: &str, var: &str| {
            std::env::var(var).map_err(|_| ConfigError::Secret {
                key: key(k),
                msg: format!("environment variable {var} is not set"),
            })
        };
        let from_file = |k: &str, path: &PathBuf| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| ConfigError::Secret {
                    key: key(k),
                    msg: format!("cannot read {}: {e}", path.display()),
                })
        };
        if let Some(var) = &self.token_env {
            return Ok(Credentials::Token(from_env("token_env", var)?));
        }
        if let Some(path) = &self.token_file {
            return Ok(Credentials::Token(from_file("token_file", path)?));
        }
        let password = match (&self.password, &self.password_env, &self.password_file) {
            (Some(p), _, _) => Some(p.clone()),
            (_, Some(var), _) => Some(from_env("password_env", var)?),
            (_, _, Some(path)) => Some(from_file("password_file", path)?),
            _ => None,
        };
        Ok(match (&self.username, password) {
            (Some(username), Some(password)) => Credentials::Basic {
                username: username.clone(),
                password,
            },
            _ => Credentials::None,
        })
    }
}
