#!/usr/bin/env python3
"""Instructions per request on hoard's hot paths, counted by valgrind's callgrind.

    benches/instructions.py --hoard LABEL=PATH [--hoard LABEL=PATH ...] [--requests 2000] [--keep DIR]

Wall-clock requests per second on this 2-core machine move with whatever else runs (wrk, the
upstream and the mirror share the cores), so a change of a few percent on the manifest paths
cannot be seen in `benches/e2e.sh`. Instructions retired per request can: they do not depend
on the load, so two builds measured in one run are compared exactly (callgrind runs the binary
on a simulated CPU, about 50 times slower, so the figure is instructions, never time).

For each binary: a small upstream (Python, no auth, 127.0.0.1) serves one image; hoard runs
under `valgrind --tool=callgrind` with a fresh cache, every path is requested once to warm the
caches, then for each phase the counters are zeroed (`callgrind_control -z`), N requests are
made, and the counters dumped (`callgrind_control -d`): instructions of every thread of the
process, divided by N. Phases: manifest GET by digest, GET by tag, HEAD by tag, HEAD by
digest over one keep-alive connection; GET by tag on a new connection per request; GET of a
cached 4 KiB blob.

Needs `valgrind` (Debian package). Everything binds 127.0.0.1 ephemeral ports and lives in a
temp directory removed at the end.
"""

import argparse
import glob
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER = os.urandom(4096)
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(CONFIG), "size": len(CONFIG)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(LAYER), "size": len(LAYER)}],
    }
).encode()
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
REPO = "library/app"


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, body):
        blobs = {digest(CONFIG): CONFIG, digest(LAYER): LAYER}
        path = self.path.split("?")[0]
        manifests = (f"/v2/{REPO}/manifests/v1", f"/v2/{REPO}/manifests/{digest(MANIFEST)}")
        if path == "/v2/":
            data, ctype = b"{}", "application/json"
        elif path in manifests:
            data, ctype = MANIFEST, MANIFEST_TYPE
        elif path.startswith(f"/v2/{REPO}/blobs/") and path.rsplit("/", 1)[1] in blobs:
            data, ctype = blobs[path.rsplit("/", 1)[1]], "application/octet-stream"
        else:
            data = b'{"errors":[{"code":"NAME_UNKNOWN","message":"unknown"}]}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Docker-Content-Digest", digest(data))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self):
        self.answer(True)

    def do_HEAD(self):
        self.answer(False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_response(sock, buf, head):
    """Reads one response (status line, headers, Content-Length body); returns (status, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed mid-response")
        buf += chunk
    header, buf = buf.split(b"\r\n\r\n", 1)
    lines = header.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if head:
        length = 0
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed mid-body")
        buf += chunk
    return status, buf[length:]


ACCEPT = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def request(method, path, close=False):
    conn = "close" if close else "keep-alive"
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {ACCEPT}\r\nConnection: {conn}\r\n\r\n".encode()


def keep_alive(port, method, path, n):
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        buf = b""
        for _ in range(n):
            s.sendall(request(method, path))
            status, buf = read_response(s, buf, method == "HEAD")
            if status != 200:
                raise RuntimeError(f"{method} {path}: {status}")


def new_connections(port, method, path, n):
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.sendall(request(method, path, close=True))
            status, _ = read_response(s, b"", method == "HEAD")
            if status != 200:
                raise RuntimeError(f"{method} {path}: {status}")


def wait_ready(port, proc, deadline):
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("hoard exited under valgrind")
        try:
            keep_alive(port, "GET", "/v2/", 1)
            return
        except (OSError, RuntimeError):
            time.sleep(0.2)
    raise RuntimeError("hoard did not answer /v2/ under valgrind")


def totals(out_file):
    with open(out_file) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {out_file}")


def control(flag, pid):
    subprocess.run(
        ["callgrind_control", flag, str(pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
    )


def measure(label, binary, upstream_port, requests, work, keep):
    port = free_port()
    root = os.path.join(work, label)
    os.makedirs(root)
    config = os.path.join(root, "mirror.toml")
    with open(config, "w") as f:
        f.write(
            f'listen = "127.0.0.1:{port}"\ncache_dir = "{root}/cache"\ndefault_upstream = "docker.io"\n'
            f'tag_ttl = "1h"\nmax_size = "1GiB"\n'
            f'[upstreams."docker.io"]\nurl = "http://127.0.0.1:{upstream_port}"\n'
        )
    out = os.path.join(root, "callgrind.out")
    env = dict(os.environ, RUST_LOG="warn", NO_COLOR="1")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no", binary, "serve", "--config", config],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(root, "stderr"), "w"),
        env=env,
    )
    figures = {}
    try:
        wait_ready(port, proc, time.time() + 120)
        mdigest = digest(MANIFEST)
        phases = [
            ("manifest GET by digest, keep-alive", lambda n: keep_alive(port, "GET", f"/v2/{REPO}/manifests/{mdigest}", n)),
            ("manifest GET by tag, keep-alive", lambda n: keep_alive(port, "GET", f"/v2/{REPO}/manifests/v1", n)),
            ("manifest HEAD by tag, keep-alive", lambda n: keep_alive(port, "HEAD", f"/v2/{REPO}/manifests/v1", n)),
            ("manifest HEAD by digest, keep-alive", lambda n: keep_alive(port, "HEAD", f"/v2/{REPO}/manifests/{mdigest}", n)),
            ("manifest GET by tag, new connection", lambda n: new_connections(port, "GET", f"/v2/{REPO}/manifests/v1", n)),
            ("4 KiB blob GET, keep-alive", lambda n: keep_alive(port, "GET", f"/v2/{REPO}/blobs/{digest(LAYER)}", n)),
        ]
        for _, run in phases:
            run(3)  # fills the caches, opens the upstream connection, links the repository
        time.sleep(1)
        for name, run in phases:
            for old in glob.glob(f"{out}.{proc.pid}.*"):
                os.remove(old)
            control("-z", proc.pid)
            run(requests)
            control("-d", proc.pid)
            dumps = sorted(glob.glob(f"{out}.{proc.pid}.*"))
            figures[name] = sum(totals(d) for d in dumps) / requests
            if keep:
                slug = "".join(c if c.isalnum() else "-" for c in name)
                for i, d in enumerate(dumps):
                    shutil.copy(d, os.path.join(keep, f"{label}-{slug}.{i}.callgrind"))
            print(f"  {label}: {name}: {figures[name]:,.0f} instructions/request", file=sys.stderr)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hoard", action="append", required=True, help="LABEL=PATH of a hoard binary (repeat to compare)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--keep", help="copy each phase's callgrind dump here, for callgrind_annotate")
    args = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    builds = []
    for spec in args.hoard:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = os.path.basename(spec), spec
        builds.append((label, os.path.abspath(path)))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work = tempfile.mkdtemp(prefix="hoard-instr-")
    results = {}
    try:
        for label, path in builds:
            results[label] = measure(label, path, server.server_address[1], args.requests, work, args.keep)
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    labels = [label for label, _ in builds]
    print("| path | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for name in results[labels[0]]:
        cells = [f"{results[label][name] / 1000:.1f}k" for label in labels]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
