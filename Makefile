# Two entry points for people: `make run` and `make test`. Everything else is plumbing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080
# Debian packages the test suite drives as real peers / speech tools; Node and npm (for
# the pages' axe-core audit) only when npm is missing: a NodeSource nodejs already has it,
# and Debian's npm package would fight it.
TEST_DEBS := chromium espeak-ng flite festival festvox-kdlpc16k festvox-us-slt-hts sox sip-tester kamailio redis-server postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint typecheck unit bench eval sysdeps clean

$(VENV)/.installed-run: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[tts]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-run
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

sysdeps:
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if ! command -v npm >/dev/null 2>&1; then \
	  if command -v node >/dev/null 2>&1; then \
	    echo "node is installed ($$(command -v node)) but npm is not on PATH: Debian's npm would" \
	      "conflict with it. Install npm for that node (NodeSource's nodejs includes it;" \
	      "or put its bin directory on PATH), then run make again." >&2; \
	    exit 1; \
	  fi; \
	  missing="$$missing nodejs npm"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# the virtual agent answers with the example flow and articles unless told otherwise
# (CCENGINE_BOT_FLOWS= make run: none)
run: $(VENV)/.installed-run
	CCENGINE_BOT_FLOWS="$${CCENGINE_BOT_FLOWS-deploy/flows}" \
	CCENGINE_KNOWLEDGE_BASE="$${CCENGINE_KNOWLEDGE_BASE-deploy/knowledge}" \
	$(VENV)/bin/ccengine serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check engine media tests bench
	$(VENV)/bin/ruff format --check engine media tests bench

typecheck: $(VENV)/.installed-test
	$(VENV)/bin/mypy

# test-only JavaScript (axe-core for the pages' accessibility audit), pinned by its lock file
WEB_TEST_DEPS := tests/web/node_modules/.package-lock.json
# sysdeps first: it installs npm (with make -j, nothing else would order the two)
$(WEB_TEST_DEPS): tests/web/package.json tests/web/package-lock.json | sysdeps
	cd tests/web && npm ci --no-audit --no-fund --silent
	@touch $@

test: sysdeps $(VENV)/.installed-test $(WEB_TEST_DEPS) lint typecheck
	$(PY) -m pytest -q -ra --durations=15 -n 2 --dist loadfile -m 'not serial'
	$(PY) -m pytest -q -ra -m serial

bench: sysdeps $(VENV)/.installed-test
	$(PY) -m bench.endpointing
	$(PY) -m bench.endpointing --band phone
	$(PY) -m bench.capacity
	$(PY) -m bench.escalation --parallel 1 8
	$(PY) -m bench.sip --n 1
	$(PY) -m bench.developer
	$(PY) -m bench.gcpause
	$(PY) -m bench.mixer
	$(PY) -m bench.emotion_cost
	$(PY) -m bench.bot
	$(PY) -m bench.cluster

# emotion and escalation on the held-out part of the emotion set (built, then cached)
eval: sysdeps $(VENV)/.installed-test
	$(PY) -m bench.emotion_set --part fresh3
	$(PY) -m bench.emotion_eval

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-output tests/web/node_modules
