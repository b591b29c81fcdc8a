# tablet-agent developer commands. `make setup run` is the quick start; `make test` runs the suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
PROTOS := $(wildcard protos/agent/pb/*.proto)
# Azurite (Azure Blob emulator, for the azblob tests): npm into a git-ignored folder, never globally
AZURITE_VERSION := 3.35.0
AZURITE := .tools/azurite/node_modules/.bin/azurite-blob

.PHONY: setup system-packages run test test-unit lint proto proto-check bench clean

SYSTEM_TOOLS := mariadbd mariabackup mbstream mariadb-binlog zstd lz4 pigz etcd etcdctl node npm promtool
APT_PACKAGES := mariadb-server mariadb-backup mariadb-client zstd lz4 pigz python3-venv etcd-server etcd-client
# promtool (checks deploy/prometheus/ in the tests) comes with Debian's prometheus, without its recommends
APT_NO_RECOMMENDS := prometheus
NODE_PACKAGES := nodejs npm

setup: system-packages $(VENV)/.installed $(AZURITE)

system-packages:
	@missing=$$(for t in $(SYSTEM_TOOLS); do PATH=$$PATH:/usr/sbin command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then \
	  node=$$(command -v npm >/dev/null || echo "$(NODE_PACKAGES)"); \
	  echo "installing with apt: $(APT_PACKAGES) $$node (missing: $$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) $$node >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_NO_RECOMMENDS) >/dev/null; \
	fi

$(AZURITE):
	npm install --prefix .tools/azurite --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

run: setup
	$(PY) -m devtools.devrun

test: lint
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup proto-check
	$(VENV)/bin/ruff check agent engines tests bench devtools
	$(VENV)/bin/ruff format --check agent engines tests bench devtools
	$(VENV)/bin/mypy

proto:
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --mypy_out=. \
	  --grpc_python_out=. --mypy_grpc_out=. $(PROTOS)

proto-check:
	@tmp=$$(mktemp -d); \
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$$tmp --mypy_out=$$tmp \
	  --grpc_python_out=$$tmp --mypy_grpc_out=$$tmp $(PROTOS) && \
	diff -r $$tmp/agent/pb agent/pb -x '__init__.py' -x '__pycache__' -x 'py.typed' \
	  || { echo "generated code in agent/pb drifted from protos/: run 'make proto' and commit"; rm -rf $$tmp; exit 1; }; \
	rm -rf $$tmp

bench: setup
	bench/run all

clean:
	rm -rf var build *.egg-info .mypy_cache .ruff_cache .pytest_cache
