#!/usr/bin/env bash
# Validates deploy/ and the deployment docs offline:
#   - systemd-analyze verify (and an offline security score) on the unit,
#   - kubernetes-validate --strict on deploy/kubernetes/*.yaml and
#     deploy/kubernetes-cluster/*.yaml,
#   - promtool check config / check rules / test rules on deploy/prometheus/,
#   - the Grafana dashboard is valid JSON and its queries parse,
#   - docs/configuration.md documents every key of mirror.toml and
#     docs/monitoring.md every metric of src/metrics/,
#   - the manifests, the unit and their sample configurations agree.
# Installs what is missing (Debian 12, as root, no stdin): apt `systemd` for
# systemd-analyze, promtool from Debian's `prometheus` package, PyPI
# `kubernetes-validate` into a venv at target/venv (never the user's Python).
# Prints one line per check, then "N passed, N failed"; exits non-zero on any
# failure. Only reads the repository; scratch files go to a temporary directory
# that is removed at exit.
set -uo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive

K8S_VERSION=1.30.0
# systemd-analyze security: exposure 0-100 (shown as 0.0-10.0). The unit scores
# 1.2; fail if hardening regresses past 2.0.
SECURITY_THRESHOLD=20

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tools="${XDG_CACHE_HOME:-$HOME/.cache}/hoard-deploy-check"

die() { echo "check.sh: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

# --- tools -------------------------------------------------------------------

apt_updated=
apt_update() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq >"$work/apt-update.log" 2>&1 || { cat "$work/apt-update.log" >&2; die "apt-get update failed"; }
    apt_updated=1
  fi
}

if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt_update
  apt-get install -y -qq --no-install-recommends systemd >"$work/apt.log" 2>&1 \
    || { cat "$work/apt.log" >&2; die "cannot install systemd"; }
fi

# promtool ships in Debian's `prometheus` package. Installing that package
# would also enable (and on a machine running systemd, start) a Prometheus
# server, so unless promtool is already on PATH, the package is downloaded and
# only unpacked into a cache directory.
PROMTOOL=$(command -v promtool || true)
if [ -z "$PROMTOOL" ]; then
  PROMTOOL="$tools/prometheus/usr/bin/promtool"
  if [ ! -x "$PROMTOOL" ]; then
    apt_update
    mkdir -p "$tools" "$work/deb"
    chmod 777 "$work/deb"   # apt downloads as the unprivileged _apt user
    (cd "$work/deb" && apt-get download -qq prometheus) >"$work/apt.log" 2>&1 \
      || { cat "$work/apt.log" >&2; die "cannot download the prometheus package"; }
    rm -rf "$tools/prometheus"
    dpkg-deb -x "$work"/deb/prometheus_*.deb "$tools/prometheus" \
      || die "cannot unpack the prometheus package"
  fi
fi

python3 -c 'import tomllib' 2>/dev/null || die "python3 >= 3.11 (tomllib) is needed"
# The Python tools go into a venv of their own under the git-ignored target/,
# kept between runs so a rerun installs nothing; the user's Python is left
# exactly as it was (no pip install into it, no --break-system-packages).
venv=target/venv
PY="$venv/bin/python"
if ! "$PY" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt_update
    apt-get install -y -qq --no-install-recommends python3-venv >"$work/apt.log" 2>&1 \
      || { cat "$work/apt.log" >&2; die "cannot install python3-venv"; }
  fi
  # The venv is shared with scripts/install-deps.sh (SeaweedFS's weed):
  # created when absent, never removed.
  [ -x "$PY" ] || python3 -m venv "$venv" >"$work/venv.log" 2>&1 \
    || { cat "$work/venv.log" >&2; die "cannot create a venv at $venv"; }
  "$PY" -m pip install -q --disable-pip-version-check kubernetes-validate pyyaml >"$work/pip.log" 2>&1 \
    || { cat "$work/pip.log" >&2; die "cannot pip install kubernetes-validate into $venv"; }
fi

# --- checks ------------------------------------------------------------------

passed=0
failed=0
# check NAME COMMAND...: runs COMMAND; one line with its verdict (and, on
# failure, its output indented below).
check() {
  local name=$1
  shift
  local out
  if out=$("$@" 2>&1); then
    passed=$((passed + 1))
    echo "ok   $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name"
    # The first lines say what is wrong; promtool test rules repeats itself.
    printf '%s\n' "$out" | head -n 12 | sed 's/^/       /'
  fi
}

# systemd-analyze verify insists that ExecStart's binary exists. Rather than
# put anything at /usr/local/bin/hoard on this machine, verify a copy of the
# unit whose ExecStart points at a stub in the temporary directory; the rest
# of the unit is verified as shipped (unit-consistency pins the real path).
unit_copy() {
  mkdir -p "$work/unit"
  printf '#!/bin/sh\nexit 0\n' >"$work/unit/hoard"
  chmod +x "$work/unit/hoard"
  sed "s|^ExecStart=/usr/local/bin/hoard |ExecStart=$work/unit/hoard |" \
    deploy/systemd/hoard.service >"$work/unit/hoard.service"
  grep -q "^ExecStart=$work/unit/hoard " "$work/unit/hoard.service"
}
verify_unit() {
  unit_copy || { echo "ExecStart does not start with /usr/local/bin/hoard"; return 1; }
  # verify prints problems as warnings without always failing: any output fails.
  local out
  out=$(systemd-analyze verify "$work/unit/hoard.service" 2>&1) || { echo "$out"; return 1; }
  [ -z "$out" ] || { echo "$out"; return 1; }
}
unit_security() {
  unit_copy || return 1
  local out
  out=$(systemd-analyze security --offline=true --threshold="$SECURITY_THRESHOLD" \
    "$work/unit/hoard.service" 2>&1) || { echo "$out" | grep -E '✗|exposure'; return 1; }
}
check "systemd-analyze verify deploy/systemd/hoard.service" verify_unit
check "systemd-analyze security: exposure <= $((SECURITY_THRESHOLD / 10)).$((SECURITY_THRESHOLD % 10))" unit_security
check "systemd unit agrees with deploy/systemd/mirror.toml" "$PY" tests/deploy/checks.py unit-consistency

check "kubernetes-validate --strict -k $K8S_VERSION deploy/kubernetes/*.yaml" \
  "$PY" -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" deploy/kubernetes/*.yaml
check "kubernetes manifests agree with their mirror.toml" "$PY" tests/deploy/checks.py k8s-consistency
check "kubernetes-validate --strict -k $K8S_VERSION deploy/kubernetes-cluster/*.yaml" \
  "$PY" -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" deploy/kubernetes-cluster/*.yaml
check "cluster manifests agree with their mirror.toml" "$PY" tests/deploy/checks.py k8s-cluster-consistency
check "sample configurations use only mirror.toml's keys" "$PY" tests/deploy/checks.py sample-configs

check "promtool check config deploy/prometheus/prometheus.yml" \
  "$PROMTOOL" check config deploy/prometheus/prometheus.yml
check "promtool check rules deploy/prometheus/alerts.yml" \
  "$PROMTOOL" check rules deploy/prometheus/alerts.yml
check "promtool test rules tests/deploy/alerts_test.yml" \
  "$PROMTOOL" test rules tests/deploy/alerts_test.yml
check "alert rules use only hoard's metrics" "$PY" tests/deploy/checks.py alert-metrics

check "deploy/grafana/hoard-dashboard.json is valid JSON" \
  "$PY" -m json.tool deploy/grafana/hoard-dashboard.json /dev/null
check "dashboard queries use only hoard's metrics" "$PY" tests/deploy/checks.py dashboard
dashboard_promql() {
  "$PY" tests/deploy/checks.py dashboard-rules "$work/dashboard-rules.yml" &&
    "$PROMTOOL" check rules "$work/dashboard-rules.yml"
}
check "dashboard queries parse (promtool)" dashboard_promql

check "docs/configuration.md documents every key of mirror.toml" "$PY" tests/deploy/checks.py config-doc
check "docs/configuration.md documents every field of src/config/" "$PY" tests/deploy/checks.py config-rs
check "docs/monitoring.md documents every metric of src/metrics/" "$PY" tests/deploy/checks.py monitoring-doc
check "docs/*.md relative links resolve" "$PY" tests/deploy/checks.py doc-links
check "docs/*.md toml, yaml and json snippets parse" "$PY" tests/deploy/checks.py doc-snippets

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
