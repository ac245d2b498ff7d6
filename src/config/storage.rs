//! The `[storage]` table of `mirror.toml`: where blobs and records live.
//!
//! `kind = "disk"` (the default) keeps everything under `cache_dir`.
//! `kind = "s3"` puts blobs and records in an S3-compatible bucket shared
//! by every replica, with `cache_dir` as a bounded local tier in front of
//! it (`max_size` applies to that tier). Credentials never appear here:
//! they come from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` or from the
//! file `credentials_file` names, so a config can be shown or committed.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// Which backend holds the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Everything under `cache_dir`.
    #[default]
    Disk,
    /// An S3-compatible bucket, with `cache_dir` as a local tier.
    S3,
}

/// The `[storage]` section. Every key has a default or is only needed for
/// `kind = "s3"`, so a configuration without the section still parses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `"disk"` or `"s3"`.
    #[serde(default)]
    pub kind: StorageKind,
    /// The S3 endpoint URL (`http://127.0.0.1:8333`); AWS's own when absent.
    pub endpoint: Option<String>,
    /// The bucket (it must exist).
    pub bucket: Option<String>,
    /// The region requests are signed for.
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), what SeaweedFS, Ceph
    /// RGW and MinIO expect; `false` for virtual-hosted style (AWS).
    #[serde(default = "yes")]
    pub path_style: bool,
    /// A key prefix, so several hoards (or other data) can share a bucket.
    pub prefix: Option<String>,
    /// A PEM file of CA certificates to trust for an `https` endpoint.
    pub ca_file: Option<PathBuf>,
    /// A file in the AWS credentials format (`aws_access_key_id`,
    /// `aws_secret_access_key` under `[default]`); when absent the two
    /// `AWS_*` environment variables are read.
    pub credentials_file: Option<PathBuf>,
    /// Answer a `GET` of a blob that is in the bucket but not on this
    /// node's disk with a `307` to a presigned bucket URL, so the bytes
    /// skip the mirror. Off by default: clients must be able to reach the
    /// bucket, and it hands them a URL that works for `redirect_expiry`.
    #[serde(default)]
    pub redirect: bool,
    /// The endpoint clients reach the bucket at, when it differs from
    /// `endpoint` (an internal name or address); the URL is signed for it.
    pub redirect_endpoint: Option<String>,
    /// How long a presigned URL works.
    #[serde(default = "default_redirect_expiry", with = "humantime_serde")]
    pub redirect_expiry: Duration,
    /// The budget for mirrored content in the bucket: blobs no pin and no
    /// local repository holds. Unset: the bucket keeps everything. One
    /// node at a time (the holder of the upkeep lease) enforces it.
    pub bucket_max_size: Option<bytesize::ByteSize>,
    /// How often the lease holder checks the bucket budget.
    #[serde(default = "default_bucket_check_interval", with = "humantime_serde")]
    pub bucket_check_interval: Duration,
    /// A blob written to the bucket less than this long ago is never
    /// evicted: an upload whose manifest has not arrived yet, a fill some
    /// replica is still announcing. The bucket knows when an object was
    /// written, not when it was last read, so eviction goes oldest first.
    #[serde(default = "default_bucket_grace", with = "humantime_serde")]
    pub bucket_grace: Duration,
}

fn default_bucket_check_interval() -> Duration {
    Duration::from_secs(600)
}

fn default_bucket_grace() -> Duration {
    Duration::from_secs(3600)
}

fn default_redirect_expiry() -> Duration {
    Duration::from_secs(300)
}

/// The longest a presigned URL may work (SigV4's limit is 7 days; a URL
/// that outlives a credential rotation is a leak, so far less).
const MAX_REDIRECT_EXPIRY: Duration = Duration::from_secs(3600);

fn default_region() -> String {
    "us-east-1".into()
}

fn yes() -> bool {
    true
}

impl StorageConfig {
    /// Checks the keys `kind = "s3"` needs, naming the one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, msg: &str| ConfigError::Invalid {
            key: format!("storage.{key}"),
            msg: msg.into(),
        };
        if self.kind == StorageKind::Disk {
            return Ok(());
        }
        match &self.bucket {
            Some(b) if !b.is_empty() && !b.contains('/') => {}
            _ => return Err(invalid("bucket", "kind = \"s3\" needs a bucket name")),
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid("endpoint", "must be an http:// or https:// URL"));
            }
        }
        if let Some(e) = &self.redirect_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(
                    "redirect_endpoint",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if self.bucket_check_interval < Duration::from_secs(1) {
            return Err(invalid("bucket_check_interval", "must be at least 1s"));
        }
        let expiry = self.redirect_expiry;
        if self.redirect && (expiry < Duration::from_secs(1) || expiry > MAX_REDIRECT_EXPIRY) {
            return Err(invalid("redirect_expiry", "must be between 1s and 1h"));
        }
        if let Some(p) = &self.prefix {
            let ok = p
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\'));
            if !ok {
                return Err(invalid(
                    "prefix",
                    "segments separated by single '/', none empty, '.' or '..'",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StorageConfig, String> {
        let c: StorageConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn s3_needs_a_bucket_and_keeps_secrets_out() {
        assert_eq!(parse("").unwrap().kind, StorageKind::Disk);
        let err = parse("kind = \"s3\"").unwrap_err();
        assert!(err.contains("storage.bucket"), "{err}");
        let c = parse("kind = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:1\"").unwrap();
        assert!(c.path_style);
        assert_eq!(c.region, "us-east-1");
        let err = parse("kind = \"s3\"\nbucket = \"b\"\nprefix = \"a//b\"").unwrap_err();
        assert!(err.contains("storage.prefix"), "{err}");
        let err = parse("kind = \"s3\"\nbucket = \"b\"\nendpoint = \"127.0.0.1\"").unwrap_err();
        assert!(err.contains("storage.endpoint"), "{err}");
        let err = parse("kind = \"s3\"\nbucket = \"b\"\nsecret_access_key = \"x\"").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn redirects_are_off_by_default_and_bounded() {
        let c = parse("kind = \"s3\"\nbucket = \"b\"").unwrap();
        assert!(!c.redirect);
        assert_eq!(c.redirect_expiry, Duration::from_secs(300));
        let s3 = "kind = \"s3\"\nbucket = \"b\"\nredirect = true\n";
        let c = parse(&format!(
            "{s3}redirect_endpoint = \"https://s3.example.com\""
        ))
        .unwrap();
        assert!(c.redirect);
        let err = parse(&format!("{s3}redirect_endpoint = \"s3.example.com\"")).unwrap_err();
        assert!(err.contains("storage.redirect_endpoint"), "{err}");
        let err = parse(&format!("{s3}redirect_expiry = \"2h\"")).unwrap_err();
        assert!(err.contains("storage.redirect_expiry"), "{err}");
        let err = parse(&format!("{s3}redirect_expiry = \"0s\"")).unwrap_err();
        assert!(err.contains("storage.redirect_expiry"), "{err}");
    }
}
