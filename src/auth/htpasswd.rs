//! The htpasswd file: `user:$2y$05$...` lines as `htpasswd -B` writes them.
//!
//! Only bcrypt is accepted: the other htpasswd formats (MD5-apr1, SHA-1,
//! crypt) are too cheap to brute-force and refused at start, naming the line.
//! A user that does not exist is checked against a dummy hash whose cost is
//! drawn from the file's users (one user's cost, picked by a keyed hash of
//! the name, so one name always gets the same cost). A file mixing costs
//! then cannot tell names apart by timing: an unknown name takes as long as
//! a real user of the cost it drew, and that cost is as likely as in the
//! file itself. (A dummy of the highest cost, as before, made every cheap
//! user stand out.) The timing still tells a name's cost, as it always did.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::config::ConfigError;

use crate::config::auth::ANONYMOUS;

/// The bcrypt costs `htpasswd -B -C` writes. A higher cost is refused at
/// start: every login of that user (and the dummy check of unknown names,
/// which draws from the file's costs) would take minutes to days; cost 31
/// is 2^31 rounds, and start itself hashes one dummy per cost.
const MIN_COST: u32 = 4;
/// See [`MIN_COST`].
const MAX_COST: u32 = 17;

/// Users and their bcrypt hashes.
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// One dummy hash per cost in the file, checked for unknown users.
    dummies: BTreeMap<u32, String>,
    /// Every user's cost, one entry per user: an unknown name draws from it.
    costs: Vec<u32>,
    /// Key of the draw, random per load, so nobody can predict a name's cost.
    draw_key: [u8; 16],
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
            dummies: BTreeMap::new(),
            costs: Vec::new(),
            draw_key: [0; 16],
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
        let (users, mut costs) = parse_lines(text, origin)?;
        if costs.is_empty() {
            costs.push(bcrypt::DEFAULT_COST);
        }
        // One dummy per distinct cost (files hold one or two); its password
        // is random so no guess can match it.
        let mut dummies = BTreeMap::new();
        for &cost in &costs {
            if dummies.contains_key(&cost) {
                continue;
            }
            let secret: [u8; 16] = super::token::random_bytes();
            let dummy = bcrypt::hash(secret, cost)
                .map_err(|e| invalid(0, format!("cannot make the dummy hash: {e}")))?;
            dummies.insert(cost, dummy);
        }
        Ok(Htpasswd {
            users,
            dummies,
            costs,
            draw_key: super::token::random_bytes(),
        })
    }

    /// The dummy hash an unknown `user` is checked against (see the module doc).
    fn dummy_for(&self, user: &str) -> &str {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        h.update(self.draw_key);
        h.update(user.as_bytes());
        let d = h.finalize();
        let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        let i = usize::try_from(n % self.costs.len().max(1) as u64).unwrap_or(0);
        self.costs
            .get(i)
            .and_then(|c| self.dummies.get(c))
            .map_or("", String::as_str)
    }

    /// Whether `user` is in the file.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Whether `password` is the user's. Slow on purpose (bcrypt): call it
    /// off the async runtime.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, exists) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy_for(user), false),
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

/// The users and their hashes' costs in htpasswd `text` (one cost per
/// user), without any bcrypt work; `origin` names the file in errors.
pub fn parse_lines(
    text: &str,
    origin: &str,
) -> Result<(HashMap<String, String>, Vec<u32>), ConfigError> {
    let invalid = |line: usize, msg: String| ConfigError::Invalid {
        key: "auth.htpasswd".into(),
        msg: format!("{origin} line {line}: {msg}"),
    };
    let mut users = HashMap::new();
    let mut costs = Vec::new();
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
        let cost = parts.get_cost();
        if !(MIN_COST..=MAX_COST).contains(&cost) {
            return Err(invalid(
                i + 1,
                format!("user {user:?}: bcrypt cost {cost} is outside {MIN_COST}..={MAX_COST} (`htpasswd -B -C`)"),
            ));
        }
        costs.push(cost);
        if users.insert(user.to_owned(), hash.to_owned()).is_some() {
            return Err(invalid(i + 1, format!("user {user:?} appears twice")));
        }
    }
    Ok((users, costs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cost_htpasswd_cannot_write_is_refused_before_any_hashing() {
        // The salt and hash of `htpasswd -nbB alice s3cret`, cost changed.
        let tail = "WyugwVkVmfuhAs.dj1c/YOw5XclFNz4m1dXrS/i70aC/RPix1vNKy";
        let hash = |cost: u32| format!("u:$2y${cost:02}${tail}\n");
        for cost in [0, 3, 18, 31, 99] {
            let err = parse_lines(&hash(cost), "f").unwrap_err().to_string();
            assert!(err.contains("f line 1") && err.contains("cost"), "{err}");
        }
        assert_eq!(parse_lines(&hash(4), "f").unwrap().1, vec![4]);
        assert_eq!(parse_lines(&hash(17), "f").unwrap().1, vec![17]);
    }

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
    fn unknown_names_draw_their_dummy_cost_from_the_users() {
        // Issue 14: with the highest cost as the dummy, a cost-4 user
        // answered far faster than an unknown name.
        let cheap = bcrypt::hash("a", 4).unwrap();
        let dear = bcrypt::hash("b", 6).unwrap();
        let h = Htpasswd::parse(&format!("cheap:{cheap}\ndear:{dear}"), "t").unwrap();
        let cost = |name: &str| {
            h.dummy_for(name)
                .parse::<bcrypt::HashParts>()
                .unwrap()
                .get_cost()
        };
        let drawn: std::collections::BTreeSet<u32> =
            (0..64).map(|i| cost(&format!("nobody{i}"))).collect();
        assert_eq!(drawn, [4, 6].into());
        // One name always costs the same, as a real user would.
        assert_eq!(cost("nobody0"), cost("nobody0"));
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
