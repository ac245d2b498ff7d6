"""Ceph RGW as the S3 bucket of hoard replicas: the second S3 server the suite runs hoard on.

Debian's radosgw (Ceph 16.2, Pacific) needs a Ceph cluster under it. This starts the smallest
one that serves: one monitor and one OSD on the memstore object store (in memory, no disk
device, no mount), with cephx off and no manager, then radosgw on an ephemeral loopback port.
Every file goes under `<workdir>/ceph` (`-c` config with its own data, run, log and crash
directories); nothing under /etc/ceph or /var/lib/ceph is read or written, no systemd unit
is involved, and the three daemons run in the foreground under the run's Supervisor.

The bucket is made with a signed request (curl's `--aws-sigv4`) and given a policy that lets
anyone read and list it, so bucket.py reads it back unsigned, as it does SeaweedFS's.
"""

import hashlib
import json
import os
import uuid

from bucket import Bucket
from clients import write
from harness import CheckFailed, Daemon, free_port, http, run, wait_until

ACCESS_KEY, SECRET_KEY = "hoard-e2e", "hoard-e2e-rgw-secret"
# A `ceph` command while the monitor is not up yet fails after this, instead of retrying for ever.
CEPH_CLI = ("--connect-timeout", "20")


class Rgw(Bucket):
    """A one-monitor, one-OSD Ceph with radosgw in front, holding one bucket."""

    def __init__(self, sup, workdir, env, bucket):
        self.home = os.path.join(workdir, "ceph")
        for d in ("mon", "osd", "run", "log", "crash", "rgw"):
            os.makedirs(os.path.join(self.home, d))
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}", bucket)
        self.env = env
        self.conf = self._write_config(free_port())
        log = os.path.join(self.home, "log")
        self.daemons = []

        # The monitor: a monmap with itself, its store made, then run in the foreground.
        monmap = os.path.join(self.home, "monmap")
        run(["ceph-authtool", "--create-keyring", os.path.join(self.home, "keyring"), "--gen-key",
             "-n", "mon.", "--cap", "mon", "allow *"], timeout=30)
        run(["monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", "--fsid", self.fsid,
             monmap], timeout=30)
        run(["ceph-mon", "-c", self.conf, "--mkfs", "-i", "a", "--monmap", monmap], timeout=60)
        self._start(sup, "ceph-mon", ["ceph-mon", "-c", self.conf, "-i", "a", "-f"], os.path.join(log, "mon.out"))
        wait_until(lambda: self.ceph("-s", check=False).returncode == 0, 60, "the Ceph monitor to answer")

        # The OSD: registered with the monitor, its memstore made, then run.
        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "new", osd_uuid).stdout.decode().strip()
        os.makedirs(os.path.join(self.home, "osd", f"ceph-{osd_id}"))  # memstore does not make it
        run(["ceph-osd", "-c", self.conf, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid], timeout=60)
        self._start(sup, "ceph-osd", ["ceph-osd", "-c", self.conf, "-i", osd_id, "-f"], os.path.join(log, "osd.out"))
        wait_until(lambda: b"1 up" in self.ceph("osd", "stat", check=False).stdout, 60, "the OSD to be up")

        # radosgw: it makes its pools on start, then answers S3.
        self._start(sup, "radosgw", ["radosgw", "-c", self.conf, "-n", "client.rgw", "-f"],
                    os.path.join(log, "rgw.out"))
        wait_until(lambda: self.daemon.ensure_alive() and http("GET", f"{self.endpoint}/", timeout=5).status == 200,
                   120, "radosgw to answer S3")
        run(["radosgw-admin", "-c", self.conf, "user", "create", "--uid=hoard-e2e",
             "--display-name=hoard e2e", f"--access-key={ACCESS_KEY}", f"--secret-key={SECRET_KEY}"], timeout=60)
        self.signed("PUT", "")
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
        self.signed("PUT", "?policy=", json.dumps(policy).encode())
        self.credentials = write(os.path.join(self.home, "credentials"),
                                 f"[default]\naws_access_key_id = {ACCESS_KEY}\n"
                                 f"aws_secret_access_key = {SECRET_KEY}\n")

    @property
    def daemon(self):
        """radosgw, whose log the checks quote."""
        return self.daemons[-1]

    def _write_config(self, mon_port):
        self.mon_port, self.fsid, h = mon_port, str(uuid.uuid4()), self.home
        return write(os.path.join(h, "ceph.conf"), f"""\
[global]
fsid = {self.fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
ms bind ipv6 = false
# cephx off, and plain CRC framing on the wire: one node on loopback, nothing to protect.
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms client mode = crc
# One OSD: pools of one replica, few placement groups, no failure domain above the OSD.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
# Whatever the machine's disk holds, the monitor must not stop for lack of space.
mon data avail warn = 0
mon data avail crit = 0
osd objectstore = memstore
memstore device bytes = 4294967296
mon data = {h}/mon/$cluster-$id
osd data = {h}/osd/$cluster-$id
run dir = {h}/run
admin socket = {h}/run/$name.asok
pid file = {h}/run/$name.pid
log file = {h}/log/$name.log
crash dir = {h}/crash
keyring = {h}/keyring

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{self.port}
rgw data = {h}/rgw
""")

    def _start(self, sup, name, argv, log_path):
        self.daemons.append(sup.start(Daemon(name, argv, log_path, self.env)))

    def ceph(self, *args, check=True):
        """One `ceph` CLI command against this cluster."""
        for d in self.daemons:
            d.ensure_alive()
        return run(["ceph", "-c", self.conf, *CEPH_CLI, *args], timeout=60, env=self.env, check=check)

    def signed(self, method, path, body=b""):
        """One request signed with the bucket owner's keys (curl --aws-sigv4)."""
        proc = run(["curl", "-sS", "--noproxy", "*", "-o", "/dev/stderr", "-w", "%{http_code}", "-X", method,
                    "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{ACCESS_KEY}:{SECRET_KEY}",
                    # RGW checks the payload hash, which curl does not send by itself.
                    "-H", f"x-amz-content-sha256: {hashlib.sha256(body).hexdigest()}",
                    "--data-binary", "@-", f"{self.endpoint}/{self.bucket}{path}"],
                   timeout=30, input=body)
        status = proc.stdout.decode().strip()
        if not status.startswith("2"):
            raise CheckFailed(f"radosgw answered {method} /{self.bucket}{path} with {status}: "
                              f"{proc.stderr[-300:]!r}")
