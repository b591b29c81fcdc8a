"""Shared fixtures: real MariaDB sandboxes (see tests/sandbox.py), always stopped at teardown, a real
S3-compatible server (tests/s3server.py), a real Azure Blob service (tests/azuriteserver.py) and a local
Google Cloud Storage (tests/gcsserver.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import azuriteserver
from tests.azuriteserver import AzuriteServer
from tests.gcsserver import GcsServer
from tests.s3server import S3Server
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 for the session (tests use their own buckets)."""
    pytest.importorskip("moto", reason="moto[server] is a dev dependency: pip install -e '.[dev]'")
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    name = f"backups-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azurite's blob service on 127.0.0.1 for the session (tests use their own containers)."""
    if not azuriteserver.installed():
        pytest.skip(azuriteserver.MISSING)
    pytest.importorskip(
        "azure.storage.blob", reason="azure-storage-blob is a dev dependency: pip install -e '.[dev]'"
    )
    server = AzuriteServer(tmp_path_factory.mktemp("azurite"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """gcp-storage-emulator on 127.0.0.1 for the session (tests use their own buckets)."""
    pytest.importorskip(
        "gcp_storage_emulator", reason="gcp-storage-emulator is a dev dependency: pip install -e '.[dev]'"
    )
    server = GcsServer(tmp_path_factory.mktemp("gcs"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def azure_container(azurite: AzuriteServer) -> str:
    return azurite.new_container()


@pytest.fixture
def gcs_bucket(gcs_server: GcsServer) -> str:
    name = f"backups-{uuid.uuid4().hex[:12]}"
    gcs_server.create_bucket(name)
    return name
