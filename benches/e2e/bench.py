#!/usr/bin/env python3
"""hoard side by side with distribution's proxy (the peer) and nginx, in one run.

    benches/e2e/bench.py --hoard target/release/hoard [--quick]

(benches/e2e.sh installs the tools, builds hoard and runs this.) A Docker-Hub-like upstream
(distribution behind the JWT token service of tests/e2e) is seeded with a 1 GiB random blob
and an 8-layer image; then each figure is measured for hoard and the peer (and
nginx where it is the physical reference): the median of 3 runs, 1 with --quick. Prints one
PASS/FAIL line per phase, the table, and writes benches/results/<timestamp>.json.
docs/benchmarks.md says what each figure measures and what limits it.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
sys.path.insert(0, HERE)

from clients import start_registry, wait_serving  # noqa: E402
from harness import DeadPort, Report, SetupError, Supervisor, client_env, ensure, free_port, http  # noqa: E402
from tokenservice import TokenService  # noqa: E402

import report  # noqa: E402
import seed  # noqa: E402
from phases import MANIFEST_ACCEPT, Phases  # noqa: E402
from servers import Factory  # noqa: E402

SERVICE = "registry.docker.io"
ISSUER = "hoard-bench-token-issuer"
SEED_USER, SEED_PASSWORD = "seed", "seedpass"


class Bench:
    def __init__(self, args, report_, supervisor, workdir, dead):
        self.args = args
        self.report = report_
        self.sup = supervisor
        self.workdir = workdir
        self.env = client_env(dead.port)
        self.tokens = None
        self.registry = None
        self.registry_port = None
        self.images = None
        self.factory = None

    @property
    def upstream_url(self):
        return f"http://127.0.0.1:{self.registry_port}"

    def logs(self):
        return [d for d in (self.registry,) if d is not None]

    def setup(self):
        def token_service():
            self.tokens = TokenService(self.workdir, SERVICE, ISSUER,
                                       {SEED_USER: (SEED_PASSWORD, ["pull", "push"])})
            self.tokens.generate_key()
            self.sup.on_exit(self.tokens.stop)
            self.tokens.start()

        self.report.require("setup token service", token_service)

        def upstream():
            self.registry_port = free_port()
            self.registry = start_registry(self.sup, self.workdir, self.registry_port, self.tokens, self.env)
            wait_serving(self.registry, self.upstream_url, 401)

        self.report.require("setup upstream (distribution, token auth)", upstream, self.logs)

        def seeding():
            a = self.args
            self.images = seed.seed(self.upstream_url, SEED_USER, SEED_PASSWORD, self.workdir,
                                    a.big_mib << 20, a.conc_mib and a.conc_mib << 20, a.app_layers_mib)

        extra = f", {self.args.conc_mib} MiB" if self.args.conc_mib else ""
        self.report.require(f"setup seed {self.args.big_mib} MiB{extra} and "
                            f"{len(self.args.app_layers_mib)}-layer images", seeding, self.logs)
        self.factory = Factory(self.sup, self.workdir, self.args.hoard, self.upstream_url, self.env)

        def peer_works():
            peer = self.factory.peer()
            try:
                img = self.images["app"]
                resp = http("GET", f"{peer.url}/v2/{img.name}/manifests/{img.tag}",
                            headers={"Accept": MANIFEST_ACCEPT})
                ensure(resp.status == 200, f"the peer answered {resp.status}: {resp.body[:300]!r}")
            finally:
                peer.stop()

        self.report.require("setup peer (distribution proxy) answers the token challenge anonymously",
                            peer_works, self.logs)

    def token_header(self, name):
        """An anonymous pull token for `name`, straight from the token service (as a client of
        the upstream would get it)."""
        query = urllib.parse.urlencode({"service": SERVICE, "scope": f"repository:{name}:pull"})
        resp = http("GET", f"{self.tokens.realm}?{query}")
        ensure(resp.status == 200, f"token service answered {resp.status}")
        return f"Authorization: Bearer {json.loads(resp.body)['token']}"


def tool_versions():
    def out(argv):
        try:
            p = subprocess.run(argv, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
            return (p.stdout + p.stderr).decode(errors="replace").strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return None

    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    return {
        "hoard_git": out(["git", "-C", REPO, "describe", "--always", "--dirty"]),
        "distribution": out(["/usr/bin/docker-registry", "--version"]),
        "nginx": out(["/usr/sbin/nginx", "-v"]),
        "wrk": out(["wrk", "--version"]),
        "curl": out(["curl", "--version"]),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hoard", required=True, help="path to the release hoard binary")
    parser.add_argument("--quick", action="store_true", help="1 run per figure, shorter wrk runs")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, 1 with --quick)")
    parser.add_argument("--big-mib", type=int, default=1024, help="cold/warm blob size")
    parser.add_argument("--conc-mib", type=int,
                        help="a separate, smaller blob for the concurrent GETs (default: the big blob)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--app-layers-mib", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 4, 6, 10, 16, 24, 40], help="layer sizes of the multi-layer image")
    parser.add_argument("--wrk-seconds", type=int, help="seconds per wrk run (default 2, 1 with --quick)")
    parser.add_argument("--index-blobs", type=int, default=100_000)
    parser.add_argument("--link-mbit", type=int, default=1000,
                        help="upstream link speed for the 'link' phase (default 1000 Mbit/s)")
    parser.add_argument("--only", help="comma-separated phases: cold,link,warm,concurrent,manifests,startup")
    parser.add_argument("--results", default=os.path.join(REPO, "benches", "results"))
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    parser.add_argument("--profile", action="store_true",
                        help="also perf-record hoard in an extra cold GET and extra warm GETs")
    args = parser.parse_args()
    args.hoard = os.path.abspath(args.hoard)
    args.runs = args.runs or (1 if args.quick else 3)
    args.stamp = time.strftime("%Y%m%d-%H%M%S")
    args.wrk_seconds = args.wrk_seconds or (1 if args.quick else 2)
    phases = args.only.split(",") if args.only else ["cold", "link", "warm", "concurrent", "manifests",
                                                     "startup"]

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    rep = Report()
    sup = Supervisor()
    workdir = tempfile.mkdtemp(prefix="hoard-bench-", dir="/tmp")
    dead = DeadPort()
    print(f"workdir {workdir}; {args.runs} run(s) per figure", flush=True)
    rows = []
    profiles = {}
    images = {}
    started = time.monotonic()
    failed_setup = False
    try:
        if not os.access(args.hoard, os.X_OK):
            rep.require("setup hoard binary", lambda: ensure(False, f"{args.hoard} is not executable"))
        bench = Bench(args, rep, sup, workdir, dead)
        bench.setup()
        phases_ = Phases(bench)
        rows = phases_.run(phases)
        profiles = phases_.profiles
        images = seed.describe(bench.images)
    except SetupError as e:
        failed_setup = True
        print(f"setup failed at '{e}': nothing measured", flush=True)
    except (KeyboardInterrupt, SystemExit) as e:
        failed_setup = True
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
        print(report.table(rows))
        meta = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "mode": "quick" if args.quick else "full",
            "runs": args.runs,
            "seconds": round(time.monotonic() - started, 1),
            "big_mib": args.big_mib,
            "conc_mib": args.conc_mib,
            "link_mbit": args.link_mbit,
            "concurrency": args.concurrency,
            "app_layers_mib": args.app_layers_mib,
            "wrk_seconds": args.wrk_seconds,
            "index_blobs": args.index_blobs,
            **tool_versions(),
            "images": images,
            "profiles": profiles,
        }
        previous = report.latest(args.results)
        path = report.write(args.results, args.stamp, meta, rows)
        print(f"\nresults: {path}")
        if previous:
            print(f"hoard vs the previous run ({os.path.basename(previous)}):")
            print("\n".join(report.compare(previous, rows)))
    rep.summary()
    return 1 if rep.failed or failed_setup else 0


if __name__ == "__main__":
    sys.exit(main())
