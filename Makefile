# loopwatch: `make run` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Two test processes: most tests wait on a daemon, a server or a pool, not on a CPU.
WORKERS ?= 2

# The newest Python the machine has, for the suite's second run (CI runs both).
PYTHON_NEXT ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) $(shell command -v python3.13 2>/dev/null))

.PHONY: run test test-next lint typecheck unit integration bench deps-system dashboard clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(PY) -m pip install --quiet -e '.[daemon]'
	touch $@

$(VENV)/.installed-dev: $(BIN)/activate pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/loopwatch run

# Debian's prometheus (promtool, and a real server for the integration tests), systemd
# and tmux (a real terminal for `loopwatch top`) when running as root; otherwise the tests
# that need them skip (or fail under CI=true).
deps-system:
	@missing=""; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check loopwatch tests benchmarks deploy examples
	$(BIN)/ruff format --check loopwatch tests benchmarks deploy examples

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: $(VENV)/.installed-dev deps-system lint typecheck
	$(BIN)/pytest -n $(WORKERS) --cov --cov-report=term:skip-covered --durations=20

# The whole of `make test` again on Python 3.13, in a venv of its own.
test-next:
	@test -n "$(PYTHON_NEXT)" || { echo "test-next: no python3.13 on this machine"; exit 1; }
	$(MAKE) test PYTHON=$(PYTHON_NEXT) VENV=.venv-3.13

# Fast tests only (no daemon subprocess, Prometheus or cluster), and the others.
unit: $(VENV)/.installed-dev
	$(BIN)/pytest -n $(WORKERS) -m "not integration"

integration: $(VENV)/.installed-dev deps-system
	$(BIN)/pytest -n $(WORKERS) -m integration

bench: $(VENV)/.installed-dev
	$(BIN)/loopwatch bench --out benchmarks/results

dashboard: $(VENV)/.installed-dev
	$(PY) deploy/grafana/generate.py > deploy/grafana/dashboards/loopwatch.json

clean:
	rm -rf $(VENV) .venv-3.13 .mypy_cache .ruff_cache .pytest_cache .coverage
