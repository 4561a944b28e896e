# CLIDash developer entry points. Everything runs from a local virtualenv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-unit demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml sdk-lite/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./sdk-lite -e '.[dev,optimizer]'
	touch $(STAMP)

## make test: unit tests, then integration and e2e tests against throwaway servers
test: install
	$(PY) -m pytest -q tests

test-unit: install
	$(PY) -m pytest -q tests/unit

## make demo: primary + hot standby + proxy on this machine, a mixed workload, per-server counts
demo: install
	$(PY) deploy/local/demo.py

## make bench: pgbench through CLIDash vs direct, PgBouncer and a byte pipe; each mode; policy propagation; SDK cost
bench: install
	$(PY) bench/pgbench_compare.py
	$(PY) bench/modes.py
	$(PY) bench/policy_propagation.py
	$(PY) bench/sdk_overhead.py
	$(PY) bench/telemetry_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
