//! Request routing: path and query -> [`Route`].
//!
//! Repository names contain `/`, so the path is matched from the right:
//! `/v2/<name>/manifests/<reference>`, `/v2/<name>/blobs/<digest>`,
//! `/v2/<name>/tags/list`. Names, tags and digests are validated by the
//! handlers through the `oci` newtypes; nothing here touches the disk.

/// What a request asks for (strings still unvalidated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/tags/list`.
    Tags {
        /// Repository name.
        name: &'a str,
    },
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository name.
        name: &'a str,
        /// Tag or digest.
        reference: &'a str,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// Repository name.
        name: &'a str,
        /// Digest.
        digest: &'a str,
    },
    /// `/v2/<name>/blobs/uploads/`: starts an upload (POST), monolithic
    /// with `?digest=`, or a cross-repository mount with `?mount=&from=`.
    Uploads {
        /// Repository name.
        name: &'a str,
    },
    /// `/v2/<name>/blobs/uploads/<id>`: an upload session (GET status,
    /// PATCH a chunk, PUT to finish, DELETE to cancel).
    Upload {
        /// Repository name.
        name: &'a str,
        /// Session id as sent (validated by the upload handler).
        id: &'a str,
    },
    /// `/v2/<name>/referrers/<digest>`: the OCI 1.1 referrers API.
    Referrers {
        /// Repository name.
        name: &'a str,
        /// Digest of the subject manifest.
        digest: &'a str,
    },
    /// `/token`: hoard's own Bearer token issuer (the realm of its
    /// `WWW-Authenticate` challenge).
    Token,
    /// `/_hoard/<rest>`: the operator API (prefetch, pins, listing).
    Admin {
        /// What follows `/_hoard/`.
        rest: &'a str,
    },
    /// `/metrics`.
    Metrics,
    /// `/healthz`.
    Health,
    /// `/readyz`: whether the cache can take new content.
    Ready,
    /// Anything else.
    Unknown,
}

impl<'a> Route<'a> {
    /// Parses a request path.
    pub fn parse(path: &'a str) -> Route<'a> {
        match path {
            "/v2" | "/v2/" => return Route::Base,
            "/v2/_catalog" => return Route::Catalog,
            "/metrics" => return Route::Metrics,
            "/healthz" => return Route::Health,
            "/readyz" => return Route::Ready,
            "/token" => return Route::Token,
            _ => {}
        }
        if let Some(rest) = path.strip_prefix("/_hoard/") {
            return Route::Admin { rest };
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Route::Unknown;
        };
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Route::Tags { name };
        }
        if let Some(name) = rest
            .strip_suffix("/blobs/uploads/")
            .or_else(|| rest.strip_suffix("/blobs/uploads"))
        {
            return Route::Uploads { name };
        }
        if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
            if id.is_empty() || id.contains('/') {
                return Route::Unknown;
            }
            return Route::Upload { name, id };
        }
        let Some((head, last)) = rest.rsplit_once('/') else {
            return Route::Unknown;
        };
        let Some((name, kind)) = head.rsplit_once('/') else {
            return Route::Unknown;
        };
        match kind {
            "manifests" => Route::Manifest {
                name,
                reference: last,
            },
            "blobs" => Route::Blob { name, digest: last },
            "referrers" => Route::Referrers { name, digest: last },
            _ => Route::Unknown,
        }
    }
}

/// The value of a query parameter (percent-decoded), if present.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_from_the_right() {
        assert_eq!(Route::parse("/v2/"), Route::Base);
        assert_eq!(
            Route::parse("/v2/a/b/manifests/latest"),
            Route::Manifest {
                name: "a/b",
                reference: "latest"
            }
        );
        assert_eq!(
            Route::parse("/v2/manifests/blobs/sha256:x"),
            Route::Blob {
                name: "manifests",
                digest: "sha256:x"
            }
        );
        assert_eq!(
            Route::parse("/v2/blobs/manifests/v1"),
            Route::Manifest {
                name: "blobs",
                reference: "v1"
            }
        );
        assert_eq!(Route::parse("/v2/a/tags/list"), Route::Tags { name: "a" });
        assert_eq!(
            Route::parse("/v2/a/b/blobs/uploads/"),
            Route::Uploads { name: "a/b" }
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads"),
            Route::Uploads { name: "a" }
        );
        assert_eq!(
            Route::parse("/v2/a/b/blobs/uploads/3f2a-11"),
            Route::Upload {
                name: "a/b",
                id: "3f2a-11"
            }
        );
        assert_eq!(Route::parse("/v2/a/blobs/uploads/x/y"), Route::Unknown);
        assert_eq!(
            Route::parse("/v2/a/referrers/sha256:x"),
            Route::Referrers {
                name: "a",
                digest: "sha256:x"
            }
        );
        assert_eq!(Route::parse("/token"), Route::Token);
        assert_eq!(Route::parse("/_hoard/pins"), Route::Admin { rest: "pins" });
        assert_eq!(Route::parse("/readyz"), Route::Ready);
        assert_eq!(Route::parse("/v2/a"), Route::Unknown);
        assert_eq!(Route::parse("/etc/passwd"), Route::Unknown);
        assert_eq!(Route::parse("/v2/a/other/x"), Route::Unknown);
    }

    #[test]
    fn query() {
        assert_eq!(
            query_param(Some("ns=docker.io&x=1"), "ns").as_deref(),
            Some("docker.io")
        );
        assert_eq!(
            query_param(Some("a=1&ns=ghcr%2Eio"), "ns").as_deref(),
            Some("ghcr.io")
        );
        assert_eq!(query_param(Some("ns"), "ns").as_deref(), Some(""));
        assert_eq!(query_param(Some("n=5"), "ns"), None);
        assert_eq!(query_param(None, "ns"), None);
        assert_eq!(query_param(Some("ns=%"), "ns").as_deref(), Some("%"));
        assert_eq!(query_param(Some("ns=%4"), "ns").as_deref(), Some("%4"));
    }
}
