# tablet-agent developer commands. `make setup run` is the quick start; `make test` runs the suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
PROTOS := $(wildcard protos/agent/pb/*.proto)
# Azurite (Azure Blob emulator, for the azblob tests): npm into a git-ignored folder, never globally
AZURITE_VERSION := 3.35.0
AZURITE := .tools/azurite/node_modules/.bin/azurite-blob

.PHONY: setup system-packages run test test-unit lint proto proto-check bench clean install

SYSTEM_TOOLS := mariadbd mariabackup mbstream mariadb-binlog zstd lz4 pigz etcd etcdctl node npm systemd-analyze duk promtool
APT_PACKAGES := mariadb-server mariadb-backup mariadb-client zstd lz4 pigz python3-venv etcd-server etcd-client
NODE_PACKAGES := nodejs npm
# For the unit's tests only, without recommends (no dbus), nothing started: systemd for systemd-analyze,
# duktape for polkit's JavaScript engine (the polkit rule's test), prometheus for promtool (the alert rules' test).
APT_TOOLS_ONLY := systemd duktape prometheus

setup: system-packages $(VENV)/.installed $(AZURITE)

system-packages:
	@missing=$$(for t in $(SYSTEM_TOOLS); do PATH=$$PATH:/usr/sbin command -v $$t >/dev/null || echo $$t; done); \
	if [ -n "$$missing" ]; then \
	  node=$$(command -v npm >/dev/null || echo "$(NODE_PACKAGES)"); \
	  echo "installing with apt: $(APT_PACKAGES) $$node $(APT_TOOLS_ONLY) (missing: $$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) $$node >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_TOOLS_ONLY) >/dev/null; \
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
	$(VENV)/bin/ruff check agent engines tests bench devtools systemd/tablet-agent-paths
	$(VENV)/bin/ruff format --check agent engines tests bench devtools systemd/tablet-agent-paths
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy systemd/tablet-agent-paths

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

# `make install` (as root): the programs in their own venv under PREFIX, linked into BINDIR, the systemd
# unit, the polkit rule, `tablet-agent-paths` and the examples (README, "Installing on Debian").
# DESTDIR stages the whole tree under another root; the links are relative, so it runs in place there.
PREFIX ?= /opt/tablet-agent
BINDIR ?= /usr/local/bin
SYSCONFDIR ?= /etc
UNITDIR ?= $(SYSCONFDIR)/systemd/system
POLKITDIR ?= $(SYSCONFDIR)/polkit-1/rules.d
PYTHON3 ?= python3
PROGRAMS := tablet-agent tabletctl tablet-agent-paths

install:
	@$(PYTHON3) -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	  || { echo "make install needs Python >= 3.11 with venv: apt-get install python3-venv (or set PYTHON3)"; exit 1; }
	$(PYTHON3) -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps .
	$(DESTDIR)$(PREFIX)/bin/python -m pip install -q --disable-pip-version-check .
	sed '1s|.*|#!$(DESTDIR)$(PREFIX)/bin/python|' systemd/tablet-agent-paths > $(DESTDIR)$(PREFIX)/bin/tablet-agent-paths
	chmod 755 $(DESTDIR)$(PREFIX)/bin/tablet-agent-paths
	install -d $(DESTDIR)$(BINDIR)
	for p in $(PROGRAMS); do ln -sfr $(DESTDIR)$(PREFIX)/bin/$$p $(DESTDIR)$(BINDIR)/$$p; done
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(POLKITDIR) $(DESTDIR)$(PREFIX)/share/doc
	sed -e 's|/usr/local/bin/|$(BINDIR)/|' -e 's|/opt/tablet-agent/|$(PREFIX)/|' \
	  -e 's|/etc/tablet-agent/|$(SYSCONFDIR)/tablet-agent/|g' systemd/tablet-agent@.service \
	  > $(DESTDIR)$(UNITDIR)/tablet-agent@.service
	chmod 644 $(DESTDIR)$(UNITDIR)/tablet-agent@.service
	for u in tablet-agent-backup@.service tablet-agent-backup@.timer tablet-agent-incremental@.service \
	  tablet-agent-incremental@.timer; do \
	  sed -e 's|/usr/local/bin/|$(BINDIR)/|' -e 's|/opt/tablet-agent/|$(PREFIX)/|' \
	    -e 's|/etc/tablet-agent/|$(SYSCONFDIR)/tablet-agent/|g' systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u; \
	  chmod 644 $(DESTDIR)$(UNITDIR)/$$u; done
	install -m 644 systemd/50-tablet-agent.rules $(DESTDIR)$(POLKITDIR)/50-tablet-agent.rules
	install -m 644 README.md systemd/example.toml systemd/example.env systemd/paths.conf.example \
	  $(DESTDIR)$(PREFIX)/share/doc/
	install -d -m 750 $(DESTDIR)$(SYSCONFDIR)/tablet-agent
	@if [ -z "$(DESTDIR)" ] && getent group mysql >/dev/null; then chgrp mysql $(SYSCONFDIR)/tablet-agent; \
	  else echo "note: run 'chgrp mysql $(SYSCONFDIR)/tablet-agent' once the mysql group exists"; fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed $(PROGRAMS) in $(DESTDIR)$(PREFIX)/bin, linked from $(DESTDIR)$(BINDIR)"

# `make bench` runs every benchmark at its default sizes (under 15 minutes on 2 cores); BENCH="builtin pitr" some
bench: setup
	bench/run $(or $(BENCH),all)

clean:
	rm -rf var build *.egg-info .mypy_cache .ruff_cache .pytest_cache
