#!/usr/bin/env python3
"""Content checks for deploy/ and docs/, run by tests/deploy/check.sh.

`python3 tests/deploy/checks.py NAME` runs one check from the repository root:
prints what is wrong and exits 1, or exits 0. Needs Python 3.11 (tomllib) and
PyYAML (a dependency of kubernetes-validate, which check.sh installs).
"""

import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIRROR_TOML = ROOT / "mirror.toml"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
MONITORING_DOC = ROOT / "docs" / "monitoring.md"
METRICS_DIR = ROOT / "src" / "metrics"
CONFIG_DIR = ROOT / "src" / "config"


def read_dir(d):
    """The .rs files of one module directory, as one text (a struct or a
    metric may live in any of them)."""
    return "\n".join(p.read_text() for p in sorted(d.glob("*.rs")))
DASHBOARD = ROOT / "deploy" / "grafana" / "hoard-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
K8S = ROOT / "deploy" / "kubernetes"
K8S_CLUSTER = ROOT / "deploy" / "kubernetes-cluster"
SYSTEMD_TOML = ROOT / "deploy" / "systemd" / "mirror.toml"
UNIT = ROOT / "deploy" / "systemd" / "hoard.service"

KEY_LINE = re.compile(r"^#\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(.+)$")
HEADER_LINE = re.compile(r"^#?\s*\[\s*([^\[\]]+?)\s*\]\s*$")


def section_of(table):
    """'upstreams."docker.io"' -> 'upstreams'; 'tls' -> 'tls'; None -> 'top'."""
    if table is None:
        return "top"
    return tomllib.loads(f"[{table}]\n").popitem()[0]


def mirror_keys():
    """Keys of mirror.toml by section: top, tls, upstreams.

    Real keys come from tomllib. Commented-out keys count too: a `# key = value`
    line (whose value is valid TOML) belongs to the last table header above it,
    commented (`# [tls]`) or not. The per-upstream keys listed in the comment
    block after `# Per-upstream keys:` count as upstream keys.
    """
    text = MIRROR_TOML.read_text()
    data = tomllib.loads(text)
    keys = {"top": set(), "tls": set(), "upstreams": set()}
    for k, v in data.items():
        if k == "upstreams":
            for up in v.values():
                keys["upstreams"].update(up)
        elif k == "tls":
            keys["tls"].update(v)
        else:
            keys["top"].add(k)
    keys["top"].add("upstreams")
    table = None
    in_list = False
    for line in text.splitlines():
        line = line.rstrip()
        m = HEADER_LINE.match(line)
        if m and not line.startswith("#   "):
            try:
                section = section_of(m.group(1))
            except tomllib.TOMLDecodeError:
                section = None
            if section is not None:
                table = m.group(1)
                if section in ("tls", "auth", "local", "storage", "cluster", "top"):
                    keys["top"].add(section)
                keys.setdefault(section, set())
                in_list = False
                continue
        if re.match(r"^#\s*Per-upstream keys:\s*$", line):
            in_list = True
            continue
        if in_list:
            m = re.match(r"^#\s{2,}([a-z_]+(?:\s*/\s*[a-z_]+)*)(?:\s|$)", line)
            if m:
                for k in m.group(1).split("/"):
                    keys["upstreams"].add(k.strip())
                continue
            in_list = False
        m = KEY_LINE.match(line)
        if m:
            try:
                tomllib.loads(f"{m.group(1)} = {m.group(2)}")
            except tomllib.TOMLDecodeError:
                continue
            keys.setdefault(section_of(table), set()).add(m.group(1))
    return keys


def doc_sections(path):
    """'## heading' -> body text, for a Markdown file."""
    sections = {}
    heading = ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = ""
        elif heading:
            sections[heading] += line + "\n"
    return sections


def documented_rows(sections, marker):
    """First-column keys of the Markdown table rows under the heading holding `marker`."""
    rows = set()
    found = False
    for heading, body in sections.items():
        if marker in heading:
            found = True
            rows.update(re.findall(r"^\|\s*`([^`]+)`\s*\|", body, re.M))
    return rows if found else None


SECTION_MARKERS = {"top": "Top-level", "tls": "[tls]", "upstreams": "[upstreams."}
SECTION_MARKERS["auth"] = "[auth]"
SECTION_MARKERS["prefetch"] = "[prefetch]"
SECTION_MARKERS["local"] = "[local]"
SECTION_MARKERS["storage"] = "[storage]"
SECTION_MARKERS["cluster"] = "[cluster]"


def check_config_doc():
    keys = mirror_keys()
    sections = doc_sections(CONFIG_DOC)
    problems = []
    total = 0
    for section, wanted in sorted(keys.items()):
        marker = SECTION_MARKERS.get(section)
        if marker is None:
            problems.append(f"mirror.toml has a table [{section}] that docs/configuration.md has no section for")
            continue
        rows = documented_rows(sections, marker)
        if rows is None:
            problems.append(f"docs/configuration.md has no '## ...{marker}...' section")
            continue
        for k in sorted(wanted - rows):
            problems.append(f"{section} key `{k}` (in mirror.toml) is not a row of the '{marker}' table in docs/configuration.md")
        total += len(wanted)
    return problems, f"{total} keys documented"


def struct_fields(src, name):
    m = re.search(r"pub struct " + name + r"\s*\{(.*?)\n\}", src, re.S)
    if not m:
        return None
    return set(re.findall(r"^\s*pub\s+([a-z_][a-z0-9_]*)\s*:", m.group(1), re.M))


def check_config_rs():
    """Every field of the config structs is in mirror.toml and documented."""
    src = read_dir(CONFIG_DIR)
    keys = mirror_keys()
    sections = doc_sections(CONFIG_DOC)
    problems = []
    for struct, section in (("Config", "top"), ("TlsConfig", "tls"), ("UpstreamConfig", "upstreams")):
        fields = struct_fields(src, struct)
        if fields is None:
            problems.append(f"src/config/: struct {struct} not found (update tests/deploy/checks.py)")
            continue
        rows = documented_rows(sections, SECTION_MARKERS[section]) or set()
        for f in sorted(fields - keys.get(section, set())):
            problems.append(f"{struct}.{f} (src/config/) is not in mirror.toml")
        for f in sorted(fields - rows):
            problems.append(f"{struct}.{f} (src/config/) is not documented in docs/configuration.md")
    return problems, "config structs match mirror.toml and the docs"


def metric_names():
    names = set(re.findall(r'"(hoard_[a-z0-9_]+)"', read_dir(METRICS_DIR)))
    if not names:
        raise SystemExit("no hoard_* metric found in src/metrics/")
    return names


def histogram_names():
    src = read_dir(METRICS_DIR)
    return set(re.findall(r'HistogramOpts::new\(\s*"(hoard_[a-z0-9_]+)"', src))


def check_monitoring_doc():
    text = MONITORING_DOC.read_text()
    documented = set(re.findall(r"`(hoard_[a-z0-9_]+)", text))
    problems = [f"metric {n} (src/metrics/) is not documented in docs/monitoring.md"
                for n in sorted(metric_names() - documented)]
    return problems, f"{len(metric_names())} metrics documented"


def known_series():
    names = metric_names()
    series = set(names)
    for h in histogram_names():
        series.update({h + "_bucket", h + "_sum", h + "_count"})
    return series


def recorded_names():
    """The series deploy/prometheus/alerts.yml records (the hit ratio is defined there once)."""
    import yaml
    rules = yaml.safe_load(ALERTS.read_text())
    return {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}


RECORDED = re.compile(r"\b(hoard:[a-z0-9_:]+)")


def dashboard_exprs():
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                exprs.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))
    walk(dash["panels"])
    return dash, exprs


def check_dashboard():
    problems = []
    try:
        dash, exprs = dashboard_exprs()
    except (json.JSONDecodeError, KeyError) as e:
        return [f"{DASHBOARD.relative_to(ROOT)}: {e}"], ""
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("panel ids are not unique")
    for key in ("title", "uid", "schemaVersion", "panels", "templating"):
        if key not in dash:
            problems.append(f"dashboard has no {key}")
    series = known_series()
    for title, expr in exprs:
        for name in set(re.findall(r"\b(hoard_[a-z0-9_]+)", expr)) - series:
            problems.append(f"panel '{title}': {name} is not a hoard metric")
        for name in set(RECORDED.findall(expr)) - recorded_names():
            problems.append(f"panel '{title}': {name} is not recorded by {ALERTS.relative_to(ROOT)}")
    # Latency is shown per kind: a blob's time to headers and a tag list's
    # are different things, and one quantile over both hides either.
    latency = [e for _, e in exprs if "hoard_request_duration_seconds_bucket" in e]
    if not latency or not all(re.search(r"by \(le, kind\)", e) for e in latency):
        problems.append("client response time is not shown by kind (sum by (le, kind))")
    return problems, f"{len(exprs)} queries over known metrics"


def check_alert_metrics():
    import yaml
    rules = yaml.safe_load(ALERTS.read_text())
    series = known_series()
    problems = []
    n = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            n += 1
            for name in set(re.findall(r"\b(hoard_[a-z0-9_]+)", rule["expr"])) - series:
                problems.append(f"alert {rule.get('alert')}: {name} is not a hoard metric")
            for name in set(RECORDED.findall(rule["expr"])) - recorded_names():
                problems.append(f"rule {rule.get('alert') or rule.get('record')}: {name} is not recorded")
    return problems, f"{n} rules over known metrics"


def dashboard_rules(out):
    """Writes the dashboard's queries as recording rules so promtool parses them."""
    _, exprs = dashboard_exprs()
    rules = []
    for i, (_, expr) in enumerate(exprs):
        expr = (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
                .replace("$instance", ".*"))
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    Path(out).write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
    return [], ""


def load_k8s(where=K8S):
    """The manifests of one directory by kind (Services by name too, as
    `Service/<name>`, since the cluster set has two)."""
    import yaml
    docs = {}
    for f in sorted(where.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs[d["kind"]] = d
                docs[f"{d['kind']}/{d['metadata']['name']}"] = d
    return docs


def check_sample_configs():
    """deploy/'s mirror.toml files use only known keys, sensibly."""
    keys = mirror_keys()
    problems = []
    samples = {"deploy/systemd/mirror.toml": SYSTEMD_TOML.read_text(),
               "deploy/kubernetes/configmap.yaml": load_k8s()["ConfigMap"]["data"]["mirror.toml"],
               "deploy/kubernetes-cluster/configmap.yaml":
                   load_k8s(K8S_CLUSTER)["ConfigMap"]["data"]["mirror.toml"]}
    for name, text in samples.items():
        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            problems.append(f"{name}: {e}")
            continue
        for k in cfg:
            if k not in keys["top"]:
                problems.append(f"{name}: unknown key {k}")
        for k in cfg.get("tls", {}):
            if k not in keys["tls"]:
                problems.append(f"{name}: unknown key tls.{k}")
        for section in ("storage", "cluster"):
            for k in cfg.get(section, {}):
                if k not in keys.get(section, set()):
                    problems.append(f"{name}: unknown key {section}.{k}")
        for up, body in cfg.get("upstreams", {}).items():
            for k in body:
                if k not in keys["upstreams"]:
                    problems.append(f"{name}: unknown key upstreams.\"{up}\".{k}")
            if "url" not in body:
                problems.append(f"{name}: upstreams.\"{up}\" has no url")
        for k in ("listen", "cache_dir", "default_upstream", "tag_ttl", "upstreams"):
            if k not in cfg:
                problems.append(f"{name}: required key {k} missing")
        if cfg.get("default_upstream") not in cfg.get("upstreams", {}):
            problems.append(f"{name}: default_upstream is not a key of [upstreams]")
    return problems, f"{len(samples)} sample configurations"


def seconds(d):
    m = re.fullmatch(r"(\d+)(s|m)", d)
    if not m:
        raise ValueError(f"cannot read duration {d!r}")
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def check_k8s_consistency():
    """The manifests agree with the mirror.toml they carry."""
    docs = load_k8s()
    problems = []
    for kind in ("Deployment", "Service", "PersistentVolumeClaim", "ConfigMap"):
        if kind not in docs:
            problems.append(f"no {kind} in deploy/kubernetes/")
        elif "namespace" in docs[kind]["metadata"]:
            problems.append(f"{kind} sets a namespace (the manifests are namespace-agnostic)")
    if problems:
        return problems, ""
    cfg = tomllib.loads(docs["ConfigMap"]["data"]["mirror.toml"])
    dep = docs["Deployment"]["spec"]
    pod = dep["template"]["spec"]
    c = pod["containers"][0]
    if dep.get("replicas") != 1:
        problems.append("Deployment must run 1 replica")
    if dep.get("strategy", {}).get("type") != "Recreate":
        problems.append("Deployment strategy must be Recreate (ReadWriteOnce cache volume)")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    pvc_vol = [n for n, v in vols.items() if v.get("persistentVolumeClaim", {}).get("claimName")
               == docs["PersistentVolumeClaim"]["metadata"]["name"]]
    if not pvc_vol or mounts.get(pvc_vol[0]) != cfg["cache_dir"]:
        problems.append(f"the PVC is not mounted at cache_dir {cfg['cache_dir']}")
    cm_vol = [n for n, v in vols.items() if v.get("configMap", {}).get("name")
              == docs["ConfigMap"]["metadata"]["name"]]
    args = c.get("args", [])
    if not cm_vol or "--config" not in args or \
            args[args.index("--config") + 1] != mounts.get(cm_vol[0], "") + "/mirror.toml":
        problems.append("--config does not name the mounted ConfigMap's mirror.toml")
    port = int(cfg["listen"].rsplit(":", 1)[1])
    if [p["containerPort"] for p in c["ports"]] != [port]:
        problems.append(f"containerPort is not the listen port {port}")
    svc_ports = docs["Service"]["spec"]["ports"]
    if [p["port"] for p in svc_ports] != [5000]:
        problems.append("the Service must expose port 5000")
    sel = docs["Service"]["spec"]["selector"]
    labels = dep["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in sel.items()):
        problems.append("the Service selector does not match the pod labels")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("readinessProbe is not GET /readyz")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problems.append("livenessProbe is not GET /healthz")
    if pod.get("terminationGracePeriodSeconds", 30) <= seconds(cfg.get("shutdown_grace", "30s")):
        problems.append("terminationGracePeriodSeconds must exceed shutdown_grace")
    sc = c.get("securityContext", {})
    if not (pod.get("securityContext", {}).get("runAsNonRoot") and sc.get("readOnlyRootFilesystem")
            and sc.get("allowPrivilegeEscalation") is False):
        problems.append("the container must run as non-root, read-only, without privilege escalation")
    if not c.get("resources", {}).get("requests"):
        problems.append("the container has no resource requests")
    return problems, "Deployment, Service, PVC and ConfigMap agree"


def check_k8s_cluster_consistency():
    """deploy/kubernetes-cluster/: the StatefulSet, its two Services and the
    mirror.toml they share agree, and no secret is in the config text."""
    docs = load_k8s(K8S_CLUSTER)
    problems = []
    need = ("StatefulSet", "ConfigMap", "PodDisruptionBudget", "Service/hoard", "Service/hoard-peers")
    for kind in need:
        if kind not in docs:
            problems.append(f"no {kind} in deploy/kubernetes-cluster/")
        elif "namespace" in docs[kind]["metadata"]:
            problems.append(f"{kind} sets a namespace (the manifests are namespace-agnostic)")
    if problems:
        return problems, ""
    cfg = tomllib.loads(docs["ConfigMap"]["data"]["mirror.toml"])
    sts = docs["StatefulSet"]["spec"]
    pod = sts["template"]["spec"]
    c = pod["containers"][0]
    peers = docs["Service/hoard-peers"]["spec"]
    client = docs["Service/hoard"]["spec"]
    cluster = cfg.get("cluster", {})
    storage = cfg.get("storage", {})
    if storage.get("kind") != "s3":
        problems.append("the replicas must share an s3 [storage]")
    for k in ("credentials", "access_key", "secret_key", "secret"):
        if k in storage or k in cluster:
            problems.append(f"a secret ({k}) in the config text")
    if "node" in cluster:
        problems.append("[cluster] node must be left to the host name (the pod's name): one ConfigMap for all")
    if sts.get("podManagementPolicy") != "Parallel":
        problems.append("podManagementPolicy must be Parallel")
    if (sts.get("replicas") or 1) < 2:
        problems.append("a cluster needs at least 2 replicas")
    if sts.get("serviceName") != docs["Service/hoard-peers"]["metadata"]["name"]:
        problems.append("serviceName is not the headless Service")
    if peers.get("clusterIP") != "None" or not peers.get("publishNotReadyAddresses"):
        problems.append("hoard-peers must be headless and publish not-ready addresses")
    if cluster.get("dns", "").split(".")[0] != docs["Service/hoard-peers"]["metadata"]["name"]:
        problems.append("[cluster] dns does not name the headless Service")
    port = int(cfg["listen"].rsplit(":", 1)[1])
    if cluster.get("port") != port or [p["port"] for p in peers["ports"]] != [port]:
        problems.append(f"[cluster] port, the headless Service's port and listen ({port}) differ")
    if [p["containerPort"] for p in c["ports"]] != [port]:
        problems.append(f"containerPort is not the listen port {port}")
    if [p["port"] for p in client["ports"]] != [5000]:
        problems.append("the client Service must expose port 5000")
    labels = sts["template"]["metadata"]["labels"]
    for name, sel in (("hoard", client["selector"]), ("hoard-peers", peers["selector"]),
                      ("the PodDisruptionBudget", docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]),
                      ("the StatefulSet", sts["selector"]["matchLabels"])):
        if any(labels.get(k) != v for k, v in sel.items()):
            problems.append(f"{name}'s selector does not match the pod labels")
    env = {e["name"]: e for e in c.get("env", [])}
    secret_env = cluster.get("secret_env", "HOARD_CLUSTER_SECRET")
    wanted = [] if "secret_file" in cluster else [secret_env]
    if "credentials_file" not in storage:
        wanted += ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    for name in wanted:
        if "secretKeyRef" not in env.get(name, {}).get("valueFrom", {}):
            problems.append(f"{name} must come from a Secret")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in sts.get("volumeClaimTemplates", [])]
    if not claims or mounts.get(claims[0]) != cfg["cache_dir"]:
        problems.append(f"the volumeClaimTemplate is not mounted at cache_dir {cfg['cache_dir']}")
    vols = {v["name"]: v for v in pod["volumes"]}
    cm_vol = [n for n, v in vols.items() if v.get("configMap", {}).get("name")
              == docs["ConfigMap"]["metadata"]["name"]]
    args = c.get("args", [])
    if not cm_vol or "--config" not in args or \
            args[args.index("--config") + 1] != mounts.get(cm_vol[0], "") + "/mirror.toml":
        problems.append("--config does not name the mounted ConfigMap's mirror.toml")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("readinessProbe is not GET /readyz")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problems.append("livenessProbe is not GET /healthz")
    if pod.get("terminationGracePeriodSeconds", 30) <= seconds(cfg.get("shutdown_grace", "30s")):
        problems.append("terminationGracePeriodSeconds must exceed shutdown_grace")
    sc = c.get("securityContext", {})
    if not (pod.get("securityContext", {}).get("runAsNonRoot") and sc.get("readOnlyRootFilesystem")
            and sc.get("allowPrivilegeEscalation") is False):
        problems.append("the container must run as non-root, read-only, without privilege escalation")
    return problems, "StatefulSet, Services, PodDisruptionBudget and ConfigMap agree"


def check_unit_consistency():
    """The systemd unit and its sample mirror.toml agree."""
    unit = UNIT.read_text()
    cfg = tomllib.loads(SYSTEMD_TOML.read_text())
    problems = []
    exec_start = re.search(r"^ExecStart=(\S+)(.*)$", unit, re.M)
    if not exec_start or exec_start.group(1) != "/usr/local/bin/hoard":
        problems.append("ExecStart must run /usr/local/bin/hoard (check.sh relies on it)")
    elif "--config /etc/hoard/mirror.toml" not in exec_start.group(2):
        problems.append("ExecStart must use --config /etc/hoard/mirror.toml")
    if "--cache-dir %S/hoard" not in unit or cfg.get("cache_dir") != "/var/lib/hoard":
        problems.append("the cache must be the StateDirectory /var/lib/hoard, in the unit and the sample")
    if not re.search(r"^StateDirectory=hoard$", unit, re.M):
        problems.append("StateDirectory=hoard missing")
    m = re.search(r"^TimeoutStopSec=(\S+)$", unit, re.M)
    if not m or seconds(m.group(1)) <= seconds(cfg.get("shutdown_grace", "30s")):
        problems.append("TimeoutStopSec must exceed shutdown_grace")
    if not re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", unit, re.M):
        problems.append("ExecReload must send SIGHUP")
    return problems, "unit and sample mirror.toml agree"


def check_doc_links():
    """Relative links in docs/*.md point at files that exist."""
    problems = []
    n = 0
    for md in sorted((ROOT / "docs").glob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            n += 1
            path = (md.parent / target.split("#")[0]).resolve()
            if not path.exists():
                problems.append(f"{md.relative_to(ROOT)}: broken link {target}")
    return problems, f"{n} relative links"


def check_doc_snippets():
    """The toml, yaml and json code blocks in docs/*.md parse."""
    import yaml
    parsers = {"toml": tomllib.loads, "yaml": yaml.safe_load, "json": json.loads}
    problems = []
    n = 0
    for md in sorted((ROOT / "docs").glob("*.md")):
        text = md.read_text()
        for m in re.finditer(r"^( *)```(toml|yaml|json)\n(.*?)^\1```", text, re.S | re.M):
            indent, lang, body = m.groups()
            body = "\n".join(line[len(indent):] for line in body.splitlines())
            n += 1
            try:
                parsers[lang](body)
            except Exception as e:
                line = text[:m.start()].count("\n") + 1
                problems.append(f"{md.relative_to(ROOT)}:{line}: {lang} block does not parse: {e}")
    return problems, f"{n} code blocks"


CHECKS = {
    "doc-snippets": check_doc_snippets,
    "config-doc": check_config_doc,
    "config-rs": check_config_rs,
    "monitoring-doc": check_monitoring_doc,
    "dashboard": check_dashboard,
    "alert-metrics": check_alert_metrics,
    "sample-configs": check_sample_configs,
    "k8s-consistency": check_k8s_consistency,
    "unit-consistency": check_unit_consistency,
    "k8s-cluster-consistency": check_k8s_cluster_consistency,
    "doc-links": check_doc_links,
}


def main():
    try:
        if len(sys.argv) == 3 and sys.argv[1] == "dashboard-rules":
            dashboard_rules(sys.argv[2])
            return 0
        if len(sys.argv) != 2 or sys.argv[1] not in CHECKS:
            print(f"usage: {sys.argv[0]} {{{'|'.join(CHECKS)}}} | dashboard-rules OUT", file=sys.stderr)
            return 2
        problems, summary = CHECKS[sys.argv[1]]()
    except Exception as e:  # a file too broken to inspect: say why, briefly
        print(f"cannot check: {type(e).__name__}: {e}")
        return 1
    for p in problems:
        print(p)
    if not problems and summary:
        print(summary)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
