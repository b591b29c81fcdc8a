"""Continuous binlog archiving on real MariaDB with the agent as a process: the recovery point stays seconds
old while writes go on, a point-in-time restore on a new tablet reaches the primary's newest transaction,
archiving survives a failover without a gap (the new primary's agent takes the role), and binlogs purged
before they were shipped are a health problem until a new full backup starts a new chain."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.mysql.gtid import parse_position
from agent.pb import agentdata_pb2
from tests.agent_process import AgentProcess, free_port
from tests.conftest import SandboxFactory
from tests.etcdserver import MISSING_ETCD, EtcdServer, find_etcd
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, complete_backups, restore
from tests.sandbox import Sandbox

INTERVAL = "2"
TTL = 3


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    if find_etcd() is None:
        pytest.skip(MISSING_ETCD)
    server = EtcdServer(tmp_path / "etcd")
    yield server
    server.close()


def topo(etcd: EtcdServer) -> list[str]:
    return ["--topo_implementation", "etcd2", "--topo_global_server_address", etcd.address,
            "--topo_lease_ttl", str(TTL)]  # fmt: skip


def archived_position(storage: Path) -> str:
    """The newest position a complete backup of the shard reaches."""
    done = complete_backups(storage)
    return json.loads((done[-1] / "MANIFEST").read_text())["Position"] if done else ""


def wait_archived(storage: Path, gtid_pos: str, timeout: float = 15) -> float:
    """Seconds until the shard's backups reach `gtid_pos` (a MariaDB GTID position)."""
    want = (
        parse_position(gtid_pos, default_flavor=None)
        if "/" in gtid_pos
        else parse_position("MariaDB/" + gtid_pos)
    )
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        pos = archived_position(storage)
        if pos and parse_position(pos).contains(want):
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{gtid_pos} not archived within {timeout}s; newest: {archived_position(storage)}")


def writer(sb: Sandbox, seconds: float, table: str) -> threading.Thread:
    def run() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sb.write_rows(20, table=table)
            time.sleep(0.2)

    t = threading.Thread(target=run)
    t.start()
    return t


def restore_to_newest(
    sandbox_factory: SandboxFactory, agent_factory: AgentFactory, alias: str, gtid_pos: str
) -> Sandbox:
    fresh = sandbox_factory()
    agent = agent_factory(fresh, alias=alias)
    restore(agent, restore_to_pos=f"MariaDB/{gtid_pos}")
    agent.stop()
    return fresh


@pytest.mark.timeout(600)
def test_archiving_keeps_a_seconds_old_recovery_point_across_a_failover(  # noqa: PLR0917
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root: Path,
    etcd: EtcdServer,
) -> None:
    primary.write_rows(50, table="a")
    replica.wait_for_gtid(primary.gtid_binlog_pos())
    archive = ["--binlog_archive_interval", INTERVAL, *topo(etcd)]
    on_primary = agent_factory(
        primary, alias="zone1-0000000101", extra=["--init_tablet_type", "PRIMARY", *archive]
    )
    on_replica = agent_factory(replica, alias="zone1-0000000102", extra=archive)
    backup(on_replica)  # the full backup the archive chains onto
    writer(primary, 6, "a").join()
    newest = primary.gtid_binlog_pos()
    assert wait_archived(storage_root, newest) < 15
    restored = restore_to_newest(sandbox_factory, agent_factory, "zone1-0000000110", newest)
    assert restored.value("SELECT COUNT(*) FROM test.a") == primary.value("SELECT COUNT(*) FROM test.a")
    with on_primary.channel() as ch:
        status = on_primary.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10)
    assert not [p for p in status.health_problems if "archiv" in p], status.health_problems

    # failover: the primary and its agent go away, the replica is promoted and its agent takes over
    replica.wait_for_gtid(newest)
    on_primary.stop()
    primary.stop()
    replica.sql("STOP SLAVE")
    replica.sql("RESET SLAVE ALL")
    replica.sql("SET GLOBAL read_only = 0")
    writer(replica, 6, "b").join()
    newest = replica.gtid_binlog_pos()
    wait_archived(storage_root, newest, timeout=30)  # the role's lease expires first
    assert "archives the shard's binlogs now" in on_replica.log()
    restored = restore_to_newest(sandbox_factory, agent_factory, "zone1-0000000111", newest)
    for table in ("a", "b"):
        assert restored.value(f"SELECT COUNT(*) FROM test.{table}") == replica.value(
            f"SELECT COUNT(*) FROM test.{table}"
        ), table


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def health(agent: AgentProcess) -> list[str]:
    with agent.channel() as ch:
        return list(agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10).health_problems)


@pytest.mark.timeout(300)
def test_binlogs_purged_before_shipping_are_a_problem_until_a_new_full_backup(
    primary: Sandbox, agent_factory: AgentFactory, storage_root: Path
) -> None:
    flags = ["--init_tablet_type", "PRIMARY"]
    plain = agent_factory(primary, alias="zone1-0000000101", extra=flags)
    backup(plain, allow_primary=True)
    plain.stop()
    primary.write_rows(30, table="lost")  # never shipped: purged below
    primary.sql("FLUSH BINARY LOGS")
    newest_file = primary.sql("SHOW BINARY LOGS")[-1][0]
    primary.purge_binlogs_to(str(newest_file))
    port = free_port()
    agent = agent_factory(
        primary,
        alias="zone1-0000000101",
        extra=[*flags, "--binlog_archive_interval", INTERVAL, "--metrics_port", str(port)],
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not [p for p in health(agent) if "purged" in p]:
        time.sleep(0.5)
    assert [p for p in health(agent) if "purged" in p], health(agent)
    assert metric(port, "tablet_agent_binlog_archive_gap") == 1.0
    backup(agent, allow_primary=True)  # a new full backup starts a new chain
    primary.write_rows(10, table="after")
    wait_archived(storage_root, primary.gtid_binlog_pos())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and metric(port, "tablet_agent_binlog_archive_gap") != 0.0:
        time.sleep(0.5)
    assert metric(port, "tablet_agent_binlog_archive_gap") == 0.0
    assert not [p for p in health(agent) if "purged" in p]
