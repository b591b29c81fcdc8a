"""Point-in-time restores through gRPC against real MariaDB: a full backup and a chain of incrementals,
restored to every recorded position and time in random order, with both binlog appliers."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from agent.daemon.convert import time_to_pb
from agent.pb import agentdata_pb2, topodata_pb2
from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, complete_backups, manifest, restore, rpc_error
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Point:
    position: str  # bare MariaDB GTID position on the source
    at: datetime | None  # a time between write batches, or None
    rows: tuple[int, int]  # rows in test.t and test.u at that point


def _rows(sb: Sandbox) -> tuple[int, int]:
    return int(sb.value("SELECT COUNT(*) FROM test.t")), int(sb.value("SELECT COUNT(*) FROM test.u"))


def _checksums(sb: Sandbox) -> list[tuple[object, ...]]:
    return sb.sql("CHECKSUM TABLE test.t, test.u EXTENDED")


def _history(primary: Sandbox, replica: Sandbox, agent) -> list[Point]:
    """A full backup, then three groups of writes each followed by an incremental (0-2 extra binlog
    rotations in between); every batch's position recorded, and a time between some batches."""
    primary.write_rows(40, table="t")
    replica.wait_for_gtid(primary.write_rows(30, table="u"))
    backup(agent)
    points = [Point(primary.gtid_binlog_pos(), None, (40, 30))]
    rows = [40, 30]
    for group in range(3):
        for batch in range(2):
            if batch == 1:
                time.sleep(1.1)
                at = datetime.now(UTC)
                time.sleep(1.1)
                points.append(Point("", at, (rows[0], rows[1])))
            table = "t" if (group + batch) % 2 == 0 else "u"
            pos = primary.write_rows(10 + group, table=table)
            rows[0 if table == "t" else 1] += 10 + group
            for _ in range(group):
                primary.sql("FLUSH BINARY LOGS")
            points.append(Point(pos, None, (rows[0], rows[1])))
        replica.wait_for_gtid(pos)
        backup(agent, incremental_from_pos="auto")
    return points


def test_pitr_to_every_position_and_time(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root,
) -> None:
    points = _history(primary, replica, agent_factory(replica))
    assert len(complete_backups(storage_root)) == 4
    target = sandbox_factory()
    target.make_replica_of(primary, start=False)
    agent = agent_factory(target, alias="zone1-0000000103")
    random.Random(5).shuffle(points)
    for point in points:
        if point.at is not None:
            restore(agent, restore_to_timestamp=time_to_pb(point.at))
        else:
            # with and without the flavor prefix
            text = point.position if len(point.position) % 2 else f"MariaDB/{point.position}"
            restore(agent, restore_to_pos=text)
            assert target.value("SELECT @@GLOBAL.gtid_binlog_pos") == point.position
        assert _rows(target) == point.rows, point
        # not pointed anywhere: a point-in-time copy must not catch up with its source
        assert not target.sql("SHOW SLAVE STATUS")
    with agent.channel() as ch:
        status = agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10)
    assert topodata_pb2.TabletType.Name(status.tablet_type) == "DRAINED"
    assert status.restored_to.startswith("point in time")


def test_pitr_errors_and_dry_run(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    agent = agent_factory(replica)
    replica.wait_for_gtid(primary.write_rows(10))
    backup(agent)
    full = manifest(complete_backups(storage_root)[0])
    replica.wait_for_gtid(primary.write_rows(10))
    backup(agent, incremental_from_pos="auto")
    last = manifest(complete_backups(storage_root)[-1])["Position"]
    beyond = primary.write_rows(5)
    err = rpc_error(restore, agent, restore_to_pos=beyond)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no path found that leads to" in (err.details() or "")
    err = rpc_error(restore, agent, restore_to_pos="MariaDB/0-1-1")
    assert "no full backup found before" in (err.details() or "")
    err = rpc_error(
        restore, agent, restore_to_pos=str(last), restore_to_timestamp=time_to_pb(datetime.now(UTC))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # dry run: the path is printed and nothing changes (the replica keeps replicating)
    events = restore(agent, restore_to_pos=str(last), dry_run=True)
    assert any(str(full["BackupName"]) in e and "incremental" in e for e in events)
    replica.wait_for_gtid(beyond)


def test_both_appliers_give_identical_data(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
) -> None:
    agent = agent_factory(replica)
    replica.wait_for_gtid(primary.write_rows(20))
    backup(agent)
    for i in range(4):
        pos = primary.write_rows(50 + i, table="tu"[i % 2])
        primary.sql("UPDATE test.t SET v = CONCAT(v, 'x') WHERE id % 3 = 0")
    replica.wait_for_gtid(pos)
    backup(agent, incremental_from_pos="auto")
    results = []
    # in place too: the binlog server is bootstrapped beside the restore into the cleared datadir
    for applier, in_place in (("pipe", False), ("replication", False), ("replication", True)):
        target = sandbox_factory()
        target.make_replica_of(primary, start=False)
        events = restore(
            agent_factory(target, alias="zone1-0000000104", extra=[f"--binlog_applier={applier}"]),
            restore_to_pos=pos,
            restore_in_place=in_place,
        )
        assert any(f"replaying binlogs ({applier})" in e for e in events), events
        results.append((_checksums(target), target.value("SELECT @@GLOBAL.gtid_binlog_pos")))
    assert results[0] == results[1] == results[2]
    assert results[0][1] == pos


def test_a_point_in_time_at_the_full_backup_replays_nothing(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root: Path,
) -> None:
    agent = agent_factory(replica)
    replica.wait_for_gtid(primary.write_rows(20))
    backup(agent)
    full = str(manifest(complete_backups(storage_root)[0])["Position"])
    replica.wait_for_gtid(primary.write_rows(5))
    backup(agent, incremental_from_pos="auto")
    for applier in ("pipe", "replication"):
        target = sandbox_factory()
        target.make_replica_of(primary, start=False)
        events = restore(
            agent_factory(target, alias="zone1-0000000104", extra=[f"--binlog_applier={applier}"]),
            restore_to_pos=full,
        )
        assert any("no binlog to replay" in e for e in events), events
        assert f"MariaDB/{target.value('SELECT @@GLOBAL.gtid_binlog_pos')}" == full


def test_incrementals_chain_onto_an_xtrabackup_full_backup(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root,
) -> None:
    xtra = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]
    agent = agent_factory(replica, extra=xtra)
    replica.wait_for_gtid(primary.write_rows(30))
    backup(agent)
    middle = primary.write_rows(7)
    replica.wait_for_gtid(primary.write_rows(9, table="u"))
    backup(agent, incremental_from_pos="auto")
    m = manifest(complete_backups(storage_root)[-1])
    assert m["BackupMethod"] == "builtin" and m["Incremental"] is True
    target = sandbox_factory()
    target.make_replica_of(primary, start=False)
    restorer = agent_factory(target, alias="zone1-0000000105", extra=xtra)
    restore(restorer, restore_to_pos=middle)
    assert int(target.value("SELECT COUNT(*) FROM test.t")) == 37
    assert not target.sql("SHOW TABLES IN test LIKE 'u'")
    restore(restorer, restore_to_pos=str(m["Position"]))
    assert _rows(target) == (37, 9)
