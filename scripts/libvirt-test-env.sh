#!/usr/bin/env bash
# What the libvirt tests (tests/test_libvirt*.py) need, idempotently, on Debian 12:
#  - libvirtd (monolithic daemon) + virtlogd, qemu-system-x86 (the tests run TCG guests with no disk),
#    dnsmasq-base (libvirt's network driver wants it), libvirt-dev + pkg-config (to build libvirt-python);
#  - python3-libvirt for /usr/bin/python3 (the DEB's interpreter), libvirt-python in .venv.
# Installing the packages starts nothing here (PID 1 is not systemd): the tests start their own
# libvirtd with a clean environment and stop exactly the processes they started.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="libvirt-daemon-system qemu-system-x86 libvirt-dev pkg-config dnsmasq-base iptables python3-libvirt gcc"
missing=""
for p in $APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "libvirt-test-env: apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # policy-rc.d: never let a maintainer script start a daemon on this (shared) machine.
    prc=/usr/sbin/policy-rc.d
    own_prc=""
    if [ ! -e "$prc" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$prc"
        chmod 755 "$prc"
        own_prc=1
    fi
    rc=0
    apt-get install -y -qq --no-install-recommends $missing >/dev/null || rc=$?
    if [ -n "$own_prc" ]; then rm -f "$prc"; fi
    [ "$rc" -eq 0 ] || exit "$rc"
fi

if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import libvirt' 2>/dev/null; then
    echo "libvirt-test-env: pip install libvirt-python into .venv"
    .venv/bin/pip install -q libvirt-python
fi
