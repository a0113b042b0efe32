#!/usr/bin/env bash
# What the libvirt tests (tests/integration/test_libvirt.py, tests/integration/test_e2e_guest.py) need, idempotently, on Debian 12:
#  - libvirtd (monolithic daemon) + virtlogd, qemu-system-x86 (the tests run TCG guests with no disk),
#    dnsmasq-base (libvirt's network driver wants it), libvirt-dev + pkg-config (to build libvirt-python),
#    busybox (its udhcpc takes a real dnsmasq lease on a libvirt NAT network);
#  - a Debian cloud kernel + busybox-static, unpacked for the end-to-end guest (below);
#  - python3-libvirt for /usr/bin/python3 (the DEB's interpreter), libvirt-python in .venv.
# Installing the packages starts nothing here (PID 1 is not systemd): the tests start their own
# libvirtd with a clean environment and stop exactly the processes they started.
set -euo pipefail
cd "$(dirname "$0")/.."

. "$(dirname "$0")/apt-ensure.sh"
apt_ensure libvirt-test-env libvirt-daemon-system qemu-system-x86 libvirt-dev pkg-config dnsmasq-base iptables python3-libvirt gcc busybox

# The end-to-end guest (tests/integration/test_e2e_guest.py): a Debian cloud kernel and busybox-static, fetched as
# .debs and unpacked into a cache directory, NOT installed: installing a kernel package runs
# initramfs/bootloader hooks on this shared host, and busybox-static conflicts with busybox (above).
GUEST_DIR=/var/cache/netmedic-test/e2e-guest
if [ ! -x "$GUEST_DIR/root/bin/busybox" ] || ! ls "$GUEST_DIR"/root/boot/vmlinuz-* >/dev/null 2>&1; then
    echo "libvirt-test-env: unpack a Debian cloud kernel + busybox-static into $GUEST_DIR"
    kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)
    if [ -z "$kpkg" ]; then apt-get update -qq >/dev/null; kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1); fi
    [ -n "$kpkg" ] || { echo "libvirt-test-env: no linux-image-*-cloud-amd64 package found" >&2; exit 1; }
    dl=$(mktemp -d)
    chmod 755 "$dl"  # apt's _apt user writes the download
    (cd "$dl" && apt-get download -qq "$kpkg" busybox-static >/dev/null 2>&1)
    rm -rf "$GUEST_DIR.new"
    mkdir -p "$GUEST_DIR.new/root"
    for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$GUEST_DIR.new/root"; done
    rm -rf "$dl" "$GUEST_DIR"
    mv "$GUEST_DIR.new" "$GUEST_DIR"
fi

if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import libvirt' 2>/dev/null; then
    echo "libvirt-test-env: pip install libvirt-python into .venv"
    .venv/bin/pip install -q libvirt-python
fi
