#!/usr/bin/env bash
# Installs, with apt, the third-party software the end-to-end suite (tests/e2e/run.py) drives:
# distribution's registry as the upstream, skopeo and containerd as clients, openssl for the
# token service's keys and the TLS checks' CA and certificates, curl for the TLS checks and
# debugging, python3 for the runner itself, mount (umount) to clean up after a containerd that
# died mid-unpack, prometheus for the Prometheus server that scrapes hoard during the run and
# for promtool (`check metrics` on hoard's exposition, `check rules` on deploy/prometheus/), umoci
# to read the OCI layout `hoard export` writes (tests/e2e/bundle.py), podman for the push tests
# (tests/e2e/push.py: `podman push` into hoard's local registry).
#
# Idempotent: when every package is present it does nothing (no network). Otherwise it runs
# `apt-get update` once, then installs only the missing packages. Meant for root on Debian 12,
# also unattended (CI=true, no stdin).
set -euo pipefail

packages=(docker-registry skopeo containerd runc openssl curl ca-certificates python3 mount prometheus umoci)
# tests/e2e/auth.py: htpasswd -B (apache2-utils) makes the user file, podman logs in and pushes.
packages+=(apache2-utils podman)

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [ "$status" != "install ok installed" ]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all present (${packages[*]})"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root to install them" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update </dev/null
apt-get install -y --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${missing[@]}" </dev/null
echo "install-deps: done"
