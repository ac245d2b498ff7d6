#!/usr/bin/env python3
"""End-to-end tests of hoard with real third-party software.

    tests/e2e/run.py --hoard target/release/hoard

A Docker-Hub-like upstream (distribution's registry behind a JWT token service running in
this process) is seeded with real images; skopeo and containerd pull them through hoard
while the upstream is up, then again with fresh client state after the upstream and the
token service are stopped. Every client's own `docker.io` origin and its HTTP proxy are a
dead loopback port, so content can only come through hoard.

A real Prometheus scrapes hoard every second during the run: its query API must see the
pulls' cache hits and served bytes, `promtool check metrics` must accept hoard's exposition,
and deploy/prometheus/alerts.yml (when present) must pass `promtool check rules` and evaluate
without error in that Prometheus. A second hoard with a `[tls]` listener (certificate from a
CA made with openssl for this run) is pulled through by skopeo and containerd trusting that
CA, while curl, skopeo and containerd without it must fail; it must reload its certificate
on SIGHUP and keep the old one when the new files are broken.

Prints one line per check (`PASS name` / `FAIL name: reason`), then `N passed, N failed`;
exits non-zero when anything failed. `--direct` runs the online client checks straight
against the upstream, without hoard: a self-test of the harness. Needs root (containerd)
and the packages from scripts/install-deps.sh (prometheus and promtool included).
"""

import argparse
import hashlib
import json
import os
import re
import signal
import ssl
import sys

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
    client_env,
    ensure,
    free_port,
    CheckFailed,
    http,
    refuses_connections,
    run,
    wait_until,
    run_suite,
)
from pki import Pki, handshake, serial_of, served_serial  # noqa: E402
from prom import Prometheus, promtool  # noqa: E402
from images import OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, Pusher, build_fixtures  # noqa: E402
from tokenservice import TokenService  # noqa: E402

SERVICE = "registry.docker.io"
ISSUER = "hoard-e2e-token-issuer"
SEED_USER, SEED_PASSWORD = "seed", "seedpass"
ALL_MANIFEST_TYPES = ", ".join([DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"])
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALERTS = os.path.join("deploy", "prometheus", "alerts.yml")


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
        self.prom = None
        self.pki = None
        self.tls_cert = self.tls_key = None
        self.tls_port = None
        self.hoard_tls = None
        self.hoard_tls_port = None
        self.tls_down = "TLS test CA and certificate could not be made"

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

    # -- Prometheus and the TLS certificates --------------------------------------------

    def setup_pki(self):
        """A CA and a server certificate for the TLS hoard."""

        def make():
            pki = Pki(self.path("pki"))
            pki.ca()
            self.tls_cert, self.tls_key = pki.server_cert("hoard-tls")
            self.pki = pki

        self.report.check("setup TLS test CA and a server certificate for IP 127.0.0.1, DNS localhost (openssl)",
                          make)

    def start_prometheus(self):
        """Prometheus scraping hoard every second (the TLS hoard is added when it runs)."""
        prom = Prometheus(self.sup, self.workdir, free_port(), self.env)

        def start():
            prom.add_job("hoard", f"127.0.0.1:{self.hoard_port}")
            prom.start()
            return True

        if self.report.check("setup prometheus (own TSDB, scrapes hoard's /metrics every 1s)", start,
                             lambda: self.logs(prom.daemon)):
            self.prom = prom

    def prom_logs(self):
        return self.logs(self.prom.daemon if self.prom else None)

    def need_prom(self):
        if self.prom is None:
            raise CheckFailed("prometheus did not start (see its setup check)")
        return self.prom

    def hoard_counter(self, name, **labels):
        """hoard's own current value of a counter family (summed), from its /metrics."""
        resp = http("GET", f"{self.hoard_url}/metrics")
        ensure(resp.status == 200, f"GET /metrics answered {resp.status}")
        return exposition_sum(resp.body.decode(), name, **labels)

    def prometheus_checks(self):
        check = self.report.check
        logs = self.prom_logs

        def scraped():
            self.need_prom().wait_value('up{job="hoard"}', lambda v: v == [1.0],
                                        "prometheus to scrape hoard (up == 1)")

        def agrees(expr, family, what, **labels):
            # The pulls are over and nothing else talks to this hoard now: Prometheus's view
            # must catch up with hoard's own counter, and that counter must not be zero.
            prom = self.need_prom()
            own = self.hoard_counter(family, **labels)
            ensure(own > 0, f"hoard's own /metrics has {family}{labels or ''} summing to {own}: {what}")

            def caught_up(values):
                return values and values[0] > 0 and values[0] == self.hoard_counter(family, **labels)

            prom.wait_value(expr, caught_up, f"prometheus's {expr} to reach hoard's own value ({own})")

        def lint():
            # What a user would do: curl the exposition and pipe it into promtool.
            text = run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", f"{self.hoard_url}/metrics"],
                       timeout=30, env=self.env).stdout
            ensure(b"hoard_requests_total" in text, f"/metrics lacks hoard_requests_total: {text[:300]!r}")
            res = promtool("check", "metrics", input=text)
            problems = (res.stderr + res.stdout).decode("utf-8", "replace").strip()
            if res.returncode != 0:
                lines = problems.splitlines() or ["(no output)"]
                raise CheckFailed(f"promtool check metrics exited {res.returncode} with {len(lines)} problem "
                                  f"line(s): {lines[0]}",
                                  "\n".join(["$ curl -s /metrics | promtool check metrics", *lines]))

        def check_rules():
            res = promtool("check", "rules", os.path.join(REPO, ALERTS))
            out = (res.stdout + res.stderr).decode("utf-8", "replace").strip()
            if res.returncode != 0:
                lines = out.splitlines() or ["(no output)"]
                raise CheckFailed(f"promtool check rules exited {res.returncode}: {lines[-1]}",
                                  "\n".join([f"$ promtool check rules {ALERTS}", *lines]))
            return True

        def evaluate_rules():
            # Loaded into the live server (job="hoard", as the rules expect): every rule must
            # evaluate without error against hoard's real series.
            prom = self.need_prom()
            prom.load_rules(os.path.join(REPO, ALERTS))
            state = {}

            def evaluated():
                rules = [r for g in prom.api("rules").get("groups", []) for r in g.get("rules", [])]
                state["rules"] = rules
                return rules and all(r.get("health") in ("ok", "err") for r in rules)

            wait_until(evaluated, 20, f"prometheus to load and evaluate every rule of {ALERTS}", interval=0.25)
            bad = [f"{r.get('name')}: {r.get('lastError')}" for r in state["rules"] if r.get("health") != "ok"]
            ensure(not bad, f"rules failing to evaluate: {bad}")

        check('online prometheus scrapes hoard (up{job="hoard"} == 1)', scraped, logs)
        check('online prometheus sum(hoard_requests_total{outcome="hit"}) > 0 and equals hoard\'s own',
              lambda: agrees('sum(hoard_requests_total{job="hoard",outcome="hit"})', "hoard_requests_total",
                             "the pulls produced no cache hit", outcome="hit"), logs)
        check("online prometheus sum(hoard_served_bytes_total) > 0 and equals hoard's own",
              lambda: agrees('sum(hoard_served_bytes_total{job="hoard"})', "hoard_served_bytes_total",
                             "no served bytes counted"), logs)
        check("online promtool check metrics accepts hoard's /metrics", lint)
        if not os.path.exists(os.path.join(REPO, ALERTS)):
            print(f"NOTICE {ALERTS} is absent: skipping promtool check rules and its evaluation by prometheus",
                  flush=True)
            return
        if check(f"promtool check rules {ALERTS}", check_rules):
            check(f"online prometheus evaluates {ALERTS} on hoard's series (every rule healthy)", evaluate_rules,
                  logs)
        else:
            print(f"NOTICE {ALERTS} not loaded into prometheus: promtool refused it", flush=True)

    # -- TLS -----------------------------------------------------------------------------

    @property
    def tls_hostport(self):
        return f"127.0.0.1:{self.tls_port}"

    def tls_logs(self, *extra):
        return [d for d in (self.hoard_tls, self.registry, *extra) if d is not None]

    def need_tls(self):
        if self.tls_down:
            raise CheckFailed(self.tls_down)

    def curl_tls(self, path, *flags, out="/dev/null"):
        """curl of https://127.0.0.1:TLSPORT/path; returns (exit status, http code, http version, stderr)."""
        proc = run(["curl", "-sS", "--noproxy", "*", "--max-time", "20", "-o", out,
                    "-w", "%{http_code} %{http_version}", *flags, f"https://{self.tls_hostport}{path}"],
                   timeout=30, env=self.env, check=False)
        code, _, version = proc.stdout.decode().strip().partition(" ")
        return proc.returncode, code, version, proc.stderr.decode("utf-8", "replace").strip()

    def start_hoard_tls(self):
        """A second hoard (own cache, same upstream) with a [tls] listener beside the plain one."""

        def start():
            ensure(self.pki is not None, self.tls_down)
            self.hoard_tls_port = free_port()
            self.tls_port = free_port()
            while self.tls_port == self.hoard_tls_port:
                self.tls_port = free_port()
            self.hoard_tls = start_hoard(self.sup, self.workdir, self.hoard_bin, self.hoard_tls_port,
                                         self.upstream_url, self.env, name="hoard-tls",
                                         tls=(self.tls_port, self.tls_cert, self.tls_key))

            def https_up():
                # Up means answering over TLS at all (`--insecure`): whether the certificate is
                # the right one is for the checks below, which can then fail one by one.
                self.hoard_tls.ensure_alive()
                rc, code, _, _ = self.curl_tls("/v2/", "--insecure")
                return rc == 0 and code == "200"

            try:
                wait_serving(self.hoard_tls, f"http://127.0.0.1:{self.hoard_tls_port}", 200)
                wait_until(https_up, 30, f"hoard-tls to answer GET https://{self.tls_hostport}/v2/ with 200 (-k)")
            except CheckFailed:
                with open(self.hoard_tls.log_path, errors="replace") as f:
                    if re.search(r"unknown (field|key) `tls[`.]", f.read()):
                        self.tls_down = "TLS not implemented (hoard refuses the [tls] config section)"
                        raise CheckFailed(self.tls_down)
                raise
            self.tls_down = None

        self.tls_down = "the TLS hoard did not start (see 'tls setup')"
        if self.pki is None:
            self.tls_down = "no TLS test certificate (see its setup check)"
        self.report.check("tls setup a second hoard with a [tls] listener beside its plain one", start,
                          self.tls_logs)

    def tls_checks(self):
        check = self.report.check
        logs = self.tls_logs
        app = self.fixtures["team/app:v1"]
        multi = self.fixtures["library/multi:latest"]
        dlist = self.fixtures["library/dlist:1.0"]
        ca = self.pki.ca_cert if self.pki else None

        def v2_trusted():
            self.need_tls()
            rc, code, _, err = self.curl_tls("/v2/", "--cacert", ca, "-D", self.path("tls-v2-headers"))
            ensure(rc == 0 and code == "200", f"curl --cacert exited {rc}, HTTP {code!r}: {err}")
            with open(self.path("tls-v2-headers")) as f:
                headers = f.read().lower()
            ensure("docker-distribution-api-version: registry/2.0" in headers,
                   f"GET /v2/ over TLS lacks Docker-Distribution-API-Version: {headers!r}")

        def handshakes():
            self.need_tls()
            versions = (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2)
            got = {v.name: handshake(self.tls_port, ca, v) for v in versions}
            want = {"TLSv1_3": ("TLSv1.3", "h2"), "TLSv1_2": ("TLSv1.2", "h2")}
            ensure(got == want, f"handshakes (version, ALPN) {got}, want {want}")
            only_h1 = handshake(self.tls_port, ca, ssl.TLSVersion.TLSv1_3, alpn=("http/1.1",))
            ensure(only_h1 == ("TLSv1.3", "http/1.1"), f"a client offering only http/1.1 got {only_h1}")

        def blob_over_h2_and_h1():
            self.need_tls()
            big = max(app.layers, key=lambda b: len(b.data))
            path = f"/v2/team/app/blobs/{big.digest}?ns=docker.io"
            for flag, want_version, label in (("--http2", "2", "h2-miss"), ("--http1.1", "1.1", "h1-hit")):
                out = self.path(f"tls-blob-{label}")
                rc, code, version, err = self.curl_tls(path, "--cacert", ca, flag, out=out)
                ensure(rc == 0 and code == "200", f"curl {flag} exited {rc}, HTTP {code}: {err}")
                ensure(version == want_version, f"curl {flag} spoke HTTP/{version}, want HTTP/{want_version}")
                with open(out, "rb") as f:
                    got = sha256(f.read())
                ensure(got == big.digest, f"curl {flag}: body hashes to {got}, want {big.digest}")

        def curl_untrusted():
            self.need_tls()
            rc, code, _, err = self.curl_tls("/v2/")
            ensure(rc == 60, f"curl without the CA exited {rc} (HTTP {code!r}), want 60 (peer certificate "
                             f"cannot be authenticated): {err}")

        sk = Skopeo(self.path("skopeo-tls"), self.tls_hostport, self.dead, self.env, tls=True, ca=ca)

        def skopeo_untrusted():
            self.need_tls()
            untrusted = Skopeo(self.path("skopeo-tls-untrusted"), self.tls_hostport, self.dead, self.env, tls=True)
            proc = untrusted("inspect", "--raw", "docker://docker.io/library/multi:latest", check=False)
            err = proc.stderr.decode("utf-8", "replace")
            ensure(proc.returncode != 0, "skopeo inspect succeeded without trusting the CA")
            ensure("x509" in err or "certificate" in err,
                   f"skopeo failed, but not on the certificate: {err[-600:]}")

        def copy(ref, transport, label, top, everything, *flags):
            self.need_tls()
            path = sk.copy(ref, transport, label, *flags)
            check_copy(path, transport, label, top, everything)

        check("tls curl --cacert GET /v2/ (certificate for IP 127.0.0.1 issued by the test CA)", v2_trusted, logs)
        check("tls handshake with the CA trusted: TLS 1.3 and 1.2, ALPN h2 (http/1.1 when only that is offered)",
              handshakes, logs)
        check("tls curl --cacert GET of team/app's big layer over HTTP/2 (miss) then HTTP/1.1 (hit) hashes to its "
              "digest", blob_over_h2_and_h1, logs)
        check("tls curl without the CA is refused (exit 60, certificate not trusted)", curl_untrusted, logs)
        check("tls skopeo without the CA fails on the certificate (mirror not insecure)", skopeo_untrusted, logs)
        check("tls skopeo copy --all multi:latest through the https mirror (CA in $HOME certs.d)",
              lambda: copy("docker.io/library/multi:latest", "oci", "multi", multi.digest, multi.all_digests(),
                           "--all"), logs)
        check("tls skopeo copy team/app:v1 through the https mirror",
              lambda: copy("docker.io/team/app:v1", "oci", "app", app.digest, app.all_digests()), logs)

        ctd = Containerd(self.sup, self.path("ctd-tls"), "containerd-tls", self.env)
        started = None
        if not self.tls_down:
            started = check("setup tls containerd daemon", lambda: ctd.start() and True,
                            lambda: self.tls_logs(ctd.daemon))
        mirror_url = f"https://{self.tls_hostport}"
        trusted = write_hosts_dir(self.path("hosts-tls"), mirror_url, self.dead, ca=ca)
        untrusted_hosts = write_hosts_dir(self.path("hosts-tls-untrusted"), mirror_url, self.dead)

        def ctr_untrusted():
            self.need_tls()
            ensure(started, "containerd-tls did not start")
            proc = ctd.ctr("images", "pull", "--hosts-dir", untrusted_hosts, "--snapshotter", "native",
                           "--platform", "linux/amd64", "docker.io/library/dlist:1.0", check=False)
            out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
            ensure(proc.returncode != 0, "ctr pull succeeded although hosts.toml trusts no CA for the mirror")
            ensure("x509" in out or "certificate" in out, f"ctr failed, but not on the certificate: {out[-600:]}")

        check("tls ctr pull without ca in hosts.toml fails on the certificate", ctr_untrusted,
              lambda: self.tls_logs(ctd.daemon))
        for label, ref, digest, image in [
            ("dlist:1.0 (miss)", "docker.io/library/dlist:1.0", dlist.digest, dlist.image("amd64")),
            ("multi:latest (hit)", "docker.io/library/multi:latest", multi.digest, multi.image("amd64")),
            ("team/app:v1 (hit)", "docker.io/team/app:v1", app.digest, app),
        ]:
            def pull(ref=ref, digest=digest, image=image):
                self.need_tls()
                ensure(started, "containerd-tls did not start")
                ctd.pull(ref, trusted, "--platform", "linux/amd64")
                listed = ctd.image_digests().get(ref)
                ensure(listed == digest, f"ctr images ls shows {ref} as {listed}, seeded {digest}")
                unpacked = ctd.unpacked_paths()
                missing = [m for m in image.markers if m not in unpacked]
                ensure(not missing, f"not unpacked into the native snapshotter: {missing}")

            check(f'tls ctr pull {label} via [host."https://127.0.0.1:TLSPORT"] ca = CA (unpacked)', pull,
                  lambda: self.tls_logs(ctd.daemon))
        ctd.stop()

        def prom_scrapes_tls():
            self.need_tls()
            self.need_prom().add_job("hoard-tls", self.tls_hostport, ca)
            self.prom.wait_value('up{job="hoard-tls"}', lambda v: v == [1.0],
                                 "prometheus to scrape hoard-tls over https (up == 1)")

        check('tls prometheus scrapes /metrics over https with tls_config.ca_file (up{job="hoard-tls"} == 1)',
              prom_scrapes_tls, lambda: self.tls_logs(self.prom.daemon if self.prom else None))

        def sighup_renewed():
            self.need_tls()
            before = served_serial(self.tls_port)
            ensure(before == serial_of(self.tls_cert), f"hoard-tls serves serial {before}, not {self.tls_cert}'s")
            cert, key = self.pki.server_cert("hoard-tls-renewed")
            want = serial_of(cert)
            replace_file(cert, self.tls_cert)
            replace_file(key, self.tls_key)
            os.kill(self.hoard_tls.proc.pid, signal.SIGHUP)
            wait_until(lambda: served_serial(self.tls_port) == want, 10,
                       f"hoard-tls to serve the renewed certificate (serial {want}, was {before})", interval=0.1)
            self.hoard_tls.ensure_alive()
            rc, code, _, err = self.curl_tls("/v2/", "--cacert", ca)
            ensure(rc == 0 and code == "200", f"after the reload, curl --cacert exited {rc}, HTTP {code}: {err}")

        def sighup_broken():
            self.need_tls()
            before = served_serial(self.tls_port)
            backup = self.tls_cert + ".good"
            with open(self.tls_cert, "rb") as f, open(backup, "wb") as g:
                g.write(f.read())
            mark = os.path.getsize(self.hoard_tls.log_path)
            half = self.tls_cert + ".half"
            with open(half, "w") as f:
                f.write("-----BEGIN CERTIFICATE-----\nMIIFaz\n")
            replace_file(half, self.tls_cert)
            try:
                os.kill(self.hoard_tls.proc.pid, signal.SIGHUP)

                def logged():
                    self.hoard_tls.ensure_alive()
                    with open(self.hoard_tls.log_path, "rb") as f:
                        f.seek(mark)
                        return b"reload failed" in f.read()

                wait_until(logged, 10, "hoard-tls to log that the reload failed")
                now = served_serial(self.tls_port)
                ensure(now == before, f"after a failed reload hoard-tls serves serial {now}, was {before}")
                rc, code, _, err = self.curl_tls("/v2/", "--cacert", ca)
                ensure(rc == 0 and code == "200",
                       f"after a failed reload curl --cacert exited {rc}, HTTP {code}: {err}")
            finally:
                replace_file(backup, self.tls_cert)

        check("tls SIGHUP: hoard serves a renewed certificate without a restart", sighup_renewed, logs)
        check("tls SIGHUP with a broken certificate file: hoard keeps serving the previous one", sighup_broken,
              logs)

    def tls_offline_checks(self):
        app = self.fixtures["team/app:v1"]
        ca = self.pki.ca_cert if self.pki else None

        def copy():
            self.need_tls()
            sk = Skopeo(self.path("skopeo-tls-offline"), self.tls_hostport, self.dead, self.env, tls=True, ca=ca)
            path = sk.copy("docker.io/team/app:v1", "dir", "app")
            check_copy(path, "dir", "app", app.digest, app.all_digests())

        self.report.check("offline tls skopeo copy team/app:v1 through the https mirror", copy, self.tls_logs)

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
            self.setup_pki()
            self.start_hoard()
            self.start_prometheus()
        self.skopeo_checks("online")
        self.ctr_checks("online")
        if self.direct:
            return
        self.hoard_checks()
        self.prometheus_checks()
        self.start_hoard_tls()
        self.tls_checks()
        self.stop_upstream()
        self.registry = None  # its log no longer explains anything
        self.skopeo_checks("offline")
        self.ctr_checks("offline")
        self.tls_offline_checks()

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


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def exposition_sum(text, name, **labels):
    """Sum of the samples of metric `name` whose labels include `labels`, in a text exposition."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def replace_file(src, dst):
    """Moves `src` over `dst` in one rename, as a certificate renewal tool would."""
    os.replace(src, dst)


def short(digest):
    return digest[:19]


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

    def body(report, supervisor, workdir, dead_port):
        if not args.direct and not os.access(args.hoard, os.X_OK):
            report.require("setup hoard binary is executable", lambda: ensure(False, f"{args.hoard} is not"))
        Suite(report, supervisor, workdir, dead_port, args.hoard, args.direct, args.big_layer_mib).run()

    return run_suite("hoard-e2e", args.keep, body)


if __name__ == "__main__":
    sys.exit(main())
