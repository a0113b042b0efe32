#!/usr/bin/env bash
# Installs what the NetworkManager / D-Bus / udev event-source tests need (Debian 12), idempotently:
#   network-manager (NetworkManager, nmcli, nm-dispatcher), dbus (dbus-daemon), udev (systemd-udevd,
#   udevadm), python3-dbus + python3-gi (dbus-python and the GLib main loop for /usr/bin/python3:
#   the .venv's pyenv Python has no gi, so the daemon's D-Bus source runs under /usr/bin/python3 in
#   the tests — tests/integration/test_nm_events.py says so), util-linux (unshare, mount).
# Nothing is started: apt does not start services here (policy-rc.d), and the tests start their own
# dbus-daemon, NetworkManager and systemd-udevd inside namespaces of their own.
set -euo pipefail

APT_PKGS="network-manager dbus udev python3-dbus python3-gi util-linux"
missing=""
for p in $APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "nm-test-env: apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    # apt must not start a system NetworkManager/udevd on the host: refuse service starts while
    # installing unless the host already has a policy (Docker images ship one that exits 101).
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    trap '[ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
