#!/usr/bin/env bash
# Optional tools for profiling the benchmarks (not needed by `make bench` itself): pyinstrument, into
# .venv only. Usage: scripts/bench-deps.sh; then e.g.
#   ip netns exec NS .venv/bin/python -m pyinstrument -m netmedic heal --domain-xml-dir ...
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
.venv/bin/python -c 'import pyinstrument' 2>/dev/null || .venv/bin/pip install -q pyinstrument
