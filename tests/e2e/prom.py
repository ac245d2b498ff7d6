"""A real Prometheus server scraping hoard, and promtool (Debian package `prometheus`).

The server gets a generated config in the run's temp dir (its own TSDB there, 1 s scrape and
rule-evaluation intervals, `--web.enable-lifecycle` so rules can be added and reloaded with
`POST /-/reload`) and is queried through its HTTP API. Rule files are read from a directory
that starts empty: a rule file is only loaded after `promtool check rules` accepted it, so a
broken one cannot keep the server from starting.
"""

import json
import os
import shutil
import urllib.parse

from harness import CheckFailed, Daemon, ensure, http, run, wait_until

PROMETHEUS_BIN = "/usr/bin/prometheus"
PROMTOOL_BIN = "/usr/bin/promtool"


class Prometheus:
    def __init__(self, supervisor, workdir, port, env):
        self.supervisor = supervisor
        self.dir = os.path.join(workdir, "prometheus")
        self.rules_dir = os.path.join(self.dir, "rules")
        os.makedirs(self.rules_dir, exist_ok=True)
        self.port = port
        self.env = env
        self.config = os.path.join(self.dir, "prometheus.yml")
        self.jobs = []
        self.daemon = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def write_config(self):
        """The config for the scrape jobs added so far (see `add_job`)."""
        lines = [
            "global:",
            "  scrape_interval: 1s",
            "  scrape_timeout: 1s",
            "  evaluation_interval: 1s",
            "rule_files:",
            f"  - {json.dumps(os.path.join(self.rules_dir, '*.yml'))}",
            "scrape_configs:",
        ]
        for name, target, ca_file in self.jobs:
            lines += [
                f"  - job_name: {json.dumps(name)}",
                "    metrics_path: /metrics",
                f"    scheme: {'https' if ca_file else 'http'}",
            ]
            if ca_file:
                lines += ["    tls_config:", f"      ca_file: {json.dumps(ca_file)}"]
            lines += ["    static_configs:", f"      - targets: [{json.dumps(target)}]"]
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    def add_job(self, name, target, ca_file=None):
        """Scrapes `target` (host:port) as job `name`, over https trusting `ca_file` when given.

        Before `start` this only goes into the config; afterwards the server reloads it.
        """
        self.jobs.append((name, target, ca_file))
        self.write_config()
        if self.daemon is not None:
            self.reload()

    def reload(self):
        resp = http("POST", f"{self.url}/-/reload", body=b"", timeout=30)
        ensure(resp.status == 200, f"POST /-/reload answered {resp.status}: {resp.body[:300]!r}")

    def start(self):
        """Starts the server and waits until it is ready to serve queries."""
        self.write_config()
        argv = [PROMETHEUS_BIN,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                f"--web.console.templates={os.path.join(self.dir, 'consoles')}",
                f"--web.console.libraries={os.path.join(self.dir, 'console_libraries')}",
                "--log.level=info"]
        self.daemon = self.supervisor.start(Daemon("prometheus", argv, os.path.join(self.dir, "prometheus.log"),
                                                   self.env))

        def ready():
            self.daemon.ensure_alive()
            return http("GET", f"{self.url}/-/ready", timeout=5).status == 200

        wait_until(ready, 30, f"prometheus on {self.url} to be ready", interval=0.1)
        return self

    def api(self, path, **params):
        """`GET /api/v1/<path>?params`: the `data` of a successful answer."""
        self.daemon.ensure_alive()
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        resp = http("GET", url, timeout=10)
        try:
            doc = json.loads(resp.body)
        except ValueError:
            raise CheckFailed(f"GET {url} answered {resp.status} with no JSON: {resp.body[:300]!r}")
        ensure(resp.status == 200 and doc.get("status") == "success",
               f"GET {url} answered {resp.status}: {doc.get('errorType')} {doc.get('error')}")
        return doc["data"]

    def query(self, expr):
        """An instant query: {frozenset(labels.items()): float value}."""
        data = self.api("query", query=expr)
        ensure(data.get("resultType") == "vector", f"query {expr!r} gave a {data.get('resultType')}, not a vector")
        return {frozenset(s["metric"].items()): float(s["value"][1]) for s in data["result"]}

    def wait_value(self, expr, accept, what, timeout=20):
        """Polls the instant query `expr` until `accept(values)` holds; returns the values.

        `values` is the list of sample values (empty when the query matched nothing).
        """
        last = []

        def poll():
            last[:] = [self.query(expr)]
            return accept(list(last[0].values()))

        try:
            wait_until(poll, timeout, what, interval=0.25)
        except CheckFailed as e:
            got = list(last[0].values()) if last else "no answer"
            raise CheckFailed(f"{e}; query {expr!r} last gave {got}")
        return list(last[0].values())

    def load_rules(self, path):
        """Copies a rule file into the rules directory and asks the server to reload."""
        shutil.copy(path, os.path.join(self.rules_dir, os.path.basename(path)))
        self.reload()

    def stop(self):
        if self.daemon is not None:
            self.daemon.stop()


def promtool(*args, input=None, timeout=60):
    """Runs promtool without failing on a non-zero exit: the caller reads the verdict."""
    return run([PROMTOOL_BIN, *args], timeout=timeout, input=input, check=False)
