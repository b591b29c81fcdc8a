"""Shared fixtures: real MariaDB sandboxes (see tests/sandbox.py), always stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.sandbox import Sandbox, SandboxFactory, find_program

MISSING_MARIADB = (
    "MariaDB is not installed (no mariadbd / mariadb-install-db on PATH or in /usr/sbin): "
    "`apt-get install mariadb-server mariadb-backup` to run the integration tests"
)


@pytest.fixture(scope="session")
def mariadb_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One datadir initialized by mariadb-install-db per session; sandboxes copy it."""
    if find_program("mariadbd") is None or find_program("mariadb-install-db") is None:
        pytest.skip(MISSING_MARIADB)
    template = Sandbox(tmp_path_factory.mktemp("template"))
    template.init()
    return template.datadir


@pytest.fixture
def sandbox_factory(
    mariadb_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SandboxFactory]:
    factory = SandboxFactory(mariadb_template, tmp_path_factory)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def primary(sandbox_factory: SandboxFactory) -> Sandbox:
    """A running, writable sandbox with binlogs (server_id 1)."""
    return sandbox_factory()


@pytest.fixture
def replica(sandbox_factory: SandboxFactory, primary: Sandbox) -> Sandbox:
    """A sandbox replicating from `primary` with GTIDs, connected and caught up."""
    sandbox = sandbox_factory()
    sandbox.make_replica_of(primary)
    sandbox.wait_replicating()
    sandbox.wait_for_gtid(primary.gtid_binlog_pos())
    return sandbox


@pytest.fixture
def write_rows() -> Callable[..., str]:
    """`write_rows(sandbox, count=10, table="t")` inserts rows on a primary and returns its GTID position."""

    def write(sandbox: Sandbox, count: int = 10, table: str = "t") -> str:
        return sandbox.write_rows(count, table)

    return write
