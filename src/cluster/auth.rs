//! The shared secret between peers: sent in a header, compared in
//! constant time, so the internal path is no open door and its timing
//! says nothing about how much of a guess was right.

use http::HeaderMap;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// The header a peer sends the shared secret in.
pub const SECRET_HEADER: &str = "x-hoard-cluster-secret";
/// The header marking a request one peer forwarded to another (its value
/// is the sender's name): such a request is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-hoard-forwarded";

/// The secret, kept as its sha256 so comparisons are of fixed length.
#[derive(Clone)]
pub struct Secret {
    plain: String,
    hashed: [u8; 32],
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Wraps the configured secret.
    pub fn new(plain: String) -> Secret {
        let hashed = Sha256::digest(plain.as_bytes()).into();
        Secret { plain, hashed }
    }

    /// The value to send to a peer.
    pub fn header_value(&self) -> &str {
        &self.plain
    }

    /// Whether `given` is the secret (constant time in its content).
    pub fn matches(&self, given: &[u8]) -> bool {
        let given: [u8; 32] = Sha256::digest(given).into();
        given.ct_eq(&self.hashed).into()
    }
}

/// What the cluster headers of a request say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No cluster header: a client.
    Client,
    /// A peer with the right secret that forwarded the request.
    Forwarded,
    /// A peer with the right secret, not forwarding (a ping).
    Peer,
}

/// Why a request with cluster headers was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A cluster header without the secret, or with a wrong one.
    #[error("cluster request without the right shared secret")]
    BadSecret,
    /// A cluster header on a node without `[cluster]`.
    #[error("this node is not in a cluster")]
    NoCluster,
}

/// Classifies a request by its cluster headers; `secret` is `None` on a
/// node without `[cluster]`, which admits no peer at all.
pub fn admit(secret: Option<&Secret>, headers: &HeaderMap) -> Result<Caller, Refused> {
    // Typed names: a `&str` name is parsed again on every lookup, and
    // this runs on every request.
    const SECRET: http::HeaderName = http::HeaderName::from_static(SECRET_HEADER);
    const FORWARDED: http::HeaderName = http::HeaderName::from_static(FORWARDED_HEADER);
    let given = headers.get(SECRET);
    let forwarded = headers.contains_key(FORWARDED);
    if given.is_none() && !forwarded {
        return Ok(Caller::Client);
    }
    let secret = secret.ok_or(Refused::NoCluster)?;
    match given {
        Some(v) if secret.matches(v.as_bytes()) => Ok(if forwarded {
            Caller::Forwarded
        } else {
            Caller::Peer
        }),
        _ => Err(Refused::BadSecret),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn refuses_missing_and_wrong_secrets() {
        let s = Secret::new("0123456789abcdef".into());
        let s = Some(&s);
        assert_eq!(admit(s, &headers(&[])), Ok(Caller::Client));
        assert_eq!(
            admit(s, &headers(&[(FORWARDED_HEADER, "b")])),
            Err(Refused::BadSecret)
        );
        let wrong = headers(&[(FORWARDED_HEADER, "b"), (SECRET_HEADER, "0123456789abcdeX")]);
        assert_eq!(admit(s, &wrong), Err(Refused::BadSecret));
        let prefix = headers(&[(SECRET_HEADER, "0123456789abcde")]);
        assert_eq!(admit(s, &prefix), Err(Refused::BadSecret));
        let right = headers(&[(FORWARDED_HEADER, "b"), (SECRET_HEADER, "0123456789abcdef")]);
        assert_eq!(admit(s, &right), Ok(Caller::Forwarded));
        let ping = headers(&[(SECRET_HEADER, "0123456789abcdef")]);
        assert_eq!(admit(s, &ping), Ok(Caller::Peer));
    }

    #[test]
    fn a_node_without_cluster_admits_no_peer() {
        let right = headers(&[(FORWARDED_HEADER, "b"), (SECRET_HEADER, "whatever")]);
        assert_eq!(admit(None, &right), Err(Refused::NoCluster));
        assert_eq!(admit(None, &headers(&[])), Ok(Caller::Client));
    }
}
