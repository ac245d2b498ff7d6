//! One [`Platform`] for every place hoard meets one: the `platform` of an
//! index entry (as JSON) and the filters operators write
//! (`--platform linux/arm/v7`, `[prefetch] platforms`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A platform that is not `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a platform: write os/arch or os/arch/variant, e.g. linux/arm64")]
pub struct PlatformError(pub String);

/// `os/architecture[/variant]`, as an index entry declares it or as a filter
/// names it. Missing fields of an index entry read as empty (OCI requires
/// them, but a lenient reader loses nothing by not refusing the index).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `v8`; a filter without one matches every variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(text: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = text.trim().split('/').collect();
        let ok = |s: &&str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(PlatformError(text.to_owned())),
        }
    }

    /// Parses a comma-separated list (`linux/amd64,linux/arm64`).
    pub fn parse_list(items: &[String]) -> Result<Vec<Platform>, PlatformError> {
        items
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.trim().is_empty())
            .map(Platform::parse)
            .collect()
    }

    /// Whether `entry` (an index entry's platform) matches this filter.
    pub fn matches(&self, entry: &Platform) -> bool {
        self.os == entry.os
            && self.architecture == entry.architecture
            && self
                .variant
                .as_deref()
                .is_none_or(|v| Some(v) == entry.variant.as_deref())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let p = Platform::parse_list(&["linux/amd64,linux/arm/v7".into()]).unwrap();
        let entry = |os: &str, arch: &str, v: Option<&str>| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: v.map(str::to_owned),
        };
        assert!(p[0].matches(&entry("linux", "amd64", None)));
        assert!(p[0].matches(&entry("linux", "amd64", Some("v2"))));
        assert!(!p[1].matches(&entry("linux", "arm", Some("v6"))));
        assert!(p[1].matches(&entry("linux", "arm", Some("v7"))));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/../x").is_err());
        assert_eq!(p[1].to_string(), "linux/arm/v7");
    }
}
