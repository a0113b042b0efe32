#!/usr/bin/env bash
# Installs everything netmedic's tests and lab need on a fresh Debian 12 machine, idempotently:
#  - Debian packages: iproute2/tc, iptables (nft + legacy), nftables with libnftables' Python module, and the
#    distro Python stack the DEB depends on (python3-pyroute2 0.7.2, python3-structlog 22.3, python3-yaml,
#    python3-pytest, python3-nftables);
#  - .venv: the newest PyPI releases (pyroute2, structlog, PyYAML, pytest, ruff) for the primary test run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="iproute2 iptables nftables python3-nftables procps python3-pyroute2 python3-structlog python3-yaml python3-pytest python3-venv"
missing=""
for p in $APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "bootstrap: apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY=${NETMEDIC_PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import pyroute2, structlog, yaml, pytest' 2>/dev/null; then
    echo "bootstrap: creating .venv with $($PY --version 2>&1)"
    rm -rf .venv
    "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q pyroute2 structlog PyYAML pytest ruff
fi

# python3-nftables for the venv: libnftables' Python module is a Debian package, not on PyPI (pure Python
# over ctypes). A .pth file in the venv's site-packages names a directory holding only a symlink to it, so
# nothing else of /usr/lib/python3/dist-packages becomes importable (same shim as firewall-test-env.sh).
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import nftables' 2>/dev/null; then
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    shim="$site/netmedic-distro-nftables"
    mkdir -p "$shim"
    ln -sfn /usr/lib/python3/dist-packages/nftables "$shim/nftables"
    echo "$shim" > "$site/netmedic-distro-nftables.pth"
    .venv/bin/python -c 'import nftables' && echo "bootstrap: .venv sees python3-nftables"
fi

# The event-source tests' real NetworkManager, dbus-daemon, systemd-udevd and python3-dbus/gi (nothing started).
bash scripts/nm-test-env.sh

# The libvirt tests' libvirtd, virtlogd, qemu (TCG) and libvirt-python in both interpreters (nothing started).
bash scripts/libvirt-test-env.sh
