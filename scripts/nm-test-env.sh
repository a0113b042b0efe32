#!/usr/bin/env bash
# Installs what the NetworkManager / D-Bus / udev event-source tests need (Debian 12), idempotently:
#   network-manager (NetworkManager, nmcli, nm-dispatcher), dbus (dbus-daemon), udev (systemd-udevd,
#   udevadm), python3-dbus + python3-gi (dbus-python and the GLib main loop for /usr/bin/python3:
#   the .venv's pyenv Python has no gi, so the daemon's D-Bus source runs under /usr/bin/python3 in
#   the tests — tests/integration/test_nm_events.py says so), util-linux (unshare, mount).
# Nothing is started: apt does not start services here (policy-rc.d), and the tests start their own
# dbus-daemon, NetworkManager and systemd-udevd inside namespaces of their own.
set -euo pipefail

. "$(dirname "$0")/apt-ensure.sh"
apt_ensure nm-test-env network-manager dbus udev python3-dbus python3-gi util-linux
