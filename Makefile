# possync: two commands. `make run` serves on the embedded default; `make test` passes the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-long lint typecheck bench bench-quick bench-tools services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Mosquitto and PostgreSQL binaries for the test fixtures (they start their own servers
# on free ports; nothing here touches the machine's running services), and Chromium for the
# status page's browser test.
services:
	@need=0; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need=1; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need=1; \
	command -v chromium >/dev/null 2>&1 || need=1; \
	if [ $$need = 1 ]; then \
	  echo "installing mosquitto, postgresql and chromium for the test fixtures"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients postgresql chromium >/dev/null; \
	fi

# make run PORT=9000 serves on another port (0: any free one, printed at start).
run: $(STAMP)
	$(BIN)/possync serve $(if $(PORT),--port $(PORT))

lint: $(STAMP)
	$(BIN)/ruff check worker tests bench
	$(BIN)/ruff format --check worker tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) services lint typecheck
	$(BIN)/pytest -q

test-long: $(STAMP) services
	POSSYNC_LONG=1 $(BIN)/pytest -q -m '' --timeout 3600 tests/chaos tests/test_crash.py tests/test_spool.py

# wrk drives P1/P2 from its own process; without it the bench falls back to the aiohttp
# client, which cannot load bare aiohttp enough, and P1 is then reported but not judged.
bench-tools:
	@command -v wrk >/dev/null 2>&1 || { echo "installing wrk for the push benchmarks"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

bench: $(STAMP) services bench-tools
	$(BIN)/python -m bench

bench-quick: $(STAMP) services bench-tools
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache
