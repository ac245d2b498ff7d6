#!/usr/bin/env python3
"""End-to-end tests of hoard with dockerd (registry-mirrors, login, push) and buildah.

    tests/e2e/docker.py --hoard target/debug/hoard

The upstream of run.py (distribution's registry behind a Docker-Hub-like token service) is
seeded with an OCI index (`library/multi:latest`), a Docker manifest list (`library/dlist:1.0`)
and a single OCI image (`team/app:v1`). hoard mirrors it as `docker.io` and, under a second
name, as `quay.io`.

dockerd 20.10 (Debian `docker.io`) runs as a private daemon: its own `--data-root`,
`--exec-root`, socket, pidfile and containerd (a private one from clients.py, so a system
containerd is never used), `vfs` storage, no iptables and no bridge, hoard as its
`--registry-mirror`. Its fallback to Docker Hub goes through `HTTP(S)_PROXY`, a dead loopback
port, so a pull can only succeed through hoard (Go never proxies loopback addresses, so the
mirror on 127.0.0.1 is reached directly whatever `NO_PROXY` says). Checked: `docker pull` of
the three images by tag and, after `docker rmi`, by digest (the image ID must be the seeded
config's digest, RepoDigests the seeded manifest's); with `[auth]` on a second hoard, a push
without login refused, `docker login` refused with a wrong password and accepted with the right
one, `docker tag` + `docker push`, `docker rmi`, `docker pull` back; then, with the upstream
stopped and every image removed, the pulls again from hoard's cache alone.

buildah (Debian `buildah`, storage in the work dir with `vfs`) pulls through a registries.conf
with hoard as the mirror of `docker.io` and `127.0.0.1:PORT/quay.io` (path prefix) as the mirror
of `quay.io`, online and, with fresh storage, offline.

Last, the daemons are stopped and nothing of them may be left: no process, no mount under the
work dir (which the harness then removes).

Prints `PASS name` / `FAIL name: reason` per check and `N passed, N failed`; exits 1 when
anything failed. Needs root and scripts/install-deps.sh's packages.
"""

import argparse
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from auth import RULES as AUTH_RULES, USERS  # noqa: E402
from clients import Containerd, accept_anything_policy, registries_conf, wait_serving, write  # noqa: E402
from harness import CheckFailed, Daemon, ensure, free_port, http, run, run_suite, wait_until  # noqa: E402
from run import Suite, exposition_sum, short  # noqa: E402

# Debian's client, beside its daemon (a newer docker CLI may come first on PATH).
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
USER, PASSWORD = "alice", USERS["alice"]  # auth.py's RULES: alice may push team/, anyone may pull


def output(proc):
    return (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()


class Dockerd:
    """A private dockerd: every path of its own under `workdir`, a private containerd."""

    def __init__(self, supervisor, workdir, mirror, env):
        self.sup = supervisor
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.socket = os.path.join(workdir, "docker.sock")
        self.pidfile = os.path.join(workdir, "docker.pid")
        self.mirror = mirror
        self.env = env
        self.containerd = Containerd(supervisor, os.path.join(workdir, "ctrd"), "containerd-docker", env)
        self.daemon = None
        self.cli_env = dict(env, DOCKER_HOST=f"unix://{self.socket}",
                            DOCKER_CONFIG=os.path.join(workdir, "cli-config"))

    def daemons(self):
        return [d for d in (self.daemon, self.containerd.daemon) if d is not None]

    def start(self):
        self.containerd.start()
        argv = [DOCKERD, "--data-root", os.path.join(self.dir, "data"),
                "--exec-root", os.path.join(self.dir, "exec"), "--host", f"unix://{self.socket}",
                "--pidfile", self.pidfile, "--containerd", self.containerd.socket,
                "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
                "--registry-mirror", f"http://{self.mirror}", "--insecure-registry", self.mirror]
        self.daemon = self.sup.start(Daemon("dockerd", argv, os.path.join(self.dir, "dockerd.log"), self.env))

        def serving():
            self.daemon.ensure_alive()
            return self.docker("version", timeout=10, check=False).returncode == 0

        wait_until(serving, 60, f"dockerd to serve on {self.socket}", interval=0.2)
        info = json.loads(self.docker("info", "--format", "{{json .}}").stdout)
        mirrors = info.get("RegistryConfig", {}).get("Mirrors") or []
        ensure(mirrors == [f"http://{self.mirror}/"], f"docker info lists the mirrors {mirrors}")
        ensure(info.get("Driver") == "vfs", f"storage driver {info.get('Driver')}")

    def docker(self, *args, timeout=120, check=True, input=None):
        return run([DOCKER, *args], timeout=timeout, env=self.cli_env, check=check, input=input)

    def image(self, ref):
        """(ID, RepoDigests) of a local image."""
        out = self.docker("image", "inspect", "--format", "{{json .Id}} {{json .RepoDigests}}", ref).stdout
        ident, digests = out.decode().strip().split(" ", 1)
        return json.loads(ident), json.loads(digests) or []

    def remove_all(self):
        ids = self.docker("images", "-q", "--no-trunc").stdout.decode().split()
        if ids:
            self.docker("rmi", "--force", *sorted(set(ids)))
        left = self.docker("images", "-q").stdout.decode().split()
        ensure(not left, f"images left after docker rmi: {left}")

    def stop(self):
        if self.daemon is not None:
            self.daemon.stop(timeout=30)
        self.containerd.stop()


class Buildah:
    """buildah as root with its own storage (vfs), registries.conf, policy and auth file."""

    def __init__(self, workdir, mirror, dead_port, env):
        os.makedirs(workdir, exist_ok=True)
        conf = registries_conf(os.path.join(workdir, "registries.conf"), dead_port,
                               {"docker.io": mirror, "quay.io": f"{mirror}/quay.io"})
        self.policy = accept_anything_policy(os.path.join(workdir, "policy.json"))
        auth = write(os.path.join(workdir, "auth.json"), "{}")
        self.args = ["buildah", "--root", os.path.join(workdir, "root"), "--runroot", os.path.join(workdir, "run"),
                     "--storage-driver", "vfs", "--registries-conf", conf]
        self.env = dict(env, HOME=workdir, REGISTRY_AUTH_FILE=auth, CONTAINERS_REGISTRIES_CONF=conf,
                        XDG_RUNTIME_DIR=os.path.join(workdir, "run"))

    def __call__(self, *args, timeout=120, check=True):
        return run([*self.args, *args], timeout=timeout, env=self.env, check=check)

    def pull(self, ref):
        return self("pull", "--signature-policy", self.policy, "--retry", "0", ref)

    def image_id(self, ref):
        return self("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref).stdout.decode().strip()


class DockerSuite(Suite):
    def __init__(self, *args):
        super().__init__(*args)
        self.dockerd = None
        self.auth_hoard = None
        self.auth_mirror = None

    def logs(self, *extra):
        ours = self.dockerd.daemons() if self.dockerd else []
        return [d for d in (self.hoard, self.auth_hoard, self.registry, *ours, *extra) if d is not None]

    def write_hoard_config(self, name, port, upstream_url, extra=""):
        return write(self.path(f"{name}.toml"), f"""\
listen = "127.0.0.1:{port}"
cache_dir = "{self.path(f"{name}-cache")}"
default_upstream = "docker.io"
tag_ttl = "0s"

[upstreams."docker.io"]
url = "{upstream_url}"

[upstreams."quay.io"]
url = "{upstream_url}"
{extra}""")

    def start_named_hoard(self, name, port, config):
        daemon = self.sup.start(Daemon(name, [self.hoard_bin, "serve", "--config", config],
                                       self.path(f"{name}.log"), dict(self.env, RUST_LOG="info", NO_COLOR="1")))
        return daemon

    def start_mirror(self):
        def start():
            self.hoard_port = free_port()
            config = self.write_hoard_config("hoard", self.hoard_port, self.upstream_url)
            self.hoard = self.start_named_hoard("hoard", self.hoard_port, config)
            wait_serving(self.hoard, self.hoard_url, 200)

        self.report.require("setup hoard mirrors the upstream as docker.io and as quay.io", start, self.logs)

    def start_dockerd(self):
        def start():
            self.dockerd = Dockerd(self.sup, self.path("docker"), self.mirror_hostport, self.env)
            self.dockerd.start()

        self.report.require("setup private dockerd (vfs, own containerd, hoard as --registry-mirror)", start,
                            self.logs)

    # -- dockerd pulls ---------------------------------------------------------------------

    def pulls(self):
        """(label, name, by-tag reference, top digest, image pulled for linux/amd64)."""
        multi = self.fixtures["library/multi:latest"]
        dlist = self.fixtures["library/dlist:1.0"]
        app = self.fixtures["team/app:v1"]
        return [
            ("multi:latest (OCI index)", "multi", "multi:latest", multi.digest, multi.image("amd64")),
            ("dlist:1.0 (Docker manifest list)", "dlist", "dlist:1.0", dlist.digest, dlist.image("amd64")),
            ("team/app:v1 (non-library image)", "team/app", "team/app:v1", app.digest, app),
        ]

    def docker_checks(self, phase):
        d = self.dockerd
        check = self.report.check

        def hoard_saw(path):
            with open(self.hoard.log_path, "rb") as f:
                return path.encode() in f.read()

        def pull_by_tag(name, ref, top, image):
            d.docker("pull", ref)
            ident, digests = d.image(ref)
            ensure(ident == image.config.digest, f"{ref} has image ID {ident}, seeded config {image.config.digest}")
            want = f"{name}@{top}"
            ensure(want in digests, f"RepoDigests {digests} lack {want}")

        def pull_by_digest(name, top, image):
            ref = f"{name}@{top}"
            d.docker("pull", ref)
            ident, _ = d.image(ref)
            ensure(ident == image.config.digest, f"{ref} has image ID {ident}, seeded config {image.config.digest}")

        for label, name, ref, top, image in self.pulls():
            check(f"{phase} docker pull {label}",
                  lambda name=name, ref=ref, top=top, image=image: pull_by_tag(name, ref, top, image), self.logs)
        if phase == "online":
            def through_mirror():
                # registry-mirrors: no ns, Docker Hub's library/ prefix added by dockerd.
                ensure(hoard_saw("/v2/library/multi/manifests/latest"),
                       "hoard's log shows no request for /v2/library/multi/manifests/latest")
                ensure(hoard_saw("/v2/team/app/manifests/v1"), "hoard's log shows no request for team/app:v1")

            check("online dockerd asked hoard, its registry mirror, for /v2/library/<name>", through_mirror,
                  self.logs)
        check(f"{phase} docker rmi of every image", d.remove_all, self.logs)
        for label, name, _, top, image in self.pulls():
            check(f"{phase} docker pull {name}@{short(top)} (after rmi)",
                  lambda name=name, top=top, image=image: pull_by_digest(name, top, image), self.logs)
        if phase == "online":
            multi = self.fixtures["library/multi:latest"]
            check("online dockerd fetched the index by digest from hoard",
                  lambda: ensure(hoard_saw(f"/v2/library/multi/manifests/{multi.digest}"),
                                 f"hoard's log shows no GET of multi@{short(multi.digest)}"), self.logs)

    # -- dockerd login and push ------------------------------------------------------------

    def start_auth_hoard(self):
        def start():
            htpasswd = self.path("htpasswd")
            run(["htpasswd", "-B", "-b", "-c", htpasswd, USER, PASSWORD], timeout=30)
            port = free_port()
            # Its upstreams are a dead port: whatever it serves was pushed into it.
            config = self.write_hoard_config("hoard-auth", port, f"http://127.0.0.1:{self.dead}", f"""
[auth]
htpasswd = "{htpasswd}"
{AUTH_RULES}""")
            self.auth_hoard = self.start_named_hoard("hoard-auth", port, config)
            wait_serving(self.auth_hoard, f"http://127.0.0.1:{port}", 401)
            self.auth_mirror = f"127.0.0.1:{port}"
            return True

        return self.report.check("setup second hoard with [auth] (htpasswd -B, alice may push team/)", start,
                                 self.logs)

    def push_checks(self):
        if not self.start_auth_hoard():
            return
        d = self.dockerd
        check = self.report.check
        app = self.fixtures["team/app:v1"]
        target = f"{self.auth_mirror}/team/pushed:v1"

        def tag():
            d.docker("pull", "team/app:v1")
            d.docker("tag", "team/app:v1", target)
            return True

        if check("docker tag team/app:v1 as a name on the [auth] hoard", tag, self.logs) is None:
            return

        def refused():
            proc = d.docker("push", target, check=False)
            ensure(proc.returncode != 0, "docker push without login succeeded")
            # dockerd shows a 401 on push as "denied: requested access to the resource is
            # denied"; hoard's log tells that it was its challenge, before any byte was taken.
            out = output(proc).lower()
            ensure("denied" in out or "unauthorized" in out,
                   f"push refused, but not for lack of credentials: {output(proc)[-300:]}")
            with open(self.auth_hoard.log_path) as f:
                posts = [line for line in f
                         if 'method=POST path=/v2/team/pushed/blobs/uploads/ ' in line]
            ensure(posts and all("status=401" in line for line in posts),
                   f"hoard answered the upload POSTs otherwise: {posts}")
            resp = http("GET", f"http://{self.auth_mirror}/v2/team/pushed/tags/list")
            ensure(resp.status != 200 or b"v1" not in resp.body, "the refused image is listed")

        def wrong_password():
            proc = d.docker("login", "--username", USER, "--password-stdin", self.auth_mirror,
                            input=b"not-" + PASSWORD.encode(), check=False)
            ensure(proc.returncode != 0, "docker login with a wrong password succeeded")

        def login():
            proc = d.docker("login", "--username", USER, "--password-stdin", self.auth_mirror,
                            input=PASSWORD.encode())
            ensure(b"Login Succeeded" in proc.stdout, f"docker login said {output(proc)!r}")
            return True

        def push():
            d.docker("push", target)
            resp = http("GET", f"http://{self.auth_mirror}/v2/team/pushed/manifests/v1",
                        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                                           "application/vnd.oci.image.manifest.v1+json"})
            ensure(resp.status == 200, f"GET of the pushed manifest answered {resp.status}")
            config = json.loads(resp.body).get("config", {}).get("digest")
            ensure(config == app.config.digest, f"pushed manifest names config {config}, want {app.config.digest}")
            return True

        def pull_back():
            d.remove_all()
            d.docker("logout", self.auth_mirror)
            d.docker("pull", target)  # anonymous: the rules let anyone pull
            ident, _ = d.image(target)
            ensure(ident == app.config.digest, f"pulled back image ID {ident}, pushed {app.config.digest}")
            # Pulls of pushed content are not mirror traffic: counted apart from cache hits.
            text = http("GET", f"http://{self.auth_mirror}/metrics").body.decode()
            local = exposition_sum(text, "hoard_requests_total", outcome="local")
            hits = exposition_sum(text, "hoard_requests_total", outcome="hit")
            ensure(local > 0 and hits == 0, f"hoard counted outcome=local {local}, hit {hits}")

        check("docker push without login is refused (hoard answers the upload with 401)", refused, self.logs)
        check("docker login with a wrong password is refused", wrong_password, self.logs)
        if check("docker login with the right password", login, self.logs) is None:
            return
        if check("docker push (logged in) into hoard's local registry", push, self.logs) is None:
            return
        check("docker rmi, logout, docker pull of the pushed image back (anonymous), counted as outcome=local", pull_back, self.logs)

    # -- buildah ---------------------------------------------------------------------------

    def buildah_checks(self, phase):
        b = Buildah(self.path(f"buildah-{phase}"), self.mirror_hostport, self.dead, self.env)
        multi = self.fixtures["library/multi:latest"]
        dlist = self.fixtures["library/dlist:1.0"]
        app = self.fixtures["team/app:v1"]
        pulls = [
            ("docker.io/library/multi:latest (mirror of docker.io)", "docker.io/library/multi:latest",
             multi.image("amd64")),
            ("docker.io/library/dlist:1.0", "docker.io/library/dlist:1.0", dlist.image("amd64")),
            (f"docker.io/library/multi@{short(multi.digest)}", f"docker.io/library/multi@{multi.digest}",
             multi.image("amd64")),
            ("quay.io/team/app:v1 (path-prefix mirror 127.0.0.1:PORT/quay.io)", "quay.io/team/app:v1", app),
            (f"quay.io/team/app@{short(app.digest)}", f"quay.io/team/app@{app.digest}", app),
        ]
        for label, ref, image in pulls:
            def pull(ref=ref, image=image):
                b.pull(ref)
                got = b.image_id(ref)
                want = image.config.digest.split(":", 1)[1]
                ensure(got == want, f"buildah has {ref} as image {got}, seeded config {want}")

            self.report.check(f"{phase} buildah pull {label}", pull, self.logs)
        if phase == "online":
            def prefix_routed():
                with open(self.hoard.log_path, "rb") as f:
                    ensure(b"/v2/quay.io/team/app/manifests/v1" in f.read(),
                           "hoard's log shows no request for /v2/quay.io/team/app/manifests/v1")

            self.report.check("online buildah asked hoard for /v2/quay.io/team/app (path prefix)", prefix_routed,
                              self.logs)

    # -- teardown --------------------------------------------------------------------------

    def nothing_left(self):
        def stopped():
            pids = [p.proc.pid for p in self.dockerd.daemons()]
            self.dockerd.stop()
            alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
            ensure(not alive, f"processes still running: {alive}")
            ensure(not os.path.exists(self.dockerd.pidfile), "dockerd left its pidfile")
            mounts = run(["findmnt", "-rn", "-o", "TARGET"], timeout=30).stdout.decode().split("\n")
            ours = [m for m in mounts if m.startswith(self.workdir + "/") or m == self.workdir]
            ensure(not ours, f"mounts left under the work dir: {ours}")
            # The hoards still run (the harness stops them); nothing may still use dockerd's dirs.
            leftover = [pid for pid in os.listdir("/proc")
                        if pid.isdigit() and _cmdline_mentions(pid, self.dockerd.dir)]
            ensure(not leftover, f"processes still using dockerd's directory: {leftover}")

        self.report.check("dockerd and its containerd stopped: no process, no mount left under the work dir",
                          stopped, self.logs)

    def run(self):
        self.start_upstream()
        self.seed()
        self.start_mirror()
        self.start_dockerd()
        self.docker_checks("online")
        self.buildah_checks("online")
        self.push_checks()
        self.stop_upstream()
        self.registry = None
        try:
            self.dockerd.remove_all()
        except CheckFailed as e:
            print(f"NOTICE docker rmi before the offline pulls: {e}", flush=True)
        self.docker_checks("offline")
        self.buildah_checks("offline")
        self.nothing_left()


def _cmdline_mentions(pid, text):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hoard", required=True, help="path to the hoard binary")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with logs and configs")
    args = parser.parse_args()
    hoard_bin = os.path.abspath(args.hoard)
    # A 1 MiB random layer in team/app: dockerd's vfs copies every layer, keep it small.
    return run_suite(
        "hoard-e2e-docker", args.keep,
        lambda report, supervisor, workdir, dead_port:
            DockerSuite(report, supervisor, workdir, dead_port, hoard_bin, False, 1).run())


if __name__ == "__main__":
    sys.exit(main())
