//! Registry authentication: `WWW-Authenticate` challenges and the Bearer
//! token dance, with tokens cached per (realm, service, scope).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm=..., service=..., scope=...`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter, if any.
        service: Option<String>,
        /// `scope` parameter, if any.
        scope: Option<String>,
    },
    /// `Basic realm=...`.
    Basic,
}

/// Parses a challenge header value. Unknown schemes give `None`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// Splits `k="v",k2=v2` honouring quotes (scopes contain commas).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
        }
        out.push((key.trim().to_owned(), val.trim().to_owned()));
    }
    out
}

/// Longest an upstream token is used, whatever its realm says.
const MAX_TOKEN_SECS: u64 = 24 * 60 * 60;

/// A bearer token and when to stop using it.
#[derive(Debug, Clone)]
pub struct Token {
    /// The token.
    pub value: Arc<str>,
    /// Stop using it after this instant (shortly before the real expiry).
    pub use_until: Instant,
}

impl Token {
    /// Builds a token from the realm's `expires_in` (default 60 s per the
    /// token spec), keeping a margin so a request never goes out with a
    /// token about to lapse. The lifetime is capped at a day: the realm's
    /// number is untrusted, and `Instant + Duration` panics on overflow
    /// (`expires_in: 18446744073709551615` did, found by fuzzing).
    pub fn new(value: String, expires_in: Option<u64>) -> Token {
        let ttl = Duration::from_secs(expires_in.unwrap_or(60).clamp(1, MAX_TOKEN_SECS));
        let margin = (ttl / 10).clamp(Duration::from_millis(500), Duration::from_secs(30));
        Token {
            value: value.into(),
            use_until: Instant::now() + ttl.saturating_sub(margin),
        }
    }

    /// Whether the token may still be sent.
    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.use_until
    }
}

/// The JSON a token realm answers.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    /// Docker's field.
    pub token: Option<String>,
    /// OAuth2's field.
    pub access_token: Option<String>,
    /// Lifetime in seconds.
    pub expires_in: Option<u64>,
}

/// Percent-encodes a query value.
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_expires_in_is_capped_not_a_panic() {
        let t = Token::new("t".into(), Some(u64::MAX));
        assert!(t.is_fresh());
        assert!(t.use_until <= Instant::now() + Duration::from_secs(MAX_TOKEN_SECS));
        assert!(Token::new("t".into(), Some(0)).is_fresh());
    }

    #[test]
    fn docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Basic realm=\"x\""), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn token_margin() {
        let t = Token::new("x".into(), Some(300));
        assert!(t.is_fresh());
        let lifetime = t.use_until - Instant::now();
        assert!(lifetime <= Duration::from_secs(270) && lifetime > Duration::from_secs(260));
    }

    #[test]
    fn encodes() {
        assert_eq!(
            encode_query("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
