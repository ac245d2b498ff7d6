"""Benchmark images, pushed to the upstream through the Distribution API.

A blob GET does not look inside a layer, so the big layers are raw /dev/urandom bytes (not
tars): incompressible, written once to a file while hashed, and pushed with `curl -T` so a
1 GiB blob never sits in this process's memory. Each image has a small JSON config and an
OCI manifest referencing its layers with their true digests and sizes.
"""

import hashlib
import os
import urllib.parse

from harness import CheckFailed, run
from images import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Blob, Pusher, canonical

CHUNK = 16 << 20


class FileBlob:
    """A random blob kept in a file: path, digest, size."""

    def __init__(self, path, size):
        self.path = path
        self.size = size
        h = hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                data = os.urandom(min(CHUNK, left))
                h.update(data)
                f.write(data)
                left -= len(data)
        self.digest = "sha256:" + h.hexdigest()

    def descriptor(self):
        return {"mediaType": OCI_LAYER, "digest": self.digest, "size": self.size}


class BenchImage:
    """One image: config + random layers (sizes in bytes), pushed as `name:tag`."""

    def __init__(self, workdir, name, tag, layer_sizes):
        self.name = name
        self.tag = tag
        safe = name.replace("/", "-")
        self.layers = [FileBlob(os.path.join(workdir, f"{safe}-layer{i}.bin"), size)
                       for i, size in enumerate(layer_sizes)]
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [b.digest for b in self.layers]},
        }
        self.config = Blob(OCI_CONFIG, canonical(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.config.descriptor(),
            "layers": [b.descriptor() for b in self.layers],
        }
        self.manifest = Blob(OCI_MANIFEST, canonical(manifest))

    @property
    def digest(self):
        return self.manifest.digest

    def push(self, pusher):
        pusher.push_blob(self.name, self.config)
        for layer in self.layers:
            push_file_blob(pusher, self.name, layer)
        pusher.push_manifest(self.name, self.tag, self.manifest)

    def drop_files(self):
        """The upstream has its own copy; the source files only cost disk and page cache."""
        for layer in self.layers:
            try:
                os.unlink(layer.path)
            except FileNotFoundError:
                pass


def push_file_blob(pusher, name, blob):
    """Monolithic upload: POST for an upload URL, then `curl -T file` PUT with ?digest=."""
    url = f"{pusher.base}/v2/{name}/blobs/{blob.digest}"
    if pusher._request("HEAD", url, name).status == 200:  # also fetches the push token
        return
    resp = pusher._request("POST", f"{pusher.base}/v2/{name}/blobs/uploads/", name, body=b"",
                           headers={"Content-Length": "0"})
    if resp.status != 202:
        raise CheckFailed(f"POST blob upload for {name}: {resp.status} {resp.body[:300]!r}")
    location = urllib.parse.urljoin(pusher.base + "/", resp.header("Location"))
    sep = "&" if "?" in location else "?"
    put = f"{location}{sep}digest={urllib.parse.quote(blob.digest)}"
    proc = run(["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
                "-T", blob.path, "-H", "Content-Type: application/octet-stream",
                "-H", f"Authorization: Bearer {pusher.tokens[name]}", put], timeout=600)
    if proc.stdout.decode().strip() != "201":
        raise CheckFailed(f"PUT {blob.digest} ({blob.size} bytes) to {name}: {proc.stdout!r}")


def seed(upstream_url, user, password, workdir, big_bytes, conc_bytes, app_layer_mib):
    """Builds and pushes the images; returns {"big", "app"[, "conc"]} -> BenchImage."""
    images = {
        "big": BenchImage(workdir, "bench/big", "v1", [big_bytes]),
        "app": BenchImage(workdir, "bench/app", "v1", [m << 20 for m in app_layer_mib]),
    }
    if conc_bytes:
        images["conc"] = BenchImage(workdir, "bench/conc", "v1", [conc_bytes])
    pusher = Pusher(upstream_url, user, password)
    for image in images.values():
        image.push(pusher)
        image.drop_files()
    return images


def describe(images):
    return {k: {"name": v.name, "tag": v.tag, "manifest": v.digest,
                "layers": [{"digest": b.digest, "size": b.size} for b in v.layers]}
            for k, v in images.items()}
