"""Backups and restores through the real agent into a real Azure Blob service (Azurite, on 127.0.0.1):
builtin, xtrabackup, incrementals and a point-in-time restore; also through a proxy that injects faults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.azuriteserver import ACCOUNT, KEY, AzuriteServer
from tests.conftest import SandboxFactory
from tests.faulty_proxy import FaultyProxy
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, restore, rpc_error
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration
XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]
KEY_ENV = {"VT_AZBLOB_ACCOUNT_KEY": KEY}


@dataclass(frozen=True)
class Container:
    server: AzuriteServer
    name: str
    key_file: Path  # holds the account key, mode 0600
    proxy: FaultyProxy | None = None  # when set, the agent talks to the service through it

    def flags(self, *more: str) -> list[str]:
        endpoint = f"{self.proxy.endpoint}/{ACCOUNT}" if self.proxy else self.server.endpoint
        return [
            "--backup_storage_implementation", "azblob", "--azblob_backup_account_name", ACCOUNT,
            "--azblob_backup_container_name", self.name, "--azblob_backup_storage_root", "prod",
            "--azblob_backup_endpoint", endpoint, "--azblob_backup_buffer_size", str(1 << 20), *more,
        ]  # fmt: skip

    def manifests(self) -> list[dict[str, object]]:
        client = self.server.service().get_container_client(self.name)
        names = [n for n in self.server.blob_names(self.name) if n.endswith("/MANIFEST")]
        return [json.loads(client.download_blob(n).readall()) for n in names]


@pytest.fixture
def container(azurite: AzuriteServer, azure_container: str, tmp_path: Path) -> Container:
    key_file = tmp_path / "azblob.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    return Container(azurite, azure_container, key_file)


def count(sb: Sandbox, table: str = "t") -> int:
    return int(sb.value(f"SELECT COUNT(*) FROM test.{table}"))


def incompressible(sb: Sandbox, megabytes: int) -> str:
    """A table of random bytes, so objects span several blocks."""
    sb.sql("CREATE DATABASE IF NOT EXISTS test")
    sb.sql("CREATE TABLE IF NOT EXISTS test.r (id INT AUTO_INCREMENT PRIMARY KEY, b VARBINARY(1024))")
    sb.sql(f"INSERT INTO test.r (b) SELECT RANDOM_BYTES(1000) FROM test.seq_1_to_{megabytes * 1000}")
    return sb.gtid_binlog_pos()


def test_builtin_backup_and_restore_through_azblob(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    container: Container,
) -> None:
    replica.wait_for_gtid(primary.write_rows(120))
    flags = container.flags("--azblob_backup_account_key_file", str(container.key_file))
    backup(agent_factory(replica, extra=flags))
    (m,) = container.manifests()
    assert m["BackupMethod"] == "builtin" and m["Keyspace"] == "ks"
    assert all(n.startswith("prod/ks/0/") for n in container.server.blob_names(container.name))
    fresh = sandbox_factory()
    fresh.make_replica_of(primary, start=False)
    restore(agent_factory(fresh, alias="zone1-0000000103", extra=flags))
    assert count(fresh) == 120


def test_xtrabackup_incrementals_and_pitr_through_azblob(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    container: Container,
) -> None:
    flags = [*container.flags(), *XTRA]
    agent = agent_factory(replica, extra=flags, env=KEY_ENV)
    replica.wait_for_gtid(primary.write_rows(30))
    backup(agent)
    fresh = sandbox_factory()
    fresh.make_replica_of(primary, start=False)
    other = agent_factory(fresh, alias="zone1-0000000104", extra=flags, env=KEY_ENV)
    restore(other)
    assert count(fresh) == 30
    middle = primary.write_rows(12)
    replica.wait_for_gtid(middle)
    backup(agent, incremental_from_pos="auto")
    end = primary.write_rows(8)
    replica.wait_for_gtid(end)
    backup(agent, incremental_from_pos="auto")
    assert [(m["BackupMethod"], bool(m["Incremental"])) for m in container.manifests()] == [
        ("xtrabackup", False), ("builtin", True), ("builtin", True)
    ]  # fmt: skip
    restore(other, restore_to_pos=middle)
    assert count(fresh) == 42
    restore(other, restore_to_pos=end)
    assert count(fresh) == 50


@pytest.fixture
def proxied(container: Container) -> Iterator[Container]:
    p = FaultyProxy(container.server.endpoint)
    yield Container(container.server, container.name, container.key_file, p)
    p.stop()


def test_transient_azblob_faults_are_retried(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    proxied: Container,
) -> None:
    replica.wait_for_gtid(incompressible(primary, 12))
    flags = proxied.flags()
    backup(agent_factory(replica, extra=flags, env=KEY_ENV))
    assert proxied.proxy is not None
    assert proxied.proxy.injected["503"] >= 2 and proxied.proxy.injected["drop"] >= 1, proxied.proxy.injected
    assert len(proxied.manifests()) == 1
    fresh = sandbox_factory()
    fresh.make_replica_of(primary, start=False)
    restore(agent_factory(fresh, alias="zone1-0000000105", extra=flags, env=KEY_ENV))
    assert count(fresh, "r") == 12000


def test_persistent_azblob_failure_fails_the_backup_cleanly(
    primary: Sandbox,
    replica: Sandbox,
    agent_factory: AgentFactory,
    proxied: Container,
) -> None:
    replica.wait_for_gtid(incompressible(primary, 6))
    assert proxied.proxy is not None
    agent = agent_factory(replica, extra=proxied.flags(), env=KEY_ENV)
    proxied.proxy.mode = "down"  # after the start: its storage check would refuse a storage that is down
    err = rpc_error(backup, agent)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert "InternalError (HTTP 500)" in (err.details() or "") and "abort" not in (err.details() or "")
    assert KEY not in (err.details() or "") and KEY not in agent.log()
    assert proxied.server.blob_names(proxied.name) == []
    replica.wait_replicating()  # mysqld and replication are back
