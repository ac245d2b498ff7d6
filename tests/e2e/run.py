#!/usr/bin/env python3
"""End-to-end tests of hoard with real third-party software.

    tests/e2e/run.py --hoard target/release/hoard

A Docker-Hub-like upstream (distribution's registry behind a JWT token service running in
this process) is seeded with real images; skopeo and containerd pull them through hoard
while the upstream is up, then again with fresh client state after the upstream and the
token service are stopped. Every client's own `docker.io` origin and its HTTP proxy are a
dead loopback port, so content can only come through hoard.

Prints one line per check (`PASS name` / `FAIL name: reason`), then `N passed, N failed`;
exits non-zero when anything failed. `--direct` runs the online client checks straight
against the upstream, without hoard: a self-test of the harness. Needs root (containerd)
and the packages from scripts/install-deps.sh.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import (  # noqa: E402
    Containerd,
    Skopeo,
    check_copy,
    start_hoard,
    start_registry,
    upstream_requests,
    wait_serving,
    write_hosts_dir,
)
from harness import (  # noqa: E402
    DeadPort,
    Report,
    SetupError,
    Supervisor,
    client_env,
    ensure,
    free_port,
    http,
    refuses_connections,
    wait_until,
)
from images import OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, Pusher, build_fixtures  # noqa: E402
from tokenservice import TokenService  # noqa: E402

SERVICE = "registry.docker.io"
ISSUER = "hoard-e2e-token-issuer"
SEED_USER, SEED_PASSWORD = "seed", "seedpass"
ALL_MANIFEST_TYPES = ", ".join([DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"])


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Suite:
    def __init__(self, report, supervisor, workdir, dead_port, hoard_bin, direct, big_layer_mib):
        self.report = report
        self.sup = supervisor
        self.workdir = workdir
        self.dead = dead_port
        self.hoard_bin = hoard_bin
        self.direct = direct
        self.env = client_env(dead_port)
        self.fixtures = build_fixtures(big_layer_mib << 20)
        self.tokens = None
        self.registry = None
        self.registry_port = None
        self.hoard = None
        self.hoard_port = None
        self.token_mark = 0
        self.registry_log_mark = 0

    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def logs(self, *extra):
        return [d for d in (self.hoard, self.registry, *extra) if d is not None]

    # -- setup ---------------------------------------------------------------------------

    def start_upstream(self):
        def token_service():
            self.tokens = TokenService(self.workdir, SERVICE, ISSUER,
                                       {SEED_USER: (SEED_PASSWORD, ["pull", "push"])})
            self.tokens.generate_key()
            self.sup.on_exit(self.tokens.stop)
            self.tokens.start()

        self.report.require("setup token service", token_service)

        def registry():
            self.registry_port = free_port()
            self.registry = start_registry(self.sup, self.workdir, self.registry_port, self.tokens, self.env)
            wait_serving(self.registry, self.upstream_url, 401)

        self.report.require("setup upstream registry (distribution, token auth)", registry, self.logs)

    @property
    def upstream_url(self):
        return f"http://127.0.0.1:{self.registry_port}"

    def seed(self):
        pusher = Pusher(self.upstream_url, SEED_USER, SEED_PASSWORD)
        for ref, artifact in self.fixtures.items():
            name, tag = ref.split(":")
            self.report.require(f"setup seed {ref}", lambda: pusher.push(name, tag, artifact), self.logs)

        app = self.fixtures["team/app:v1"]

        def inspect_upstream():
            sk = Skopeo(self.path("skopeo-upstream"), f"127.0.0.1:{self.dead}", self.dead, self.env)
            out = sk("inspect", "--tls-verify=false",
                     f"docker://127.0.0.1:{self.registry_port}/team/app:v1", timeout=60).stdout
            digest = json.loads(out).get("Digest")
            ensure(digest == app.digest, f"upstream says team/app:v1 is {digest}, seeded {app.digest}")
            anonymous = [r for r in self.tokens.snapshot() if r.user is None and r.status == 200]
            ensure(anonymous, "skopeo got no anonymous token from the token service")

        self.report.require("upstream skopeo inspect team/app:v1 (anonymous token dance)", inspect_upstream,
                            self.logs)

    def start_hoard(self):
        def start():
            self.hoard_port = free_port()
            self.token_mark = len(self.tokens.snapshot())
            self.registry_log_mark = os.path.getsize(self.registry.log_path)
            self.hoard = start_hoard(self.sup, self.workdir, self.hoard_bin, self.hoard_port,
                                     self.upstream_url, self.env)
            wait_serving(self.hoard, self.hoard_url, 200)
            resp = http("GET", f"{self.hoard_url}/v2/")
            version = resp.header("Docker-Distribution-API-Version")
            ensure(version == "registry/2.0", f"GET /v2/ lacks Docker-Distribution-API-Version (got {version!r})")

        self.report.require("setup hoard serves GET /v2/", start, self.logs)

    @property
    def hoard_url(self):
        return f"http://127.0.0.1:{self.hoard_port}"

    @property
    def mirror_hostport(self):
        port = self.registry_port if self.direct else self.hoard_port
        return f"127.0.0.1:{port}"

    # -- client checks -------------------------------------------------------------------

    def skopeo_checks(self, phase):
        sk = Skopeo(self.path(f"skopeo-{phase}"), self.mirror_hostport, self.dead, self.env)
        multi = self.fixtures["library/multi:latest"]
        dlist = self.fixtures["library/dlist:1.0"]
        app = self.fixtures["team/app:v1"]
        arm64 = multi.image("arm64")
        check = self.report.check
        logs = self.logs

        def inspect_raw():
            got = sha256(sk.raw_manifest("docker.io/library/multi:latest"))
            ensure(got == multi.digest, f"manifest bytes hash to {got}, seeded index is {multi.digest}")

        def copy(ref, transport, label, top, everything, *flags):
            path = sk.copy(ref, transport, label, *flags)
            check_copy(path, transport, label, top, everything)

        check(f"{phase} skopeo inspect --raw multi:latest", inspect_raw, logs)
        check(f"{phase} skopeo copy --all multi:latest (OCI index)",
              lambda: copy("docker.io/library/multi:latest", "oci", "multi", multi.digest,
                           multi.all_digests(), "--all"), logs)
        check(f"{phase} skopeo copy multi:latest linux/arm64",
              lambda: copy("docker.io/library/multi:latest", "dir", "multi-arm64", arm64.digest,
                           arm64.all_digests(), "--override-arch", "arm64", "--override-os", "linux"), logs)
        check(f"{phase} skopeo copy --all multi@{short(multi.digest)}",
              lambda: copy(f"docker.io/library/multi@{multi.digest}", "dir", "multi-digest", multi.digest,
                           multi.all_digests(), "--all"), logs)
        check(f"{phase} skopeo copy --all dlist:1.0 (Docker manifest list)",
              lambda: copy("docker.io/library/dlist:1.0", "dir", "dlist", dlist.digest,
                           dlist.all_digests(), "--all"), logs)
        check(f"{phase} skopeo copy team/app:v1",
              lambda: copy("docker.io/team/app:v1", "oci", "app", app.digest, app.all_digests()), logs)
        check(f"{phase} skopeo copy team/app@{short(app.digest)}",
              lambda: copy(f"docker.io/team/app@{app.digest}", "dir", "app-digest", app.digest,
                           app.all_digests()), logs)

    def ctr_checks(self, phase):
        ctd = Containerd(self.sup, self.path(f"ctd-{phase}"), f"containerd-{phase}", self.env)
        self.report.require(f"setup {phase} containerd daemon", ctd.start, self.logs)
        mirror_url = f"http://{self.mirror_hostport}"
        hosts_dir = write_hosts_dir(self.path(f"hosts-{phase}"), mirror_url, self.dead)
        multi = self.fixtures["library/multi:latest"]
        dlist = self.fixtures["library/dlist:1.0"]
        app = self.fixtures["team/app:v1"]
        pulls = [
            ("multi:latest", "docker.io/library/multi:latest", multi.digest, multi.image("amd64")),
            ("dlist:1.0", "docker.io/library/dlist:1.0", dlist.digest, dlist.image("amd64")),
            ("team/app:v1", "docker.io/team/app:v1", app.digest, app),
            (f"multi@{short(multi.digest)}", f"docker.io/library/multi@{multi.digest}", multi.digest,
             multi.image("amd64")),
        ]
        if not self.direct:
            # ctr does not add library/: this asks hoard for /v2/multi/...?ns=docker.io.
            pulls.append(("multi:latest by short name docker.io/multi", "docker.io/multi:latest",
                          multi.digest, multi.image("amd64")))
        for label, ref, digest, image in pulls:
            def pull(ref=ref, digest=digest, image=image):
                ctd.pull(ref, hosts_dir, "--platform", "linux/amd64")
                listed = ctd.image_digests().get(ref)
                ensure(listed == digest, f"ctr images ls shows {ref} as {listed}, seeded {digest}")
                unpacked = ctd.unpacked_paths()
                missing = [m for m in image.markers if m not in unpacked]
                ensure(not missing, f"not unpacked into the native snapshotter: {missing}")

            self.report.check(f"{phase} ctr pull {label} (unpacked)", pull, lambda: self.logs(ctd.daemon))
        ctd.stop()

    # -- hoard-only checks ---------------------------------------------------------------

    def hoard_checks(self):
        check = self.report.check
        logs = self.logs

        def metrics():
            resp = http("GET", f"{self.hoard_url}/metrics")
            ensure(resp.status == 200, f"GET /metrics answered {resp.status}")
            lines = [ln for ln in resp.body.decode().splitlines() if ln.startswith("hoard_requests_total")]
            ensure(lines, "no hoard_requests_total samples in /metrics")
            total = sum(float(ln.rsplit(None, 1)[1]) for ln in lines)
            ensure(total > 0, f"hoard_requests_total sums to {total}: {lines}")

        def foreign_ns():
            url = f"{self.hoard_url}/v2/library/multi/manifests/latest?ns=quay.io"
            resp = http("GET", url, headers={"Accept": ALL_MANIFEST_TYPES})
            ensure(400 <= resp.status < 500, f"GET {url} answered {resp.status}, want a 4xx")
            ensure(error_codes(resp.body), f"body is not an OCI error document: {resp.body[:300]!r}")

        def token_reuse():
            asked = {}
            for r in self.tokens.snapshot()[self.token_mark:]:
                for scope in r.scopes or ["<none>"]:
                    asked[scope] = asked.get(scope, 0) + 1
            ensure(asked, "hoard never asked the token service for a token")
            repeated = {s: n for s, n in asked.items() if n > 2}
            ensure(not repeated, f"tokens are not reused while valid (expires_in=300): {asked}")

        def upstream_once():
            # The clients ran one after the other, and every seeded blob was pulled by at least
            # one of them: a caching mirror fetches each exactly once (tags are revalidated).
            gets = {}
            for method, uri, status in upstream_requests(self.registry.log_path, self.registry_log_mark):
                if method == "GET" and status == "200" and ("/blobs/sha256:" in uri or "/manifests/sha256:" in uri):
                    digest = uri.rsplit("/", 1)[1].split("?")[0]
                    gets[digest] = gets.get(digest, 0) + 1
            blobs = set()
            for artifact in self.fixtures.values():
                for image in getattr(artifact, "images", [artifact]):
                    blobs |= {b.digest for b in image.blobs()}
            wrong = {short(d): gets.get(d, 0) for d in sorted(blobs) if gets.get(d, 0) != 1}
            ensure(not wrong, f"upstream GETs per blob should be 1, got {wrong}")
            again = {short(d): n for d, n in gets.items() if d not in blobs and n > 1}
            ensure(not again, f"manifests fetched by digest more than once: {again}")

        def head_tag():
            # containerd resolves a tag with this HEAD; without the digest it falls back to GET.
            multi = self.fixtures["library/multi:latest"]
            resp = http("HEAD", f"{self.hoard_url}/v2/library/multi/manifests/latest?ns=docker.io",
                        headers={"Accept": ALL_MANIFEST_TYPES})
            ensure(resp.status == 200, f"HEAD answered {resp.status}")
            got = {k: resp.header(k) for k in ("Docker-Content-Digest", "Content-Type", "Content-Length")}
            want = {"Docker-Content-Digest": multi.digest, "Content-Type": OCI_INDEX,
                    "Content-Length": str(len(multi.index.data))}
            ensure(got == want, f"HEAD headers {got}, want {want}")

        def unknown_tag():
            url = f"{self.hoard_url}/v2/library/multi/manifests/no-such-tag?ns=docker.io"
            resp = http("GET", url, headers={"Accept": ALL_MANIFEST_TYPES})
            codes = error_codes(resp.body)
            ensure(resp.status == 404 and codes == ["MANIFEST_UNKNOWN"],
                   f"GET {url} answered {resp.status} {resp.body[:300]!r}, want 404 MANIFEST_UNKNOWN")

        check("online hoard HEAD of a tag carries digest, type and length", head_tag, logs)
        check("online hoard unknown tag is 404 MANIFEST_UNKNOWN", unknown_tag, logs)
        check("online hoard fetched each blob from the upstream exactly once", upstream_once, logs)
        check("online hoard /metrics counts requests", metrics, logs)
        check("online hoard refuses an unconfigured ns=quay.io with an OCI error", foreign_ns, logs)
        check("online hoard reuses upstream tokens (<=2 token requests per scope)", token_reuse, logs)

    def stop_upstream(self):
        def stop():
            self.registry.stop()
            self.tokens.stop()
            wait_until(lambda: refuses_connections(self.registry_port), 10, "the registry port to close")
            wait_until(lambda: refuses_connections(self.tokens_port), 10, "the token port to close")

        self.tokens_port = self.tokens.port
        self.report.require("offline upstream registry and token service stopped", stop, self.logs)

    def run(self):
        self.start_upstream()
        self.seed()
        if not self.direct:
            self.start_hoard()
        self.skopeo_checks("online")
        self.ctr_checks("online")
        if self.direct:
            return
        self.hoard_checks()
        self.stop_upstream()
        self.registry = None  # its log no longer explains anything
        self.skopeo_checks("offline")
        self.ctr_checks("offline")

        def range_from_cache():
            # Resumed and parallel downloads ask for `bytes=N-` and expect 206 + Content-Range.
            app = self.fixtures["team/app:v1"]
            big = max(app.layers, key=lambda b: len(b.data))
            start, size = len(big.data) // 3, len(big.data)
            resp = http("GET", f"{self.hoard_url}/v2/team/app/blobs/{big.digest}?ns=docker.io",
                        headers={"Range": f"bytes={start}-"})
            ensure(resp.status == 206, f"answered {resp.status}, want 206")
            want = f"bytes {start}-{size - 1}/{size}"
            ensure(resp.header("Content-Range") == want,
                   f"Content-Range {resp.header('Content-Range')!r}, want {want!r}")
            ensure(resp.body == big.data[start:], f"body of {len(resp.body)} bytes is not the range asked for")

        self.report.check("offline hoard serves a Range of team/app's big layer (206)", range_from_cache,
                          self.logs)

        def still_serving():
            self.hoard.ensure_alive()
            ensure(http("GET", f"{self.hoard_url}/v2/").status == 200, "GET /v2/ is no longer 200")

        self.report.check("offline hoard still serving", still_serving, self.logs)


def error_codes(body):
    """The `code`s of an OCI error document, or [] when `body` is not one."""
    try:
        errors = json.loads(body)["errors"]
        return [e["code"] for e in errors]
    except (ValueError, KeyError, TypeError):
        return []


def short(digest):
    return digest[:19]


def unmount_under(root):
    """Lazily unmounts anything a crashed containerd left mounted below `root`."""
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
    except OSError:
        return
    prefix = root.rstrip("/") + "/"
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hoard", help="path to the hoard binary")
    parser.add_argument("--direct", action="store_true",
                        help="no hoard: run the online client checks against the upstream itself")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs) afterwards")
    parser.add_argument("--big-layer-mib", type=int, default=4, help="size of team/app's random layer")
    args = parser.parse_args()
    if not args.direct:
        if not args.hoard:
            parser.error("--hoard PATH is required (or --direct)")
        args.hoard = os.path.abspath(args.hoard)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    report = Report()
    supervisor = Supervisor()
    workdir = tempfile.mkdtemp(prefix="hoard-e2e-", dir="/tmp")
    dead = DeadPort()
    print(f"workdir {workdir}, dead port {dead.port}", flush=True)
    setup_failed = False
    try:
        if not args.direct and not os.access(args.hoard, os.X_OK):
            report.require("setup hoard binary is executable", lambda: ensure(False, f"{args.hoard} is not"))
        Suite(report, supervisor, workdir, dead.port, args.hoard, args.direct, args.big_layer_mib).run()
    except SetupError as e:
        setup_failed = True
        print(f"setup failed at '{e}': remaining checks skipped", flush=True)
    except (KeyboardInterrupt, SystemExit) as e:
        setup_failed = True
        print(f"interrupted ({type(e).__name__}): stopping", flush=True)
    finally:
        supervisor.stop_all()
        dead.close()
        unmount_under(workdir)
        if args.keep:
            print(f"kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report.summary()
    return 1 if report.failed or setup_failed else 0


if __name__ == "__main__":
    sys.exit(main())
