//! `WWW-Authenticate` values, and the realm URL of the Bearer challenge.

use std::collections::BTreeMap;

use http::{header, Request};

use super::access::Resource;
use crate::config::auth::{Action, AuthConfig, Scheme};
use crate::http::ConnInfo;

/// The challenge for a request that needs `needs` (empty: just log in).
pub fn header<B>(config: &AuthConfig, req: &Request<B>, needs: &[(Resource, Action)]) -> String {
    match config.challenge {
        Scheme::Basic => format!("Basic realm=\"{}\",charset=\"UTF-8\"", config.service),
        Scheme::Bearer => {
            let mut out = format!(
                "Bearer realm=\"{}\",service=\"{}\"",
                realm(config, req),
                config.service
            );
            let scope = scope(needs);
            if !scope.is_empty() {
                out.push_str(&format!(",scope=\"{scope}\""));
            }
            out
        }
    }
}

/// Adds `error="insufficient_scope"` to a Bearer challenge (a Basic one
/// has no such parameter).
pub fn insufficient(challenge: &str) -> String {
    if challenge.starts_with("Bearer ") {
        format!("{challenge},error=\"insufficient_scope\"")
    } else {
        challenge.to_owned()
    }
}

/// `repository:a:pull,push repository:b:pull`: one entry per resource, the
/// way distribution writes it. Push also asks for pull, because every
/// pushing client reads too (blob existence checks).
pub fn scope(needs: &[(Resource, Action)]) -> String {
    let mut by: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (resource, action) in needs {
        let (kind, name) = resource.scope();
        let entry = by.entry((kind, name)).or_default();
        match (resource, action) {
            (Resource::Catalog | Resource::Admin, _) => entry.push("*"),
            (_, Action::Push) => entry.extend(["pull", "push"]),
            (_, a) => entry.push(a.as_str()),
        }
    }
    by.into_iter()
        .map(|((kind, name), mut actions)| {
            actions.sort_unstable();
            actions.dedup();
            format!("{kind}:{name}:{}", actions.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `auth.realm`, or `http(s)://<Host>/token` from the request: the address
/// the client used to reach hoard is the one it can reach `/token` at.
pub fn realm<B>(config: &AuthConfig, req: &Request<B>) -> String {
    if let Some(r) = &config.realm {
        return r.clone();
    }
    let tls = req.extensions().get::<ConnInfo>().is_some_and(|c| c.tls);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        // Only host characters: the value goes into a quoted header parameter.
        .filter(|h| {
            !h.is_empty()
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .unwrap_or("localhost");
    format!("{}://{host}/token", if tls { "https" } else { "http" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> AuthConfig {
        toml::from_str(text).unwrap()
    }

    fn repo(name: &str) -> Resource {
        Resource::Repository {
            name: name.into(),
            rule_name: name.into(),
        }
    }

    #[test]
    fn bearer_with_scope_and_realm_from_host() {
        let req = Request::builder()
            .uri("/v2/a/blobs/uploads/")
            .header("host", "hoard.local:5000")
            .body(())
            .unwrap();
        let needs = [(repo("a"), Action::Push), (repo("b/c"), Action::Pull)];
        assert_eq!(
            header(&config(""), &req, &needs),
            "Bearer realm=\"http://hoard.local:5000/token\",service=\"hoard\",scope=\"repository:a:pull,push repository:b/c:pull\""
        );
    }

    #[test]
    fn tls_realm_configured_realm_and_basic() {
        let mut req = Request::builder()
            .uri("/v2/")
            .header("host", "evil\"host")
            .body(())
            .unwrap();
        req.extensions_mut().insert(ConnInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            tls: true,
        });
        assert_eq!(realm(&config(""), &req), "https://localhost/token");
        assert_eq!(
            realm(&config("realm = \"https://auth.example/t\""), &req),
            "https://auth.example/t"
        );
        let basic = header(&config("challenge = \"basic\""), &req, &[]);
        assert_eq!(basic, "Basic realm=\"hoard\",charset=\"UTF-8\"");
        assert_eq!(insufficient(&basic), basic);
        assert_eq!(
            scope(&[(Resource::Catalog, Action::Pull)]),
            "registry:catalog:*"
        );
    }
}
