"""Incremental backups from binary logs through gRPC against real MariaDB: positions, `auto`, rotation,
the empty and purged cases."""

from __future__ import annotations

import grpc
import pytest

from agent.mysql.gtid import parse_position
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, backup_dirs, complete_backups, manifest, rpc_error
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration


def _pos(text: object) -> object:
    return parse_position(str(text))


def test_incrementals_chain_from_position_and_auto(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    replica.wait_for_gtid(primary.write_rows(100))
    agent = agent_factory(replica)
    backup(agent)
    (full,) = complete_backups(storage_root)
    full_pos = manifest(full)["Position"]
    previous = full_pos
    for flushes, request in [(0, str(full_pos)), (1, str(full_pos).removeprefix("MariaDB/")), (2, "auto")]:
        pos = primary.write_rows(30)
        for _ in range(flushes):
            primary.sql("FLUSH BINARY LOGS")
            pos = primary.write_rows(5)
        replica.wait_for_gtid(pos)
        backup(agent, incremental_from_pos=request)
        m = manifest(complete_backups(storage_root)[-1])
        assert m["Incremental"] is True and m["BackupMethod"] == "builtin"
        assert m["Position"] == f"MariaDB/{pos}"
        requested = parse_position(request if request != "auto" else str(previous), default_flavor=None)
        assert requested.contains(parse_position(str(m["FromPosition"])))
        assert parse_position(str(m["Position"])).contains(requested)
        assert all(fe["Base"] == "BinLog" for fe in m["FileEntries"])  # type: ignore[union-attr,index]
        details = m["IncrementalDetails"]
        assert details and details["FirstTimestamp"] and details["LastTimestamp"]  # type: ignore[index]
        if request == "auto":
            assert m["FromBackup"] == complete_backups(storage_root)[-2].name
        previous = m["Position"]


def test_empty_incremental_fails_and_stores_nothing(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    replica.wait_for_gtid(primary.write_rows(10))
    agent = agent_factory(replica)
    backup(agent)
    before = backup_dirs(storage_root)
    for request in ("auto", str(manifest(before[0])["Position"])):
        err = rpc_error(backup, agent, incremental_from_pos=request)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "has not changed since the requested position" in (err.details() or "")
        assert backup_dirs(storage_root) == before


def test_purged_binlogs_fail_with_the_purged_message(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    old = primary.write_rows(10)
    replica.wait_for_gtid(old)
    agent = agent_factory(replica)
    replica.sql("FLUSH BINARY LOGS")
    pos = primary.write_rows(10)
    replica.wait_for_gtid(pos)
    replica.sql("FLUSH BINARY LOGS")
    newest = replica.sql("SHOW BINARY LOGS")[-1][0]
    replica.purge_binlogs_to(newest)
    err = rpc_error(backup, agent, incremental_from_pos=old)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Required entries have been purged" in (err.details() or "")
    assert backup_dirs(storage_root) == []
