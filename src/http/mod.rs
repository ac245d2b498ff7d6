//! Small HTTP pieces shared by the listeners, the operator API, access
//! control and the `/v2` handlers: the route table, query parameters, who is
//! on the other end of a connection, and `Content-Length`.
//!
//! They live on the ground floor, below `server`, `admin`, `auth` and
//! `registry`, because each of those needs them; kept in whichever module
//! needed them first, they made those modules import each other.
//!
//! (The crate-root name shadows the `http` crate only at the crate root;
//! everywhere else `http::` is the crate and `crate::http::` is this module.)

pub mod route;

use std::net::SocketAddr;

use ::http::{header, HeaderMap};

pub use route::{query_param, Route};

/// Who is on the other end of a request's connection, as a request
/// extension: failed-login rate limits key on the peer address, loopback-only
/// admin endpoints check it, and token realms need the scheme.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl ConnInfo {
    /// Whether the request comes from this host: the peer is a loopback
    /// address (IPv4-mapped ones unmapped first, as a dual-stack `[::]`
    /// listener shows IPv4 clients) and no proxy header says it merely
    /// relays someone else. Behind a reverse proxy on the same host every
    /// client connects from loopback; the header is the only tell.
    pub fn is_local<B>(req: &::http::Request<B>) -> bool {
        let proxied = ["forwarded", "x-forwarded-for", "x-real-ip"]
            .iter()
            .any(|h| req.headers().contains_key(*h));
        !proxied
            && req
                .extensions()
                .get::<ConnInfo>()
                .is_some_and(|c| c.peer.ip().to_canonical().is_loopback())
    }
}

/// `Content-Length` of a request or response, if present and numeric.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
