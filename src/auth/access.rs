//! What each request needs to be allowed: route + method -> (resource, action).
//!
//! Names are taken as the client sent them. With `?ns=X` (containerd
//! mirroring registry X) the repository used for rule matching is
//! `X/<name>`, so a rule for `docker.io/library` covers
//! `/v2/library/alpine/...?ns=docker.io`; token scopes keep the name from the
//! path, because that is what clients put in the scope they ask for.
//!
//! Any method a route does not read with is treated as a write, so a method
//! that no handler takes is still refused to anonymous clients before it
//! reaches a handler.

use http::Method;

use super::Action;
use crate::http::{query_param, Route};

/// What a request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A repository.
    Repository {
        /// Name as in the path (and in token scopes).
        name: String,
        /// Name for rule matching: `ns/name` when `ns` was given.
        rule_name: String,
    },
    /// `/v2/_catalog`: listing repositories.
    Catalog,
    /// `/_hoard/*`: the operator API.
    Admin,
}

impl Resource {
    fn repository(name: &str, ns: Option<&str>) -> Resource {
        Resource::Repository {
            name: name.to_owned(),
            rule_name: match ns {
                Some(ns) => format!("{ns}/{name}"),
                None => name.to_owned(),
            },
        }
    }

    /// Scope type and name, as in `repository:<name>:pull`.
    pub fn scope(&self) -> (&'static str, &str) {
        match self {
            Resource::Repository { name, .. } => ("repository", name),
            Resource::Catalog => ("registry", "catalog"),
            Resource::Admin => ("hoard", "admin"),
        }
    }
}

/// What a request must be allowed to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health, readiness, metrics, the token endpoint, unknown paths.
    Nothing,
    /// `/v2/`: who is asking must be known when access control is on, so
    /// `docker login` and `podman login` see a challenge and check the password.
    Login,
    /// Each of these (resource, action) pairs.
    All(Vec<(Resource, Action)>),
}

/// The needs of a request.
pub fn need(method: &Method, route: &Route<'_>, query: Option<&str>, ns: Option<&str>) -> Need {
    let read = method == Method::GET || method == Method::HEAD;
    let repo =
        |name: &str, action: Action| Need::All(vec![(Resource::repository(name, ns), action)]);
    // Reads need pull; DELETE needs delete; anything else writes.
    let by_method = |name: &str| {
        if read {
            repo(name, Action::Pull)
        } else if method == Method::DELETE {
            repo(name, Action::Delete)
        } else {
            repo(name, Action::Push)
        }
    };
    match route {
        Route::Base => Need::Login,
        Route::Health | Route::Ready | Route::Metrics | Route::Token | Route::Unknown => {
            Need::Nothing
        }
        Route::Catalog => Need::All(vec![(Resource::Catalog, Action::Pull)]),
        Route::Admin { .. } => Need::All(vec![(Resource::Admin, Action::Admin)]),
        Route::Tags { name } | Route::Referrers { name, .. } => {
            if read {
                repo(name, Action::Pull)
            } else {
                repo(name, Action::Push)
            }
        }
        Route::Manifest { name, .. } | Route::Blob { name, .. } => by_method(name),
        Route::Uploads { name } => {
            let mut needs = vec![(Resource::repository(name, ns), Action::Push)];
            // A cross-repository mount reads the source repository.
            if query_param(query, "mount").is_some() {
                if let Some(from) = query_param(query, "from").filter(|f| !f.is_empty()) {
                    needs.push((Resource::repository(&from, ns), Action::Pull));
                }
            }
            Need::All(needs)
        }
        // Status, chunks, finishing and cancelling a session all belong to
        // the pusher: cancelling an upload is not deleting content.
        Route::Upload { name, .. } => repo(name, Action::Push),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str, action: Action) -> (Resource, Action) {
        (Resource::repository(name, None), action)
    }

    fn need_of(method: Method, path: &str, query: Option<&str>) -> Need {
        need(&method, &Route::parse(path), query, None)
    }

    #[test]
    fn every_route() {
        use Action::*;
        let all = |v: Vec<(Resource, Action)>| Need::All(v);
        let cases = [
            (Method::GET, "/v2/", None, Need::Login),
            (Method::GET, "/healthz", None, Need::Nothing),
            (Method::GET, "/readyz", None, Need::Nothing),
            (Method::GET, "/metrics", None, Need::Nothing),
            (Method::GET, "/token", None, Need::Nothing),
            (Method::GET, "/nope", None, Need::Nothing),
            (
                Method::GET,
                "/v2/_catalog",
                None,
                all(vec![(Resource::Catalog, Pull)]),
            ),
            (
                Method::POST,
                "/_hoard/pins",
                None,
                all(vec![(Resource::Admin, Admin)]),
            ),
            (
                Method::GET,
                "/v2/a/b/tags/list",
                None,
                all(vec![repo("a/b", Pull)]),
            ),
            (
                Method::GET,
                "/v2/a/referrers/sha256:x",
                None,
                all(vec![repo("a", Pull)]),
            ),
            (
                Method::HEAD,
                "/v2/a/manifests/v1",
                None,
                all(vec![repo("a", Pull)]),
            ),
            (
                Method::PUT,
                "/v2/a/manifests/v1",
                None,
                all(vec![repo("a", Push)]),
            ),
            (
                Method::DELETE,
                "/v2/a/manifests/v1",
                None,
                all(vec![repo("a", Delete)]),
            ),
            (
                Method::POST,
                "/v2/a/manifests/v1",
                None,
                all(vec![repo("a", Push)]),
            ),
            (
                Method::GET,
                "/v2/a/blobs/sha256:x",
                None,
                all(vec![repo("a", Pull)]),
            ),
            (
                Method::DELETE,
                "/v2/a/blobs/sha256:x",
                None,
                all(vec![repo("a", Delete)]),
            ),
            (
                Method::POST,
                "/v2/a/blobs/uploads/",
                None,
                all(vec![repo("a", Push)]),
            ),
            (
                Method::POST,
                "/v2/a/blobs/uploads/",
                Some("mount=sha256:x&from=b/c"),
                all(vec![repo("a", Push), repo("b/c", Pull)]),
            ),
            (
                Method::PATCH,
                "/v2/a/blobs/uploads/id",
                None,
                all(vec![repo("a", Push)]),
            ),
            (
                Method::PUT,
                "/v2/a/blobs/uploads/id",
                Some("digest=x"),
                all(vec![repo("a", Push)]),
            ),
            (
                Method::GET,
                "/v2/a/blobs/uploads/id",
                None,
                all(vec![repo("a", Push)]),
            ),
            (
                Method::DELETE,
                "/v2/a/blobs/uploads/id",
                None,
                all(vec![repo("a", Push)]),
            ),
        ];
        for (method, path, query, want) in cases {
            assert_eq!(
                need_of(method.clone(), path, query),
                want,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn ns_prefixes_the_rule_name_only() {
        let n = need(
            &Method::GET,
            &Route::parse("/v2/library/alpine/manifests/3"),
            Some("ns=docker.io"),
            Some("docker.io"),
        );
        let Need::All(v) = n else { panic!("{n:?}") };
        assert_eq!(
            v[0].0,
            Resource::Repository {
                name: "library/alpine".into(),
                rule_name: "docker.io/library/alpine".into()
            }
        );
        assert_eq!(v[0].0.scope(), ("repository", "library/alpine"));
    }
}
