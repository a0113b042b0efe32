#!/usr/bin/env bash
# What the monitoring tests (tests/test_prometheus.py, tests/test_metrics.py) need, idempotently, on Debian 12:
#  - prometheus (the server the integration test starts with a config of its own; it brings promtool,
#    which checks and unit-tests the shipped alert rules);
#  - python3-prometheus-client for /usr/bin/python3 (the DEB's interpreter: a Recommends of the package),
#    prometheus_client in .venv.
# Installing starts nothing (policy-rc.d refuses every maintainer-script start on this shared machine):
# the test starts its own server in a network namespace and stops exactly that process.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="prometheus python3-prometheus-client"
missing=""
for p in $APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "prometheus-test-env: apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    prc=/usr/sbin/policy-rc.d
    own_prc=""
    if [ ! -e "$prc" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$prc"
        chmod 755 "$prc"
        own_prc=1
    fi
    rc=0
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 $missing >/dev/null || rc=$?
    if [ -n "$own_prc" ]; then rm -f "$prc"; fi
    [ "$rc" -eq 0 ] || exit "$rc"
fi

if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import prometheus_client' 2>/dev/null; then
    echo "prometheus-test-env: pip install prometheus_client into .venv"
    .venv/bin/pip install -q prometheus_client
fi
