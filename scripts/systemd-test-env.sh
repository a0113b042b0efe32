#!/usr/bin/env bash
# The systemd container test's guest (tests/test_systemd.py), idempotently:
#  - debootstrap and systemd-container (systemd-nspawn) on the host;
#  - a Debian 12 root file system with systemd as PID 1 and the .deb's runtime dependencies, cached in
#    /var/cache/netmedic-test/systemd-bookworm (built once, ~60 s; later runs only check it).
# Nothing is started here: the test boots a throw-away overlay of this tree with systemd-nspawn.
set -euo pipefail

CACHE=${NETMEDIC_SYSTEMD_ROOTFS:-/var/cache/netmedic-test/systemd-bookworm}
MIRROR=${NETMEDIC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the guest needs besides systemd: the .deb's dependencies (installed from the cache with no
# network in the test), iptables (the netfilter healer), python3-systemd (sd_notify), procps.
GUEST_PKGS="systemd,systemd-sysv,dbus,iproute2,iptables,procps,python3,python3-pyroute2,python3-structlog,python3-yaml,python3-systemd"

if [ "$(id -u)" != 0 ]; then
    echo "systemd-test-env: needs root" >&2
    exit 1
fi
. "$(dirname "$0")/apt-ensure.sh"
apt_ensure systemd-test-env debootstrap systemd-container

if [ -f "$CACHE/.netmedic-complete" ]; then
    exit 0
fi
echo "systemd-test-env: debootstrap bookworm into $CACHE (once)"
rm -rf "$CACHE.partial"
mkdir -p "$(dirname "$CACHE")"
debootstrap --variant=minbase --include="$GUEST_PKGS" bookworm "$CACHE.partial" "$MIRROR" >/dev/null
# A quiet, fast boot: no getty on the console, no network management in the guest.
chroot "$CACHE.partial" systemctl mask console-getty.service getty@tty1.service \
    systemd-networkd.service systemd-resolved.service systemd-timesyncd.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
echo netmedic-guest > "$CACHE.partial/etc/hostname"
chroot "$CACHE.partial" apt-get clean
rm -rf "$CACHE"
mv "$CACHE.partial" "$CACHE"
touch "$CACHE/.netmedic-complete"
