"""The third-party programs the suite drives: distribution's registry, hoard, skopeo, containerd.

Each gets generated configuration in the run's temp dir and nothing from the machine's own
(/etc/containers, /etc/containerd, /var/lib/containerd) so runs are hermetic and repeatable.
"""

import hashlib
import json
import os
import re
import shutil

from harness import CheckFailed, Daemon, ensure, http, run, wait_until

REGISTRY_BIN = "/usr/bin/docker-registry"


def write(path, text):
    """Writes `text` to `path` (making its directories) so that a reader sees the old file or
    the whole new one, never a part: a client started meanwhile reads its config from here."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    part = f"{path}.part"
    with open(part, "w") as f:
        f.write(text)
    os.replace(part, path)
    return path


def start_registry(supervisor, workdir, port, token_service, env):
    """distribution 2.8 with filesystem storage and Docker-Hub-like token auth (not yet serving)."""
    storage = os.path.join(workdir, "registry-storage")
    os.makedirs(storage, exist_ok=True)
    config = write(os.path.join(workdir, "registry.yml"), f"""\
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: hoard-e2e-not-a-secret
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  token:
    realm: {token_service.realm}
    service: {token_service.service}
    issuer: {token_service.issuer}
    rootcertbundle: {token_service.cert_path}
""")
    return supervisor.start(Daemon("registry", [REGISTRY_BIN, "serve", config],
                                   os.path.join(workdir, "registry.log"), env))


def wait_serving(daemon, url, status):
    """Polls `GET url/v2/` until it answers `status`; fails at once if the daemon died."""

    def answers():
        daemon.ensure_alive()
        return http("GET", f"{url}/v2/", timeout=5).status == status

    wait_until(answers, 30, f"{daemon.name} on {url} to answer GET /v2/ with {status}")


_LOGFMT = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S*)')


def upstream_requests(log_path, offset=0):
    """Requests the registry answered, from its log past byte `offset`: (method, uri, status)."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    out = []
    for line in text.splitlines():
        if 'msg="response completed' not in line:
            continue
        fields = {k: v[1:-1] if v.startswith('"') else v for k, v in _LOGFMT.findall(line)}
        out.append((fields.get("http.request.method"), fields.get("http.request.uri"),
                    fields.get("http.response.status")))
    return out


def start_hoard(supervisor, workdir, binary, port, upstream_url, env, name="hoard", tls=None):
    """hoard with one upstream, docker.io, and tags revalidated on every request (not yet serving).

    `tls`: (port, cert, key) adds a `[tls]` listener beside the plain one. Each `name` gets its
    own config, log and cache directory.
    """
    cache = os.path.join(workdir, f"{name}-cache")
    tls_section = ""
    if tls is not None:
        tls_port, cert, key = tls
        tls_section = f"""
[tls]
listen = "127.0.0.1:{tls_port}"
cert = "{cert}"
key = "{key}"
"""
    config = write(os.path.join(workdir, f"{name}.toml"), f"""\
listen = "127.0.0.1:{port}"
cache_dir = "{cache}"
default_upstream = "docker.io"
tag_ttl = "0s"
{tls_section}
[upstreams."docker.io"]
url = "{upstream_url}"
""")
    return supervisor.start(Daemon(name, [binary, "serve", "--config", config],
                                   os.path.join(workdir, f"{name}.log"),
                                   dict(env, RUST_LOG="info", NO_COLOR="1")))


def file_digests(root):
    """sha256 digest of every regular file under `root` (what a copy wrote, by content)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            path = os.path.join(dirpath, n)
            if os.path.isfile(path) and not os.path.islink(path):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                out["sha256:" + h.hexdigest()] = path
    return out


def registries_conf(path, dead_port, mirrors, insecure=True):
    """A containers/image registries.conf: each registry in `mirrors` ({prefix: mirror location})
    is itself a dead port, so its only way to content is its mirror. No short-name search."""
    blocks = ["unqualified-search-registries = []\n"]
    for prefix, location in mirrors.items():
        blocks.append(f"""
[[registry]]
prefix = "{prefix}"
location = "127.0.0.1:{dead_port}"
insecure = true
[[registry.mirror]]
location = "{location}"
""" + ("insecure = true\n" if insecure else ""))
    return write(path, "".join(blocks))


def accept_anything_policy(path):
    """A signature policy that accepts every image (the machine's /etc/containers one is not read)."""
    return write(path, json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))


class Skopeo:
    """skopeo with its own registries.conf, policy and home: one instance is one client state.

    skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF, so the file is passed with --registries-conf.
    `docker.io` resolves to a dead port; the only way to content is the mirror.

    `tls=True`: the mirror speaks HTTPS and must present a certificate the client trusts (no
    `insecure`); `ca` is then installed as `$HOME/.config/containers/certs.d/<mirror>/ca.crt`,
    the per-host trust directory containers/image reads for every endpoint it contacts,
    mirrors included (skopeo 1.9 looks there, then in /etc/containers/certs.d and
    /etc/docker/certs.d). Without `ca` only the system roots are trusted.
    """

    def __init__(self, workdir, mirror, dead_port, env, tls=False, ca=None):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.registries_conf = registries_conf(os.path.join(workdir, "registries.conf"), dead_port,
                                               {"docker.io": mirror}, insecure=not tls)
        self.policy = accept_anything_policy(os.path.join(workdir, "policy.json"))
        registries_d = os.path.join(workdir, "registries.d")
        os.makedirs(registries_d, exist_ok=True)
        home = os.path.join(workdir, "home")
        tmp = os.path.join(workdir, "tmp")
        os.makedirs(home, exist_ok=True)
        if ca is not None:
            certs = os.path.join(home, ".config", "containers", "certs.d", mirror)
            os.makedirs(certs, exist_ok=True)
            shutil.copy(ca, os.path.join(certs, "ca.crt"))
        os.makedirs(tmp, exist_ok=True)
        self.global_args = ["skopeo", "--registries-conf", self.registries_conf, "--policy", self.policy,
                            "--registries.d", registries_d, "--tmpdir", tmp]
        self.env = dict(env, HOME=home, XDG_RUNTIME_DIR=os.path.join(workdir, "run"),
                        REGISTRY_AUTH_FILE=os.path.join(workdir, "auth.json"))
        write(os.path.join(workdir, "auth.json"), "{}")
        self.counter = 0

    def __call__(self, *args, timeout=60, check=True):
        return run([*self.global_args, *args], timeout=timeout, env=self.env, check=check)

    def dest(self, label):
        """A fresh destination directory for one copy."""
        self.counter += 1
        path = os.path.join(self.dir, "out", f"{self.counter:02d}-{label}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def raw_manifest(self, ref):
        return self("inspect", "--raw", f"docker://{ref}").stdout

    def copy(self, ref, transport, label, *flags):
        """`skopeo copy docker://ref <transport>:DIR`; returns the directory."""
        path = self.dest(label)
        target = f"oci:{path}:{label}" if transport == "oci" else f"dir:{path}"
        self("copy", "--retry-times", "0", *flags, f"docker://{ref}", target, timeout=90)
        return path


def copied_top_digest(path, transport, label):
    """Digest of the manifest (or index) a copy wrote as the image itself."""
    if transport == "oci":
        with open(os.path.join(path, "index.json")) as f:
            index = json.load(f)
        for m in index.get("manifests", []):
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == label:
                return m["digest"]
        raise CheckFailed(f"{path}/index.json names no image {label!r}: {index}")
    with open(os.path.join(path, "manifest.json"), "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def check_copy(path, transport, label, expect_top, expect_all):
    top = copied_top_digest(path, transport, label)
    ensure(top == expect_top, f"copied manifest is {top}, seeded {expect_top}")
    present = file_digests(path)
    missing = sorted(d for d in expect_all if d not in present)
    ensure(not missing, f"copy lacks content with digests {missing}")


class Containerd:
    """A private containerd daemon (own root, state, socket; CRI off; native snapshotter)."""

    def __init__(self, supervisor, workdir, name, env):
        self.supervisor = supervisor
        self.dir = workdir
        self.name = name
        self.env = env
        self.root = os.path.join(workdir, "root")
        self.socket = os.path.join(workdir, "sock")
        ensure(len(self.socket) < 100, f"containerd socket path too long: {self.socket}")
        self.config = write(os.path.join(workdir, "config.toml"), f"""\
version = 2
root = "{self.root}"
state = "{os.path.join(workdir, 'state')}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{os.path.join(workdir, 'opt')}"
""")
        self.daemon = None

    def start(self):
        self.daemon = self.supervisor.start(Daemon(
            self.name, ["containerd", "--config", self.config, "--log-level", "info"],
            os.path.join(self.dir, "containerd.log"), self.env))

        def serving():
            self.daemon.ensure_alive()
            return os.path.exists(self.socket) and self.ctr("version", timeout=10, check=False).returncode == 0

        wait_until(serving, 30, f"{self.name} to serve on {self.socket}")
        return self

    def ctr(self, *args, timeout=90, check=True):
        return run(["ctr", "--address", self.socket, "--connect-timeout", "10s", *args],
                   timeout=timeout, env=self.env, check=check)

    def pull(self, ref, hosts_dir, *flags):
        return self.ctr("images", "pull", "--hosts-dir", hosts_dir, "--snapshotter", "native", *flags, ref)

    def image_digests(self):
        """{ref: digest} from `ctr images ls`."""
        out = self.ctr("images", "ls", timeout=30).stdout.decode()
        images = {}
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 3:
                images[cols[0]] = cols[2]
        return images

    def unpacked_paths(self):
        """Every path inside the native snapshotter's snapshots, relative to its snapshot."""
        base = os.path.join(self.root, "io.containerd.snapshotter.v1.native", "snapshots")
        found = set()
        for dirpath, _, names in os.walk(base):
            rel = os.path.relpath(dirpath, base).split(os.sep, 1)
            sub = rel[1] if len(rel) > 1 else ""
            for n in names:
                found.add(os.path.join(sub, n))
        return found

    def stop(self):
        if self.daemon is not None:
            self.daemon.stop()


def write_hosts_dir(path, mirror_url, dead_port, ca=None):
    """containerd hosts config: docker.io's own server is dead, the mirror can pull and resolve.

    `ca`: a PEM file of CA certificates to trust for an https mirror (else only the system roots).
    """
    ca_line = f'  ca = "{ca}"\n' if ca else ""
    write(os.path.join(path, "docker.io", "hosts.toml"), f"""\
server = "http://127.0.0.1:{dead_port}"

[host."{mirror_url}"]
  capabilities = ["pull", "resolve"]
{ca_line}""")
    return path
