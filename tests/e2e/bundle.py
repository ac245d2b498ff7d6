#!/usr/bin/env python3
"""End-to-end test of carrying a warmed cache: `hoard export` and `hoard import`.

    tests/e2e/bundle.py --hoard target/debug/hoard

The upstream of run.py (distribution's registry behind a Docker-Hub-like token service,
seeded with an OCI index, a Docker manifest list and a single OCI image) is pulled through a
first hoard by skopeo. `hoard export` writes the three images to one OCI-layout tar, which
`skopeo inspect oci-archive:` and `umoci` must read. `hoard import` loads it into an empty
cache, together with an archive made by `skopeo copy ... oci-archive:` (named by a tag only,
so `--repo` places it). With the upstream and the token service stopped, a second hoard on
another port serves that cache: skopeo and containerd pull every image by tag and by digest.
A corrupted archive and an export of something not cached must fail, saying why.

Prints `PASS name` / `FAIL name: reason` lines and `N passed, N failed`; exits non-zero when
anything failed. Needs root (containerd) and scripts/install-deps.sh's packages; umoci
checks are skipped with a NOTICE when umoci is not installed.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import Containerd, Skopeo, check_copy, start_hoard, wait_serving, write_hosts_dir  # noqa: E402
from harness import (  # noqa: E402
    ensure,
    free_port,
    run,
    run_suite,
)
from run import Suite, short  # noqa: E402

IMAGES = ["docker.io/library/multi:latest", "docker.io/library/dlist:1.0", "docker.io/team/app:v1"]


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Carry:
    def __init__(self, suite, hoard_bin):
        self.s = suite
        self.report = suite.report
        self.hoard_bin = hoard_bin
        self.fx = suite.fixtures
        self.bundle = suite.path("bundle.tar")
        self.skopeo_archive = suite.path("skopeo-app.tar")
        self.carried = None
        self.carried_port = None

    def logs(self, *extra):
        return [d for d in (self.s.hoard, self.carried, self.s.registry, *extra) if d is not None]

    def hoard(self, *args, check=True, timeout=120):
        """The hoard CLI with the first hoard's config (its upstreams)."""
        return run([self.hoard_bin, *args], timeout=timeout, env=dict(self.s.env, NO_COLOR="1"), check=check)

    @property
    def config(self):
        return self.s.path("hoard.toml")

    # -- the connected site ----------------------------------------------------------------

    def warm(self):
        sk = Skopeo(self.s.path("skopeo-warm"), self.s.mirror_hostport, self.s.dead, self.s.env)
        for ref in IMAGES:
            def pull(ref=ref):
                sk("copy", "--all", "--retry-times", "0", f"docker://{ref}", f"dir:{sk.dest('warm')}", timeout=90)

            self.report.require(f"setup skopeo copy --all {ref} through hoard", pull, self.logs)

        def skopeo_archive():
            # What an operator without hoard on the connected side would do.
            sk("copy", "--retry-times", "0", "docker://docker.io/team/app:v1",
               f"oci-archive:{self.skopeo_archive}:v1", timeout=90)

        self.report.require("setup skopeo copy team/app:v1 to oci-archive:skopeo-app.tar:v1", skopeo_archive,
                            self.logs)

    def export_checks(self):
        check = self.report.check
        multi, dlist, app = (self.fx[k] for k in ("library/multi:latest", "library/dlist:1.0", "team/app:v1"))

        def export():
            out = self.hoard("export", "--config", self.config, *IMAGES, "-o", self.bundle).stdout.decode()
            ensure("exported 3 images" in out, f"summary: {out!r}")
            with tarfile.open(self.bundle) as tar:
                names = set(tar.getnames())
                index = json.load(tar.extractfile("index.json"))
            refs = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
            want = {IMAGES[0]: multi.digest, IMAGES[1]: dlist.digest, IMAGES[2]: app.digest}
            ensure(refs == want, f"index.json names {refs}, want {want}")
            everything = multi.all_digests() | dlist.all_digests() | app.all_digests()
            missing = sorted(d for d in everything if f"blobs/sha256/{d[7:]}" not in names)
            ensure(not missing, f"archive lacks {missing}")
            ensure("oci-layout" in names, "no oci-layout file")

        def refused_while_serving():
            # One writer per cache directory: the running hoard holds its lock.
            proc = self.hoard("export", "--config", self.config, IMAGES[2], "-o", self.s.path("busy.tar"),
                              check=False)
            err = proc.stderr.decode()
            ensure(proc.returncode == 1 and "in use" in err, f"exit {proc.returncode}: {err}")
            ensure(not os.path.exists(self.s.path("busy.tar")), "an archive was written anyway")

        check("hoard export on a serving hoard's cache is refused (cache directory in use)", refused_while_serving,
              self.logs)
        served = self.s.path("served.tar")

        def export_from_server():
            # Issue 16 section 2: the running hoard streams the archive through its operator API.
            proc = self.hoard("export", "--server", f"http://{self.s.mirror_hostport}", *IMAGES, "-o", served)
            err = proc.stderr.decode()
            ensure("exported 3 images" in err, f"summary: {err!r}")
            ensure(os.path.exists(served), "no archive written")
            ensure(not [f for f in os.listdir(os.path.dirname(served)) if ".partial-" in f],
                   "a partial file was left behind")

        check("hoard export --server streams the archive from the running hoard", export_from_server, self.logs)
        self.report.require("first hoard stopped (the connected site's mirror)", self.s.hoard.stop, self.logs)
        self.report.require("hoard export multi, dlist, team/app to one OCI-layout tar", export, self.logs)

        def served_same():
            with open(served, "rb") as a, open(self.bundle, "rb") as b:
                ensure(a.read() == b.read(), "the archive streamed by the server differs from the file export")

        check("hoard export --server wrote the same bytes as the file export", served_same)

        sk = Skopeo(self.s.path("skopeo-archive"), f"127.0.0.1:{self.s.dead}", self.s.dead, self.s.env)
        def stdout_same():
            # `-o -` streams the same archive (the same cache content always gives the same bytes).
            proc = self.hoard("export", "--config", self.config, *IMAGES, "-o", "-")
            with open(self.bundle, "rb") as f:
                ensure(proc.stdout == f.read(), f"`-o -` wrote {len(proc.stdout)} bytes that differ from bundle.tar")
            ensure(b"exported 3 images" in proc.stderr, f"summary not on stderr: {proc.stderr[-300:]!r}")

        check("hoard export -o - writes the identical archive to stdout", stdout_same)

        # skopeo's OCI layout reader only looks at index.json entries of OCI media types; the
        # Docker manifest list keeps its own type (its digest is what clients pull by), so skopeo
        # cannot address it in the archive. containerd and umoci can (checked below).
        print(f"NOTICE skopeo cannot name {IMAGES[1]} (a Docker manifest list) in an OCI layout: not inspected",
              flush=True)
        for ref, artifact in ((IMAGES[0], multi), (IMAGES[2], app)):
            def inspect(ref=ref, artifact=artifact):
                raw = sk("inspect", "--raw", f"oci-archive:{self.bundle}:{ref}").stdout
                ensure(sha256(raw) == artifact.digest, f"raw manifest hashes to {sha256(raw)}, want {artifact.digest}")
                out = json.loads(sk("inspect", f"oci-archive:{self.bundle}:{ref}").stdout)
                ensure(out.get("Layers"), f"skopeo inspect shows no layers: {out}")

            check(f"skopeo inspect oci-archive:bundle.tar:{ref}", inspect, self.logs)

        def copy_out():
            # skopeo reads every blob of the archive it needs, verifying each.
            dest = sk.dest("from-archive")
            sk("copy", "--retry-times", "0", f"oci-archive:{self.bundle}:{IMAGES[2]}", f"oci:{dest}:app", timeout=90)
            check_copy(dest, "oci", "app", app.digest, app.all_digests())

        check("skopeo copy oci-archive:bundle.tar:team/app:v1 to an oci: layout", copy_out, self.logs)

        def copy_out_served():
            # The pull-back of what the running server streamed.
            dest = sk.dest("from-served")
            sk("copy", "--retry-times", "0", f"oci-archive:{served}:{IMAGES[2]}", f"oci:{dest}:app", timeout=90)
            check_copy(dest, "oci", "app", app.digest, app.all_digests())

        check("skopeo copy oci-archive:served.tar:team/app:v1 (exported by --server) to an oci: layout",
              copy_out_served, self.logs)

        if shutil.which("umoci") is None:
            print("NOTICE umoci is not installed: skipping the umoci checks", flush=True)
        else:
            def umoci():
                layout = self.s.path("umoci-layout")
                with tarfile.open(self.bundle) as tar:
                    tar.extractall(layout)
                tags = run(["umoci", "ls", "--layout", layout], timeout=60).stdout.decode().split()
                ensure(sorted(tags) == sorted(IMAGES), f"umoci ls lists {tags}, want {IMAGES}")
                stat = run(["umoci", "stat", "--json", "--image", f"{layout}:{IMAGES[2]}"], timeout=60).stdout
                history = json.loads(stat).get("history") or []
                ensure(history, f"umoci stat shows no history: {stat[:300]!r}")
                bundle = self.s.path("umoci-bundle")
                run(["umoci", "unpack", "--image", f"{layout}:{IMAGES[2]}", bundle], timeout=120)
                version = os.path.join(bundle, "rootfs", "opt", "app", "VERSION")
                with open(version, "rb") as f:
                    ensure(f.read() == b"v1\n", "unpacked VERSION file differs")

            check("umoci ls, stat and unpack the exported layout (team/app:v1's files)", umoci, self.logs)

        def missing():
            proc = self.hoard("export", "--config", self.config, "docker.io/library/nothere:1",
                              "-o", self.s.path("nothing.tar"), check=False)
            err = proc.stderr.decode()
            ensure(proc.returncode == 1, f"exit status {proc.returncode}, want 1: {err}")
            ensure("nothere" in err and "prefetch" in err, f"message does not say what to do: {err}")
            ensure(not os.path.exists(self.s.path("nothing.tar")), "an archive was written anyway")

        check("hoard export of an image not in the cache fails naming it (and writes nothing)", missing)

    # -- the disconnected site -----------------------------------------------------------

    def import_checks(self):
        check = self.report.check
        cache = self.s.path("carried-cache")

        def corrupt():
            bad = self.s.path("corrupt.tar")
            big = max(self.fx["team/app:v1"].layers, key=lambda b: len(b.data))
            entry = f"blobs/sha256/{big.digest[7:]}"
            with tarfile.open(self.bundle) as tar:
                offset = tar.getmember(entry).offset_data
            shutil.copy(self.bundle, bad)
            with open(bad, "r+b") as f:
                f.seek(offset + 4096)
                byte = f.read(1)
                f.seek(offset + 4096)
                f.write(bytes([byte[0] ^ 0xFF]))
            fresh = self.s.path("corrupt-cache")
            proc = self.hoard("import", "--config", self.config, "--cache-dir", fresh, bad, check=False)
            err = proc.stderr.decode()
            ensure(proc.returncode == 1, f"exit status {proc.returncode}, want 1: {err}")
            ensure(entry in err, f"message does not name {entry}: {err}")
            blobs = [n for _, _, names in os.walk(os.path.join(fresh, "blobs")) for n in names]
            ensure(not blobs, f"a corrupt archive left {len(blobs)} blobs in the cache")

        check("hoard import of a corrupted archive fails naming the entry, stores nothing", corrupt)

        def load():
            out = self.hoard("import", "--config", self.config, "--cache-dir", cache, self.bundle).stdout.decode()
            for ref in IMAGES:
                ensure(f"tagged {ref}@" in out, f"summary does not tag {ref}: {out!r}")
                ensure(f"pinned {ref}" in out, f"summary does not pin {ref}: {out!r}")
            pins = os.listdir(os.path.join(cache, "pins"))
            ensure(len(pins) == 3, f"pins/ holds {pins}, want one record per image")

        self.report.require("hoard import bundle.tar into an empty cache", load)

        def tag_only():
            proc = self.hoard("import", "--config", self.config, "--cache-dir", cache, self.skopeo_archive,
                              check=False)
            err = proc.stderr.decode()
            ensure(proc.returncode == 1 and "--repo" in err, f"exit {proc.returncode}, message: {err}")
            out = self.hoard("import", "--config", self.config, "--cache-dir", cache, "--repo", "carried/app",
                             self.skopeo_archive).stdout.decode()
            ensure("tagged docker.io/carried/app:v1@" in out, f"summary: {out!r}")

        check("hoard import of a skopeo-made archive (ref.name only a tag) needs --repo, then loads", tag_only)

        self.s.stop_upstream()

        def start():
            self.carried_port = free_port()
            self.carried = start_hoard(self.s.sup, self.s.workdir, self.hoard_bin, self.carried_port,
                                       self.s.upstream_url, self.s.env, name="carried")
            wait_serving(self.carried, f"http://127.0.0.1:{self.carried_port}", 200)

        self.report.require("second hoard on another port serves the imported cache", start, self.logs)

    def offline_pulls(self):
        check = self.report.check
        multi, dlist, app = (self.fx[k] for k in ("library/multi:latest", "library/dlist:1.0", "team/app:v1"))
        mirror = f"127.0.0.1:{self.carried_port}"
        sk = Skopeo(self.s.path("skopeo-carried"), mirror, self.s.dead, self.s.env)

        def copy(ref, label, top, everything, *flags):
            path = sk.copy(ref, "dir", label, *flags)
            check_copy(path, "dir", label, top, everything)

        for ref, label, top, everything, flags in [
            (IMAGES[0], "multi", multi.digest, multi.all_digests(), ["--all"]),
            (f"docker.io/library/multi@{multi.digest}", "multi-digest", multi.digest, multi.all_digests(), ["--all"]),
            (IMAGES[1], "dlist", dlist.digest, dlist.all_digests(), ["--all"]),
            (f"docker.io/library/dlist@{dlist.digest}", "dlist-digest", dlist.digest, dlist.all_digests(), ["--all"]),
            (IMAGES[2], "app", app.digest, app.all_digests(), []),
            (f"docker.io/team/app@{app.digest}", "app-digest", app.digest, app.all_digests(), []),
            ("docker.io/carried/app:v1", "skopeo-archive", app.digest, app.all_digests(), []),
        ]:
            check(f"carried skopeo copy {' '.join(flags)} {ref.replace(multi.digest, short(multi.digest))}"
                  .replace(dlist.digest, short(dlist.digest)).replace(app.digest, short(app.digest)),
                  lambda r=ref, lb=label, t=top, e=everything, f=flags: copy(r, lb, t, e, *f), self.logs)

        ctd = Containerd(self.s.sup, self.s.path("ctd-carried"), "containerd-carried", self.s.env)
        self.report.require("setup carried containerd daemon", ctd.start, self.logs)
        hosts = write_hosts_dir(self.s.path("hosts-carried"), f"http://{mirror}", self.s.dead)
        for label, ref, digest, image in [
            ("multi:latest", IMAGES[0], multi.digest, multi.image("amd64")),
            ("multi@digest", f"docker.io/library/multi@{multi.digest}", multi.digest, multi.image("amd64")),
            ("dlist:1.0", IMAGES[1], dlist.digest, dlist.image("amd64")),
            ("dlist@digest", f"docker.io/library/dlist@{dlist.digest}", dlist.digest, dlist.image("amd64")),
            ("team/app:v1", IMAGES[2], app.digest, app),
            ("team/app@digest", f"docker.io/team/app@{app.digest}", app.digest, app),
        ]:
            def pull(ref=ref, digest=digest, image=image):
                ctd.pull(ref, hosts, "--platform", "linux/amd64")
                listed = ctd.image_digests().get(ref)
                ensure(listed == digest, f"ctr images ls shows {ref} as {listed}, seeded {digest}")
                unpacked = ctd.unpacked_paths()
                missing = [m for m in image.markers if m not in unpacked]
                ensure(not missing, f"not unpacked into the native snapshotter: {missing}")

            check(f"carried ctr pull {label} (unpacked)", pull, lambda: self.logs(ctd.daemon))

        def ctr_import():
            # containerd names imported images by io.containerd.image.name, Docker list included.
            ctd.ctr("--namespace", "bundle", "images", "import", "--all-platforms", self.bundle, timeout=120)
            out = ctd.ctr("--namespace", "bundle", "images", "ls", timeout=30).stdout.decode()
            listed = {c[0]: c[2] for c in (line.split() for line in out.splitlines()[1:]) if len(c) >= 3}
            want = {IMAGES[0]: multi.digest, IMAGES[1]: dlist.digest, IMAGES[2]: app.digest}
            ensure(listed == want, f"ctr images ls after import: {listed}, want {want}")

        check("ctr images import --all-platforms bundle.tar names all three images", ctr_import,
              lambda: self.logs(ctd.daemon))
        ctd.stop()

    def run(self):
        self.s.start_upstream()
        self.s.seed()
        self.s.start_hoard()
        self.warm()
        self.export_checks()
        self.import_checks()
        self.offline_pulls()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hoard", required=True, help="path to the hoard binary")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs) afterwards")
    parser.add_argument("--big-layer-mib", type=int, default=4, help="size of team/app's random layer")
    args = parser.parse_args()
    hoard_bin = os.path.abspath(args.hoard)

    def body(report, supervisor, workdir, dead_port):
        if not os.access(hoard_bin, os.X_OK):
            report.require("setup hoard binary is executable", lambda: ensure(False, f"{hoard_bin} is not"))
        suite = Suite(report, supervisor, workdir, dead_port, hoard_bin, False, args.big_layer_mib)
        Carry(suite, hoard_bin).run()

    return run_suite("hoard-e2e-bundle", args.keep, body)


if __name__ == "__main__":
    sys.exit(main())
