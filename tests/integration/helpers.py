"""Small helpers for integration tests that drive the agent over gRPC."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc

from agent.pb import tabletmanagerdata_pb2
from tests.agent_process import AgentProcess

if TYPE_CHECKING:  # types only: benchmarks import this module too
    from tests.integration.conftest import AgentFactory
    from tests.sandbox import Sandbox, SandboxFactory


def backup(agent: AgentProcess, timeout: float = 300, **fields: object) -> list[str]:
    """Run Backup and return the event texts; raises grpc.RpcError on failure."""
    with agent.channel() as ch:
        req = tabletmanagerdata_pb2.BackupRequest(**fields)  # type: ignore[arg-type]
        return [r.event.value for r in agent.stub(ch).Backup(req, timeout=timeout)]


def restore(agent: AgentProcess, timeout: float = 300, **fields: object) -> list[str]:
    with agent.channel() as ch:
        req = tabletmanagerdata_pb2.RestoreFromBackupRequest(**fields)  # type: ignore[arg-type]
        return [r.event.value for r in agent.stub(ch).RestoreFromBackup(req, timeout=timeout)]


def rpc_error(fn: object, *args: object, **kwargs: object) -> grpc.RpcError:
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as e:
        return e
    raise AssertionError("expected the RPC to fail")


def backup_dirs(root: Path, keyspace: str = "ks", shard: str = "0") -> list[Path]:
    d = root / keyspace / shard
    return sorted(p for p in d.iterdir() if p.is_dir()) if d.exists() else []


def complete_backups(root: Path) -> list[Path]:
    return [p for p in backup_dirs(root) if (p / "MANIFEST").exists()]


def manifest(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((path / "MANIFEST").read_text())
    return data


# Backups through an object store (tests/integration/test_{s3,gcs,azblob}_backups.py): the same scenarios,
# each backend's module giving its store (flags, MANIFESTs, fault proxy) and the agents' environment.

XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]


class Faults(Protocol):
    """What the scenarios use of tests/faulty_proxy.py's FaultyProxy."""

    mode: str

    @property
    def injected(self) -> Mapping[str, int]: ...


class ObjectStore(Protocol):
    """A bucket or container the agents back up into, maybe through a proxy that injects faults."""

    @property
    def proxy(self) -> Faults | None: ...

    def flags(self) -> list[str]: ...

    def manifests(self) -> list[dict[str, object]]: ...


def count(sb: Sandbox, table: str = "t") -> int:
    return int(sb.value(f"SELECT COUNT(*) FROM test.{table}"))


def incompressible(sb: Sandbox, megabytes: int) -> str:
    """A table of random bytes, so objects are big enough for several parts."""
    sb.sql("CREATE DATABASE IF NOT EXISTS test")
    sb.sql("CREATE TABLE IF NOT EXISTS test.r (id INT AUTO_INCREMENT PRIMARY KEY, b VARBINARY(1024))")
    sb.sql(f"INSERT INTO test.r (b) SELECT RANDOM_BYTES(1000) FROM test.seq_1_to_{megabytes * 1000}")
    return sb.gtid_binlog_pos()


@dataclass(frozen=True)
class Tablets:
    """The tablets of a backup test: a primary, its replica (the one backed up), and the factories of
    fresh tablets and of agents (tests/integration/conftest.py's `tablets` fixture)."""

    primary: Sandbox
    replica: Sandbox
    sandbox_factory: SandboxFactory
    agent_factory: AgentFactory

    def fresh(self) -> Sandbox:
        """A new tablet set up as a replica of the primary, not replicating: a restore target."""
        sb = self.sandbox_factory()
        sb.make_replica_of(self.primary, start=False)
        return sb


def builtin_round_trip(
    t: Tablets, store: ObjectStore, *, flags: list[str], env: dict[str, str] | None = None
) -> dict[str, object]:
    """A builtin backup of 120 rows restored on a fresh tablet; its MANIFEST."""
    t.replica.wait_for_gtid(t.primary.write_rows(120))
    backup(t.agent_factory(t.replica, extra=flags, env=env))
    (m,) = store.manifests()
    assert m["BackupMethod"] == "builtin" and m["Keyspace"] == "ks"
    fresh = t.fresh()
    restore(t.agent_factory(fresh, alias="zone1-0000000103", extra=flags, env=env))
    assert count(fresh) == 120
    return m


def incrementals_and_pitr(
    t: Tablets, store: ObjectStore, *, env: dict[str, str] | None = None, restore_full: bool = False
) -> list[dict[str, object]]:
    """An xtrabackup full backup and two incrementals, restored on a fresh tablet to the position between
    the incrementals and then to the end (first the full backup alone, with `restore_full`); the MANIFESTs."""
    flags = [*store.flags(), *XTRA]
    agent = t.agent_factory(t.replica, extra=flags, env=env)
    t.replica.wait_for_gtid(t.primary.write_rows(30))
    backup(agent)
    fresh = t.fresh()
    other = t.agent_factory(fresh, alias="zone1-0000000104", extra=flags, env=env)
    if restore_full:
        restore(other)
        assert count(fresh) == 30
    middle = t.primary.write_rows(12)
    t.replica.wait_for_gtid(middle)
    backup(agent, incremental_from_pos="auto")
    end = t.primary.write_rows(8)
    t.replica.wait_for_gtid(end)
    backup(agent, incremental_from_pos="auto")
    manifests = store.manifests()
    assert [bool(m["Incremental"]) for m in manifests] == [False, True, True]
    assert manifests[0]["BackupMethod"] == "xtrabackup"
    restore(other, restore_to_pos=middle)
    assert count(fresh) == 42
    restore(other, restore_to_pos=end)
    assert count(fresh) == 50
    return manifests


def round_trip_through_faults(
    t: Tablets, store: ObjectStore, *, megabytes: int, env: dict[str, str] | None = None
) -> tuple[dict[str, object], Sandbox]:
    """A builtin backup of `megabytes` of random rows through the fault proxy (some 503s and dropped
    connections are retried), restored on a fresh tablet; the MANIFEST and the fresh tablet."""
    t.replica.wait_for_gtid(incompressible(t.primary, megabytes))
    flags = store.flags()
    backup(t.agent_factory(t.replica, extra=flags, env=env))
    assert store.proxy is not None
    assert store.proxy.injected["503"] >= 2 and store.proxy.injected["drop"] >= 1, store.proxy.injected
    (m,) = store.manifests()
    fresh = t.fresh()
    restore(t.agent_factory(fresh, alias="zone1-0000000105", extra=flags, env=env))
    assert count(fresh, "r") == megabytes * 1000
    return m, fresh


def backup_while_store_is_down(
    t: Tablets, store: ObjectStore, *, megabytes: int, env: dict[str, str] | None = None
) -> tuple[grpc.RpcError, AgentProcess]:
    """A backup while the proxy answers every request with 500: it fails as UNAVAILABLE, leaves no
    MANIFEST, and mysqld and replication are back; the error and the agent."""
    t.replica.wait_for_gtid(incompressible(t.primary, megabytes))
    assert store.proxy is not None
    agent = t.agent_factory(t.replica, extra=store.flags(), env=env)
    store.proxy.mode = "down"  # after the start: its storage check would refuse a storage that is down
    err = rpc_error(backup, agent)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert store.manifests() == []
    t.replica.wait_replicating()
    return err, agent
