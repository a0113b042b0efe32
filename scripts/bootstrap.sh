#!/usr/bin/env bash
# Installs everything netmedic's tests and lab need on a fresh Debian 12 machine, idempotently:
#  - Debian packages: iproute2/tc, iptables (nft + legacy), and the distro Python stack the DEB depends on
#    (python3-pyroute2 0.7.2, python3-structlog 22.3, python3-yaml, python3-pytest);
#  - .venv: the newest PyPI releases (pyroute2, structlog, PyYAML, pytest, ruff) for the primary test run.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/apt-ensure.sh
apt_ensure bootstrap iproute2 iptables procps python3-pyroute2 python3-structlog python3-yaml python3-pytest python3-venv

PY=${NETMEDIC_PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import pyroute2, structlog, yaml, pytest' 2>/dev/null; then
    echo "bootstrap: creating .venv with $($PY --version 2>&1)"
    rm -rf .venv
    "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q pyroute2 structlog PyYAML pytest ruff prometheus_client
fi

# The event-source tests' real NetworkManager, dbus-daemon, systemd-udevd and python3-dbus/gi (nothing started).
bash scripts/nm-test-env.sh

# The libvirt tests' libvirtd, virtlogd, qemu (TCG) and libvirt-python in both interpreters (nothing started).
bash scripts/libvirt-test-env.sh

# The monitoring tests' prometheus server + promtool and prometheus_client in both interpreters (nothing started).
bash scripts/prometheus-test-env.sh

# The firewall tests' nftables, python3-nftables (also made visible to .venv) and firewalld (nothing started).
bash scripts/firewall-test-env.sh
