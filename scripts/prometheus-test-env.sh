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

. "$(dirname "$0")/apt-ensure.sh"
apt_ensure prometheus-test-env prometheus python3-prometheus-client

if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import prometheus_client' 2>/dev/null; then
    echo "prometheus-test-env: pip install prometheus_client into .venv"
    .venv/bin/pip install -q prometheus_client
fi
