#!/usr/bin/env python3
"""hoard at scale: start-up with a large cache, index memory, and memory per idle connection.

    benches/scale.py --hoard target/release/hoard [--sizes 100000,1000000] [--cold]
                     [--connections 4000] [--config-extra 'key = value' ...]

Two measurements, each against the real binary on 127.0.0.1:

1. Start-up. For each size N (increasing: the directory grows), a cache directory with N small
   blobs in the real layout (`blobs/sha256/<2 hex>/<hex>`, each file's content hashes to its
   name) is built once; hoard is started on it and the script records
   - time from spawn to the first `200` on `/v2/`;
   - time from spawn to the "cache index loaded" log line (the index is complete);
   - resident memory once the index is complete, and per blob against hoard on an empty cache.
   With --cold (root only) the page cache is dropped before each start, as after a reboot.
2. Connections. hoard on an empty cache; C keep-alive HTTP/1.1 connections that each made one
   `GET /v2/` and stay open, then C HTTP/2 connections (prior knowledge, one `GET /v2/` on
   stream 1) that stay open. Memory per connection = (RSS with C open - RSS before) / C.
   With --tls, the same again on hoard's TLS port (a throwaway self-signed certificate), once
   with ALPN http/1.1 and once with ALPN h2, counted after the handshake.

Figures depend on the machine: compare them with the same script run on another build (the
before/after tables in docs/benchmarks.md come from one machine, one session). The script
stops every process it started and removes its work directory, also on Ctrl-C.
"""

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def build_cache(root, have, want):
    """Grows the cache at `root` from `have` to `want` blobs; returns the bytes added."""
    blobs = os.path.join(root, "blobs", "sha256")
    if have == 0:
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "HOARD_CACHE"), "w") as f:
            f.write("hoard cache, layout 1\n")
        for i in range(256):
            os.makedirs(os.path.join(blobs, f"{i:02x}"), exist_ok=True)
    added = 0
    started = time.monotonic()
    for i in range(have, want):
        payload = b"hoard scale blob %d\n" % i
        hex_ = hashlib.sha256(payload).hexdigest()
        fd = os.open(os.path.join(blobs, hex_[:2], hex_), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)
        added += len(payload)
        if (i + 1) % 100_000 == 0:
            print(f"  built {i + 1:,} blobs ({time.monotonic() - started:.0f} s)", flush=True)
    return added


class Hoard:
    """One hoard process with its own config and JSON log."""

    def __init__(self, binary, workdir, cache_dir, extra, tls=None):
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        os.makedirs(workdir, exist_ok=True)
        self.log_path = os.path.join(workdir, "hoard.log")
        config = os.path.join(workdir, "hoard.toml")
        with open(config, "w") as f:
            f.write(f'listen = "127.0.0.1:{self.port}"\n')
            f.write(f'cache_dir = "{cache_dir}"\n')
            f.write('default_upstream = "docker.io"\ntag_ttl = "5m"\nmax_size = "1TiB"\n')
            f.write('max_connections = 10000\nlog_format = "json"\n')
            for line in extra:
                f.write(line + "\n")
            # A dead loopback port: nothing in this benchmark reaches an upstream.
            f.write(f'\n[upstreams."docker.io"]\nurl = "http://127.0.0.1:{free_port()}"\n')
            if tls:
                cert, key = tls
                f.write(f'\n[tls]\nlisten = "127.0.0.1:{self.tls_port}"\ncert = "{cert}"\nkey = "{key}"\n')
        self.log = open(self.log_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", config], stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, RUST_LOG="info", NO_COLOR="1"))

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_first_200(self, timeout=300):
        """Seconds from spawn to the first 200 on /v2/."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hoard exited {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    head = s.recv(64)
                    if head.startswith(b"HTTP/1.1 200"):
                        return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.002)
        raise RuntimeError(f"no 200 on /v2/ within {timeout} s")

    def wait_index(self, timeout=600):
        """Seconds from spawn to the log line that says the index is complete, and its fields."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path) as f:
                for line in f:
                    if "cache index loaded" in line:
                        took = time.monotonic() - self.started
                        try:
                            fields = json.loads(line).get("fields", {})
                        except ValueError:
                            fields = {}
                        return took, fields
            if self.proc.poll() is not None:
                raise RuntimeError(f"hoard exited {self.proc.returncode}; see {self.log_path}")
            time.sleep(0.01)
        raise RuntimeError(f"index not loaded within {timeout} s")

    def rss_kib(self):
        return rss_kib(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def settle_rss(hoard, seconds=1.0):
    """RSS after a short pause, so allocator work in flight has landed."""
    time.sleep(seconds)
    return hoard.rss_kib()


def drop_page_cache():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def startup(args, workdir, extra):
    root = os.path.join(workdir, "cache")
    empty = Hoard(args.hoard, os.path.join(workdir, "empty"), os.path.join(workdir, "empty-cache"), extra)
    try:
        empty.wait_index()
        base = settle_rss(empty)
    finally:
        empty.stop()
    rows, have = [], 0
    for n in args.sizes:
        print(f"building a cache of {n:,} blobs", flush=True)
        build_cache(root, have, n)
        have = n
        for cold in ([False, True] if args.cold else [False]):
            if cold:
                drop_page_cache()
            h = Hoard(args.hoard, os.path.join(workdir, f"run-{n}-{'cold' if cold else 'warm'}"), root, extra)
            try:
                first = h.wait_first_200()
                index, fields = h.wait_index()
                rss = settle_rss(h)
            finally:
                h.stop()
            indexed = fields.get("blobs")
            if indexed is not None and int(indexed) != n:
                raise RuntimeError(f"hoard indexed {indexed} blobs of {n}")
            row = dict(blobs=n, page_cache="dropped" if cold else "warm", first_200_s=round(first, 3),
                       index_complete_s=round(index, 3), rss_mib=round(rss / 1024, 1),
                       empty_rss_mib=round(base / 1024, 1),
                       bytes_per_blob=round((rss - base) * 1024 / n, 1))
            print("  " + json.dumps(row), flush=True)
            rows.append(row)
    return rows


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_get(authority, path):
    """HEADERS for GET `path` on stream 1, HPACK literals without Huffman (RFC 7541)."""
    block = bytes([0x82, 0x86])  # :method GET, :scheme http (static table)
    block += bytes([0x44, len(path)]) + path.encode()  # :path, literal, indexed name
    block += bytes([0x41, len(authority)]) + authority.encode()  # :authority
    return h2_frame(0x1, 0x5, 1, block)  # END_STREAM | END_HEADERS


async def open_h1(port, ssl_context=None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context)
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: bench\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"HTTP/1 GET /v2/ answered {head[:40]!r}")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return reader, writer


async def open_h2(port, ssl_context=None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context)
    writer.write(H2_PREFACE + h2_frame(0x4, 0, 0) + h2_get(f"127.0.0.1:{port}", "/v2/"))
    while True:
        header = await reader.readexactly(9)
        length = int.from_bytes(header[:3], "big")
        kind, flags = header[3], header[4]
        stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        await reader.readexactly(length)
        if kind == 0x4 and not flags & 0x1:
            writer.write(h2_frame(0x4, 0x1, 0))  # SETTINGS ACK
        if kind == 0x7:
            raise RuntimeError("GOAWAY before the response")
        if stream == 1 and kind in (0x0, 0x1) and flags & 0x1:
            return reader, writer


async def hold(opener, port, count):
    conns = []
    batch = 200
    for start in range(0, count, batch):
        conns += await asyncio.gather(*(opener(port) for _ in range(min(batch, count - start))))
    return conns


def self_signed(workdir):
    """A throwaway certificate for 127.0.0.1 (the client does not verify it)."""
    cert, key = os.path.join(workdir, "tls.crt"), os.path.join(workdir, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def client_tls(alpn):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


def connections(args, workdir, extra):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    rows = []
    cases = [("http1", open_h1, None), ("http2", open_h2, None)]
    tls = self_signed(workdir) if args.tls else None
    if tls:
        # TLS connections are measured after the handshake, with the protocol chosen by ALPN.
        cases += [("tls-http1", open_h1, "http/1.1"), ("tls-http2", open_h2, "h2")]
    for proto, opener, alpn in cases:
        h = Hoard(args.hoard, os.path.join(workdir, f"conn-{proto}"), os.path.join(workdir, f"conn-{proto}-cache"),
                  extra, tls if alpn else None)
        try:
            h.wait_index()
            before = settle_rss(h)
            port, ctx = (h.tls_port, client_tls(alpn)) if alpn else (h.port, None)

            async def measure():
                conns = await hold(lambda p: opener(p, ctx), port, args.connections)
                during = settle_rss(h, 2.0)
                for _, w in conns:
                    w.close()
                return during

            during = asyncio.run(measure())
        finally:
            h.stop()
        row = dict(protocol=proto, connections=args.connections, rss_before_mib=round(before / 1024, 1),
                   rss_open_mib=round(during / 1024, 1),
                   bytes_per_connection=round((during - before) * 1024 / args.connections))
        print("  " + json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hoard", required=True)
    ap.add_argument("--sizes", default="100000,1000000",
                    type=lambda s: sorted(int(x) for x in s.split(",")))
    ap.add_argument("--cold", action="store_true", help="also start after dropping the page cache (root)")
    ap.add_argument("--connections", type=int, default=4000)
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--skip-connections", action="store_true")
    ap.add_argument("--tls", action="store_true",
                    help="also measure idle TLS connections (ALPN http/1.1 and h2; needs openssl)")
    ap.add_argument("--config-extra", action="append", default=[],
                    help="a line added to hoard's config (e.g. a per-address connection limit)")
    ap.add_argument("--workdir", help="where to build the caches (default: a temp dir on /var/tmp)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    if args.cold and os.geteuid() != 0:
        sys.exit("--cold drops the page cache and needs root")
    workdir = tempfile.mkdtemp(prefix="hoard-scale-", dir=args.workdir or "/var/tmp")
    result = dict(hoard=os.path.abspath(args.hoard))
    try:
        if not args.skip_startup:
            result["startup"] = startup(args, workdir, args.config_extra)
        if not args.skip_connections:
            result["connections"] = connections(args, workdir, args.config_extra)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
