"""Real, unpackable test images, and pushing them through the Distribution API.

Layers are gzip'd tar archives of a few small files; configs list the sha256 of each
uncompressed tar as `rootfs.diff_ids`, which containerd verifies when it unpacks.
"""

import base64
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import urllib.parse

from harness import CheckFailed, http

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

FLAVORS = {
    "oci": (OCI_INDEX, OCI_MANIFEST, OCI_CONFIG, OCI_LAYER),
    "docker": (DOCKER_LIST, DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER),
}

# A fixed mtime keeps tar and gzip bytes (and so digests) stable for the small layers.
EPOCH = 1700000000


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Blob:
    def __init__(self, media_type, data):
        self.media_type = media_type
        self.data = data
        self.digest = sha256(data)

    def descriptor(self, **extra):
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data), **extra}


def canonical(obj):
    return json.dumps(obj, indent=2, sort_keys=False).encode()


def make_layer(files, media_type, compresslevel=6):
    """A gzip'd tar of `files` ({path: bytes}) with parent directories; returns (Blob, diff_id).

    `compresslevel=0` stores instead of compressing: a valid gzip made in no time, for large
    random layers that would not shrink anyway.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({os.path.dirname(p) for p in files if os.path.dirname(p)})
        for d in _with_parents(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(content), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return Blob(media_type, gzip.compress(tar_bytes, compresslevel=compresslevel, mtime=0)), sha256(tar_bytes)


def _with_parents(dirs):
    out = set()
    for d in dirs:
        while d:
            out.add(d)
            d = os.path.dirname(d)
    return sorted(out)


class Image:
    """One platform's image: config, layers, manifest. `markers` are file paths in its layers."""

    def __init__(self, flavor, arch, layer_files, compresslevel=6):
        _, manifest_type, config_type, layer_type = FLAVORS[flavor]
        self.arch = arch
        self.layers = []
        diff_ids = []
        self.markers = []
        for files in layer_files:
            blob, diff_id = make_layer(files, layer_type, compresslevel)
            self.layers.append(blob)
            diff_ids.append(diff_id)
            self.markers.extend(files)
        config = {
            "architecture": arch,
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "hoard e2e"} for _ in diff_ids],
        }
        self.config = Blob(config_type, canonical(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": self.config.descriptor(),
            "layers": [layer.descriptor() for layer in self.layers],
        }
        self.manifest = Blob(manifest_type, canonical(manifest))

    @property
    def digest(self):
        return self.manifest.digest

    def blobs(self):
        return [self.config, *self.layers]

    def all_digests(self):
        return {self.digest, *(b.digest for b in self.blobs())}


class MultiArch:
    """An index (OCI image index or Docker manifest list) over per-platform images."""

    def __init__(self, flavor, images):
        index_type = FLAVORS[flavor][0]
        self.images = images
        index = {
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [
                img.manifest.descriptor(platform={"architecture": img.arch, "os": "linux"}) for img in images
            ],
        }
        self.index = Blob(index_type, canonical(index))

    @property
    def digest(self):
        return self.index.digest

    def image(self, arch):
        return next(img for img in self.images if img.arch == arch)

    def all_digests(self):
        out = {self.digest}
        for img in self.images:
            out |= img.all_digests()
        return out


def small_files(prefix, n):
    return {f"etc/hoard-e2e/{prefix}-{i}.txt": f"{prefix} file {i}\n".encode() * (i + 1) for i in range(n)}


def build_fixtures(big_layer_bytes):
    """The three seeded images. Layers differ per platform; team/app has one big random layer."""
    multi = MultiArch("oci", [
        Image("oci", arch, [small_files(f"multi-{arch}-a", 3), small_files(f"multi-{arch}-b", 2)])
        for arch in ("amd64", "arm64")
    ])
    dlist = MultiArch("docker", [
        Image("docker", arch, [small_files(f"dlist-{arch}-a", 2), small_files(f"dlist-{arch}-b", 3)])
        for arch in ("amd64", "arm64")
    ])
    app = Image("oci", "amd64", [
        small_files("app-base", 4),
        {"opt/app/random.bin": os.urandom(big_layer_bytes), "opt/app/VERSION": b"v1\n"},
    ])
    return {"library/multi:latest": multi, "library/dlist:1.0": dlist, "team/app:v1": app}


class Pusher:
    """A Distribution API client that pushes with a Bearer token obtained with Basic creds."""

    def __init__(self, base_url, user, password):
        self.base = base_url.rstrip("/")
        self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.tokens = {}

    def _request(self, method, url, name, body=None, headers=None):
        headers = dict(headers or {})
        token = self.tokens.get(name)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        resp = http(method, url, body=body, headers=headers)
        if resp.status == 401:
            self.tokens[name] = self._token(resp.header("WWW-Authenticate") or "", name)
            headers["Authorization"] = f"Bearer {self.tokens[name]}"
            resp = http(method, url, body=body, headers=headers)
        return resp

    def _token(self, challenge, name):
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        if not challenge.startswith("Bearer") or "realm" not in params:
            raise CheckFailed(f"unexpected challenge from upstream: {challenge!r}")
        query = urllib.parse.urlencode({"service": params.get("service", ""),
                                        "scope": f"repository:{name}:pull,push"})
        resp = http("GET", f"{params['realm']}?{query}", headers={"Authorization": self.basic})
        if resp.status != 200:
            raise CheckFailed(f"token service answered {resp.status}: {resp.body[:200]!r}")
        return json.loads(resp.body)["token"]

    def push_blob(self, name, blob):
        url = f"{self.base}/v2/{name}/blobs/{blob.digest}"
        if self._request("HEAD", url, name).status == 200:
            return
        resp = self._request("POST", f"{self.base}/v2/{name}/blobs/uploads/", name, body=b"",
                             headers={"Content-Length": "0"})
        if resp.status != 202:
            raise CheckFailed(f"POST blob upload for {name}: {resp.status} {resp.body[:300]!r}")
        location = urllib.parse.urljoin(self.base + "/", resp.header("Location"))
        sep = "&" if "?" in location else "?"
        put = f"{location}{sep}digest={urllib.parse.quote(blob.digest)}"
        resp = self._request("PUT", put, name, body=blob.data,
                             headers={"Content-Type": "application/octet-stream"})
        if resp.status != 201:
            raise CheckFailed(f"PUT blob {blob.digest} to {name}: {resp.status} {resp.body[:300]!r}")

    def push_manifest(self, name, ref, manifest):
        resp = self._request("PUT", f"{self.base}/v2/{name}/manifests/{ref}", name, body=manifest.data,
                             headers={"Content-Type": manifest.media_type})
        if resp.status != 201:
            raise CheckFailed(f"PUT manifest {name}:{ref}: {resp.status} {resp.body[:300]!r}")
        got = resp.header("Docker-Content-Digest")
        if got != manifest.digest:
            raise CheckFailed(f"upstream says {name}:{ref} is {got}, we pushed {manifest.digest}")

    def push_image(self, name, ref, image):
        for blob in image.blobs():
            self.push_blob(name, blob)
        self.push_manifest(name, ref, image.manifest)

    def push(self, name, ref, artifact):
        """Pushes an Image, or a MultiArch with its children by digest and the index by `ref`."""
        if isinstance(artifact, MultiArch):
            for img in artifact.images:
                self.push_image(name, img.digest, img)
            self.push_manifest(name, ref, artifact.index)
        else:
            self.push_image(name, ref, artifact)
