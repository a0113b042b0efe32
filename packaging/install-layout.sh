#!/bin/sh
# Installs everything but the Python package into DESTDIR, at the same paths for the .deb and the .rpm
# (debian/rules and rpm/netmedic.spec both call it; tests/integration/test_packaging.py checks both packages
# against one expected layout):
#
#   /usr/libexec/netmedic/libvirt-qemu-hook     hooks/scripts/qemu (if present), shebang /usr/bin/python3
#   /etc/libvirt/hooks/qemu.d/netmedic          symlink to it (not a conffile: removed with the package)
#   /usr/libexec/netmedic/libvirt-network-hook  hooks/scripts/network (if present)
#   /etc/libvirt/hooks/network.d/netmedic       symlink to it
#   /usr/lib/NetworkManager/dispatcher.d/90-netmedic   netmedic/sources/scripts/netmedic
#   /usr/lib/udev/rules.d/90-netmedic.rules     netmedic/sources/scripts/90-netmedic.rules, its RUN program
#                                               netmedic/sources/scripts/netmedic-udev at the path it names
#   UNITDIR/netmedic.service                    packaging/systemd/netmedic.service
#   /etc/netmedic/policy.yaml                   policies/default.yaml (a conffile)
#   /etc/logrotate.d/netmedic                   packaging/logrotate/netmedic
#   /usr/share/man/man8/netmedic.8              generated from the argparse parser
#   /usr/share/bash-completion/completions/netmedic   generated from the argparse parser
#   /usr/share/netmedic/prometheus/             packaging/prometheus/: alert rules, their promtool tests,
#                                               the Grafana dashboard (docs/monitoring.md)
#   /var/log/netmedic, /var/lib/netmedic        0750
#
# usage: install-layout.sh DESTDIR [SRCDIR [UNITDIR [PYTHON]]]
set -eu
DESTDIR=$1
SRC=${2:-.}
UNITDIR=${3:-/usr/lib/systemd/system}
PYTHON=${4:-/usr/bin/python3}
P=$SRC/packaging

inst() {  # inst MODE SRC DEST
    install -D -m "$1" "$2" "$DESTDIR$3"
}
script() {  # script SRC DEST: an executable with an absolute interpreter (hooks and dispatcher get no PATH)
    inst 0755 "$1" "$2"
    sed -i -e '1s|^#! *\(/usr\)\{0,1\}/bin/env  *python3\{0,1\}\b|#!/usr/bin/python3|' \
        -e '1s|^#! *\(/usr\)\{0,1\}/bin/python3\{0,1\}\b|#!/usr/bin/python3|' "$DESTDIR$2"
}

if [ -f "$SRC/hooks/scripts/qemu" ]; then
    script "$SRC/hooks/scripts/qemu" /usr/libexec/netmedic/libvirt-qemu-hook
    install -d "$DESTDIR/etc/libvirt/hooks/qemu.d"
    ln -sfn /usr/libexec/netmedic/libvirt-qemu-hook "$DESTDIR/etc/libvirt/hooks/qemu.d/netmedic"
fi
if [ -f "$SRC/hooks/scripts/network" ]; then
    script "$SRC/hooks/scripts/network" /usr/libexec/netmedic/libvirt-network-hook
    install -d "$DESTDIR/etc/libvirt/hooks/network.d"
    ln -sfn /usr/libexec/netmedic/libvirt-network-hook "$DESTDIR/etc/libvirt/hooks/network.d/netmedic"
fi
# The event sources' entry scripts and udev rule (netmedic/sources/scripts/, beside the sources that
# run them): the NetworkManager dispatcher script, and the udev rule with its RUN program installed at
# the absolute path the rule names.
S=$SRC/netmedic/sources/scripts
script "$S/netmedic" /usr/lib/NetworkManager/dispatcher.d/90-netmedic
run=$(sed -n 's/.*RUN+="\(\/[^" ]*\).*/\1/p' "$S/90-netmedic.rules" | head -1)
[ -n "$run" ] || { echo "install-layout: no absolute RUN+= in $S/90-netmedic.rules" >&2; exit 1; }
inst 0644 "$S/90-netmedic.rules" /usr/lib/udev/rules.d/90-netmedic.rules
script "$S/netmedic-udev" "$run"
inst 0644 "$P/systemd/netmedic.service" "$UNITDIR/netmedic.service"
inst 0644 "$SRC/policies/default.yaml" /etc/netmedic/policy.yaml
inst 0644 "$P/logrotate/netmedic" /etc/logrotate.d/netmedic
install -d -m 0755 "$DESTDIR/usr/share/man/man8" "$DESTDIR/usr/share/bash-completion/completions"
"$PYTHON" "$P/gen-docs.py" "$SRC" --man "$DESTDIR/usr/share/man/man8/netmedic.8" \
    --completion "$DESTDIR/usr/share/bash-completion/completions/netmedic"
chmod 0644 "$DESTDIR/usr/share/man/man8/netmedic.8" "$DESTDIR/usr/share/bash-completion/completions/netmedic"
for f in netmedic-alerts.yml netmedic-alerts.test.yml netmedic-dashboard.json; do
    inst 0644 "$P/prometheus/$f" "/usr/share/netmedic/prometheus/$f"
done
install -d -m 0750 "$DESTDIR/var/log/netmedic" "$DESTDIR/var/lib/netmedic"
