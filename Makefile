# netmedic — `make demo` runs the lab (the main job on a machine with no hypervisor);
# `make test` runs the whole suite. Both install what is missing first (scripts/bootstrap.sh).
PY      ?= .venv/bin/python
DISTRO_PY ?= /usr/bin/python3
PYTEST_ARGS ?=

.PHONY: all bootstrap demo test unit lint test-latest test-distro bench clean

all: test

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m netmedic lab

lint: bootstrap
	$(PY) -m ruff check .
	@# The DEB/RPM targets run Python 3.9 (RHEL 9): compile every module with 3.9 when it is here.
	@py39=""; for c in $$(ls -d /root/.pyenv/versions/3.9*/bin/python3.9 2>/dev/null) $$(command -v python3.9); do \
	  if "$$c" -c pass 2>/dev/null; then py39=$$c; break; fi; done; \
	if [ -n "$$py39" ]; then echo "compile with $$py39"; \
	  $$py39 -m compileall -q -x '/\.venv/' netmedic healers policies dispatcher hooks tests; \
	else echo "python3.9 not installed: ruff's target-version py39 checks the syntax"; fi

# The newest PyPI releases (venv), then Debian 12's distro packages (pyroute2 0.7.2, structlog 22.3).
# tests/unit and tests/integration, both.
test: lint test-latest test-distro

# tests/unit only: no root, no namespaces, a few seconds (both interpreters; no bootstrap).
unit:
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)
	$(DISTRO_PY) -m pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)

test-latest: bootstrap
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-distro: bootstrap
	$(DISTRO_PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

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
