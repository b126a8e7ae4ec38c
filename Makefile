# loopwatch: `make run` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: run test lint typecheck unit integration bench deps-system dashboard clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(PY) -m pip install --quiet -e .
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
	$(BIN)/ruff check loopwatch daemon tests benchmarks deploy examples
	$(BIN)/ruff format --check loopwatch daemon tests benchmarks deploy examples

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: $(VENV)/.installed-dev deps-system lint typecheck
	$(BIN)/pytest --cov --cov-report=term:skip-covered

bench: $(VENV)/.installed-dev
	$(BIN)/loopwatch bench --out benchmarks/results

dashboard: $(VENV)/.installed-dev
	$(PY) deploy/grafana/generate.py > deploy/grafana/dashboards/loopwatch.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage
