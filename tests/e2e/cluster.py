#!/usr/bin/env python3
"""Three real hoard replicas on one S3 bucket (SeaweedFS or Ceph RGW), with real clients (issue 13).

    tests/e2e/cluster.py --hoard target/debug/hoard [--big-mib 256] [--keep] [--store weed|rgw]

Starts `weed mini` (target/venv) with one bucket (or, with `--store rgw`, Ceph RGW on a
one-OSD Ceph: rgw.py), the Docker-Hub-like upstream of run.py
(distribution behind the token service, seeded with real images plus `team/big:v1`, one
--big-mib random layer) behind a throttling relay (relay.py), and three `hoard serve`
processes with `[storage] kind = "s3"` on the bucket and `[cluster]` static peers with a
shared secret. Then:

1. 32 concurrent cold pulls of team/app:v1 (and, beside them, of multi:latest and dlist:1.0),
   spread round-robin over the replicas: skopeo copies to dir and OCI layouts, by tag and by
   digest, and containerd `ctr images pull` through hosts.toml (one private containerd per
   replica). Each blob must be fetched from the upstream exactly once (its log).
2. kill -9 of the rendezvous owner of the big layer (the same hash as src/cluster/hash.rs)
   once the relay, throttled, has passed a quarter of it to the owner: skopeo (retrying),
   ctr (pull again: containerd resumes with Range) and curl (resuming with `-C -`) on the two
   other replicas must all get the right bytes; at most two upstream GETs of the layer; every
   `blobs/sha256/...` object in the bucket hashes to its key.
3. The killed replica, restarted with an empty disk, serves every image (and every blob
   byte-for-byte) from the bucket with no request reaching the upstream.
4. The upstream and token service stop; every replica serves every image by tag and by
   digest to skopeo and to a fresh containerd.
5. Every object under `blobs/` in the bucket is read back and must hash to its key.

Prints one PASS/FAIL line per check with the figures (upstream GETs per blob, wall times).
Needs root (containerd) and scripts/install-deps.sh.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import (  # noqa: E402
    Containerd,
    Skopeo,
    check_copy,
    start_registry,
    upstream_requests,
    wait_serving,
    write,
    write_hosts_dir,
)
from harness import CheckFailed, Daemon, client_env, ensure, free_port, http, run, run_suite, wait_until  # noqa: E402
from images import Image, Pusher, build_fixtures  # noqa: E402
from relay import Relay  # noqa: E402
from tokenservice import TokenService  # noqa: E402
from rgw import Rgw  # noqa: E402
from weed import Weed  # noqa: E402

SERVICE = "registry.docker.io"
ISSUER = "hoard-e2e-token-issuer"
SEED_USER, SEED_PASSWORD = "seed", "seedpass"
BUCKET, PREFIX = "hoard-e2e", "cluster"
CLUSTER_SECRET = "hoard-e2e-cluster-secret-0123456789"
NODES = ("hoard-0", "hoard-1", "hoard-2")
CLIENTS = 32
# The S3 servers the bucket can live on (--store): what the setup check calls it, its class,
# and what hoard's start-up probe must find there (docs/cluster.md's table). RGW 16.2 fails an
# If-Match that quotes the ETag, so hoard sends it bare there.
STORES = {
    "weed": ("weed mini", Weed, "create_only=true compare_and_swap=true bare_if_match=false"),
    "rgw": ("Ceph RGW (one monitor, one memstore OSD)", Rgw,
            "create_only=true compare_and_swap=true bare_if_match=true"),
}


def owner(key, members):
    """The rendezvous owner of `key`, exactly as src/cluster/hash.rs computes it: the member
    with the greatest first 8 bytes (big-endian) of sha256(member NUL key), ties to the
    greater name."""
    def weight(m):
        return int.from_bytes(hashlib.sha256(m.encode() + b"\0" + key.encode()).digest()[:8], "big"), m
    return max(members, key=weight)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def probed(log_path):
    """The guarantees hoard's object store probe logged (`create_only=.. compare_and_swap=..
    bare_if_match=..`), None before it has logged them."""
    with open(log_path, errors="replace") as f:
        for line in f:
            if "object store probed" in line:
                fields = ("create_only=", "compare_and_swap=", "bare_if_match=")
                return " ".join(w for w in line.split() if w.startswith(fields))
    return None


def short(digest):
    return digest[:19]


def parallel(jobs):
    """Runs every `fn()` of `jobs` ({label: fn}) in its own thread, started together; returns
    {label: (seconds, error or None)}."""
    results = {}
    start = threading.Event()

    def one(label, fn):
        start.wait()
        t0 = time.monotonic()
        try:
            fn()
            results[label] = (time.monotonic() - t0, None)
        except Exception as e:  # noqa: BLE001 - reported per job
            results[label] = (time.monotonic() - t0, e)

    threads = [threading.Thread(target=one, args=item, daemon=True) for item in jobs.items()]
    for t in threads:
        t.start()
    start.set()
    deadline = time.monotonic() + 600
    for t in threads:
        t.join(timeout=max(0, deadline - time.monotonic()))
    for label in jobs:
        results.setdefault(label, (600, CheckFailed("still running after 600 s")))
    return results


def failures(results):
    bad = {k: e for k, (_, e) in results.items() if e is not None}
    if bad:
        first = next(iter(bad.values()))
        detail = "\n".join(f"{k}: {type(e).__name__}: {e} {getattr(e, 'detail', '')}"[:600]
                           for k, e in sorted(bad.items()))
        raise CheckFailed(f"{len(bad)} of {len(results)} failed, e.g. {type(first).__name__}: {first}", detail)


class Replica:
    """One `hoard serve` of the cluster: its name, port and home (config, log, disk tier)."""

    def __init__(self, name, port, home):
        self.name, self.port, self.home = name, port, home
        self.daemon = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self):
        return f"127.0.0.1:{self.port}"


class Suite:
    def __init__(self, report, sup, workdir, dead, hoard_bin, big_mib, store_kind):
        self.report, self.sup, self.workdir, self.dead = report, sup, workdir, dead
        # What the setup calls the S3 server, its class, what hoard's probe must find there.
        self.store_name, self.store_class, self.store_probe = STORES[store_kind]
        self.hoard_bin = hoard_bin
        self.env = client_env(dead)
        self.fixtures = build_fixtures(8 << 20)
        self.big = Image("oci", "amd64", [{"opt/big/random.bin": os.urandom(big_mib << 20)}], compresslevel=0)
        self.fixtures["team/big:v1"] = self.big
        self.replicas = {}
        self.containerds = {}
        self.serial = 0
        self.figures = []
        self.victim = None
        self.registry = self.tokens = self.relay = self.store = None

    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def logs(self, *extra):
        return [d for d in (self.registry, *(r.daemon for r in self.replicas.values()), *extra) if d]

    def figure(self, text):
        self.figures.append(text)
        print(f"  figure: {text}", flush=True)

    # -- setup ---------------------------------------------------------------------------

    def setup(self):
        require = self.report.require

        def upstream():
            self.tokens = TokenService(self.workdir, SERVICE, ISSUER, {SEED_USER: (SEED_PASSWORD, ["pull", "push"])})
            self.tokens.generate_key()
            self.sup.on_exit(self.tokens.stop)
            self.tokens.start()
            port = free_port()
            self.registry = start_registry(self.sup, self.workdir, port, self.tokens, self.env)
            wait_serving(self.registry, f"http://127.0.0.1:{port}", 401)
            pusher = Pusher(f"http://127.0.0.1:{port}", SEED_USER, SEED_PASSWORD)
            for ref, artifact in self.fixtures.items():
                name, tag = ref.split(":")
                pusher.push(name, tag, artifact)
            self.relay = Relay(port)
            self.sup.on_exit(self.relay.stop)

        require("setup upstream (distribution, token auth, seeded, behind the relay)", upstream, self.logs)

        def bucket():
            self.store = self.store_class(self.sup, self.workdir, self.env, BUCKET)

        require(f"setup {self.store_name} with a bucket", bucket, self.logs)

        self.ports = {n: free_port() for n in NODES}
        for n in NODES:
            self.replicas[n] = Replica(n, self.ports[n], self.path(n))

        def replicas():
            for r in self.replicas.values():
                self.start_replica(r)
            for r in self.replicas.values():
                wait_serving(r.daemon, r.url, 200)
            # Every member must see the others healthy before owners are relied on.
            for r in self.replicas.values():
                wait_until(lambda r=r: len(self.members_seen(r)) == len(NODES), 30,
                           f"{r.name} to see every member")
            # What hoard's start-up probe found this server to guarantee (docs/cluster.md's table).
            found = {probed(r.daemon.log_path) for r in self.replicas.values()}
            self.figure(f"{self.store_name}: hoard's probe found {', '.join(sorted(map(str, found)))}")
            ensure(found == {self.store_probe}, f"hoard's object store probe found {found}, not {self.store_probe}")

        require("setup three hoard replicas ([storage] s3, [cluster] static peers)", replicas, self.logs)

        def containerds():
            for n in NODES:
                self.containerds[n] = self.containerd(n)
            # Each replica's hosts dir is written here, once, before any pull: pulls run in
            # parallel threads, and one that found the directory made but its hosts.toml not
            # yet written fell back to docker.io's own server (a CI failure, stop 21).
            for r in self.replicas.values():
                write_hosts_dir(self.path(f"hosts-{r.name}"), r.url, self.dead)

        require("setup a private containerd per replica", containerds, self.logs)

    def start_replica(self, r):
        os.makedirs(r.home, exist_ok=True)
        peers = ", ".join(f'"{n}" = "http://127.0.0.1:{p}"' for n, p in self.ports.items())
        config = write(os.path.join(r.home, "hoard.toml"), f"""\
listen = "127.0.0.1:{r.port}"
cache_dir = "{r.home}/cache"
default_upstream = "docker.io"
tag_ttl = "1h"

[upstreams."docker.io"]
url = "{self.relay.url}"
{self.store.storage_toml(PREFIX)}
[cluster]
node = "{r.name}"
peers = {{ {peers} }}
# The default: a replica that finds the owner unreachable drops it at once, so the bound
# of two upstream GETs after a kill does not depend on pings outrunning the clients' retries.
refresh = "5s"
""")
        env = dict(self.env, RUST_LOG="info", NO_COLOR="1", HOARD_CLUSTER_SECRET=CLUSTER_SECRET)
        r.daemon = self.sup.start(Daemon(r.name, [self.hoard_bin, "serve", "--config", config],
                                         os.path.join(r.home, "hoard.log"), env))

    def members_seen(self, r):
        resp = http("GET", f"{r.url}/_hoard/cluster/ping", timeout=5,
                    headers={"x-hoard-cluster-secret": CLUSTER_SECRET})
        if resp.status != 200:
            return []
        return json.loads(resp.body).get("members", [])

    def containerd(self, label):
        self.serial += 1
        ctd = Containerd(self.sup, self.path(f"ctd{self.serial}"), f"containerd-{label}", self.env)
        return ctd.start()

    def hosts_dir(self, r):
        """containerd's hosts dir for replica `r`, written in setup."""
        return self.path(f"hosts-{r.name}")

    def skopeo(self, r, label):
        self.serial += 1
        return Skopeo(self.path(f"sk{self.serial}-{label}"), r.hostport, self.dead, self.env)

    def upstream_blob_gets(self, log_mark, relay_mark, digest):
        """(GETs of `digest` completed in distribution's log, GET request lines the relay saw)."""
        logged = [u for m, u, _ in upstream_requests(self.registry.log_path, log_mark)
                  if m == "GET" and u.split("?")[0].endswith(f"/blobs/{digest}")]
        return len(logged), len(self.relay.blob_gets(relay_mark, digest))

    def marks(self):
        return os.path.getsize(self.registry.log_path), self.relay.mark()

    # -- 1. concurrent cold pulls ----------------------------------------------------------

    def concurrent_cold_pulls(self):
        app = self.fixtures["team/app:v1"]
        multi = self.fixtures["library/multi:latest"]
        dlist = self.fixtures["library/dlist:1.0"]
        nodes = list(self.replicas.values())
        jobs = {}
        for i in range(CLIENTS):
            r = nodes[i % len(nodes)]
            by_digest = (i // len(nodes)) % 2 == 1
            ref = f"docker.io/team/app@{app.digest}" if by_digest else "docker.io/team/app:v1"
            if i < 2 * len(nodes):  # two ctr pulls per replica: by tag, then by digest
                ctd = self.containerds[r.name]

                def pull(ctd=ctd, ref=ref, r=r):
                    ctd.pull(ref, self.hosts_dir(r), "--platform", "linux/amd64")
                    ensure(ctd.image_digests().get(ref) == app.digest, f"ctr lists {ref} wrongly")
                jobs[f"{i:02d} ctr {r.name} {short(ref)}"] = pull
            else:
                transport = "oci" if i % 2 else "dir"
                sk = self.skopeo(r, f"c{i}")

                def copy(sk=sk, ref=ref, transport=transport):
                    path = sk.copy(ref, transport, "app")
                    check_copy(path, transport, "app", app.digest, app.all_digests())
                jobs[f"{i:02d} skopeo {transport} {r.name} {'digest' if by_digest else 'tag'}"] = copy
        # Beside them, the multi-arch images, once per replica.
        for r in nodes:
            for ref, art, label in (("docker.io/library/multi:latest", multi, "multi"),
                                    ("docker.io/library/dlist:1.0", dlist, "dlist")):
                sk = self.skopeo(r, f"{label}-{r.name}")

                def copy_all(sk=sk, ref=ref, art=art, label=label):
                    path = sk.copy(ref, "dir", label, "--all")
                    check_copy(path, "dir", label, art.digest, art.all_digests())
                jobs[f"skopeo --all {label} {r.name}"] = copy_all

        log_mark, relay_mark = self.marks()
        t0 = time.monotonic()
        results = parallel(jobs)
        wall = time.monotonic() - t0
        failures(results)
        slowest = max(s for s, _ in results.values())
        self.figure(f"{len(jobs)} concurrent cold pulls over 3 replicas ({CLIENTS} of team/app:v1): "
                    f"wall {wall:.1f}s, slowest client {slowest:.1f}s")
        blobs = {b.digest: f"team/app {kind}" for b, kind in
                 [(app.config, "config"), *((layer, f"layer{j}") for j, layer in enumerate(app.layers))]}
        for art, name in ((multi, "multi"), (dlist, "dlist")):
            for img in art.images:
                for b in img.blobs():
                    blobs[b.digest] = f"{name}/{img.arch} blob"

        def counted():
            got = {d: self.upstream_blob_gets(log_mark, relay_mark, d) for d in blobs}
            return got if all(logged >= 1 for logged, _ in got.values()) else None

        got = wait_until(counted, 10, "distribution to log every blob GET")
        time.sleep(0.5)  # a late second GET of some blob would be logged by now
        got = {d: self.upstream_blob_gets(log_mark, relay_mark, d) for d in blobs}
        per_blob = ", ".join(f"{blobs[d]} {short(d)}: {logged}" for d, (logged, _) in got.items()
                             if blobs[d].startswith("team/app"))
        self.figure(f"upstream GETs per team/app blob (distribution's log): {per_blob}")
        others = sorted({logged for d, (logged, _) in got.items() if not blobs[d].startswith("team/app")})
        self.figure(f"upstream GETs per multi/dlist blob: {others}")
        wrong = {blobs[d]: c for d, c in got.items() if c != (1, 1)}
        ensure(not wrong, f"blobs not fetched exactly once (logged, relayed): {wrong}")

    # -- 2. kill -9 of the owner mid-stream -------------------------------------------------

    def kill_owner_mid_stream(self, big_mib):
        layer = self.big.layers[0]
        own = owner(layer.digest, NODES)
        victim = self.replicas[own]
        others = [r for r in self.replicas.values() if r is not victim]
        self.figure(f"owner of the {big_mib} MiB layer {short(layer.digest)}: {own} (killed); "
                    f"clients on {', '.join(r.name for r in others)}")
        self.relay.rate = 32 << 20  # 32 MiB/s: the layer takes ~8 s to stream
        log_mark, relay_mark = self.marks()
        got_at = {}

        def curl_resume(r, label):
            out = self.path(f"curl-{label}.bin")
            url = f"{r.url}/v2/team/big/blobs/{layer.digest}"
            for attempt in range(1, 8):
                proc = run(["curl", "-sS", "--noproxy", "*", "-f", "-C", "-", "-o", out, url],
                           timeout=180, check=False)
                if proc.returncode == 0:
                    break
                time.sleep(0.5)
            else:
                raise CheckFailed(f"curl on {r.name} gave up after {attempt} tries: {proc.stderr[-300:]!r}")
            got_at[f"curl {r.name}"] = attempt
            digest = sha256_file(out)
            os.unlink(out)
            ensure(digest == layer.digest, f"curl on {r.name} got bytes hashing to {digest}")

        def skopeo_again(r):
            """`skopeo copy` until it succeeds. Its own --retry-times does not help here:
            skopeo 1.9 does not retry a blob body cut short ("happened during read: unexpected
            EOF"), so the retry is the user's (or a CI job's) running it again."""
            sk = self.skopeo(r, f"big-{r.name}")
            for attempt in range(1, 6):
                path = sk.dest("big")
                proc = sk("copy", "--retry-times", "3", "docker://docker.io/team/big:v1", f"dir:{path}",
                          timeout=300, check=False)
                if proc.returncode == 0:
                    break
                time.sleep(0.5)
            else:
                raise CheckFailed(f"skopeo copy on {r.name} failed 5 times: {proc.stderr[-300:]!r}")
            got_at[f"skopeo {r.name}"] = attempt
            check_copy(path, "dir", "big", self.big.digest, self.big.all_digests())

        def ctr_again(r):
            """`ctr images pull` until it succeeds: a pull cut off leaves its partial content in
            containerd's ingest, and the next one resumes it with a Range request."""
            ctd = self.containerds[r.name]
            for attempt in range(1, 6):
                proc = ctd.ctr("images", "pull", "--hosts-dir", self.hosts_dir(r), "--snapshotter", "native",
                               "--platform", "linux/amd64", "docker.io/team/big:v1", timeout=180, check=False)
                if proc.returncode == 0:
                    break
                time.sleep(0.5)
            else:
                raise CheckFailed(f"ctr pull on {r.name} failed 5 times: {proc.stderr[-300:]!r}")
            got_at[f"ctr {r.name}"] = attempt
            ensure(ctd.image_digests().get("docker.io/team/big:v1") == self.big.digest, "ctr lists team/big wrongly")
            ensure("opt/big/random.bin" in ctd.unpacked_paths(), "team/big not unpacked")

        jobs = {
            f"curl -C - {others[0].name}": lambda: curl_resume(others[0], "a"),
            f"curl -C - {others[1].name}": lambda: curl_resume(others[1], "b"),
            f"skopeo copy (again) {others[0].name}": lambda: skopeo_again(others[0]),
            f"ctr pull (again) {others[1].name}": lambda: ctr_again(others[1]),
        }
        killed = {}
        self.victim = victim

        def killer():
            quarter = len(layer.data) // 4
            wait_until(lambda: self.relay.bytes_since(relay_mark) >= quarter, 120,
                       f"a quarter of the big layer to pass the relay")
            passed = self.relay.bytes_since(relay_mark)
            os.killpg(victim.daemon.proc.pid, 9)
            victim.daemon.proc.wait(timeout=10)
            killed["at"] = passed
            self.relay.rate = None  # the retries need not wait
            ensure(passed < len(layer.data), f"the kill landed after the whole layer ({passed} bytes) passed")

        jobs["kill -9 owner"] = killer
        t0 = time.monotonic()
        results = parallel(jobs)
        wall = time.monotonic() - t0
        self.relay.rate = None
        failures(results)
        self.figure(f"kill -9 {own} after {killed['at'] >> 20} MiB of {len(layer.data) >> 20} MiB had passed the "
                    f"relay; every client done in {wall:.1f}s ({', '.join(f'{k} {s:.1f}s' for k, (s, _) in sorted(results.items()))})")
        self.figure(f"attempts that succeeded: {got_at}")
        cut = [k for k, n in got_at.items() if n > 1]
        ensure(cut, "no client needed a second attempt: the kill cut nobody off, so nothing was tested")
        key = f"{PREFIX}/blobs/sha256/{layer.digest[7:9]}/{layer.digest[7:]}"
        wait_until(lambda: self.store.has(key), 120, "the big layer in the bucket", interval=0.5)
        time.sleep(1)
        logged, relayed = self.upstream_blob_gets(log_mark, relay_mark, layer.digest)
        self.figure(f"upstream GETs of the big layer: {logged} completed in distribution's log, "
                    f"{relayed} started through the relay")
        ensure(max(logged, relayed) <= 2, f"{relayed} upstream GETs of the big layer ({logged} completed), "
                                         "at most 2 allowed")

    # -- 3. restarted with an empty disk ----------------------------------------------------

    def restarted_empty(self, victim):
        shutil.rmtree(os.path.join(victim.home, "cache"), ignore_errors=True)
        self.start_replica(victim)
        wait_serving(victim.daemon, victim.url, 200)
        for r in self.replicas.values():
            wait_until(lambda r=r: len(self.members_seen(r)) == len(NODES), 30, f"{r.name} to see every member")
        log_mark, relay_mark = self.marks()
        t0 = time.monotonic()
        self.serves_everything(victim, self.skopeo(victim, f"empty-{victim.name}"), curl=True)
        wall = time.monotonic() - t0
        time.sleep(0.5)
        seen = self.relay.requests_since(relay_mark)
        logged = upstream_requests(self.registry.log_path, log_mark)
        self.figure(f"{victim.name} restarted with an empty disk served every image and blob in {wall:.1f}s; "
                    f"upstream requests meanwhile: {len(seen)} through the relay, {len(logged)} logged")
        ensure(not seen and not logged, f"upstream asked: {seen[:6]} {logged[:6]}")

    def serves_everything(self, r, sk, curl=False, big_copy=True):
        """skopeo inspect/copy of every image by tag and by digest through `r`; with `curl`,
        every blob by GET with its sha256 checked."""
        for ref, art in self.fixtures.items():
            name, tag = ref.split(":")
            label = name.replace("/", "-")
            flags = ["--all"] if hasattr(art, "images") else []
            raw = sk.raw_manifest(f"docker.io/{ref}")
            ensure("sha256:" + hashlib.sha256(raw).hexdigest() == art.digest, f"{ref} by tag on {r.name}")
            raw = sk.raw_manifest(f"docker.io/{name}@{art.digest}")
            ensure("sha256:" + hashlib.sha256(raw).hexdigest() == art.digest, f"{name}@digest on {r.name}")
            if art is self.big and not big_copy:
                continue
            path = sk.copy(f"docker.io/{ref}", "dir", label, *flags)
            check_copy(path, "dir", label, art.digest, art.all_digests())
            if art is not self.big:
                # An OCI layout keeps OCI manifests as they are; a Docker list would be converted.
                top = art.index if hasattr(art, "index") else art.manifest
                transport = "oci" if "oci" in top.media_type else "dir"
                path = sk.copy(f"docker.io/{name}@{art.digest}", transport, label, *flags)
                check_copy(path, transport, label, art.digest, art.all_digests())
        if curl:
            for ref, art in self.fixtures.items():
                name = ref.split(":")[0]
                images = art.images if hasattr(art, "images") else [art]
                for img in images:
                    for b in img.blobs():
                        out = self.path(f"blob-{r.name}")
                        run(["curl", "-sS", "--noproxy", "*", "-f", "-o", out,
                             f"{r.url}/v2/{name}/blobs/{b.digest}"], timeout=120)
                        got = sha256_file(out)
                        os.unlink(out)
                        ensure(got == b.digest, f"GET {name} blob {short(b.digest)} on {r.name}: {got}")

    # -- 4. upstream down ---------------------------------------------------------------------

    def upstream_down(self):
        self.relay.stop()
        self.registry.stop()
        self.tokens.stop()
        for ctd in self.containerds.values():
            ctd.stop()
        fresh = {n: self.containerd(f"{n}-offline") for n in NODES}
        jobs = {}
        for r in self.replicas.values():
            jobs[f"skopeo {r.name}"] = lambda r=r: self.serves_everything(r, self.skopeo(r, f"off-{r.name}"),
                                                                          big_copy=r.name != NODES[0])
            for ref, digest in (("docker.io/team/app:v1", None), ("docker.io/library/multi:latest", None),
                                ("docker.io/library/dlist:1.0", None), ("docker.io/team/big:v1", None)):
                art = self.fixtures[ref.split("/", 1)[1]]
                for pull_ref in (ref, f"{ref.rsplit(':', 1)[0]}@{art.digest}"):
                    jobs[f"ctr {r.name} {pull_ref}"] = (
                        lambda r=r, pull_ref=pull_ref, art=art: self.ctr_pull(fresh[r.name], r, pull_ref, art))
        t0 = time.monotonic()
        results = parallel(jobs)
        failures(results)
        self.figure(f"upstream down: {len(jobs)} skopeo/ctr jobs over 3 replicas in {time.monotonic() - t0:.1f}s")

    def ctr_pull(self, ctd, r, ref, art):
        ctd.pull(ref, self.hosts_dir(r), "--platform", "linux/amd64")
        ensure(ctd.image_digests().get(ref) == art.digest, f"ctr lists {ref} wrongly on {r.name}")

    # -- 5. the bucket ------------------------------------------------------------------------

    def bucket_objects_match_their_keys(self):
        keys = self.store.keys(f"{PREFIX}/blobs/")
        bad, total = [], 0
        for key, size in sorted(keys.items()):
            hex_ = key.rsplit("/", 1)[1]
            ensure(key == f"{PREFIX}/blobs/sha256/{hex_[:2]}/{hex_}", f"unexpected key {key}")
            got = self.store.sha256_of(key)
            total += size
            if got != hex_:
                bad.append(f"{key} hashes to {got}")
        seeded = set()
        for art in self.fixtures.values():
            for img in (art.images if hasattr(art, "images") else [art]):
                seeded |= {b.digest[7:] for b in img.blobs()}
        missing = seeded - {k.rsplit("/", 1)[1] for k in keys}
        self.figure(f"bucket: {len(keys)} blob objects ({total >> 20} MiB) re-hashed, {len(bad)} wrong, "
                    f"{len(missing)} seeded blobs missing")
        ensure(not bad, f"objects whose sha256 is not their key: {bad}")
        ensure(not missing, f"seeded blobs not in the bucket: {sorted(missing)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hoard", required=True, help="path to the hoard binary")
    ap.add_argument("--big-mib", type=int, default=256, help="size of the layer whose owner is killed")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    ap.add_argument("--store", choices=sorted(STORES), default="weed", help="the S3 server holding the bucket")
    args = ap.parse_args()
    hoard_bin = os.path.abspath(args.hoard)

    def body(report, sup, workdir, dead):
        s = Suite(report, sup, workdir, dead, hoard_bin, args.big_mib, args.store)
        s.setup()
        check = report.check
        check("32 concurrent cold pulls over 3 replicas: one upstream GET per blob", s.concurrent_cold_pulls, s.logs)
        report.check(f"kill -9 of the owner mid-stream of a {args.big_mib} MiB layer: clients retry to "
                              "correct bytes, at most 2 upstream GETs", lambda: s.kill_owner_mid_stream(args.big_mib),
                              s.logs)
        check("every blob object in the bucket hashes to its key (after the kill)", s.bucket_objects_match_their_keys,
              s.logs)
        if s.victim is not None and s.victim.daemon.proc.poll() is not None:
            check("the killed replica restarted with an empty disk serves everything from the bucket, "
                  "no upstream request", lambda: s.restarted_empty(s.victim), s.logs)
        check("upstream stopped: every replica serves every image by tag and by digest (skopeo, ctr)",
              s.upstream_down, s.logs)
        check("every blob object in the bucket hashes to its key (at the end)", s.bucket_objects_match_their_keys,
              s.logs)
        print("figures:", flush=True)
        for f in s.figures:
            print(f"  {f}", flush=True)

    return run_suite("hoard-cluster", args.keep, body)


if __name__ == "__main__":
    sys.exit(main())
