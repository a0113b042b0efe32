#!/usr/bin/env bash
# Creates, idempotently, build/venv-py3.7: Python 3.7 -- the system Python of the 4.19-era distributions
# and the oldest netmedic supports (docs/install.md) -- with the newest PyPI releases that run on it, for
# `make test-py37`. Prints the venv's python.
#  - the interpreter: pyenv's 3.7 (${PYENV_ROOT:-~/.pyenv}/versions/3.7.*, the newest), else python3.7 on
#    PATH, else `pyenv install 3.7` when pyenv is there (a source build: minutes);
#  - pyroute2<0.9: 0.9.2, the last release whose metadata allows 3.7, imports typing.Literal (3.8+) and
#    fails on 3.7; 0.8.1 works. pip picks the last releases for 3.7 of the others (structlog 23.1,
#    PyYAML 6.0.1, pytest 7.4).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=build/venv-py3.7
PKGS="pyroute2>=0.7.2,<0.9 structlog>=22.1 PyYAML>=5.4 pytest"

find_py37() {
    local c
    for c in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.7.*/bin/python3.7 2>/dev/null | sort -rV) \
             $(command -v python3.7 2>/dev/null); do
        if "$c" -c 'import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 7)' 2>/dev/null; then
            echo "$c"; return 0
        fi
    done
    return 1
}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys, pyroute2, structlog, yaml, pytest
from pyroute2 import IPRoute
assert sys.version_info[:2] == (3, 7)' 2>/dev/null; then
    echo "$VENV/bin/python"
    exit 0
fi
py=$(find_py37) || {
    pyenv=$(command -v pyenv || ls "${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv" 2>/dev/null) || {
        echo "py37-venv: no Python 3.7 here and no pyenv to build one (install pyenv, or python3.7)" >&2
        exit 1
    }
    echo "py37-venv: pyenv install 3.7 (a source build)" >&2
    "$pyenv" install -s 3.7 >&2
    find_py37
} || { echo "py37-venv: no usable Python 3.7" >&2; exit 1; }
echo "py37-venv: creating $VENV with $("$py" --version 2>&1)" >&2
rm -rf "$VENV"
mkdir -p build
"$py" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >&2
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q $PKGS >&2
"$VENV/bin/python" -c 'from pyroute2 import IPRoute; import structlog, yaml'
echo "$VENV/bin/python"
