#!/usr/bin/env bash
# Installs, idempotently, what `make deb` and `make rpm` (and tests/integration/test_packaging.py) need on Debian 12:
#  - the .deb: dpkg-dev, debhelper (compat 13), dh-python with its pyproject plugin (pybuild drives
#    setuptools' PEP 517 backend: netmedic has no setup.py), python3-all, python3-setuptools, fakeroot;
#  - the .rpm: rpm (Debian's rpm package ships rpmbuild);
#  - the linters: lintian, rpmlint (Debian 12 has rpmlint 2.4);
#  - the runtime dependencies of the .deb, so that installing it in the tests needs no download;
#  - for each RPM target (packaging/rpm/targets/*.macros), a local Python of the target's version to
#    byte-compile with (3.9 for EL9): pyenv's, else pythonX.Y on PATH, else `pyenv install X.Y`.
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

if [ "${1:-all}" != deb ]; then
    cd "$(dirname "$0")/.."
    for macros in packaging/rpm/targets/*.macros; do
        v=$(sed -n 's/^%python3_version  *\([0-9.]*\)$/\1/p' "$macros")
        [ -n "$v" ] || continue
        found=""
        for c in $(ls -d "${PYENV_ROOT:-${HOME:-/root}/.pyenv}"/versions/"$v".*/bin/python"$v" 2>/dev/null) \
                 $(command -v "python$v" 2>/dev/null); do
            if "$c" -c pass 2>/dev/null; then found=$c; break; fi
        done
        if [ -z "$found" ]; then
            pyenv=$(command -v pyenv || ls "${PYENV_ROOT:-${HOME:-/root}/.pyenv}/bin/pyenv" 2>/dev/null) || {
                echo "packaging-deps: the $(basename "$macros" .macros) RPM needs a local python$v (install pyenv or python$v)" >&2
                exit 1
            }
            echo "packaging-deps: pyenv install $v (a source build) for the $(basename "$macros" .macros) RPM"
            "$pyenv" install -s "$v"
        fi
    done
fi
