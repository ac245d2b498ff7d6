"""The servers the benchmark compares: hoard, distribution's registry in proxy mode (the peer),
and nginx serving the same blob file with sendfile (the physical reference).

The upstream itself (distribution behind the Docker-Hub-like token service) comes from
tests/e2e/clients.py. Every server here gets a fresh directory under the run's workdir, binds
an ephemeral loopback port, and is stopped through the run's Supervisor.
"""

import os
import shutil

from clients import wait_serving, write
from harness import Daemon, free_port, http, wait_until

REGISTRY_BIN = "/usr/bin/docker-registry"
NGINX_BIN = "/usr/sbin/nginx"


class Server:
    """One started server: its Daemon, URL and the directory it keeps its data in."""

    def __init__(self, kind, daemon, port, data_dir):
        self.kind = kind
        self.daemon = daemon
        self.port = port
        self.data_dir = data_dir

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self):
        return self.daemon.proc.pid

    def stop(self, remove_data=True):
        self.daemon.stop()
        if remove_data and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class Factory:
    """Starts fresh instances of each kind; numbers them so logs and caches never collide."""

    def __init__(self, supervisor, workdir, hoard_bin, upstream_url, env):
        self.sup = supervisor
        self.workdir = workdir
        self.hoard_bin = hoard_bin
        self.upstream_url = upstream_url
        self.env = env
        self.serial = 0

    def _dir(self, kind):
        self.serial += 1
        path = os.path.join(self.workdir, f"{kind}-{self.serial:02d}")
        os.makedirs(path)
        return path

    def start(self, kind, **kw):
        return {"hoard": self.hoard, "peer": self.peer}[kind](**kw)

    def hoard(self, cache_dir=None, wait=True, log="warn", upstream_url=None):
        """hoard with docker.io -> the upstream (or `upstream_url`), tags cached for 5 minutes,
        logging at warn (nothing per request: logging stays off the hot path)."""
        home = self._dir("hoard")
        cache = cache_dir or os.path.join(home, "cache")
        port = free_port()
        config = write(os.path.join(home, "hoard.toml"), f"""\
listen = "127.0.0.1:{port}"
cache_dir = "{cache}"
default_upstream = "docker.io"
tag_ttl = "5m"
max_size = "64GiB"

[upstreams."docker.io"]
url = "{upstream_url or self.upstream_url}"
""")
        daemon = self.sup.start(Daemon(
            "hoard", [self.hoard_bin, "serve", "--config", config], os.path.join(home, "hoard.log"),
            dict(self.env, RUST_LOG=log, NO_COLOR="1")))
        server = Server("hoard", daemon, port, home if cache_dir is None else None)
        server.cache_dir = cache
        if wait:
            wait_serving(daemon, server.url, 200)
        return server

    def blob_path(self, server, digest):
        """Where a server keeps a committed blob (None for nginx)."""
        hex_ = digest.split(":", 1)[1]
        if server.kind == "hoard":
            return os.path.join(server.cache_dir, "blobs", "sha256", hex_[:2], hex_)
        if server.kind == "peer":
            return os.path.join(server.data_dir, "storage", "docker", "registry", "v2", "blobs",
                                "sha256", hex_[:2], hex_, "data")
        return None

    def peer(self, upstream_url=None):
        """distribution 2.8 as a pull-through cache of the upstream (anonymous, like a Hub mirror),
        or of `upstream_url`.

        It answers the upstream's Bearer challenge itself: it pings `remoteurl`, reads the
        realm, and asks the token service for an anonymous pull token.
        """
        home = self._dir("peer")
        storage = os.path.join(home, "storage")
        os.makedirs(storage)
        port = free_port()
        config = write(os.path.join(home, "registry.yml"), f"""\
version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: hoard-bench-not-a-secret
proxy:
  remoteurl: {upstream_url or self.upstream_url}
""")
        daemon = self.sup.start(Daemon("peer", [REGISTRY_BIN, "serve", config],
                                       os.path.join(home, "registry.log"), self.env))
        server = Server("peer", daemon, port, home)
        wait_serving(daemon, server.url, 200)
        return server

    def nginx(self, blob_file):
        """nginx (master + one worker per core) serving `blob_file` at /blob with sendfile."""
        home = self._dir("nginx")
        port = free_port()
        temp = "\n".join(f"  {k}_temp_path {home}/{k};" for k in
                         ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        config = write(os.path.join(home, "nginx.conf"), f"""\
daemon off;
master_process on;
worker_processes auto;
user root;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
{temp}
  server {{
    listen 127.0.0.1:{port};
    location = /blob {{
      alias {blob_file};
      default_type application/octet-stream;
    }}
  }}
}}
""")
        daemon = self.sup.start(Daemon("nginx", [NGINX_BIN, "-p", home, "-c", config, "-e",
                                                 os.path.join(home, "error.log")],
                                       os.path.join(home, "nginx.log"), self.env))
        server = Server("nginx", daemon, port, home)

        def serving():
            daemon.ensure_alive()
            return http("HEAD", f"{server.url}/blob", timeout=5).status == 200

        wait_until(serving, 30, "nginx to serve /blob")
        return server
