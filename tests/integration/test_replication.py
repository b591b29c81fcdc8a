"""Replication, read-only and GTID helpers against a real MariaDB primary and replica."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from agent.errors import FailedPrecondition
from agent.mysql import replication as repl
from agent.mysql.client import MysqlClient, credentials_from
from agent.mysql.gtid import Flavor, parse_position
from agent.mysql.mycnf import read_mycnf
from tests.sandbox import Sandbox, SandboxFactory

pytestmark = pytest.mark.integration

MARIADB = Flavor.MARIADB
WriteRows = Callable[..., str]


def client_for(sandbox: Sandbox) -> MysqlClient:
    return MysqlClient(credentials_from(read_mycnf(sandbox.cnf), None, {}))


async def wait_status(
    client: MysqlClient, io: bool, sql: bool, timeout: float = 30
) -> repl.ReplicationStatus:
    async with asyncio.timeout(timeout):
        while True:
            status = await repl.replication_status(client, MARIADB)
            if (status.io_running, status.sql_running) == (io, sql):
                return status
            await asyncio.sleep(0.05)


async def test_status_of_a_primary_and_a_replica(primary: Sandbox, replica: Sandbox) -> None:
    assert await repl.replication_status(client_for(primary), MARIADB) == repl.NOT_CONFIGURED
    status = await repl.replication_status(client_for(replica), MARIADB)
    assert status.configured and status.io_running and status.sql_running and status.io_started
    assert status.seconds_behind == 0
    assert (status.source_host, status.source_port) == ("127.0.0.1", primary.port)
    assert status.using_gtid
    assert (status.last_io_error, status.last_sql_error) == ("", "")


async def test_stop_and_start_replication(primary: Sandbox, replica: Sandbox, write_rows: WriteRows) -> None:
    client = client_for(replica)
    await repl.stop_replication(client, MARIADB)
    status = await repl.replication_status(client, MARIADB)
    assert (
        status.configured
        and not status.io_running
        and not status.sql_running
        and status.seconds_behind is None
    )

    pos = write_rows(primary, 5)
    await asyncio.sleep(0.2)
    assert replica.value("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 't'") == 0

    await repl.start_replication(client, MARIADB)
    replica.wait_for_gtid(pos)
    assert replica.value("SELECT COUNT(*) FROM test.t") == 5
    await wait_status(client, io=True, sql=True)


async def test_primary_has_no_replication_to_stop_or_start(primary: Sandbox) -> None:
    client = client_for(primary)
    await repl.stop_replication(client, MARIADB)  # nothing to stop
    with pytest.raises(FailedPrecondition, match="no source is configured"):
        await repl.start_replication(client, MARIADB)


async def test_read_only_state_round_trip(primary: Sandbox) -> None:
    client = client_for(primary)
    assert await repl.read_only_state(client) == repl.ReadOnlyState(read_only=False, super_read_only=None)
    await repl.set_read_only(client, repl.ReadOnlyState(read_only=True, super_read_only=None))
    assert primary.value("SELECT @@GLOBAL.read_only") == 1
    # super_read_only is ignored where the server lacks it
    await repl.set_read_only(client, repl.ReadOnlyState(read_only=False, super_read_only=False))
    assert (await repl.read_only_state(client)).read_only is False


async def test_snapshot_and_restore_leave_the_replica_as_found(replica: Sandbox) -> None:
    client = client_for(replica)
    replica.sql("SET GLOBAL read_only = ON")
    snap = await repl.snapshot(client, MARIADB)
    assert snap == repl.ReplicationSnapshot(
        io_running=True, sql_running=True, read_only=repl.ReadOnlyState(True, None)
    )
    assert snap.replication_running

    await repl.stop_replication(client, MARIADB)  # what a backup does
    await repl.set_read_only(client, repl.ReadOnlyState(False, None))
    await repl.restore_snapshot(client, MARIADB, snap)
    await wait_status(client, io=True, sql=True)
    assert replica.value("SELECT @@GLOBAL.read_only") == 1

    replica.sql("STOP SLAVE SQL_THREAD")  # as a mariabackup that died during --safe-slave-backup leaves it
    await repl.restore_snapshot(client, MARIADB, snap)
    await wait_status(client, io=True, sql=True)


async def test_restore_starts_only_the_threads_that_ran(replica: Sandbox) -> None:
    client = client_for(replica)
    replica.sql("STOP SLAVE SQL_THREAD")
    snap = await repl.snapshot(client, MARIADB)
    assert (snap.io_running, snap.sql_running) == (True, False)
    await repl.stop_replication(client, MARIADB)
    await repl.restore_snapshot(client, MARIADB, snap)
    await wait_status(client, io=True, sql=False)


async def test_snapshot_of_a_primary_restores_nothing(primary: Sandbox) -> None:
    client = client_for(primary)
    snap = await repl.snapshot(client, MARIADB)
    assert not snap.replication_running
    await repl.restore_snapshot(client, MARIADB, snap)
    assert not (await repl.replication_status(client, MARIADB)).configured


async def test_executed_and_purged_gtids_and_binary_logs(
    primary: Sandbox, replica: Sandbox, write_rows: WriteRows
) -> None:
    client = client_for(primary)
    first = write_rows(primary, 10)
    assert first.startswith("0-1-")
    assert str((await repl.executed_position(client, MARIADB)).gtids) == first
    assert (
        str((await repl.purged_position(client, MARIADB)).gtids) == ""
    )  # the first binlog starts from nothing
    logs = await repl.binary_logs(client)
    assert [name for name, _ in logs] == ["binlog.000001"] and logs[0][1] > 0

    await repl.flush_binary_logs(client)
    second = write_rows(primary, 10)
    assert [name for name, _ in await repl.binary_logs(client)] == ["binlog.000001", "binlog.000002"]
    primary.purge_binlogs_to("binlog.000002")
    assert (
        str((await repl.purged_position(client, MARIADB)).gtids) == first
    )  # the state binlog.000002 starts from
    assert str((await repl.executed_position(client, MARIADB)).gtids) == second

    replica.wait_for_gtid(second)
    assert (
        str((await repl.executed_position(client_for(replica), MARIADB)).gtids) == second
    )  # log_slave_updates


async def test_without_binlogs(sandbox_factory: SandboxFactory) -> None:
    sandbox = sandbox_factory(extra_options=["skip-log-bin"])
    client = client_for(sandbox)
    assert await repl.binary_logs(client) == []
    assert str((await repl.purged_position(client, MARIADB)).gtids) == ""
    sandbox.sql("SET GLOBAL gtid_slave_pos = '0-7-42'")
    assert (
        str((await repl.executed_position(client, MARIADB)).gtids) == "0-7-42"
    )  # falls back to @@gtid_current_pos


async def test_set_gtid_state_on_a_fresh_sandbox(sandbox_factory: SandboxFactory, primary: Sandbox) -> None:
    before = primary.write_rows(10, table="before")
    restored = sandbox_factory()  # stands for a server restored from a backup taken at `before`
    client = client_for(restored)
    await repl.set_gtid_state(client, parse_position(before, default_flavor=MARIADB))
    assert restored.value("SELECT @@GLOBAL.gtid_slave_pos") == before
    assert (
        str((await repl.executed_position(client, MARIADB)).gtids) == before
    )  # its empty binlog now starts there

    restored.make_replica_of(primary)
    after = primary.write_rows(3, table="after", database="later")
    restored.wait_for_gtid(after)
    assert restored.value("SELECT COUNT(*) FROM later.after") == 3
    assert restored.value("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'before'") == 0
    assert str((await repl.executed_position(client, MARIADB)).gtids) == after

    await repl.set_gtid_state(
        client, parse_position(after, default_flavor=MARIADB)
    )  # stops replication first; the binlog is kept
    status = await repl.replication_status(client, MARIADB)
    assert not status.io_running and not status.sql_running
    assert [name for name, _ in await repl.binary_logs(client)] == ["binlog.000001"]
    assert str((await repl.executed_position(client, MARIADB)).gtids) == after
