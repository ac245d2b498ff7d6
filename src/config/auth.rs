//! The `[auth]` table of `mirror.toml`: who may pull, push, delete and
//! administer what.
//!
//! Without an `[auth]` table access control is off: every request is
//! anonymous and allowed, which is what a cluster mirror on a private
//! network wants. With one, every request is checked against `rules`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// User name that stands for "no credentials" in `rules.users`. It cannot
/// log in: an htpasswd entry with this name is refused at start.
pub const ANONYMOUS: &str = "anonymous";

/// What a rule may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs, tags and referrers; see the repository in `_catalog`.
    Pull,
    /// Upload blobs, put manifests.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
    /// The operator API under `/_hoard/` (only in a rule whose repository is `*`).
    Admin,
}

impl Action {
    /// The name used in token scopes and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Admin => "admin",
        }
    }

    /// Parses a scope action (`*` is expanded by the caller).
    pub fn from_scope(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            "admin" => Some(Action::Admin),
            _ => None,
        }
    }
}

/// Which `WWW-Authenticate` challenge a 401 carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// `Bearer realm=".../token",service=...,scope=...`: clients fetch a
    /// token from hoard's `/token` and send it on each request.
    #[default]
    Bearer,
    /// `Basic realm=...`: clients send the password on each request.
    Basic,
}

/// One access rule: these users may do these actions on repositories under
/// this prefix. A request is allowed when any rule allows it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Repository prefix, matched on whole path components: `team` covers
    /// `team` and `team/app` but not `teams`. `*` covers everything.
    /// `{user}` is replaced by the requesting user's name.
    pub repository: String,
    /// User names from the htpasswd file; `*` is any logged-in user,
    /// `anonymous` is a request without credentials.
    pub users: Vec<String>,
    /// Actions allowed.
    pub allow: Vec<Action>,
}

/// The `[auth]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// htpasswd file with bcrypt entries (`htpasswd -B`).
    pub htpasswd: Option<PathBuf>,
    /// Challenge sent with a 401.
    #[serde(default)]
    pub challenge: Scheme,
    /// Token endpoint URL in the Bearer challenge; derived from the request
    /// (`http(s)://<Host>/token`) when absent.
    pub realm: Option<String>,
    /// `service` of challenges and tokens; the Basic realm.
    #[serde(default = "default_service")]
    pub service: String,
    /// Lifetime of issued tokens.
    #[serde(default = "default_token_ttl", with = "humantime_serde")]
    pub token_ttl: Duration,
    /// File holding the token signing key (at least 32 bytes), shared by
    /// replicas; a random key per process when absent.
    pub token_key_file: Option<PathBuf>,
    /// Failed logins allowed per client address (and per user name) within
    /// `failure_window` before further logins are refused with 429.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// Window of `max_failures`.
    #[serde(default = "default_failure_window", with = "humantime_serde")]
    pub failure_window: Duration,
    /// How long a verified password is remembered (bcrypt costs ~50-100 ms
    /// and some clients send Basic credentials on every request).
    #[serde(default = "default_login_cache_ttl", with = "humantime_serde")]
    pub login_cache_ttl: Duration,
    /// Access rules; see [`AuthConfig::default_rules`] when absent.
    #[serde(default = "AuthConfig::default_rules")]
    pub rules: Vec<Rule>,
}

fn default_service() -> String {
    "hoard".to_owned()
}

fn default_token_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_max_failures() -> u32 {
    10
}

fn default_failure_window() -> Duration {
    Duration::from_secs(60)
}

fn default_login_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

impl AuthConfig {
    /// Rules when `[auth]` gives none: anyone may pull, logged-in users may
    /// also push. Delete and admin must be granted explicitly.
    pub fn default_rules() -> Vec<Rule> {
        vec![
            Rule {
                repository: "*".into(),
                users: vec![ANONYMOUS.into(), "*".into()],
                allow: vec![Action::Pull],
            },
            Rule {
                repository: "*".into(),
                users: vec!["*".into()],
                allow: vec![Action::Push],
            },
        ]
    }

    /// Checks values that parse but cannot work; names the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, msg: &str| ConfigError::Invalid {
            key: format!("auth.{key}"),
            msg: msg.to_owned(),
        };
        if self.token_ttl < Duration::from_secs(10) {
            return Err(invalid("token_ttl", "must be at least 10s"));
        }
        if self.max_failures == 0 {
            return Err(invalid("max_failures", "must be at least 1"));
        }
        if self.failure_window.is_zero() {
            return Err(invalid("failure_window", "must be more than 0s"));
        }
        if self.service.is_empty() || self.service.contains(['"', '\\']) {
            return Err(invalid(
                "service",
                "must be a non-empty name without quotes or backslashes",
            ));
        }
        if let Some(realm) = &self.realm {
            let ok = (realm.starts_with("http://") || realm.starts_with("https://"))
                && realm.parse::<http::Uri>().is_ok()
                && !realm.contains(['"', '\\']);
            if !ok {
                return Err(invalid(
                    "realm",
                    "must be an http:// or https:// URL, e.g. https://hoard.example/token",
                ));
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |k: &str| format!("rules[{i}].{k}");
            if rule.repository.is_empty() {
                return Err(invalid(
                    &key("repository"),
                    "use \"*\" for every repository",
                ));
            }
            if rule.users.is_empty() {
                return Err(invalid(
                    &key("users"),
                    "name at least one user, \"*\" or \"anonymous\"",
                ));
            }
            if rule.allow.contains(&Action::Admin) && rule.repository != "*" {
                return Err(invalid(
                    &key("allow"),
                    "admin is not per repository: give it in a rule with repository = \"*\"",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuthConfig, String> {
        let c: AuthConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.challenge, Scheme::Bearer);
        assert_eq!(c.service, "hoard");
        assert_eq!(c.rules, AuthConfig::default_rules());
        assert_eq!(c.token_ttl, Duration::from_secs(300));
    }

    #[test]
    fn rules_parse() {
        let c = parse(
            "challenge = \"basic\"\n[[rules]]\nrepository = \"team\"\nusers = [\"alice\"]\nallow = [\"pull\", \"push\", \"delete\"]\n",
        )
        .unwrap();
        assert_eq!(c.challenge, Scheme::Basic);
        assert_eq!(c.rules.len(), 1);
        assert_eq!(
            c.rules[0].allow,
            vec![Action::Pull, Action::Push, Action::Delete]
        );
    }

    /// The commented `[auth]` example in `mirror.toml`, uncommented,
    /// parses and says what the defaults are.
    #[test]
    fn documented_example_is_the_default() {
        let doc = super::super::DEFAULT_CONFIG;
        let start = doc.find("# [auth]").unwrap();
        let end = doc[start..].find("\n\n").unwrap() + start;
        let text: String = doc[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.starts_with('[')
                    || l.split_once(" = ").is_some_and(|(k, _)| {
                        k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let config: toml::Table = toml::from_str(&text).unwrap();
        let auth = toml::to_string(&config["auth"]).unwrap();
        let c = parse(&auth).unwrap();
        let d = parse("").unwrap();
        assert_eq!(c.rules, d.rules);
        assert_eq!(
            (
                c.challenge,
                c.token_ttl,
                c.max_failures,
                c.failure_window,
                c.login_cache_ttl
            ),
            (
                d.challenge,
                d.token_ttl,
                d.max_failures,
                d.failure_window,
                d.login_cache_ttl
            )
        );
        assert_eq!(c.service, d.service);
        assert!(c.htpasswd.is_some() && c.realm.is_some() && c.token_key_file.is_some());
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse("[[rules]]\nrepository = \"a\"\nusers = [\"x\"]\nallow = [\"admin\"]\n")
            .unwrap_err();
        assert!(err.contains("auth.rules[0].allow"), "{err}");
        let err = parse("[[rules]]\nrepository = \"a\"\nusers = [\"x\"]\nallow = [\"write\"]\n")
            .unwrap_err();
        assert!(err.contains("write"), "{err}");
        let err = parse("realm = \"ftp://x/token\"").unwrap_err();
        assert!(err.contains("auth.realm"), "{err}");
        let err = parse("token_ttl = \"1s\"").unwrap_err();
        assert!(err.contains("auth.token_ttl"), "{err}");
        let err = parse("passwd = \"x\"").unwrap_err();
        assert!(err.contains("passwd"), "{err}");
    }
}
