"""Plumbing for the end-to-end runner: check reporting, daemon processes, polling, HTTP.

Everything here is stdlib only. Waiting is always polling with a deadline; processes are
started in their own session so that stopping one also stops anything it spawned.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request


class SetupError(Exception):
    """A step the remaining checks depend on failed; the run stops there."""


class CheckFailed(Exception):
    """Raised inside a check body to fail it with a one-line reason.

    `detail` (several lines: a command line, its output) is printed indented below it.
    """

    def __init__(self, reason, detail=""):
        super().__init__(reason)
        self.detail = detail


def ensure(condition, reason):
    """Fails the current check with `reason` unless `condition` holds."""
    if not condition:
        raise CheckFailed(reason)


class Report:
    """Prints one line per check and keeps the tally for the final summary line."""

    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.started = time.monotonic()

    def check(self, name, body, logs=()):
        """Runs `body()`; prints `PASS name` or `FAIL name: reason` and the tails of `logs`.

        `logs` is a list of Daemons, or a callable returning one when the check fails (so a
        daemon started by the check itself can be included).

        Returns body's result, or None when it failed. A failing check does not stop the run.
        """
        try:
            result = body()
        except CheckFailed as e:
            self._fail(name, str(e), logs, e.detail)
            return None
        except subprocess.TimeoutExpired as e:
            self._fail(name, f"timed out after {e.timeout:.0f}s: {_argv_str(e.cmd)}", logs)
            return None
        except Exception as e:  # noqa: BLE001 - any error inside a check is that check's failure
            self._fail(name, f"{type(e).__name__}: {e}", logs)
            traceback.print_exc(file=sys.stdout)
            return None
        self.passed += 1
        print(f"PASS {name}", flush=True)
        return result

    def require(self, name, body, logs=()):
        """Like `check`, but a failure is a setup failure: raises SetupError."""
        ok = []

        def wrapped():
            r = body()
            ok.append(True)
            return r

        result = self.check(name, wrapped, logs)
        if not ok:
            raise SetupError(name)
        return result

    def _fail(self, name, reason, logs, detail=""):
        self.failed += 1
        print(f"FAIL {name}: {' '.join(reason.split())[:1000]}", flush=True)
        for line in detail.splitlines():
            print(f"  > {line[:400]}")
        for log in logs() if callable(logs) else logs:
            log.print_tail()

    def summary(self):
        print(f"(took {time.monotonic() - self.started:.1f}s)", flush=True)
        print(f"{self.passed} passed, {self.failed} failed", flush=True)


def _argv_str(cmd):
    return " ".join(cmd) if isinstance(cmd, (list, tuple)) else str(cmd)


def wait_until(predicate, timeout, what, interval=0.05):
    """Polls `predicate()` until it returns a truthy value, which is returned.

    Raises CheckFailed naming `what` when `timeout` seconds pass first. Exceptions from the
    predicate count as "not yet" (a daemon that is still starting refuses connections),
    except CheckFailed, which ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except CheckFailed:
            raise  # a definite failure (the daemon died), not "not ready yet"
        except Exception as e:  # noqa: BLE001 - not ready yet
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise CheckFailed(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port():
    """A loopback port that was free a moment ago (for daemons that need it in their config)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DeadPort:
    """A loopback port bound but never listening: connecting to it is refused at once.

    Keeping it bound for the whole run means no other process can start listening there.
    """

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def client_env(dead_port, **extra):
    """Environment for every client and daemon: proxies point at a dead port, loopback exempt.

    A misconfigured client then fails instead of reaching out; `REGISTRY_*` variables are
    dropped because distribution reads them as configuration overrides.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    proxy = f"http://127.0.0.1:{dead_port}"
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env[key] = proxy
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


class Daemon:
    """A long-running child process with its output in a log file."""

    def __init__(self, name, argv, log_path, env):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    def ensure_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise CheckFailed(f"{self.name} exited with status {self.proc.returncode}")
        return True

    def stop(self, timeout=15):
        """SIGTERM to the daemon's process group, SIGKILL if it has not exited in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue

    def print_tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace").splitlines()
        except OSError as e:
            text = [f"<cannot read {self.log_path}: {e}>"]
        print(f"  --- last {min(lines, len(text))} lines of {self.name} log ({self.log_path}) ---")
        for line in text[-lines:]:
            print(f"  | {line[:400]}")
        sys.stdout.flush()


class Supervisor:
    """Owns every daemon started by the run and stops them all, newest first, on exit."""

    def __init__(self):
        self.daemons = []
        self.cleanups = []

    def start(self, daemon):
        self.daemons.append(daemon)
        return daemon.start()

    def on_exit(self, fn):
        self.cleanups.append(fn)

    def stop_all(self):
        for daemon in reversed(self.daemons):
            try:
                daemon.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning up the rest
                print(f"warning: stopping {daemon.name}: {e}", flush=True)
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - keep cleaning up the rest
                print(f"warning: cleanup: {e}", flush=True)


def run(argv, timeout, env=None, check=True, input=None):
    """Runs a short-lived command; returns CompletedProcess with bytes stdout/stderr.

    With check=True a non-zero exit fails the current check, quoting the output's tail.
    """
    proc = subprocess.run(
        argv,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=timeout,
        start_new_session=True,
    )
    if check and proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        out = proc.stdout.decode("utf-8", "replace").strip().splitlines()
        last = err[-1] if err else (out[-1] if out else "")
        detail = "\n".join([f"$ {_argv_str(argv)}", *out[-15:], *err[-15:]])
        raise CheckFailed(f"{os.path.basename(argv[0])} exited {proc.returncode}: {last}", detail)
    return proc


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name)


def http(method, url, body=None, headers=None, timeout=30):
    """One HTTP request with no proxy; non-2xx answers are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener.open(req, timeout=timeout) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.headers, e.read())


def refuses_connections(port):
    """True when nothing accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def unmount_under(root):
    """Lazily unmounts anything a crashed containerd left mounted below `root`."""
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
    except OSError:
        return
    prefix = root.rstrip("/") + "/"
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)


def run_suite(prefix, keep, body):
    """The frame every end-to-end script shares; returns its exit status.

    Makes a fresh work dir `/tmp/<prefix>-<hex>` (hex only: podman names an image pulled from
    an OCI layout after its path, and mkdtemp's "_" beside "-" is not a valid reference), a
    Report, a Supervisor and a dead port, and runs `body(report, supervisor, workdir,
    dead_port)`. Whatever happens, daemons are stopped, mounts a crashed containerd left are
    undone and the work dir is removed (kept with `keep`). A setup failure or an interruption
    counts as a failure: the remaining checks did not run.
    """

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    report, supervisor, dead = Report(), Supervisor(), DeadPort()
    workdir = f"/tmp/{prefix}-{secrets.token_hex(5)}"
    os.mkdir(workdir, 0o700)
    print(f"workdir {workdir}, dead port {dead.port}", flush=True)
    setup_failed = False
    try:
        body(report, supervisor, workdir, dead.port)
    except SetupError as e:
        setup_failed = True
        print(f"setup failed at '{e}': remaining checks skipped", flush=True)
    except (KeyboardInterrupt, SystemExit, CheckFailed) as e:
        setup_failed = True
        print(f"interrupted ({type(e).__name__}): stopping", flush=True)
    finally:
        supervisor.stop_all()
        dead.close()
        unmount_under(workdir)
        if keep:
            print(f"kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report.summary()
    return 1 if report.failed or setup_failed else 0
