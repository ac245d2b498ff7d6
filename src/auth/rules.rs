//! Rule evaluation: may this user do this action on this repository?

use crate::config::auth::{Action, Rule, ANONYMOUS};

/// The configured rules.
#[derive(Debug, Clone)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// Wraps validated rules.
    pub fn new(rules: Vec<Rule>) -> Rules {
        Rules(rules)
    }

    /// Whether `user` (None: anonymous) may do `action` on `repository`.
    /// For [`Action::Admin`] the repository is ignored: only `*` rules grant it.
    pub fn allows(&self, user: Option<&str>, repository: &str, action: Action) -> bool {
        self.0.iter().any(|r| {
            r.allow.contains(&action)
                && applies_to(r, user)
                && (action != Action::Admin || r.repository == "*")
                && covers(&r.repository, user, repository)
        })
    }

    /// Whether `user` may do `action` on at least one repository (decides
    /// whether an anonymous `_catalog` gets a challenge or a filtered list).
    pub fn allows_any(&self, user: Option<&str>, action: Action) -> bool {
        self.0
            .iter()
            .any(|r| r.allow.contains(&action) && applies_to(r, user))
    }
}

fn applies_to(rule: &Rule, user: Option<&str>) -> bool {
    rule.users.iter().any(|u| match user {
        None => u == ANONYMOUS,
        Some(name) => u == "*" || u == name,
    })
}

/// Prefix match on whole path components, after `{user}` substitution.
fn covers(pattern: &str, user: Option<&str>, repository: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let prefix = if pattern.contains("{user}") {
        match user {
            Some(u) => pattern.replace("{user}", u),
            // Anonymous has no namespace of its own.
            None => return false,
        }
    } else {
        pattern.to_owned()
    };
    let prefix = prefix.trim_end_matches('/');
    repository == prefix
        || repository
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repo: &str, users: &[&str], allow: &[Action]) -> Rule {
        Rule {
            repository: repo.into(),
            users: users.iter().map(|s| s.to_string()).collect(),
            allow: allow.to_vec(),
        }
    }

    #[test]
    fn prefixes_match_whole_components() {
        let r = Rules::new(vec![rule("team", &["alice"], &[Action::Push])]);
        assert!(r.allows(Some("alice"), "team", Action::Push));
        assert!(r.allows(Some("alice"), "team/app", Action::Push));
        assert!(!r.allows(Some("alice"), "teams/app", Action::Push));
        assert!(!r.allows(Some("alice"), "team/app", Action::Pull));
        assert!(!r.allows(Some("bob"), "team/app", Action::Push));
        assert!(!r.allows(None, "team/app", Action::Push));
    }

    #[test]
    fn anonymous_star_and_user_namespaces() {
        let r = Rules::new(vec![
            rule("*", &["anonymous"], &[Action::Pull]),
            rule("users/{user}", &["*"], &[Action::Pull, Action::Push]),
            rule("*", &["root"], &[Action::Admin]),
            rule("x", &["bob"], &[Action::Admin]),
        ]);
        assert!(r.allows(None, "anything/at/all", Action::Pull));
        assert!(!r.allows(Some("alice"), "anything", Action::Pull));
        assert!(r.allows(Some("alice"), "users/alice/app", Action::Push));
        assert!(!r.allows(Some("alice"), "users/bob/app", Action::Push));
        assert!(!r.allows(None, "users/{user}", Action::Push));
        assert!(r.allows(Some("root"), "", Action::Admin));
        assert!(!r.allows(Some("bob"), "x", Action::Admin));
        assert!(r.allows_any(None, Action::Pull));
        assert!(!r.allows_any(None, Action::Push));
    }
}
