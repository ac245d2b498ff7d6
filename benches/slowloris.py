#!/usr/bin/env python3
"""Slowloris against hoard while a well-behaved client measures what it gets (issue 14).

    benches/slowloris.py --hoard target/release/hoard [--sockets 500] [--duration 60]
                         [--byte-every 3] [--config-extra 'max_connections = 400'] ...

An attacker on 127.0.0.1 keeps --sockets connections open, each sending one byte of an
endless request head every --byte-every seconds, and reconnects each one the moment hoard
closes it (header_read_timeout, or a connection limit). Meanwhile two well-behaved clients
send `GET /v2/` on a new connection every 50 ms, one from the attacker's address
(127.0.0.1) and one from another (127.0.0.2, as another machine would be), and record
success and latency. Printed per client: requests, successes, failures by kind, latency
p50/p99/max, and the longest run of consecutive failures (how long it was starved);
and how many connections the attacker had open. Everything runs on 127.0.0.1;
--config-extra lines go at the top of hoard's config (e.g. 'max_connections_per_address =
100000' to see hoard without the per-address limit).
"""

import argparse
import errno
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Attacker(threading.Thread):
    """--sockets slow connections, reconnected as soon as hoard drops one."""

    def __init__(self, port, sockets, every, stop):
        super().__init__(daemon=True)
        self.port, self.n, self.every, self.stop = port, sockets, every, stop
        self.sel = selectors.DefaultSelector()
        self.open_now = 0
        self.reconnects = 0
        self.samples = []

    def connect(self):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            return None
        return s

    def run(self):
        conns = {}  # socket -> [next send time, head sent]
        head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n"
        while not self.stop.is_set():
            now = time.monotonic()
            while len(conns) < self.n:
                s = self.connect()
                if s is None:
                    break
                # Spread the bytes over the period so the sends do not come in waves.
                conns[s] = [now + (len(conns) % 50) * self.every / 50, False]
                self.reconnects += 1
            for s, state in list(conns.items()):
                if state[0] > now:
                    continue
                try:
                    s.send(b"X" if state[1] else head)
                    state[0], state[1] = now + self.every, True
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.ENOTCONN):
                        state[0] = now + 0.05
                        continue
                    s.close()
                    del conns[s]
            # A connection hoard closed reads as EOF: drop it, reconnect next round.
            for s in list(conns):
                try:
                    if s.recv(1024, socket.MSG_DONTWAIT) == b"":
                        s.close()
                        del conns[s]
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    del conns[s]
            self.open_now = len(conns)
            self.samples.append(len(conns))
            time.sleep(0.05)
        for s in conns:
            s.close()


class Client(threading.Thread):
    """`GET /v2/` on a fresh connection every 50 ms from `source`."""

    def __init__(self, port, source, stop, timeout):
        super().__init__(daemon=True)
        self.port, self.source, self.stop, self.timeout = port, source, stop, timeout
        self.lat = []
        self.fail = {}
        self.run_now = 0.0
        self.worst_run = 0.0
        self.run_start = None

    def one(self):
        s = socket.socket()
        s.settimeout(self.timeout)
        try:
            s.bind((self.source, 0))
            s.connect(("127.0.0.1", self.port))
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return "closed"
                data += chunk
            return "ok" if data.startswith(b"HTTP/1.1 200") else "status"
        except socket.timeout:
            return "timeout"
        except ConnectionResetError:
            return "reset"
        except OSError as e:
            return f"oserror {e.errno}"
        finally:
            s.close()

    def run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            kind = self.one()
            dt = time.monotonic() - t0
            if kind == "ok":
                self.lat.append(dt)
                if self.run_start is not None:
                    self.worst_run = max(self.worst_run, t0 - self.run_start)
                    self.run_start = None
            else:
                self.fail[kind] = self.fail.get(kind, 0) + 1
                if self.run_start is None:
                    self.run_start = t0
            time.sleep(max(0.0, 0.05 - dt))
        if self.run_start is not None:
            self.worst_run = max(self.worst_run, time.monotonic() - self.run_start)

    def report(self, name):
        lat = sorted(self.lat)
        n = len(lat) + sum(self.fail.values())
        pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
        fails = ", ".join(f"{k} {v}" for k, v in sorted(self.fail.items())) or "none"
        return (f"| {name} | {n} | {len(lat)} ({100 * len(lat) / max(n, 1):.1f} %) | {fails} | "
                f"{pct(0.5):.1f} | {pct(0.99):.1f} | {(lat[-1] * 1000 if lat else float('nan')):.1f} | "
                f"{self.worst_run:.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hoard", required=True)
    ap.add_argument("--sockets", type=int, default=500)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--byte-every", type=float, default=3)
    ap.add_argument("--client-timeout", type=float, default=5)
    ap.add_argument("--config-extra", action="append", default=[])
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="hoard-slowloris-")
    port = free_port()
    cfg = os.path.join(work, "hoard.toml")
    with open(cfg, "w") as f:
        for line in args.config_extra:
            f.write(line + "\n")
        f.write(f'listen = "127.0.0.1:{port}"\ncache_dir = "{work}/cache"\n'
                f'default_upstream = "docker.io"\n\n[upstreams."docker.io"]\n'
                f'url = "http://127.0.0.1:{free_port()}"\n')
    log = open(os.path.join(work, "hoard.log"), "w")
    proc = subprocess.Popen([args.hoard, "serve", "--config", cfg], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, RUST_LOG="warn", NO_COLOR="1"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("hoard did not start: " + open(os.path.join(work, "hoard.log")).read())
                time.sleep(0.05)
        stop = threading.Event()
        attacker = Attacker(port, args.sockets, args.byte_every, stop)
        same = Client(port, "127.0.0.1", stop, args.client_timeout)
        other = Client(port, "127.0.0.2", stop, args.client_timeout)
        attacker.start()
        time.sleep(2)  # let the attacker fill its sockets first
        same.start()
        other.start()
        time.sleep(args.duration)
        stop.set()
        for t in (attacker, same, other):
            t.join(timeout=args.client_timeout + 5)
        held = sorted(attacker.samples)
        print(f"config extra: {args.config_extra or 'none'}; {args.sockets} slow sockets, a byte every "
              f"{args.byte_every} s, {args.duration:.0f} s")
        print(f"attacker connections open: median {held[len(held) // 2]}, max {held[-1]}; "
              f"{attacker.reconnects} connects")
        print("| client | requests | ok | failures | p50 ms | p99 ms | max ms | longest starved s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print(same.report("same address (127.0.0.1)"))
        print(other.report("other address (127.0.0.2)"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
