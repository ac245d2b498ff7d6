#!/usr/bin/env bash
# hoard side by side with distribution's proxy (the peer) and nginx (the physical reference),
# on loopback, in one run. See docs/benchmarks.md for what each figure means.
#
#   benches/e2e.sh [--quick] [--profile] [more options of benches/e2e/bench.py]
#
# Installs what it needs with apt when missing (docker-registry, nginx, wrk, apache2-utils,
# openssl, curl, python3; linux-perf for --profile): idempotent, `apt-get update` only when
# something is missing, root only then. Builds hoard in release, then runs
# benches/e2e/bench.py, which prints the table and writes benches/results/<timestamp>.json.
# Full mode takes about 7 minutes on 2 cores, --quick about 3.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(docker-registry nginx wrk apache2-utils openssl curl python3)
for arg in "$@"; do
  if [ "$arg" = "--profile" ]; then
    packages+=(linux-perf)
  fi
done

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [ "$status" != "install ok installed" ]; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "e2e.sh: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "e2e.sh: installing ${missing[*]}"
  # Installing nginx must not start the distribution's nginx service (port 80 on every
  # address): the benchmark runs its own on 127.0.0.1 only.
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update </dev/null
  apt-get install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null
  if [ -n "$made_policy" ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi

cargo build --release --bin hoard
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

python3 benches/e2e/bench.py --hoard "$target_dir/release/hoard" "$@"
