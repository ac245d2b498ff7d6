//! The htpasswd file: `user:$2y$05$...` lines as `htpasswd -B` writes them.
//!
//! Only bcrypt is accepted: the other htpasswd formats (MD5-apr1, SHA-1,
//! crypt) are too cheap to brute-force and refused at start, naming the line.
//! A user that does not exist is checked against a dummy hash of the same
//! cost, so the answer and its timing say nothing about which names exist.

use std::collections::HashMap;
use std::path::Path;

use crate::config::ConfigError;

use super::config::ANONYMOUS;

/// Users and their bcrypt hashes.
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// Checked when the user is unknown, so that costs the same time.
    dummy: String,
}

impl std::fmt::Debug for Htpasswd {
    // Hashes never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Htpasswd({} users)", self.users.len())
    }
}

impl Htpasswd {
    /// No users: every login fails (after the dummy check).
    pub fn empty() -> Htpasswd {
        Htpasswd::parse("", "").unwrap_or_else(|_| Htpasswd {
            users: HashMap::new(),
            dummy: String::new(),
        })
    }

    /// Reads and parses the file named by `auth.htpasswd`.
    pub fn load(path: &Path) -> Result<Htpasswd, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Secret {
            key: "auth.htpasswd".into(),
            msg: format!("cannot read {}: {e}", path.display()),
        })?;
        Htpasswd::parse(&text, &path.display().to_string())
    }

    /// Parses htpasswd text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Htpasswd, ConfigError> {
        let invalid = |line: usize, msg: String| ConfigError::Invalid {
            key: "auth.htpasswd".into(),
            msg: format!("{origin} line {line}: {msg}"),
        };
        let mut users = HashMap::new();
        let mut cost = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| invalid(i + 1, "expected user:hash".into()))?;
            if user.is_empty() {
                return Err(invalid(i + 1, "empty user name".into()));
            }
            if user == ANONYMOUS {
                return Err(invalid(
                    i + 1,
                    format!("{ANONYMOUS:?} is reserved for requests without credentials"),
                ));
            }
            let parts = hash.parse::<bcrypt::HashParts>().map_err(|_| {
                invalid(
                    i + 1,
                    format!("user {user:?}: only bcrypt hashes are accepted (create them with `htpasswd -B`)"),
                )
            })?;
            cost = cost.max(Some(parts.get_cost()));
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(invalid(i + 1, format!("user {user:?} appears twice")));
            }
        }
        // The dummy costs what a real entry costs; its password is random so
        // no guess can match it.
        let secret: [u8; 16] = super::token::random_bytes();
        let dummy = bcrypt::hash(secret, cost.unwrap_or(bcrypt::DEFAULT_COST))
            .map_err(|e| invalid(0, format!("cannot make the dummy hash: {e}")))?;
        Ok(Htpasswd { users, dummy })
    }

    /// Whether `password` is the user's. Slow on purpose (bcrypt): call it
    /// off the async runtime.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, exists) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        bcrypt::verify(password, hash).unwrap_or(false) && exists
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_bcrypt_entries() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let h = Htpasswd::parse(&format!("# users\nalice:{hash}\n\n"), "t").unwrap();
        assert_eq!(h.len(), 1);
        assert!(h.verify("alice", "s3cret"));
        assert!(!h.verify("alice", "wrong"));
        assert!(!h.verify("bob", "s3cret"));
        assert!(!h.verify("bob", ""));
    }

    #[test]
    fn accepts_htpasswd_b_output() {
        // `htpasswd -nbB alice s3cret` (apache2-utils 2.4), cost 5, $2y$.
        let line = "alice:$2y$05$WyugwVkVmfuhAs.dj1c/YOw5XclFNz4m1dXrS/i70aC/RPix1vNKy";
        let h = Htpasswd::parse(line, "t").unwrap();
        assert!(h.verify("alice", "s3cret"));
    }

    #[test]
    fn refuses_weak_formats_and_reserved_names() {
        for bad in [
            "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            "alice:$apr1$abc$def",
            "alice",
            ":$2y$05$Yz7i8Bv3yN9mQyq9x0r6UuCq3l9vC8zQm8O4mS0b9o7dYwW0lqS2e",
            "anonymous:$2y$05$Yz7i8Bv3yN9mQyq9x0r6UuCq3l9vC8zQm8O4mS0b9o7dYwW0lqS2e",
        ] {
            let err = Htpasswd::parse(bad, "f").unwrap_err().to_string();
            assert!(err.contains("f line 1"), "{bad}: {err}");
        }
    }
}
