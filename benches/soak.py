#!/usr/bin/env python3
"""Fault soak: hoard against a misbehaving upstream, many clients, periodic kill -9.

    benches/soak.py --hoard target/release/hoard [--duration 600] [--clients 32]
                    [--fault-rate 0.1] [--kill-every 120] [--out soak.json]

A registry of our own on 127.0.0.1 serves a set of images (manifests by tag, blobs by digest)
and, on a share of its answers (--fault-rate), misbehaves: wrong bytes with the right length,
truncation, a reset mid-body, a stall longer than hoard's read time-out, 500/503 with a large
body, 429 with Retry-After, and redirects to a CDN path that may misbehave in turn. hoard sits
in front with a small cache budget (so content churns) and is killed with SIGKILL every
--kill-every seconds and restarted on the same cache directory. Clients GET random manifests
and blobs through hoard and check every complete 200 against its digest.

At the end it prints: requests, bytes hash-checked, corrupt complete responses (must be 0),
client-visible errors by kind, upstream GETs by kind, hoard's RSS and open files over time, and
a check of every blob at rest in the cache (its sha256 must match its name). Exit status 1 if
anything corrupt was served or stored. Everything runs on 127.0.0.1; the script stops itself
after --duration and removes its work directory.
"""

import argparse
import collections
import hashlib
import http.client
import http.server
import json
import os
import random
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time

FAULTS = ["wrong_bytes", "truncate", "reset", "stall", "5xx", "429", "redirect"]


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Content:
    """Images made from a seed: configs, layers of 1 KiB to --max-blob, manifests by tag."""

    def __init__(self, images, max_blob, seed):
        rnd = random.Random(seed)
        self.blobs = {}
        self.manifests = {}  # (repo, tag) -> (digest, bytes)
        self.by_digest = {}  # manifest digest -> bytes
        for i in range(images):
            repo = f"soak/app{i % 4}"
            layers = []
            for _ in range(rnd.randint(1, 4)):
                size = int(1024 * (max_blob / 1024) ** rnd.random())
                data = rnd.randbytes(size)
                self.blobs[sha256(data)] = data
                layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": sha256(data), "size": size})
            config = json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode()
            self.blobs[sha256(config)] = config
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": sha256(config), "size": len(config)},
                "layers": layers}).encode()
            self.manifests[(repo, f"t{i}")] = (sha256(manifest), manifest)
            self.by_digest[sha256(manifest)] = manifest
        self.repo_of_blob = {}
        for (repo, _), (_, manifest) in self.manifests.items():
            doc = json.loads(manifest)
            for d in [doc["config"]["digest"]] + [layer["digest"] for layer in doc["layers"]]:
                self.repo_of_blob.setdefault(d, repo)


class Upstream:
    """The misbehaving registry."""

    def __init__(self, content, fault_rate, stall_seconds, seed):
        self.content = content
        self.fault_rate = fault_rate
        self.stall_seconds = stall_seconds
        self.rnd = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.stop = threading.Event()
        self.port = free_port()
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                upstream.handle(self, body=True)

            def do_HEAD(self):
                upstream.handle(self, body=False)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def count(self, key):
        with self.lock:
            self.counts[key] += 1

    def pick_fault(self, redirectable):
        with self.lock:
            if self.rnd.random() >= self.fault_rate:
                return None
            choices = FAULTS if redirectable else [f for f in FAULTS if f != "redirect"]
            return self.rnd.choice(choices)

    def handle(self, h, body):
        path = h.path.split("?", 1)[0]
        if path == "/v2/":
            return self.send(h, 200, b"{}", "application/json", body)
        parts = path.split("/")
        data, ctype, kind = None, None, None
        if path.startswith("/cdn/"):
            data, kind = self.content.blobs.get(parts[-1]), "cdn"
            ctype = "application/octet-stream"
        elif "/manifests/" in path:
            repo, ref = path[len("/v2/"):].split("/manifests/", 1)
            kind, ctype = "manifest", "application/vnd.oci.image.manifest.v1+json"
            if ref.startswith("sha256:"):
                data = self.content.by_digest.get(ref)
            else:
                found = self.content.manifests.get((repo, ref))
                data = found[1] if found else None
        elif "/blobs/" in path:
            kind, ctype = "blob", "application/octet-stream"
            data = self.content.blobs.get(parts[-1])
        self.count(f"{h.command} {kind or 'other'}")
        if data is None:
            return self.send(h, 404, b'{"errors":[{"code":"NOT_FOUND"}]}', "application/json", body)
        fault = self.pick_fault(kind == "blob") if body else None
        if fault:
            self.count(f"fault {fault}")
        if fault == "5xx":
            junk = b"x" * (4 << 20)
            return self.send(h, self.rnd.choice([500, 503]), junk, "text/plain", body)
        if fault == "429":
            return self.send(h, 429, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}', "application/json",
                             body, {"Retry-After": "2"})
        if fault == "redirect":
            return self.send(h, 307, b"", "text/plain", body, {"Location": f"/cdn/{parts[-1]}"})
        headers = {"Docker-Content-Digest": sha256(data)}
        if fault is None or not body:
            return self.send(h, 200, data, ctype, body, headers)
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Docker-Content-Digest", sha256(data))
        h.end_headers()
        cut = len(data) // 2
        try:
            if fault == "wrong_bytes":
                bad = bytearray(data)
                bad[self.rnd.randrange(len(bad))] ^= 0xFF
                h.wfile.write(bytes(bad))
            elif fault == "truncate":
                h.wfile.write(data[:cut])
                h.close_connection = True
            elif fault == "reset":
                h.wfile.write(data[:cut])
                h.wfile.flush()
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.close_connection = True
            elif fault == "stall":
                h.wfile.write(data[:cut])
                h.wfile.flush()
                self.stop.wait(self.stall_seconds)
                h.close_connection = True
        except OSError:
            h.close_connection = True

    @staticmethod
    def send(h, status, data, ctype, body, extra=None):
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            for k, v in (extra or {}).items():
                h.send_header(k, v)
            h.end_headers()
            if body:
                h.wfile.write(data)
        except OSError:
            h.close_connection = True


class Hoard:
    """hoard on one cache directory, restartable."""

    def __init__(self, binary, workdir, upstream_port, max_size, read_timeout):
        self.binary = binary
        self.port = free_port()
        self.cache = os.path.join(workdir, "cache")
        self.config = os.path.join(workdir, "hoard.toml")
        self.log = open(os.path.join(workdir, "hoard.log"), "a")
        with open(self.config, "w") as f:
            f.write(f'listen = "127.0.0.1:{self.port}"\ncache_dir = "{self.cache}"\n'
                    f'default_upstream = "docker.io"\ntag_ttl = "10s"\nmax_size = "{max_size}"\n'
                    f'log_format = "json"\n\n[upstreams."docker.io"]\n'
                    f'url = "http://127.0.0.1:{upstream_port}"\nread_timeout = "{read_timeout}"\n')
        self.proc = None
        self.restarts = 0

    def start(self):
        self.proc = subprocess.Popen([self.binary, "serve", "--config", self.config],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, RUST_LOG="warn", NO_COLOR="1"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hoard exited {self.proc.returncode} at start")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/v2/")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("hoard did not start within 60 s")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.restarts += 1

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def sample(self):
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            return None
        return rss, fds


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.ok = 0
        self.checked_bytes = 0
        self.corrupt = []
        self.errors = collections.Counter()

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def error(self, kind):
        with self.lock:
            self.errors[kind] += 1


def client(port, content, stats, stop, seed, timeout):
    rnd = random.Random(seed)
    tags = list(content.manifests.items())
    blobs = list(content.blobs)
    conn = None
    while not stop.is_set():
        if rnd.random() < 0.3:
            (repo, tag), (digest, _) = rnd.choice(tags)
            path, want = f"/v2/{repo}/manifests/{tag}", digest
            headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        else:
            want = rnd.choice(blobs)
            path = f"/v2/{content.repo_of_blob[want]}/blobs/{want}"
            headers = {}
        stats.add(requests=1)
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                stats.error(f"http {resp.status}")
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                continue
            length = resp.getheader("Content-Length")
            if length is not None and int(length) != len(body):
                stats.error("short body")
                conn.close()
                conn = None
                continue
            stats.add(ok=1, checked_bytes=len(body))
            if sha256(body) != want:
                with stats.lock:
                    stats.corrupt.append(path)
        except (http.client.IncompleteRead, ConnectionResetError, BrokenPipeError) as e:
            stats.error(f"aborted ({type(e).__name__})")
            conn = None
        except ConnectionRefusedError:
            stats.error("refused (restart)")
            conn = None
            stop.wait(0.2)
        except (socket.timeout, TimeoutError):
            stats.error("client timeout")
            conn = None
        except (OSError, http.client.HTTPException) as e:
            stats.error(f"other ({type(e).__name__})")
            conn = None


def check_at_rest(cache):
    """(blobs checked, names whose content does not hash to them)."""
    root = os.path.join(cache, "blobs", "sha256")
    checked, bad = 0, []
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                h = hashlib.sha256()
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            checked += 1
            if h.hexdigest() != name:
                bad.append(name)
    return checked, bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hoard", required=True)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--fault-rate", type=float, default=0.1)
    ap.add_argument("--kill-every", type=float, default=120)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--max-blob", type=int, default=8 << 20)
    ap.add_argument("--max-size", default="48MiB", help="hoard's budget: small, so content churns")
    ap.add_argument("--read-timeout", default="3s", help="hoard's upstream read time-out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="hoard-soak-")
    content = Content(args.images, args.max_blob, args.seed)
    upstream = Upstream(content, args.fault_rate, stall_seconds=30, seed=args.seed)
    hoard = Hoard(args.hoard, workdir, upstream.port, args.max_size, args.read_timeout)
    stats, stop = Stats(), threading.Event()
    samples, threads = [], []
    started = time.monotonic()
    try:
        hoard.start()
        for i in range(args.clients):
            t = threading.Thread(target=client, args=(hoard.port, content, stats, stop, args.seed * 1000 + i, 40),
                                 daemon=True)
            t.start()
            threads.append(t)
        next_kill = started + args.kill_every
        next_sample = started
        while time.monotonic() - started < args.duration:
            now = time.monotonic()
            if now >= next_sample:
                s = hoard.sample()
                if s:
                    samples.append(dict(t=round(now - started), rss_mib=round(s[0] / 1024, 1), fds=s[1],
                                        requests=stats.requests))
                    print(f"[{now - started:5.0f} s] requests {stats.requests:,}  ok {stats.ok:,}  "
                          f"corrupt {len(stats.corrupt)}  rss {s[0] / 1024:.1f} MiB  fds {s[1]}", flush=True)
                next_sample = now + 10
            if args.kill_every > 0 and now >= next_kill:
                hoard.kill9()
                hoard.start()
                next_kill = time.monotonic() + args.kill_every
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        hoard.stop()
        checked, bad = check_at_rest(hoard.cache)
    finally:
        stop.set()
        try:
            hoard.stop()
        except (OSError, ValueError):
            pass
        upstream.close()
        shutil.rmtree(workdir, ignore_errors=True)

    result = dict(
        duration_s=round(time.monotonic() - started), clients=args.clients, fault_rate=args.fault_rate,
        kill9_restarts=hoard.restarts, requests=stats.requests, complete_200s=stats.ok,
        bytes_hash_checked=stats.checked_bytes, corrupt_complete_responses=len(stats.corrupt),
        client_errors=dict(stats.errors.most_common()), upstream=dict(sorted(upstream.counts.items())),
        blobs_at_rest_checked=checked, blobs_at_rest_corrupt=len(bad),
        rss_mib_max=max((s["rss_mib"] for s in samples), default=None),
        fds_max=max((s["fds"] for s in samples), default=None), samples=samples)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if stats.corrupt or bad:
        print(f"CORRUPT: served {stats.corrupt[:5]}, at rest {bad[:5]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
