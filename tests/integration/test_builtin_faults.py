"""Fault cases of the builtin engine: each leaves mysqld running, replication as before, no complete backup."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.pb import tabletmanagerdata_pb2
from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, backup_dirs, complete_backups, restore, rpc_error
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration


def assert_tablet_as_before(replica: Sandbox, primary: Sandbox) -> None:
    assert replica.is_answering()
    replica.wait_replicating()
    replica.wait_for_gtid(primary.write_rows(3))
    assert int(replica.value("SELECT @@GLOBAL.read_only")) == 1


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: the storage fills up in the middle of the copy."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_storage_full_mid_copy(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, small_fs: Path
) -> None:
    primary.write_rows(100)
    replica.sql("SET GLOBAL read_only=1")
    agent = agent_factory(replica, root=small_fs, extra=["--compression-engine-name", "none"])
    err = rpc_error(backup, agent)
    assert err.code() is grpc.StatusCode.UNAVAILABLE, err.details()
    assert "No space left on device" in (err.details() or "")
    assert complete_backups(small_fs) == [] and backup_dirs(small_fs) == []
    assert_tablet_as_before(replica, primary)


def test_mysqld_shutdown_timeout(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    replica.sql("SET GLOBAL read_only=1")
    agent = agent_factory(replica)
    # No time at all for the shutdown: it times out, and the agent waits for mysqld and starts it again.
    err = rpc_error(backup, agent, mysql_shutdown_timeout={"nanos": 1})
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    assert "did not shut down" in (err.details() or "")
    assert backup_dirs(storage_root) == []
    assert_tablet_as_before(replica, primary)


def test_restore_fails_cleanly_on_a_deleted_object(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root,
) -> None:
    primary.write_rows(10)
    backup(agent_factory(replica))
    (done,) = complete_backups(storage_root)
    (done / "3").unlink()
    fresh = sandbox_factory()
    fresh.sql("SET GLOBAL read_only=1")
    err = rpc_error(restore, agent_factory(fresh, alias="zone1-0000000105"))
    assert "/3 (" in (err.details() or "") and "is missing" in (err.details() or "")
    assert fresh.is_answering(), "a restore that cannot start must not stop mysqld"


def test_sigkill_mid_copy_is_repaired_at_next_start(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    primary.write_rows(1)
    primary.sql("CREATE TABLE test.big (id INT PRIMARY KEY, pad CHAR(255)) ENGINE=InnoDB")
    primary.sql("INSERT INTO test.big SELECT seq, REPEAT('x', 255) FROM test.seq_1_to_200000")
    replica.wait_for_gtid(primary.gtid_binlog_pos())
    replica.sql("SET GLOBAL read_only=1")
    extra = ["--compression-engine-name", "pgzip", "--compression_level", "9", "--concurrency", "1"]
    agent = agent_factory(replica, extra=extra)
    with agent.channel() as ch:
        stream = agent.stub(ch).Backup(tabletmanagerdata_pb2.BackupRequest(), timeout=120)
        for resp in stream:
            if "phase: copying files" in resp.event.value:
                break
        agent.kill()
    assert not replica.is_answering(), "mysqld is down while the files are copied"
    assert complete_backups(storage_root) == []
    again = agent_factory(replica, extra=extra)
    assert again.proc is not None and again.proc.poll() is None
    assert_tablet_as_before(replica, primary)
    assert backup_dirs(storage_root) == [], "the partial backup was removed"
    assert "repaired" in again.log()


def test_each_compression_engine_round_trips_and_the_manifest_decides(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root,
) -> None:
    fresh = sandbox_factory()
    fresh.sql("SET GLOBAL read_only=1")
    restorer = agent_factory(fresh, alias="zone1-0000000106", extra=["--compression-engine-name", "lz4"])
    engines = {
        "zstd": [],
        "pgzip": [],
        "pargzip": [],
        "lz4": [],
        "none": [],
        "external": ["--external-compressor", "zstd -1 -c", "--external-compressor-extension", ".zst",
                     "--external-decompressor", "zstd -d -c"],
    }  # fmt: skip
    for i, (name, flags) in enumerate(engines.items()):
        primary.write_rows(10 * (i + 1), table=f"c{i}")
        replica.wait_for_gtid(primary.gtid_binlog_pos())
        agent = agent_factory(replica, extra=["--compression-engine-name", name, *flags])
        backup(agent)
        agent.stop()
        time.sleep(1.1)  # backup names have one-second resolution
        if name == "external":  # the restoring agent must know how to decompress an external format
            restorer.stop()
            restorer = agent_factory(fresh, alias="zone1-0000000106", extra=flags)
        restore(restorer)
        for j in range(i + 1):
            assert int(fresh.value(f"SELECT COUNT(*) FROM test.c{j}")) == 10 * (j + 1), name
