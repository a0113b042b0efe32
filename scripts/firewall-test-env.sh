#!/usr/bin/env bash
# Installs what the firewall tests need (Debian 12), idempotently:
#   nftables (nft, used by the tests to load rulesets inside their own namespaces), python3-nftables
#   (libnftables' Python binding, which netmedic reads the ruleset through), firewalld (the tests run
#   a real firewalld with its own dbus-daemon inside a test namespace), iptables (nft + legacy).
# Nothing is started: service starts are refused while installing (a policy-rc.d of our own, as
# nm-test-env.sh does), and the tests start their own firewalld.
# The .venv (a pyenv Python) cannot pip-install the binding (not on PyPI): a .pth file in its
# site-packages makes the Debian package's `nftables` module (pure Python over ctypes) importable
# there, and nothing else of /usr/lib/python3/dist-packages.
set -euo pipefail
cd "$(dirname "$0")/.."

. "$(dirname "$0")/apt-ensure.sh"
apt_ensure firewall-test-env nftables python3-nftables firewalld iptables

# The .venv sees the distro's nftables module through a directory holding only a symlink to it.
if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import nftables' 2>/dev/null; then
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    shim="$site/netmedic-distro-nftables"
    mkdir -p "$shim"
    ln -sfn /usr/lib/python3/dist-packages/nftables "$shim/nftables"
    echo "$shim" > "$site/netmedic-distro-nftables.pth"
    .venv/bin/python -c 'import nftables' && echo "firewall-test-env: .venv sees python3-nftables"
fi
