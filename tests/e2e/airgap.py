#!/usr/bin/env python3
"""End-to-end air-gap test: prefetch, pin, disconnect, pull, check.

    tests/e2e/airgap.py --hoard target/debug/hoard

Reuses run.py's setup: distribution's registry behind a Docker-Hub-like token service, seeded
with a multi-arch OCI index (`library/multi:latest`), a Docker manifest list
(`library/dlist:1.0`) and a non-`library/` image (`team/app:v1`), plus "filler" images.
hoard runs with a 1 MiB disk budget. Then:

1. `hoard prefetch --server URL --file images.txt` (the three images) exits 0 and reports them
   pinned; `hoard ls` lists them pinned and complete; `hoard check` on the cache directory is
   refused while the server holds it.
2. skopeo pulls the fillers through hoard: several MiB through a 1 MiB budget, so hoard evicts.
3. The upstream and its token service are stopped.
4. skopeo and a private containerd pull every prefetched image by tag and by digest from hoard
   alone (the pinned blobs survived the evictions), `hoard check --file images.txt` exits 0,
   and exits 1 for an evicted filler and for an image never fetched.
5. hoard stops; `hoard check --config` on its cache directory (in-process, no server) exits 0.
6. `hoard export --pinned` writes the pinned set to bundle.tar (`skopeo inspect oci-archive:` reads
   it); `hoard import` loads it into an empty cache (`hoard ls` shows the three pinned); a second
   hoard on another port serves that cache, and skopeo and containerd pull every image by tag and
   by digest from it, the upstream still down.

Prints `PASS`/`FAIL` lines like run.py; exits non-zero when anything failed. Needs root.
"""

import argparse
import hashlib
import json
import os
import sys
import tarfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import Containerd, Skopeo, check_copy, start_hoard, wait_serving, write, write_hosts_dir  # noqa: E402
from harness import Daemon, ensure, free_port, http, run, run_suite, wait_until  # noqa: E402
from images import Image, Pusher  # noqa: E402
from run import SEED_PASSWORD, SEED_USER, Suite, short  # noqa: E402

IMAGES = ["docker.io/library/multi:latest", "dlist:1.0", "team/app:v1"]
FILLERS = 4
FILLER_BYTES = 700 * 1024


class AirgapSuite(Suite):
    def __init__(self, *args):
        super().__init__(*args)
        self.fillers = {f"library/filler:f{i}": Image("oci", "amd64", [{"fill.bin": os.urandom(FILLER_BYTES)}])
                        for i in range(FILLERS)}
        self.config_path = None
        self.images_txt = None

    def hoard_cli(self, *args, check=False, timeout=120):
        return run([self.hoard_bin, *args], timeout=timeout, env=self.env, check=check)

    def start_airgap_hoard(self):
        def start():
            self.hoard_port = free_port()
            cache = self.path("hoard-cache")
            self.config_path = write(self.path("hoard.toml"), f"""\
listen = "127.0.0.1:{self.hoard_port}"
cache_dir = "{cache}"
default_upstream = "docker.io"
tag_ttl = "0s"
max_size = "1MiB"

[upstreams."docker.io"]
url = "{self.upstream_url}"
""")
            self.hoard = self.sup.start(Daemon("hoard", [self.hoard_bin, "serve", "--config", self.config_path],
                                               self.path("hoard.log"), dict(self.env, RUST_LOG="info", NO_COLOR="1")))
            wait_serving(self.hoard, self.hoard_url, 200)

        self.report.require("setup hoard with a 1 MiB budget", start, self.logs)

    def seed_fillers(self):
        pusher = Pusher(self.upstream_url, SEED_USER, SEED_PASSWORD)
        for ref, image in self.fillers.items():
            name, tag = ref.split(":")
            self.report.require(f"setup seed {ref}", lambda: pusher.push(name, tag, image), self.logs)

    def prefetch(self):
        self.images_txt = write(self.path("images.txt"),
                                "# what the site needs when the link is down\n" + "\n".join(IMAGES) + "\n")

        def prefetch():
            out = self.hoard_cli("prefetch", "--server", self.hoard_url, "--file", self.images_txt, check=True)
            text = out.stdout.decode() + out.stderr.decode()
            ensure("3 images (0 failed)" in text, f"no summary of 3 images without failures in: {text!r}")
            for ref in ("docker.io/library/multi:latest", "docker.io/library/dlist:1.0", "docker.io/team/app:v1"):
                ensure(f"pinned {ref}" in text, f"{ref} not reported pinned: {text!r}")

        self.report.check("airgap hoard prefetch --server --file images.txt (3 images pinned)", prefetch, self.logs)

        def ls():
            out = self.hoard_cli("ls", "--json", "--server", self.hoard_url, check=True)
            images = {i["image"]: i for i in json.loads(out.stdout)["images"]}
            want = {"docker.io/library/multi:latest": self.fixtures["library/multi:latest"].digest,
                    "docker.io/library/dlist:1.0": self.fixtures["library/dlist:1.0"].digest,
                    "docker.io/team/app:v1": self.fixtures["team/app:v1"].digest}
            for ref, digest in want.items():
                e = images.get(ref)
                ensure(e is not None, f"hoard ls lacks {ref}: {sorted(images)}")
                ensure(e["pinned"] and e["complete"] and e["digest"] == digest, f"hoard ls says {e}, want {digest}")

        self.report.check("airgap hoard ls: the three images pinned and complete", ls, self.logs)

        def locked():
            out = self.hoard_cli("check", "--config", self.config_path, "--file", self.images_txt)
            err = out.stderr.decode()
            ensure(out.returncode == 2 and "in use" in err,
                   f"hoard check on the served cache dir exited {out.returncode}: {err!r}")

        self.report.check("airgap hoard check on a running server's cache directory is refused (lock)", locked,
                          self.logs)

    def overflow(self):
        sk = Skopeo(self.path("skopeo-fillers"), f"127.0.0.1:{self.hoard_port}", self.dead, self.env)

        def pulls():
            for ref, image in self.fillers.items():
                path = sk.copy(f"docker.io/{ref}", "dir", ref.split(":")[1])
                check_copy(path, "dir", "", image.digest, image.all_digests())

            def evicted():
                body = http("GET", f"{self.hoard_url}/metrics").body.decode()
                return metric(body, "hoard_evictions_total") >= FILLERS - 1 and body

            body = wait_until(evicted, 20, "hoard to evict the fillers")
            pinned = metric(body, "hoard_pinned_bytes")
            ensure(pinned > 4 << 20, f"hoard_pinned_bytes is {pinned}, want the pinned images (> 4 MiB)")

        self.report.check(f"airgap {FILLERS} filler pulls of {FILLER_BYTES >> 10} KiB overflow the 1 MiB budget "
                          "(evictions, pinned bytes kept apart)", pulls, self.logs)

    def pulls(self, phase):
        """skopeo and containerd pull the three images by tag and by digest from the hoard on
        self.hoard_port."""
        self.skopeo_checks(phase)
        sk = Skopeo(self.path(f"skopeo-{phase}-extra"), f"127.0.0.1:{self.hoard_port}", self.dead, self.env)
        dlist = self.fixtures["library/dlist:1.0"]
        self.report.check(f"{phase} skopeo copy --all dlist@{short(dlist.digest)}",
                          lambda: check_copy(sk.copy(f"docker.io/library/dlist@{dlist.digest}", "dir", "dlist-digest",
                                                     "--all"), "dir", "", dlist.digest, dlist.all_digests()),
                          self.logs)
        self.ctr_checks(phase)
        ctd = Containerd(self.sup, self.path(f"ctd-{phase}-extra"), f"containerd-{phase}-extra", self.env)
        self.report.require(f"setup {phase} containerd (by digest)", ctd.start, self.logs)
        hosts = write_hosts_dir(self.path(f"hosts-{phase}-extra"), self.hoard_url, self.dead)
        app = self.fixtures["team/app:v1"]
        for label, ref, digest in [
            ("dlist", f"docker.io/library/dlist@{dlist.digest}", dlist.digest),
            ("team/app", f"docker.io/team/app@{app.digest}", app.digest),
            ("dlist linux/arm64", f"docker.io/library/dlist@{dlist.digest}", dlist.digest),
        ]:
            platform = "linux/arm64" if "arm64" in label else "linux/amd64"

            def pull(ref=ref, digest=digest, platform=platform):
                ctd.pull(ref, hosts, "--platform", platform)
                listed = ctd.image_digests().get(ref)
                ensure(listed == digest, f"ctr images ls shows {ref} as {listed}, want {digest}")

            self.report.check(f"{phase} ctr pull {label}@{short(digest)} ({platform})", pull,
                              lambda: self.logs(ctd.daemon))
        ctd.stop()

    def offline(self):
        self.pulls("airgap")

        def check_ready():
            out = self.hoard_cli("check", "--server", self.hoard_url, "--file", self.images_txt,
                                 "--platform", "linux/amd64,linux/arm64")
            text = out.stdout.decode()
            ensure(out.returncode == 0 and "3 of 3 images can be served offline" in text,
                   f"hoard check exited {out.returncode}: {text!r} {out.stderr.decode()!r}")

        self.report.check("airgap hoard check --file images.txt: all ready offline (exit 0)", check_ready, self.logs)

        def check_missing():
            for ref in ("library/filler:f0", "library/never-fetched:1"):
                out = self.hoard_cli("check", "--server", self.hoard_url, ref, *IMAGES)
                text = out.stdout.decode()
                ensure(out.returncode == 1 and f"MISSING  docker.io/{ref}" in text,
                       f"hoard check {ref} exited {out.returncode}: {text!r}")

        self.report.check("airgap hoard check: an evicted filler and a never-fetched image are missing (exit 1)",
                          check_missing, self.logs)

    def check_stopped(self):
        def local():
            self.hoard.stop()
            out = self.hoard_cli("check", "--config", self.config_path, "--file", self.images_txt)
            text = out.stdout.decode()
            ensure(out.returncode == 0 and "3 of 3" in text,
                   f"hoard check --config exited {out.returncode}: {text!r} {out.stderr.decode()!r}")

        self.report.check("airgap hoard check --config on the stopped server's cache (exit 0)", local, self.logs)

    def carry(self):
        """Export the pinned set of the stopped hoard, import it into an empty cache, serve it
        from a second hoard on another port (the upstream still down) and pull from that."""
        bundle = self.path("bundle.tar")
        want = {ref: self.fixtures[key].digest for ref, key in (
            ("docker.io/library/multi:latest", "library/multi:latest"),
            ("docker.io/library/dlist:1.0", "library/dlist:1.0"),
            ("docker.io/team/app:v1", "team/app:v1"))}

        def export():
            out = self.hoard_cli("export", "--pinned", "-o", bundle, "--config", self.config_path, check=True)
            text = out.stdout.decode()
            ensure("exported 3 images" in text, f"summary: {text!r}")
            with tarfile.open(bundle) as tar:
                index = json.load(tar.extractfile("index.json"))
            refs = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
            ensure(refs == want, f"index.json names {refs}, want {want}")

        self.report.require("carry hoard export --pinned -o bundle.tar (the three pinned images)", export,
                            self.logs)

        sk = Skopeo(self.path("skopeo-carry-archive"), f"127.0.0.1:{self.dead}", self.dead, self.env)
        # skopeo cannot address a Docker manifest list in an OCI layout: the index and team/app only.
        for ref in ("docker.io/library/multi:latest", "docker.io/team/app:v1"):
            def inspect(ref=ref):
                raw = sk("inspect", "--raw", f"oci-archive:{bundle}:{ref}").stdout
                got = "sha256:" + hashlib.sha256(raw).hexdigest()
                ensure(got == want[ref], f"raw manifest hashes to {got}, want {want[ref]}")

            self.report.check(f"carry skopeo inspect oci-archive:bundle.tar:{ref}", inspect, self.logs)

        cache = self.path("carried-cache")  # start_hoard(name="carried") serves this directory

        def load():
            out = self.hoard_cli("import", "--config", self.config_path, "--cache-dir", cache, bundle, check=True)
            text = out.stdout.decode()
            missing = [ref for ref in want if f"pinned {ref}" not in text]
            ensure(not missing, f"import did not pin {missing}: {text!r}")
            out = self.hoard_cli("ls", "--json", "--config", self.config_path, "--cache-dir", cache, check=True)
            images = {i["image"]: i for i in json.loads(out.stdout)["images"]}
            for ref, digest in want.items():
                e = images.get(ref) or {}
                ensure(e.get("pinned") and e.get("complete") and e.get("digest") == digest,
                       f"hoard ls on the new cache says {ref}: {e or 'absent'}, want pinned {digest}")

        self.report.require("carry hoard import bundle.tar into an empty cache; hoard ls: three pinned", load,
                            self.logs)

        def start():
            self.hoard_port = free_port()
            self.hoard = start_hoard(self.sup, self.workdir, self.hoard_bin, self.hoard_port, self.upstream_url,
                                     self.env, name="carried")
            wait_serving(self.hoard, self.hoard_url, 200)

        self.report.require("carry second hoard on another port serves the imported cache (upstream down)", start,
                            self.logs)
        self.pulls("carried")

    def run(self):
        self.start_upstream()
        self.seed()
        self.seed_fillers()
        self.start_airgap_hoard()
        self.prefetch()
        self.overflow()
        self.stop_upstream()
        self.registry = None
        self.offline()
        self.check_stopped()
        self.carry()


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(None, 1)[1])
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hoard", required=True, help="path to the hoard binary")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir afterwards")
    args = parser.parse_args()
    hoard_bin = os.path.abspath(args.hoard)
    return run_suite(
        "hoard-airgap", args.keep,
        lambda report, supervisor, workdir, dead_port:
            AirgapSuite(report, supervisor, workdir, dead_port, hoard_bin, False, 4).run())


if __name__ == "__main__":
    sys.exit(main())
