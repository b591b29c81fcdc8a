"""Full builtin backups and restores through gRPC against real MariaDB sandboxes."""

from __future__ import annotations

import threading

import grpc
import pytest

from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, backup_dirs, complete_backups, manifest, restore, rpc_error
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration


def count(sb: Sandbox, table: str = "t") -> int:
    return int(sb.value(f"SELECT COUNT(*) FROM test.{table}"))


def test_backup_replica_then_restore_into_a_fresh_replica(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root,
) -> None:
    pos = primary.write_rows(200)
    replica.wait_for_gtid(pos)
    agent = agent_factory(replica)
    events = backup(agent)
    assert any("copying" in e for e in events), events  # the summary of the copy, not a line per file
    (done,) = complete_backups(storage_root)
    m = manifest(done)
    assert m["BackupMethod"] == "builtin" and m["Position"] == f"MariaDB/{pos}"
    assert (
        m["CompressionEngine"] == "zstd" and m["Keyspace"] == "ks" and m["TabletAlias"] == "zone1-0000000102"
    )
    assert all(set(fe) >= {"Base", "Name", "Hash", "ParentPath"} for fe in m["FileEntries"])  # type: ignore[union-attr]
    # the replica is back: mysqld up, replicating, read_only as before
    replica.wait_replicating()
    after = primary.write_rows(50)
    replica.wait_for_gtid(after)

    fresh = sandbox_factory()
    fresh.make_replica_of(primary, start=False)
    target = agent_factory(fresh, alias="zone1-0000000103")
    restore(target)
    assert count(fresh) == 200
    assert pos in str(fresh.value("SELECT @@GLOBAL.gtid_slave_pos"))
    status = fresh.replica_status()
    assert status["Master_Port"] == primary.port and status["Slave_SQL_Running"] == "No"
    fresh.sql("START SLAVE")  # the source was kept: attaching is just starting replication
    fresh.wait_for_gtid(after)
    assert count(fresh) == 250


def test_primary_refuses_without_allow_primary(
    primary: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    primary.write_rows(5)
    agent = agent_factory(primary, extra=["--init_tablet_type", "PRIMARY"])
    err = rpc_error(backup, agent)
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "allow_primary" in (err.details() or "")
    assert backup_dirs(storage_root) == []
    backup(agent, allow_primary=True)
    assert len(complete_backups(storage_root)) == 1
    assert primary.is_answering()


def test_concurrent_backups_one_runs(
    replica: Sandbox, primary: Sandbox, agent_factory: AgentFactory, storage_root
):
    primary.write_rows(20)
    agent = agent_factory(replica)
    results: list[object] = []

    def run() -> None:
        try:
            results.append(backup(agent))
        except grpc.RpcError as e:
            results.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(errors) == 1
    assert errors[0].code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "a backup is already running on tablet: zone1-0000000102" in (errors[0].details() or "")
    assert len(complete_backups(storage_root)) == 1


def test_flipped_byte_fails_restore_and_leaves_the_tablet_untouched(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root,
) -> None:
    primary.write_rows(30)
    backup(agent_factory(replica))
    (done,) = complete_backups(storage_root)
    obj = done / "0"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))
    fresh = sandbox_factory()
    fresh.write_rows(7, table="t", database="keep")
    fresh.sql("SET GLOBAL read_only=1")
    target = agent_factory(fresh, alias="zone1-0000000104")
    err = rpc_error(restore, target)
    assert err.code() is grpc.StatusCode.DATA_LOSS, err.details()
    assert f"ks/0/{done.name}/0" in (err.details() or ""), "the error names the stored object"
    assert fresh.is_answering() and fresh.value("SELECT COUNT(*) FROM keep.t") == 7
    assert fresh.value("SELECT @@read_only") == 1
    assert not (target.workdir / "state-zone1-0000000104" / "restore.json").exists()
    assert not [p for p in fresh.root.iterdir() if "tablet-agent" in p.name], "no staging left behind"
