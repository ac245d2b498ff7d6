#!/usr/bin/env python3
"""End-to-end tests of hoard's access control with real clients.

    tests/e2e/auth.py --hoard target/debug/hoard

hoard runs with an `[auth]` table and an htpasswd file made by `htpasswd -B` (apache2-utils):
anonymous clients may pull, `alice` may also push, `bob` may only pull. Its only upstream is a
dead loopback port, so everything served comes from what was pushed into hoard.

Checked with real clients: `skopeo login` and `podman login` against hoard's Bearer challenge
and its own /token (right password accepted; wrong password and unknown user refused with the
same message); the same logins against a second hoard that sends a Basic challenge; an
unauthenticated `skopeo copy` push refused, and one by `bob` refused; a multi-layer image and a
multi-arch index pushed with `skopeo copy --dest-creds`, an image pushed with
`podman push --creds`; containerd pulling the pushed image back anonymously by tag and by
digest; containerd refused by a hoard whose pulls need a login, and pulling from it with
`--user` (its OAuth2 POST /token gets 404, it falls back to GET); hoard's auth counters in /metrics.

Prints `PASS name` / `FAIL name: reason` per check and `N passed, N failed`; exits 1 when
anything failed. Needs root (containerd, podman) and scripts/install-deps.sh.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import Containerd, Skopeo, write  # noqa: E402
from harness import (  # noqa: E402
    CheckFailed,
    Daemon,
    client_env,
    ensure,
    free_port,
    http,
    run,
    wait_until,
    run_suite,
)
from images import Image, MultiArch, small_files  # noqa: E402

USERS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}
RULES = """
[[auth.rules]]
repository = "*"
users = ["anonymous", "*"]
allow = ["pull"]

[[auth.rules]]
repository = "team"
users = ["alice"]
allow = ["push"]
"""


def write_oci_layout(path, artifact, tag):
    """An OCI image layout holding `artifact` (Image or MultiArch) under `tag`."""
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    images = artifact.images if isinstance(artifact, MultiArch) else [artifact]
    top = artifact.index if isinstance(artifact, MultiArch) else artifact.manifest
    for blob in [top, *(b for img in images for b in [img.manifest, *img.blobs()])]:
        with open(os.path.join(blobs, blob.digest.split(":", 1)[1]), "wb") as f:
            f.write(blob.data)
    write(os.path.join(path, "oci-layout"), json.dumps({"imageLayoutVersion": "1.0.0"}))
    write(os.path.join(path, "index.json"), json.dumps({
        "schemaVersion": 2,
        "manifests": [top.descriptor(annotations={"org.opencontainers.image.ref.name": tag})],
    }))
    return path


class Podman:
    """podman as root with its own storage (vfs), runroot, auth file and registries.conf."""

    def __init__(self, workdir, env):
        os.makedirs(workdir, exist_ok=True)
        # podman refuses a runroot path longer than about 50 characters.
        self.runroot = tempfile.mkdtemp(prefix="hp-", dir="/tmp")
        conf = write(os.path.join(workdir, "registries.conf"), "unqualified-search-registries = []\n")
        self.authfile = write(os.path.join(workdir, "auth.json"), "{}")
        self.args = ["podman", "--root", os.path.join(workdir, "root"), "--runroot", self.runroot,
                     "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
        self.env = dict(env, CONTAINERS_REGISTRIES_CONF=conf, REGISTRY_AUTH_FILE=self.authfile,
                        HOME=workdir, XDG_RUNTIME_DIR=self.runroot)

    def __call__(self, *args, timeout=120, check=True):
        return run([*self.args, *args], timeout=timeout, env=self.env, check=check)

    def cleanup(self):
        shutil.rmtree(self.runroot, ignore_errors=True)


# Pulls need a login too: anyone logged in may pull and push.
PRIVATE_RULES = """
[[auth.rules]]
repository = "*"
users = ["*"]
allow = ["pull", "push"]
"""


def hoard_config(workdir, name, port, dead_port, htpasswd, challenge, rules=RULES):
    cache = os.path.join(workdir, f"{name}-cache")
    return write(os.path.join(workdir, f"{name}.toml"), f"""\
listen = "127.0.0.1:{port}"
cache_dir = "{cache}"
default_upstream = "docker.io"
tag_ttl = "0s"

[upstreams."docker.io"]
url = "http://127.0.0.1:{dead_port}"

[auth]
htpasswd = "{htpasswd}"
challenge = "{challenge}"
{rules}""")


def stderr_of(proc):
    return (proc.stderr + proc.stdout).decode("utf-8", "replace").strip()


class Suite:
    def __init__(self, report, sup, workdir, dead, hoard_bin):
        self.report = report
        self.sup = sup
        self.workdir = workdir
        self.dead = dead
        self.hoard_bin = hoard_bin
        self.env = client_env(dead)
        self.hoard = None
        self.basic_hoard = None
        self.basic_mirror = None
        self.ctrd = None
        self.port = None
        self.mirror = None
        self.pushed = {}

    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def logs(self):
        return [d for d in (self.hoard,) if d is not None]

    def start_hoard(self, name, challenge, rules=RULES):
        port = free_port()
        htpasswd = self.path("htpasswd")
        config = hoard_config(self.workdir, name, port, self.dead, htpasswd, challenge, rules)
        daemon = self.sup.start(Daemon(name, [self.hoard_bin, "serve", "--config", config],
                                       self.path(f"{name}.log"),
                                       dict(self.env, RUST_LOG="info", NO_COLOR="1")))

        def serving():
            daemon.ensure_alive()
            return http("GET", f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200

        wait_until(serving, 30, f"{name} to serve /healthz")
        return daemon, port

    def setup(self):
        def htpasswd():
            path = self.path("htpasswd")
            for i, (user, pw) in enumerate(USERS.items()):
                run(["htpasswd", "-B", "-b", *(["-c"] if i == 0 else []), path, user, pw], timeout=30)
            with open(path) as f:
                ensure(all(line.split(":", 1)[1].startswith("$2y$") for line in f if line.strip()),
                       "htpasswd -B did not write bcrypt entries")

        self.report.require("htpasswd -B writes the user file", htpasswd)

        def start():
            self.hoard, self.port = self.start_hoard("hoard", "bearer")
            self.mirror = f"127.0.0.1:{self.port}"

        self.report.require("hoard starts with [auth] (bearer challenge)", start, self.logs)

    # -- checks --------------------------------------------------------------------------

    def challenge(self):
        resp = http("GET", f"http://{self.mirror}/v2/")
        ensure(resp.status == 401, f"GET /v2/ without credentials answered {resp.status}")
        want = f'Bearer realm="http://{self.mirror}/token",service="hoard"'
        got = resp.header("WWW-Authenticate")
        ensure(got == want, f"challenge {got!r}, want {want!r}")
        resp = http("POST", f"http://{self.mirror}/v2/team/app/blobs/uploads/", body=b"")
        got = resp.header("WWW-Authenticate") or ""
        ensure(resp.status == 401 and 'scope="repository:team/app:pull,push"' in got,
               f"anonymous upload start answered {resp.status} {got!r}")

    def logins(self, mirror, label):
        """skopeo and podman login: right password ok, wrong password and unknown user refused alike."""
        skopeo = Skopeo(self.path(f"skopeo-login-{label}"), mirror, self.dead, self.env)
        podman = Podman(self.path(f"podman-login-{label}"), self.env)
        self.sup.on_exit(podman.cleanup)

        def login(tool, user, pw):
            return tool("login", "--tls-verify=false", "-u", user, "-p", pw, mirror, check=False)

        for name, tool in (("skopeo", skopeo), ("podman", podman)):
            def ok(tool=tool, name=name):
                proc = login(tool, "alice", USERS["alice"])
                ensure(proc.returncode == 0, f"{name} login alice failed: {stderr_of(proc)}")
                with open(tool.env["REGISTRY_AUTH_FILE"]) as f:
                    ensure(mirror in json.load(f).get("auths", {}), f"{name} stored no credentials")

            self.report.check(f"{label}: {name} login with the right password", ok, self.logs)

            def refused(tool=tool, name=name):
                wrong = login(tool, "alice", "not-" + USERS["alice"])
                unknown = login(tool, "mallory", "not-" + USERS["alice"])
                ensure(wrong.returncode != 0, f"{name} login with a wrong password succeeded")
                ensure(unknown.returncode != 0, f"{name} login as an unknown user succeeded")
                # Log timestamps may differ; nothing else may.
                a = re.sub(r'time="[^"]*"', "", stderr_of(wrong).replace("alice", "USER"))
                b = re.sub(r'time="[^"]*"', "", stderr_of(unknown).replace("mallory", "USER"))
                if a != b:
                    raise CheckFailed("wrong password and unknown user got different errors",
                                      f"wrong password: {a}\nunknown user: {b}")

            self.report.check(f"{label}: {name} login refused alike for wrong password and unknown user",
                              refused, self.logs)

    def basic_scheme(self):
        def start():
            self.basic_hoard, port = self.start_hoard("hoard-basic", "basic")
            self.basic_mirror = f"127.0.0.1:{port}"
            resp = http("GET", f"http://{self.basic_mirror}/v2/")
            got = resp.header("WWW-Authenticate")
            ensure(resp.status == 401 and got == 'Basic realm="hoard",charset="UTF-8"',
                   f"GET /v2/ answered {resp.status} {got!r}")

        self.report.check("hoard with challenge = basic sends a Basic challenge", start, self.logs)
        if self.basic_mirror is not None:
            self.logins(self.basic_mirror, "basic")

    def fixtures(self):
        app = Image("oci", "amd64", [
            small_files("auth-app-base", 4),
            small_files("auth-app-mid", 3),
            {"opt/app/random.bin": os.urandom(2 << 20), "opt/app/VERSION": b"v1\n"},
        ])
        multi = MultiArch("oci", [
            Image("oci", arch, [small_files(f"auth-multi-{arch}-a", 2), small_files(f"auth-multi-{arch}-b", 2)])
            for arch in ("amd64", "arm64")
        ])
        self.app, self.multi = app, multi
        self.app_layout = write_oci_layout(self.path("layout-app"), app, "v1")
        self.multi_layout = write_oci_layout(self.path("layout-multi"), multi, "latest")

    def refused_pushes(self):
        skopeo = Skopeo(self.path("skopeo-anon"), self.mirror, self.dead, self.env)

        def anonymous():
            proc = skopeo("copy", "--retry-times", "0", "--dest-tls-verify=false",
                          f"oci:{self.app_layout}:v1", f"docker://{self.mirror}/team/anon:v1",
                          timeout=90, check=False)
            ensure(proc.returncode != 0, "an unauthenticated push succeeded")
            err = stderr_of(proc).lower()
            ensure("unauthorized" in err or "authentication required" in err,
                   f"push refused, but not for lack of credentials: {stderr_of(proc)[-300:]}")
            resp = http("GET", f"http://{self.mirror}/v2/team/anon/manifests/v1",
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            # Not local, so it is looked up upstream, which is dead: 503.
            ensure(resp.status != 200, "the refused image is served")

        self.report.check("unauthenticated skopeo copy push is refused", anonymous, self.logs)

        def bob():
            proc = skopeo("copy", "--retry-times", "0", "--dest-tls-verify=false",
                          "--dest-creds", f"bob:{USERS['bob']}",
                          f"oci:{self.app_layout}:v1", f"docker://{self.mirror}/team/bob:v1",
                          timeout=90, check=False)
            ensure(proc.returncode != 0, "bob (pull only) pushed")
            err = stderr_of(proc).lower()
            ensure("denied" in err or "unauthorized" in err or "insufficient" in err,
                   f"bob's push refused for another reason: {stderr_of(proc)[-300:]}")

        self.report.check("a user without push is refused", bob, self.logs)

    def pushes(self):
        skopeo = Skopeo(self.path("skopeo-push"), self.mirror, self.dead, self.env)
        creds = f"alice:{USERS['alice']}"

        def push(layout, tag, ref, expect, flags=()):
            skopeo("copy", "--retry-times", "0", "--dest-tls-verify=false", "--dest-creds", creds,
                   *flags, f"oci:{layout}:{tag}", f"docker://{self.mirror}/{ref}", timeout=120)
            raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", creds,
                         f"docker://{self.mirror}/{ref}").stdout
            got = "sha256:" + hashlib.sha256(raw).hexdigest()
            ensure(got == expect, f"{ref} is {got} in hoard, pushed {expect}")
            self.pushed[ref] = expect

        self.report.check("skopeo copy --dest-creds pushes a multi-layer image",
                          lambda: push(self.app_layout, "v1", "team/app:v1", self.app.digest), self.logs)
        self.report.check("skopeo copy --dest-creds --all pushes a multi-arch index",
                          lambda: push(self.multi_layout, "latest", "team/multi:latest", self.multi.digest,
                                       ("--all",)), self.logs)

        podman = Podman(self.path("podman-push"), self.env)
        self.sup.on_exit(podman.cleanup)

        def podman_push():
            podman("pull", f"oci:{self.app_layout}:v1")
            images = podman("images", "--format", "{{.ID}}").stdout.decode().split()
            ensure(images, "podman has no image after pulling the OCI layout")
            podman("push", "--tls-verify=false", "--creds", creds, images[0],
                   f"docker://{self.mirror}/team/podman:v1")
            resp = http("GET", f"http://{self.mirror}/v2/team/podman/manifests/v1",
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                           "application/vnd.docker.distribution.manifest.v2+json"})
            ensure(resp.status == 200, f"GET of podman's pushed manifest answered {resp.status}")
            layers = json.loads(resp.body).get("layers", [])
            ensure(len(layers) == 3, f"podman's pushed image has {len(layers)} layers, want 3")

        self.report.check("podman push --creds pushes an image", podman_push, self.logs)

    def containerd_pull(self):
        def pushed():
            ensure("team/app:v1" in self.pushed, "the multi-layer image was not pushed")
            return True

        if self.report.check("containerd has something to pull back", pushed) is None:
            return
        ctrd = Containerd(self.sup, self.path("ctrd"), "containerd", self.env)
        ctrd_logs = lambda: self.logs() + [d for d in (ctrd.daemon,) if d is not None]  # noqa: E731
        if self.report.check("private containerd starts", ctrd.start, ctrd_logs) is None:
            return
        self.ctrd = ctrd
        hosts = self.path("ctrd-hosts")
        os.makedirs(hosts, exist_ok=True)
        ref = f"{self.mirror}/team/app"

        def by_tag():
            ctrd.pull(f"{ref}:v1", hosts, "--plain-http")
            got = ctrd.image_digests().get(f"{ref}:v1")
            ensure(got == self.app.digest, f"containerd has {got}, pushed {self.app.digest}")
            markers = ctrd.unpacked_paths()
            ensure("opt/app/VERSION" in markers, "the pushed layers were not unpacked")

        def by_digest():
            ctrd.pull(f"{ref}@{self.app.digest}", hosts, "--plain-http")
            ensure(f"{ref}@{self.app.digest}" in ctrd.image_digests(), "no image by digest")

        self.report.check("containerd pulls the pushed image by tag (anonymous, upstream dead)",
                          by_tag, ctrd_logs)
        self.report.check("containerd pulls the pushed image by digest",
                          by_digest, ctrd_logs)

    def basic_push(self):
        """skopeo sends the password with every request to a Basic hoard."""
        if self.basic_mirror is None:
            return

        def push():
            skopeo = Skopeo(self.path("skopeo-basic-push"), self.basic_mirror, self.dead, self.env)
            creds = f"alice:{USERS['alice']}"
            ref = f"docker://{self.basic_mirror}/team/app:v1"
            skopeo("copy", "--retry-times", "0", "--dest-tls-verify=false", "--dest-creds", creds,
                   f"oci:{self.app_layout}:v1", ref, timeout=120)
            raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", creds, ref).stdout
            ensure("sha256:" + hashlib.sha256(raw).hexdigest() == self.app.digest, "pushed digest differs")

        self.report.check("basic: skopeo copy --dest-creds pushes (Basic on every request)", push,
                          lambda: self.logs() + [self.basic_hoard])

    def private_pulls(self):
        """containerd fetches a token with credentials from a hoard where pulls need a login."""
        if self.ctrd is None:
            return
        state = {}

        def start():
            state["daemon"], port = self.start_hoard("hoard-private", "bearer", PRIVATE_RULES)
            state["mirror"] = f"127.0.0.1:{port}"
            skopeo = Skopeo(self.path("skopeo-private"), state["mirror"], self.dead, self.env)
            skopeo("copy", "--retry-times", "0", "--dest-tls-verify=false",
                   "--dest-creds", f"bob:{USERS['bob']}",
                   f"oci:{self.app_layout}:v1", f"docker://{state['mirror']}/team/app:v1", timeout=120)
            return True

        logs = lambda: self.logs() + [d for d in (state.get("daemon"), self.ctrd_daemon()) if d]  # noqa: E731
        if self.report.check("private hoard (pulls need a login) takes a push from bob", start, logs) is None:
            return
        hosts = self.path("ctrd-hosts")
        ref = f"{state['mirror']}/team/app:v1"

        def anonymous():
            proc = self.ctrd.ctr("images", "pull", "--hosts-dir", hosts, "--snapshotter", "native",
                                 "--plain-http", ref, check=False)
            ensure(proc.returncode != 0, "containerd pulled anonymously from a hoard that needs a login")
            # With an anonymous token that grants nothing, the answer is 401
            # insufficient_scope; containerd reports "may require authorization".
            err = stderr_of(proc).lower()
            ensure("authorization" in err or "unauthorized" in err,
                   f"refused, but not for credentials: {stderr_of(proc)[-300:]}")

        def with_user():
            # containerd with credentials tries the OAuth2 POST first and falls
            # back to GET on hoard's 404.
            self.ctrd.pull(ref, hosts, "--plain-http", "--user", f"alice:{USERS['alice']}")
            got = self.ctrd.image_digests().get(ref)
            ensure(got == self.app.digest, f"containerd has {got}, pushed {self.app.digest}")

        self.report.check("containerd without credentials is refused by the private hoard", anonymous, logs)
        self.report.check("containerd --user pulls from the private hoard (token from hoard's /token)",
                          with_user, logs)

    def ctrd_daemon(self):
        return self.ctrd.daemon if self.ctrd is not None else None

    def metrics(self):
        text = http("GET", f"http://{self.mirror}/metrics").body.decode()

        def value(series):
            for line in text.splitlines():
                if line.startswith(series + " "):
                    return float(line.split()[-1])
            return 0.0

        ensure(value('hoard_auth_logins_total{result="ok"}') >= 2, "no successful logins counted")
        ensure(value('hoard_auth_logins_total{result="failed"}') >= 4, "failed logins not counted")
        ensure(value('hoard_auth_tokens_total{result="issued"}') >= 1, "no tokens counted")
        ensure(value('hoard_auth_denied_total{reason="unauthenticated"}') >= 1, "no 401s counted")

    def run(self, with_push):
        self.setup()
        self.report.check("401 with a Bearer challenge naming hoard's /token and the scope",
                          self.challenge, self.logs)
        self.logins(self.mirror, "bearer")
        self.basic_scheme()
        if with_push:
            # Clients HEAD each blob in the target repository before they
            # upload it: without the push side that HEAD goes upstream.
            self.fixtures()
            self.refused_pushes()
            self.pushes()
            self.basic_push()
            self.containerd_pull()
            self.private_pulls()
        else:
            print("NOTICE push checks skipped (--no-push): this hoard has no push side", flush=True)
        self.report.check("/metrics counts logins, tokens and refusals", self.metrics, self.logs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hoard", required=True, help="path to the hoard binary")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with logs and configs")
    parser.add_argument("--no-push", action="store_true", help="skip the checks that need pushes")
    args = parser.parse_args()
    hoard_bin = os.path.abspath(args.hoard)
    return run_suite(
        "hoard-e2e-auth", args.keep,
        lambda report, supervisor, workdir, dead_port:
            Suite(report, supervisor, workdir, dead_port, hoard_bin).run(not args.no_push))


if __name__ == "__main__":
    sys.exit(main())
