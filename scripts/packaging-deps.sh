#!/usr/bin/env bash
# Installs, idempotently, what `make deb` and `make rpm` (and tests/integration/test_packaging.py) need on Debian 12:
#  - the .deb: dpkg-dev, debhelper (compat 13), dh-python with its pyproject plugin (pybuild drives
#    setuptools' PEP 517 backend: netmedic has no setup.py), python3-all, python3-setuptools, fakeroot;
#  - the .rpm: rpm (Debian's rpm package ships rpmbuild);
#  - the linters: lintian, rpmlint (Debian 12 has rpmlint 2.4);
#  - the runtime dependencies of the .deb, so that installing it in the tests needs no download.
# devscripts is not needed (dpkg-buildpackage comes with dpkg-dev).
set -euo pipefail

BUILD_PKGS="dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-build
 python3-installer python3-wheel fakeroot lintian rpm rpmlint"
RUNTIME_PKGS="python3-pyroute2 python3-structlog python3-yaml iproute2"
case "${1:-all}" in
    deb) PKGS="$BUILD_PKGS $RUNTIME_PKGS" ;;
    rpm) PKGS="rpm rpmlint" ;;
    *)   PKGS="$BUILD_PKGS $RUNTIME_PKGS" ;;
esac

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "packaging-deps: missing:$missing (run as root to install them)" >&2
        exit 1
    fi
    echo "packaging-deps: apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
