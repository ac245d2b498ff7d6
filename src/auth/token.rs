//! hoard's own Bearer tokens: HS256 JWTs signed with a key from
//! `auth.token_key_file` (shared by replicas) or random per process.
//!
//! The token proves who asked (`sub`, empty for anonymous) and which scopes
//! were granted when it was issued (`access`). Requests are still checked
//! against the rules for `sub` at the time of the request, so a token can
//! never grant more than the rules allow now.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::config::auth::Action;
use crate::config::ConfigError;

/// The only header hoard writes; a token with any other header is refused,
/// so `alg: none` and key confusion are impossible.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Issuer claim.
const ISSUER: &str = "hoard";

/// Shortest signing key read from a file.
const MIN_KEY: usize = 32;

/// `n` bytes from the operating system's random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    // The system RNG failing means the OS cannot give randomness at all;
    // fall back to the clock and address mixing rather than zeros.
    if ring::rand::SystemRandom::new().fill(&mut out).is_err() {
        let seed = format!("{:?}{:p}", SystemTime::now(), &out);
        let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
        for (o, b) in out.iter_mut().zip(d.as_ref().iter().cycle()) {
            *o = *b;
        }
    }
    out
}

/// What a scope names: `repository:<name>:...`, `registry:catalog:*`, or
/// `hoard:admin:*` for the operator API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Access {
    /// `repository`, `registry` or `hoard`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Repository name (as the client sent it), `catalog` or `admin`.
    pub name: String,
    /// Granted actions.
    pub actions: Vec<String>,
}

/// The claims of a hoard token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer (`hoard`).
    pub iss: String,
    /// User name; empty for anonymous.
    pub sub: String,
    /// `auth.service`.
    pub aud: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Not before.
    pub nbf: u64,
    /// Issued at.
    pub iat: u64,
    /// Unique id, so two tokens issued in the same second differ.
    pub jti: String,
    /// Granted scopes.
    pub access: Vec<Access>,
}

impl Claims {
    /// Whether the token grants `action` on `kind:name`.
    pub fn grants(&self, kind: &str, name: &str, action: Action) -> bool {
        self.access.iter().any(|a| {
            a.kind == kind
                && a.name == name
                && a.actions.iter().any(|x| x == action.as_str() || x == "*")
        })
    }
}

/// Why a token was refused. The client sees one message for all of them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts, or not our header.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match.
    #[error("bad signature")]
    Signature,
    /// Expired or not yet valid.
    #[error("expired")]
    Expired,
    /// Issued for another service.
    #[error("wrong audience")]
    Audience,
}

/// Signs and checks tokens.
pub struct Signer {
    key: hmac::Key,
    service: String,
    ttl: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({}, {:?})", self.service, self.ttl)
    }
}

impl Signer {
    /// A signer with the key in `key_file`, or a random one.
    pub fn new(
        key_file: Option<&Path>,
        service: &str,
        ttl: Duration,
    ) -> Result<Signer, ConfigError> {
        let secret = match key_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| ConfigError::Secret {
                    key: "auth.token_key_file".into(),
                    msg: format!("cannot read {}: {e}", path.display()),
                })?;
                let trimmed = bytes.trim_ascii().to_vec();
                if trimmed.len() < MIN_KEY {
                    return Err(ConfigError::Invalid {
                        key: "auth.token_key_file".into(),
                        msg: format!(
                            "{} holds {} bytes; use at least {MIN_KEY} (e.g. `openssl rand -hex 32`)",
                            path.display(),
                            trimmed.len()
                        ),
                    });
                }
                trimmed
            }
            None => random_bytes::<32>().to_vec(),
        };
        Ok(Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            service: service.to_owned(),
            ttl,
        })
    }

    /// Token lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A signed token for `sub` granting `access`, issued at `now`.
    pub fn mint(&self, sub: &str, access: Vec<Access>, now: SystemTime) -> String {
        let iat = epoch(now);
        let claims = Claims {
            iss: ISSUER.into(),
            sub: sub.into(),
            aud: self.service.clone(),
            exp: iat + self.ttl.as_secs(),
            nbf: iat,
            iat,
            jti: hex::encode(random_bytes::<12>()),
            access,
        };
        // Serialising plain strings and numbers cannot fail.
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// The claims of a valid token at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        // Constant-time comparison inside ring.
        hmac::verify(&self.key, signing_input.as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        if URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| TokenError::Malformed)?
            != HEADER.as_bytes()
        {
            return Err(TokenError::Malformed);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let now = epoch(now);
        if claims.exp <= now || claims.nbf > now + 60 {
            return Err(TokenError::Expired);
        }
        if claims.aud != self.service || claims.iss != ISSUER {
            return Err(TokenError::Audience);
        }
        Ok(claims)
    }
}

/// Seconds since the epoch (0 for a clock before 1970).
pub fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Parses one `scope` parameter (`repository:a/b:pull,push`). Several
/// scopes come as several parameters or space-separated. Unknown types and
/// actions are dropped (the token simply does not grant them).
pub fn parse_scope(scope: &str) -> Vec<(String, String, Vec<Action>)> {
    scope
        .split(' ')
        .filter_map(|one| {
            // The name may contain ':' (a registry host with a port), so
            // type is before the first colon and actions after the last.
            let (kind, rest) = one.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            if name.is_empty() {
                return None;
            }
            let actions = actions
                .split(',')
                .flat_map(|a| match a {
                    "*" => vec![Action::Pull, Action::Push, Action::Delete, Action::Admin],
                    other => Action::from_scope(other).into_iter().collect(),
                })
                .collect();
            Some((kind.to_owned(), name.to_owned(), actions))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(None, "hoard", Duration::from_secs(60)).unwrap()
    }

    fn pull(name: &str) -> Vec<Access> {
        vec![Access {
            kind: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into()],
        }]
    }

    #[test]
    fn round_trip() {
        let s = signer();
        let now = SystemTime::now();
        let t = s.mint("alice", pull("a/b"), now);
        let c = s.verify(&t, now).unwrap();
        assert_eq!(c.sub, "alice");
        assert!(c.grants("repository", "a/b", Action::Pull));
        assert!(!c.grants("repository", "a/b", Action::Push));
        assert!(!c.grants("repository", "a", Action::Pull));
    }

    #[test]
    fn refuses_expired_forged_and_foreign() {
        let s = signer();
        let now = SystemTime::now();
        let t = s.mint("alice", pull("a"), now);
        assert_eq!(
            s.verify(&t, now + Duration::from_secs(61)),
            Err(TokenError::Expired)
        );
        assert_eq!(signer().verify(&t, now), Err(TokenError::Signature));
        // Swap the payload for one granting push: the signature no longer fits.
        let other = s.mint("alice", vec![], now);
        let (h, rest) = t.split_once('.').unwrap();
        let sig = rest.split_once('.').unwrap().1;
        let forged_payload = other.split('.').nth(1).unwrap();
        assert_eq!(
            s.verify(&format!("{h}.{forged_payload}.{sig}"), now),
            Err(TokenError::Signature)
        );
        assert_eq!(s.verify("a.b", now), Err(TokenError::Malformed));
        assert_eq!(s.verify("a.b.c.d", now), Err(TokenError::Malformed));
        let foreign = Signer {
            service: "other".into(),
            ..s
        };
        assert_eq!(foreign.verify(&t, now), Err(TokenError::Audience));
    }

    #[test]
    fn alg_none_is_refused() {
        let s = signer();
        let now = SystemTime::now();
        let t = s.mint("alice", pull("a"), now);
        let payload = t.split('.').nth(1).unwrap();
        let none = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        assert!(s.verify(&none, now).is_err());
    }

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope("repository:a/b:pull,push"),
            vec![(
                "repository".into(),
                "a/b".into(),
                vec![Action::Pull, Action::Push]
            )]
        );
        assert_eq!(
            parse_scope("repository:localhost:5000/x:pull registry:catalog:*")[0].1,
            "localhost:5000/x"
        );
        assert_eq!(parse_scope("repository:a:frobnicate")[0].2, vec![]);
        assert!(parse_scope("garbage").is_empty());
        assert!(parse_scope("repository::pull").is_empty());
    }
}
