#!/usr/bin/env python3
"""End-to-end tests of hoard's local registry (pushes) with real clients.

    tests/e2e/push.py --hoard target/debug/hoard

A plain distribution registry (no auth) is seeded with real images and is hoard's default
upstream. skopeo copies a multi-layer image and a multi-arch index from it into hoard,
podman pushes an image (read from an OCI layout skopeo made) into hoard, then the upstream
is stopped and a private containerd pulls the pushed images back from hoard by tag and by
digest. _catalog and tags/list must list them; a cross-repository copy inside hoard must be
a mount that moves no bytes (hoard's metrics); deleting a tag's manifest must get its blobs
reclaimed by the garbage collector while a concurrent push of an image sharing layers
succeeds.

Prints `PASS name` / `FAIL name: reason` per check, then `N passed, N failed`. Needs root
(containerd, podman) and the packages from scripts/install-deps.sh.
"""

import argparse
import json
import os
import sys
import threading

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import REGISTRY_BIN, Containerd, wait_serving, write  # noqa: E402
from harness import (  # noqa: E402
    Daemon,
    client_env,
    ensure,
    free_port,
    http,
    run,
    wait_until,
    run_suite,
)
from images import Image, MultiArch, Pusher, small_files  # noqa: E402


def metric(base, name):
    """Sum of every series of `name` in hoard's /metrics."""
    text = http("GET", f"{base}/metrics").body.decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Suite:
    def __init__(self, report, sup, workdir, dead_port, hoard_bin):
        self.report = report
        self.sup = sup
        self.workdir = workdir
        self.env = client_env(dead_port)
        self.hoard_bin = hoard_bin
        self.registry = self.hoard = None
        shared = small_files("shared-base", 4)
        top = dict(small_files("app-top", 2), **{"opt/app/random.bin": os.urandom(1 << 20)})
        self.app = Image("oci", "amd64", [shared, small_files("app-mid", 3), top])
        self.multi = MultiArch("oci", [
            Image("oci", arch, [shared, small_files(f"multi-{arch}", 2)]) for arch in ("amd64", "arm64")
        ])
        self.gc_old = Image("oci", "amd64", [shared, small_files("gc-old-only", 5)])
        self.gc_new = Image("oci", "amd64", [shared, small_files("gc-new-only", 5)])

    def path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def logs(self):
        return [d for d in (self.hoard, self.registry) if d is not None]

    @property
    def hoard_url(self):
        return f"http://127.0.0.1:{self.hoard_port}"

    @property
    def hoard_ref(self):
        return f"127.0.0.1:{self.hoard_port}"

    # -- setup ---------------------------------------------------------------------------

    def setup(self):
        def registry():
            self.registry_port = free_port()
            storage = self.path("registry-storage")
            config = write(self.path("registry.yml"), f"""\
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
http:
  addr: 127.0.0.1:{self.registry_port}
  secret: hoard-e2e-not-a-secret
""")
            self.registry = self.sup.start(Daemon("registry", [REGISTRY_BIN, "serve", config],
                                                  self.path("registry.log"), self.env))
            wait_serving(self.registry, f"http://127.0.0.1:{self.registry_port}", 200)
            pusher = Pusher(f"http://127.0.0.1:{self.registry_port}", "none", "none")
            pusher.push("team/app", "v1", self.app)
            pusher.push("team/multi", "v1", self.multi)
            pusher.push("team/gc-old", "v1", self.gc_old)
            pusher.push("team/gc-new", "v1", self.gc_new)

        self.report.require("setup seeded source registry", registry, self.logs)

        def hoard():
            self.hoard_port = free_port()
            self.cache = self.path("hoard-cache")
            config = write(self.path("hoard.toml"), f"""\
listen = "127.0.0.1:{self.hoard_port}"
cache_dir = "{self.cache}"
default_upstream = "docker.io"
tag_ttl = "0s"

[local]
delete = true
gc_interval = "300ms"
gc_grace = "3s"

[upstreams."docker.io"]
url = "http://127.0.0.1:{self.registry_port}"
""")
            self.hoard = self.sup.start(Daemon("hoard", [self.hoard_bin, "serve", "--config", config],
                                               self.path("hoard.log"), dict(self.env, RUST_LOG="info", NO_COLOR="1")))
            wait_serving(self.hoard, self.hoard_url, 200)

        self.report.require("setup hoard", hoard, self.logs)
        home = self.path("skopeo-home")
        os.makedirs(home, exist_ok=True)
        self.policy = write(self.path("policy.json"), json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.registries_conf = write(self.path("registries.conf"), "unqualified-search-registries = []\n")
        self.tool_env = dict(self.env, HOME=home, REGISTRY_AUTH_FILE=write(self.path("auth.json"), "{}"),
                             CONTAINERS_REGISTRIES_CONF=self.registries_conf,
                             XDG_RUNTIME_DIR=self.path("run"))

    def skopeo(self, *args, timeout=120):
        return run(["skopeo", "--registries-conf", self.registries_conf, "--policy", self.policy,
                    "--tmpdir", self.path("tmp"), *args], timeout=timeout, env=self.tool_env)

    def copy_in(self, src, dest, *flags):
        os.makedirs(self.path("tmp"), exist_ok=True)
        return self.skopeo("copy", "--retry-times", "0", "--src-tls-verify=false", "--dest-tls-verify=false",
                           *flags, src, f"docker://{self.hoard_ref}/{dest}")

    def upstream(self, ref):
        return f"docker://127.0.0.1:{self.registry_port}/{ref}"

    def manifest_digest(self, name, ref):
        resp = http("HEAD", f"{self.hoard_url}/v2/{name}/manifests/{ref}",
                    headers={"Accept": "application/vnd.oci.image.index.v1+json, "
                                       "application/vnd.oci.image.manifest.v1+json"})
        ensure(resp.status == 200, f"HEAD {name}:{ref} answered {resp.status}")
        return resp.header("Docker-Content-Digest")

    # -- checks --------------------------------------------------------------------------

    def run(self):
        self.setup()
        c = self.report.check
        c("skopeo copy pushes a multi-layer image into hoard", self.skopeo_image, self.logs)
        c("skopeo copy --all pushes a multi-arch index into hoard", self.skopeo_index, self.logs)
        c("podman push of an OCI layout into hoard", self.podman_push, self.logs)
        c("a cross-repository copy inside hoard is a mount: no bytes uploaded", self.mount, self.logs)
        c("_catalog and tags/list list the pushed repositories", self.listing, self.logs)
        c("a deleted tag's blobs are collected while a push sharing layers succeeds", self.gc, self.logs)
        self.registry.stop()
        c("containerd pulls the pushed images by tag and by digest with the upstream stopped",
          self.containerd_pull, self.logs)

    def skopeo_image(self):
        self.copy_in(self.upstream("team/app:v1"), "team/app:v1")
        ensure(self.manifest_digest("team/app", "v1") == self.app.digest, "digest differs from the source's")
        for blob in self.app.blobs():
            resp = http("GET", f"{self.hoard_url}/v2/team/app/blobs/{blob.digest}")
            ensure(resp.status == 200 and resp.body == blob.data, f"blob {blob.digest} not served back")

    def skopeo_index(self):
        self.copy_in(self.upstream("team/multi:v1"), "team/multi:v1", "--all")
        ensure(self.manifest_digest("team/multi", "v1") == self.multi.digest, "index digest differs")
        for img in self.multi.images:
            ensure(self.manifest_digest("team/multi", img.digest) == img.digest, f"child {img.arch} missing")

    def podman_push(self):
        layout = self.path("layout")
        self.skopeo("copy", "--src-tls-verify=false", self.upstream("team/app:v1"), f"oci:{layout}:app")
        root, runroot = self.path("podman-root"), self.path("podman-run")
        podman = ["podman", "--root", root, "--runroot", runroot, "--storage-driver", "vfs",
                  "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
        run([*podman, "pull", f"oci:{layout}:app"], timeout=180, env=self.tool_env)
        images = run([*podman, "images", "--format", "{{.ID}}"], timeout=60, env=self.tool_env)
        image_id = images.stdout.decode().split()[0]
        run([*podman, "push", "--tls-verify=false", image_id, f"docker://{self.hoard_ref}/team/podman:v1"],
            timeout=180, env=self.tool_env)
        resp = http("GET", f"{self.hoard_url}/v2/team/podman/manifests/v1",
                    headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                       "application/vnd.docker.distribution.manifest.v2+json"})
        ensure(resp.status == 200, f"podman's image not served back: {resp.status}")
        layers = json.loads(resp.body)["layers"]
        ensure(len(layers) == len(self.app.layers), f"podman pushed {len(layers)} layers")

    def mount(self):
        pushed = metric(self.hoard_url, "hoard_push_bytes_total")
        mounts = metric(self.hoard_url, "hoard_blob_mounts_total")
        self.copy_in(f"docker://{self.hoard_ref}/team/app:v1", "team/app-copy:v1")
        ensure(self.manifest_digest("team/app-copy", "v1") == self.app.digest, "copy differs")
        now_pushed = metric(self.hoard_url, "hoard_push_bytes_total")
        now_mounts = metric(self.hoard_url, "hoard_blob_mounts_total")
        ensure(now_mounts - mounts >= len(self.app.layers),
               f"{now_mounts - mounts} mounts for {len(self.app.layers)} layers")
        # Only the config (which skopeo does not try to mount) may be uploaded again.
        ensure(now_pushed - pushed <= len(self.app.config.data),
               f"{now_pushed - pushed} bytes uploaded during the copy: layers were not mounted")

    def listing(self):
        cat = json.loads(http("GET", f"{self.hoard_url}/v2/_catalog").body)["repositories"]
        for name in ("team/app", "team/multi", "team/podman", "team/app-copy"):
            ensure(name in cat, f"{name} not in _catalog {cat}")
        page = http("GET", f"{self.hoard_url}/v2/_catalog?n=1")
        ensure(len(json.loads(page.body)["repositories"]) == 1 and 'rel="next"' in (page.header("Link") or ""),
               f"_catalog?n=1 not paginated: {page.body!r} {page.header('Link')!r}")
        tags = json.loads(http("GET", f"{self.hoard_url}/v2/team/app/tags/list").body)
        ensure(tags == {"name": "team/app", "tags": ["v1"]}, f"tags/list: {tags}")

    def gc(self):
        self.copy_in(self.upstream("team/gc-old:v1"), "team/gc:old")
        only_old = self.gc_old.layers[1].digest
        blob_file = os.path.join(self.cache, "blobs", "sha256", only_old[7:9], only_old[7:])
        ensure(os.path.isfile(blob_file), "the old image's own layer is not in the store")
        reclaimed = metric(self.hoard_url, "hoard_gc_reclaimed_blobs_total")
        errors = []

        def push_new():
            try:
                self.copy_in(self.upstream("team/gc-new:v1"), "team/gc:new")
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        pusher = threading.Thread(target=push_new)
        pusher.start()
        self.skopeo("delete", "--tls-verify=false", f"docker://{self.hoard_ref}/team/gc:old")
        pusher.join(timeout=180)
        ensure(not errors, f"the concurrent push failed: {errors}")
        wait_until(lambda: not os.path.exists(blob_file), 30, "the old-only layer to be collected")
        ensure(metric(self.hoard_url, "hoard_gc_reclaimed_blobs_total") - reclaimed >= 2,
               "the GC counted fewer than 2 reclaimed blobs")
        ensure(self.manifest_digest("team/gc", "new") == self.gc_new.digest, "new image missing")
        for blob in self.gc_new.blobs():
            resp = http("GET", f"{self.hoard_url}/v2/team/gc/blobs/{blob.digest}")
            ensure(resp.status == 200 and resp.body == blob.data, f"shared/new blob {blob.digest} lost")
        gone = http("GET", f"{self.hoard_url}/v2/team/gc/manifests/old")
        ensure(gone.status == 404, f"deleted tag still answers {gone.status}")

    def containerd_pull(self):
        ctrd = Containerd(self.sup, self.path("containerd"), "containerd", self.env).start()
        try:
            for ref in (f"{self.hoard_ref}/team/app:v1", f"{self.hoard_ref}/team/app@{self.app.digest}",
                        f"{self.hoard_ref}/team/multi:v1", f"{self.hoard_ref}/team/podman:v1"):
                ctrd.ctr("images", "pull", "--plain-http", "--snapshotter", "native", ref, timeout=180)
            images = ctrd.image_digests()
            ensure(images.get(f"{self.hoard_ref}/team/app:v1") == self.app.digest, f"ctr images: {images}")
            ensure(images.get(f"{self.hoard_ref}/team/multi:v1") == self.multi.digest, f"ctr images: {images}")
            paths = ctrd.unpacked_paths()
            ensure(any(p.startswith("etc/hoard-e2e/app-top") for p in paths), "app's top layer not unpacked")
        finally:
            ctrd.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hoard", required=True, help="path to the hoard binary")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs) afterwards")
    args = parser.parse_args()
    hoard_bin = os.path.abspath(args.hoard)

    return run_suite(
        "hoard-e2e-push", args.keep,
        lambda report, supervisor, workdir, dead_port: Suite(report, supervisor, workdir, dead_port, hoard_bin).run())


if __name__ == "__main__":
    sys.exit(main())
