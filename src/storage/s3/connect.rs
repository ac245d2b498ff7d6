//! `[storage]` with `kind = "s3"` -> a probed [`Bucket`].
//!
//! Credentials come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, optionally `AWS_SESSION_TOKEN`) or from the
//! file `credentials_file` names, never from the config text.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{BackoffConfig, Certificate, ClientOptions, RetryConfig};

use super::{Bucket, Presigner};
use crate::config::StorageConfig;

/// An access key pair.
struct Keys {
    id: String,
    secret: String,
    token: Option<String>,
}

/// How long to wait for a TCP (and TLS) connection to the bucket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a request other than a blob read may take, each attempt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries of a failed request, and the time after which none is tried:
/// object_store's defaults (10 retries within 3 minutes) would hold a
/// client's request, or hoard's start, for minutes while the bucket is
/// down; a mirror should rather serve from its disk and stream misses.
/// Long enough for one retry after a request that timed out (a server's
/// first write can be slow: SeaweedFS grows its volumes then).
const RETRIES: usize = 3;
const RETRY_WITHIN: Duration = Duration::from_secs(60);

/// Builds the clients for `[storage]` and probes what the server
/// guarantees (logged once). Fails when the bucket cannot be written.
///
/// Blob reads get a client of their own without a total request timeout:
/// a large layer may take longer than any fixed limit to stream, and
/// object_store would cut it there. A stalled read is bounded instead by
/// [`S3Blobs`](super::S3Blobs)' idle timeout between chunks.
pub async fn connect(config: &StorageConfig) -> io::Result<Bucket> {
    let endpoint = config.endpoint.as_deref();
    let store = client(config, endpoint, Some(REQUEST_TIMEOUT))?;
    let reader = client(config, endpoint, None)?;
    let bucket = super::probe(Arc::new(store), config.prefix.as_deref()).await?;
    Ok(bucket.with_reader(Arc::new(reader)))
}

/// What signs redirect URLs when `[storage] redirect` is on: the same
/// bucket, keys and layout as `bucket`, signed for `redirect_endpoint` (or
/// `endpoint`).
pub fn presigner(config: &StorageConfig, bucket: &Bucket) -> io::Result<Option<Presigner>> {
    if !config.redirect {
        return Ok(None);
    }
    let endpoint = config
        .redirect_endpoint
        .as_deref()
        .or(config.endpoint.as_deref());
    let signer = client(config, endpoint, Some(REQUEST_TIMEOUT))?;
    Ok(Some(Presigner::new(
        signer,
        bucket.clone(),
        config.redirect_expiry,
    )))
}

/// An S3 client for `config`'s bucket at `endpoint` (AWS's when `None`),
/// with `timeout` per request attempt (`None`: no limit on the whole).
fn client(
    config: &StorageConfig,
    endpoint: Option<&str>,
    timeout: Option<Duration>,
) -> io::Result<AmazonS3> {
    let bucket = config
        .bucket
        .as_deref()
        .ok_or_else(|| invalid("storage.bucket is not set"))?;
    let keys = match &config.credentials_file {
        Some(path) => read_credentials_file(path)?,
        None => from_env()?,
    };
    let mut client = ClientOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
    client = match timeout {
        Some(t) => client.with_timeout(t),
        None => client.with_timeout_disabled(),
    };
    if let Some(ca) = &config.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| invalid(&format!("storage.ca_file {}: {e}", ca.display())))?;
        for cert in Certificate::from_pem_bundle(&pem)
            .map_err(|e| invalid(&format!("storage.ca_file {}: {e}", ca.display())))?
        {
            client = client.with_root_certificate(cert);
        }
    }
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(&config.region)
        .with_virtual_hosted_style_request(!config.path_style)
        .with_access_key_id(keys.id)
        .with_secret_access_key(keys.secret)
        .with_client_options(client)
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: RETRIES,
            retry_timeout: RETRY_WITHIN,
        });
    if let Some(token) = keys.token {
        builder = builder.with_token(token);
    }
    if let Some(endpoint) = endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    builder.build().map_err(super::io_error)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned())
}

fn from_env() -> io::Result<Keys> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Keys {
            id,
            secret,
            token: var("AWS_SESSION_TOKEN"),
        }),
        _ => Err(invalid(
            "[storage] kind = \"s3\" needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
             in the environment, or storage.credentials_file",
        )),
    }
}

/// Reads `aws_access_key_id`, `aws_secret_access_key` and optionally
/// `aws_session_token` from the `[default]` profile of an AWS credentials
/// file (or from lines before any profile header).
fn read_credentials_file(path: &Path) -> io::Result<Keys> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(&format!("storage.credentials_file {}: {e}", path.display())))?;
    parse_credentials(&text).ok_or_else(|| {
        invalid(&format!(
            "storage.credentials_file {}: no aws_access_key_id and aws_secret_access_key \
             under [default]",
            path.display()
        ))
    })
}

fn parse_credentials(text: &str) -> Option<Keys> {
    let (mut id, mut secret, mut token) = (None, None, None);
    let mut in_default = true;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(profile) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_default = profile.trim() == "default";
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !in_default {
            continue;
        }
        let v = Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        match k.trim() {
            "aws_access_key_id" => id = v,
            "aws_secret_access_key" => secret = v,
            "aws_session_token" => token = v,
            _ => {}
        }
    }
    Some(Keys {
        id: id?,
        secret: secret?,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_of_a_credentials_file_is_read() {
        let text = "[other]\naws_access_key_id = no\n\n[default]\n# comment\n\
                    aws_access_key_id = AKID\naws_secret_access_key=SECRET\n";
        let keys = parse_credentials(text).unwrap();
        assert_eq!((keys.id.as_str(), keys.secret.as_str()), ("AKID", "SECRET"));
        assert!(keys.token.is_none());
        assert!(parse_credentials("[default]\naws_access_key_id = A\n").is_none());
        assert!(
            parse_credentials("[other]\naws_access_key_id = A\naws_secret_access_key = B")
                .is_none()
        );
    }
}
