"""Measuring tools: curl transfers, concurrent curls, wrk, /proc counters, the upstream's log.

Every external command has a time-out; every wait polls with a deadline.
"""

import os
import re
import socket
import subprocess
import threading
import time

from harness import CheckFailed, run, wait_until

CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
MIB = 1 << 20


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


# -- curl ----------------------------------------------------------------------------------

CURL_FORMAT = "%{http_code} %{size_download} %{time_total}"


def curl_argv(url, headers=()):
    argv = ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", CURL_FORMAT]
    for h in headers:
        argv += ["-H", h]
    return argv + [url]


def parse_curl(out):
    code, size, total = out.decode().split()
    return int(code), int(size), float(total)


def fetch(url, expect_size, headers=(), timeout=300):
    """One GET to /dev/null; returns curl's total time in seconds. Fails on a short or bad answer."""
    proc = run(curl_argv(url, headers), timeout=timeout)
    code, size, total = parse_curl(proc.stdout)
    if code != 200 or size != expect_size:
        raise CheckFailed(f"GET {url}: status {code}, {size} bytes, want 200 and {expect_size}")
    return total


def fetch_concurrently(url, n, expect_size, timeout=300):
    """`n` curls of `url` started together (one connection each, like n nodes pulling at once).

    Returns the wall time from the first start to the last exit. Fails if any answer is short.
    """
    started = time.monotonic()
    procs = [subprocess.Popen(curl_argv(url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, start_new_session=True) for _ in range(n)]
    deadline = started + timeout
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.monotonic() - started
    bad = []
    for rc, out, err in outs:
        try:
            code, size, _ = parse_curl(out)
        except ValueError:
            code, size = None, None
        if rc != 0 or code != 200 or size != expect_size:
            bad.append(f"rc={rc} status={code} bytes={size} {err.decode(errors='replace').strip()[:200]}")
    if bad:
        raise CheckFailed(f"{len(bad)} of {n} concurrent GETs failed: {bad[0]}")
    return wall


# -- /proc ---------------------------------------------------------------------------------

def children(pid):
    """Direct children of `pid` (nginx's workers)."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def process_tree(pid):
    return [pid, *children(pid)]


def cpu_seconds(pids):
    """utime + stime of the processes (each counts all its threads, living and exited)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def machine_cpu():
    """(busy, total) jiffies of all CPUs from /proc/stat; busy excludes idle and iowait."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


def busy_fraction(before, after):
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total if total else None


def reset_peak_rss(pids):
    """Resets VmHWM to the current RSS (clear_refs 5), so the next reading covers one phase."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_rss_mib(pids):
    """Sum of VmHWM over the processes, in MiB."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


class ThreadSampler:
    """Polls `Threads:` of /proc/<pid>/status every 50 ms while the `with` block runs; `peak` is
    the most seen (Go and tokio grow thread pools under blocking I/O)."""

    def __init__(self, pid, interval=0.05):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    def _run(self):
        while not self._stop.is_set():
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("Threads:"):
                            self.peak = max(self.peak, int(line.split()[1]))
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="thread-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        return False


# -- wrk -----------------------------------------------------------------------------------

def wrk(url, seconds, connections, headers=(), script=None, threads=1):
    """Requests per second from one wrk run; fails if any answer was not 2xx or errored."""
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s"]
    for h in headers:
        argv += ["-H", h]
    if script:
        argv += ["-s", script]
    proc = run(argv + [url], timeout=seconds + 30)
    out = proc.stdout.decode()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rate:
        raise CheckFailed(f"wrk printed no Requests/sec for {url}", out)
    problems = re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: .*)", out)
    errors = [p for p in problems if not re.search(r"connect 0, read 0, write 0, timeout 0", p)]
    if errors:
        raise CheckFailed(f"wrk against {url}: {'; '.join(errors)}", out)
    return float(rate.group(1))


def ab_head(url, seconds, connections, headers=(), keepalive=True):
    """Requests per second of HEAD requests from ApacheBench (`ab -i`): wrk 4.1 waits for a body
    after a HEAD answer that carries Content-Length, so HEAD goes through ab. Without keep-alive
    ab sends HTTP/1.0 requests and the server closes each connection."""
    argv = ["ab", "-q", "-i", "-c", str(connections), "-t", str(seconds), "-n", "100000000", "-s", "5"]
    if keepalive:
        argv.append("-k")
    for h in headers:
        argv += ["-H", h]
    proc = run(argv + [url], timeout=seconds + 30)
    out = proc.stdout.decode()
    rate = re.search(r"Requests per second:\s+([\d.]+)", out)
    if not rate:
        raise CheckFailed(f"ab printed no Requests per second for {url}", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if (failed and int(failed.group(1))) or non2xx:
        raise CheckFailed(f"ab against {url}: {failed.group(0) if failed else ''} "
                          f"{non2xx.group(0) if non2xx else ''}", out)
    return float(rate.group(1))


# -- the upstream's own log ----------------------------------------------------------------

_LOGFMT = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S*)')


def upstream_blob_gets(log_path, offset, digest):
    """GETs of blob `digest` the upstream completed past byte `offset` of its log:
    [(status, bytes written)], from distribution's `response completed` lines."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    out = []
    for line in text.splitlines():
        if 'msg="response completed' not in line:
            continue
        fields = {k: v[1:-1] if v.startswith('"') else v for k, v in _LOGFMT.findall(line)}
        uri = fields.get("http.request.uri", "")
        if fields.get("http.request.method") == "GET" and uri.split("?")[0].endswith(f"/blobs/{digest}"):
            out.append((fields.get("http.response.status"), int(fields.get("http.response.written") or 0)))
    return out


def settle_upstream(log_path, offset, digest, committed_path, timeout=120):
    """Waits until the mirror has committed the blob and the upstream log has been quiet for a
    second; returns the upstream GETs of the blob since `offset`."""
    wait_until(lambda: os.path.exists(committed_path), timeout, f"{committed_path} to be committed")
    last, quiet_since = None, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = upstream_blob_gets(log_path, offset, digest)
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= 1.0:
            break
        time.sleep(0.1)
    return last


# -- start-up ------------------------------------------------------------------------------

def time_to_first_200(start, timeout=60):
    """Calls `start()`, which launches a server without waiting for it, and returns
    (seconds until `GET /v2/` on it answers 200, the server). Polls every millisecond while
    the port refuses connections; once accepted, the request waits for the first answer."""
    t0 = time.monotonic()
    server = start()
    port = server.port
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
                s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                head = s.recv(64)
            if head.startswith(b"HTTP/1.1 200"):
                return time.monotonic() - t0, server
        except OSError:
            pass
        server.daemon.ensure_alive()
        time.sleep(0.001)
    raise CheckFailed(f"no 200 from GET /v2/ on port {port} within {timeout}s")


# -- profiling -----------------------------------------------------------------------------

# Inclusive shares worth reading in a hoard profile: (label, symbols; the largest "children"
# share among them is taken). They overlap: a futex wait is also a schedule.
BREAKDOWN = [
    ("all work in spawn_blocking threads", ["tokio::runtime::blocking::pool::Inner::run"]),
    ("writev to the client socket", ["__x64_sys_writev", "__GI___writev", "__writev"]),
    ("read()/pread() of the cache or temp file", ["ksys_read", "__x64_sys_pread64"]),
    ("pwrite() into the temp file", ["__x64_sys_pwrite64"]),
    ("recv from the upstream", ["__x64_sys_recvfrom"]),
    ("sha256 (sha2, SHA-NI)", ["sha2::sha256::x86::digest_blocks", "sha2::sha256::compress256"]),
    ("futex: thread park/unpark", ["do_futex"]),
    ("scheduler: context switches", ["schedule"]),
    ("sendfile() to the client socket", ["__x64_sys_sendfile64", "do_sendfile"]),
    ("epoll_wait", ["__x64_sys_epoll_wait", "do_epoll_wait"]),
    ("network softirq (loopback TCP delivery)", ["handle_softirqs"]),
    ("user-space memcpy (self)", ["__memmove_avx512_unaligned_erms", "__memmove_avx_unaligned_erms",
                                  "__memcpy_avx512_unaligned_erms", "__memcpy_avx_unaligned_erms"]),
]

_REPORT_LINE = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)%\s+\[[.k]\]\s+(.*?)\s*$")


class Profile:
    """`perf record` of processes while the `with` block runs, with DWARF call graphs so
    kernel time is attributed to the user-space code that asked for it. Samples cpu-clock,
    which works without hardware counters (as in most VMs); inside a VM, time spent with
    interrupts off is charged to where they are turned back on
    (`_raw_spin_unlock_irqrestore`, `finish_task_switch`)."""

    def __init__(self, pids, data_path, frequency=499, stack=16384):
        self.pids = pids if isinstance(pids, list) else [pids]
        self.data_path = data_path
        self.frequency = frequency
        self.stack = stack
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(self.frequency),
             "--call-graph", f"dwarf,{self.stack}", "-p", ",".join(map(str, self.pids)), "-o", self.data_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        # perf has attached once it has written its file header.
        wait_until(lambda: os.path.exists(self.data_path) and os.path.getsize(self.data_path) > 0, 10,
                   "perf record to attach")
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 2)  # SIGINT: perf writes its data and exits
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        return False

    def _report(self, *args):
        proc = run(["perf", "report", "-i", self.data_path, "--stdio", "-g", "none", *args], timeout=300)
        return proc.stdout.decode(errors="replace").splitlines()

    def top(self, limit=25):
        """The hottest symbols by self time: 'share  object  symbol'."""
        out = []
        for line in self._report("--no-children", "--sort", "dso,sym", "--percent-limit", "0.5"):
            if line.strip() and not line.startswith("#"):
                out.append(re.sub(r"(\s+-)+\s*$", "", line).rstrip())
        return out[:limit]

    def breakdown(self):
        """[(label, inclusive share %)] for BREAKDOWN's entries present in the profile."""
        children, self_ = {}, {}
        for line in self._report("--children", "--sort", "sym", "--percent-limit", "0.1"):
            hit = _REPORT_LINE.match(line)
            if hit:
                sym = hit.group(3)
                children[sym] = max(children.get(sym, 0), float(hit.group(1)))
                self_[sym] = max(self_.get(sym, 0), float(hit.group(2)))
        out = []
        for label, syms in BREAKDOWN:
            table = self_ if "(self)" in label else children
            share = sum(table.get(s, 0) for s in syms) if "(self)" in label else max(
                (table.get(s, 0) for s in syms), default=0)
            if share:
                out.append((label, share))
        return out


def context_switches(pids):
    """Voluntary + involuntary context switches of every thread of the processes."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if "ctxt_switches" in line:
                            total += int(line.split()[1])
            except OSError:
                pass  # the thread exited
    return total
