# netmedic — `make demo` runs the lab (the main job on a machine with no hypervisor);
# `make test` runs the whole suite. Both install what is missing first (scripts/bootstrap.sh).
PY      ?= .venv/bin/python
DISTRO_PY ?= /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: all bootstrap demo test unit lint test-latest test-distro test-py37 bench clean

all: test

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m netmedic lab

lint: bootstrap
	$(PY) -m ruff check .
	@# The oldest Python supported is 3.7 (docs/install.md), the RPM's is 3.9 (EL9): compile every module
	@# with both when they are here.
	@for v in 3.7 3.9; do py=""; \
	  for c in $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v.*/bin/python$$v 2>/dev/null) $$(command -v python$$v); do \
	    if "$$c" -c pass 2>/dev/null; then py=$$c; break; fi; done; \
	  if [ -n "$$py" ]; then echo "compile with $$py"; \
	    $$py -m compileall -q -x '/\.venv/' netmedic healers policies dispatcher hooks tests || exit 1; \
	  else echo "python$$v not installed: ruff's target-version py37 checks the syntax"; fi; done

# The newest PyPI releases (venv), then Debian 12's distro packages (pyroute2 0.7.2, structlog 22.3),
# tests/unit and tests/integration both; then the tests that need no root under Python 3.7 (the oldest
# supported: docs/install.md).
test: lint test-latest test-distro test-py37

# tests/unit only: no root, no namespaces, a few seconds (both interpreters; no bootstrap).
unit:
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)
	$(DISTRO_PY) -m pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)

test-latest: bootstrap
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

test-distro: bootstrap
	$(DISTRO_PY) -m pytest -q -p no:cacheprovider -m "not soak" --durations=15 $(PYTEST_ARGS)

# Python 3.7 (the 4.19-era distributions) with the last PyPI releases for it: build/venv-py3.7,
# made by scripts/py37-venv.sh. The tests listed need neither root nor network namespaces.
PY37_TESTS ?= tests/unit
test-py37:
	@py37=$$(bash scripts/py37-venv.sh) && $$py37 -m pytest -q -p no:cacheprovider $(PY37_TESTS)

bench: bootstrap
	$(PY) -m bench

# Packages (docs/packaging.md): build/packages/netmedic_*.deb and netmedic-*.noarch.rpm, with lintian/rpmlint.
.PHONY: deb rpm packaging-deps
packaging-deps:
	@bash scripts/packaging-deps.sh

deb: packaging-deps
	@bash packaging/build.sh deb

rpm: packaging-deps
	@bash packaging/build.sh rpm

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
