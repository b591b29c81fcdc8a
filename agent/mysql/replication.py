"""Replication, read-only and GTID state of a mysqld, for both flavors, over a `SqlRunner`.

MariaDB: `SHOW SLAVE STATUS`, `STOP/START SLAVE`, `@@gtid_*_pos`. MySQL: `SHOW REPLICA STATUS`,
`STOP/START REPLICA` (falling back to the SLAVE spellings before 8.0.22), `@@gtid_executed/purged`.
Positions are returned without flavor prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.errors import FailedPrecondition
from agent.mysql.client import QueryError, SqlRunner
from agent.mysql.gtid import Flavor, Position, parse_gtid_set

ER_PARSE_ERROR = 1064
ER_NO_BINARY_LOGGING = 1381
_IO_STARTED = frozenset({"yes", "connecting", "preparing"})


@dataclass(frozen=True)
class ReplicationStatus:
    configured: bool
    io_running: bool  # connected to the source
    sql_running: bool
    seconds_behind: int | None
    source_host: str
    source_port: int
    last_io_error: str
    last_sql_error: str
    using_gtid: bool
    io_state: str = ""  # raw: Yes / No / Connecting / Preparing

    @property
    def io_started(self) -> bool:
        """The IO thread is running, connected or still (re)connecting."""
        return self.io_state.lower() in _IO_STARTED


NOT_CONFIGURED = ReplicationStatus(False, False, False, None, "", 0, "", "", False, "No")


@dataclass(frozen=True)
class ReadOnlyState:
    read_only: bool
    super_read_only: bool | None  # None where the server has no such variable (MariaDB)


@dataclass(frozen=True)
class ReplicationSnapshot:
    """What a backup changes and must put back."""

    io_running: bool  # started, even if still connecting
    sql_running: bool
    read_only: ReadOnlyState

    @property
    def replication_running(self) -> bool:
        return self.io_running or self.sql_running


async def replication_status(client: SqlRunner, flavor: Flavor) -> ReplicationStatus:
    """The default replication channel's state; NOT_CONFIGURED when there is no source."""
    if flavor is Flavor.MARIADB:
        row = await client.query_one("SHOW SLAVE STATUS")
    else:
        row = await _replica_statement(client, "SHOW REPLICA STATUS", "SHOW SLAVE STATUS", query=True)
    if row is None:
        return NOT_CONFIGURED
    host = str(_col(row, "Source_Host", "Master_Host") or "")
    io_state = str(_col(row, "Replica_IO_Running", "Slave_IO_Running") or "No")
    behind = _col(row, "Seconds_Behind_Source", "Seconds_Behind_Master")
    gtid_mode = str(_col(row, "Using_Gtid", "Auto_Position") or "")
    return ReplicationStatus(
        configured=bool(host),
        io_running=io_state.lower() == "yes",
        sql_running=str(_col(row, "Replica_SQL_Running", "Slave_SQL_Running") or "").lower() == "yes",
        seconds_behind=None if behind is None else int(behind),
        source_host=host,
        source_port=int(_col(row, "Source_Port", "Master_Port") or 0),
        last_io_error=str(row.get("Last_IO_Error") or ""),
        last_sql_error=str(row.get("Last_SQL_Error") or ""),
        using_gtid=gtid_mode.lower() not in ("", "no", "0"),
        io_state=io_state,
    )


async def stop_replication(client: SqlRunner, flavor: Flavor) -> None:
    """Stop both replication threads (waits until they stopped). No-op without a source."""
    if not (await replication_status(client, flavor)).configured:
        return
    if flavor is Flavor.MARIADB:
        await client.execute("STOP SLAVE")
    else:
        await _replica_statement(client, "STOP REPLICA", "STOP SLAVE")


async def start_replication(client: SqlRunner, flavor: Flavor, io: bool = True, sql: bool = True) -> None:
    """Start the replication threads (both by default). FailedPrecondition without a source."""
    if not (io or sql):
        return
    if not (await replication_status(client, flavor)).configured:
        raise FailedPrecondition("cannot start replication: no source is configured (CHANGE MASTER TO ...)")
    thread = "" if io and sql else (" IO_THREAD" if io else " SQL_THREAD")
    if flavor is Flavor.MARIADB:
        await client.execute("START SLAVE" + thread)
    else:
        await _replica_statement(client, "START REPLICA" + thread, "START SLAVE" + thread)


async def read_only_state(client: SqlRunner) -> ReadOnlyState:
    rows = await client.query("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('read_only', 'super_read_only')")
    values = {str(r["Variable_name"]).lower(): _on(r["Value"]) for r in rows}
    return ReadOnlyState(
        read_only=values.get("read_only", False), super_read_only=values.get("super_read_only")
    )


async def set_read_only(client: SqlRunner, state: ReadOnlyState) -> None:
    """Apply `state`, in the order MySQL needs (super_read_only implies read_only)."""
    if state.super_read_only is False:
        await _set_if_exists(client, "super_read_only", False)
    await client.execute(f"SET GLOBAL read_only = {_onoff(state.read_only)}")
    if state.super_read_only:
        await _set_if_exists(client, "super_read_only", True)


async def executed_position(client: SqlRunner, flavor: Flavor) -> Position:
    """The GTID position of the data.

    MariaDB: `@@gtid_binlog_pos`, the GTIDs written to this server's own binlog. Unlike
    `@@gtid_current_pos` it does not mix in `@@gtid_slave_pos` (which a restore sets without
    writing any binlog), so it matches what the binlog files hold: the incremental backups read
    them. With binlogging off it falls back to `@@gtid_current_pos`.
    MySQL: `@@gtid_executed`.
    """
    if flavor is Flavor.MYSQL56:
        return _position(flavor, await _variable(client, "@@GLOBAL.gtid_executed"))
    row = await client.query_one("SELECT @@GLOBAL.log_bin AS on_, @@GLOBAL.gtid_binlog_pos AS binlog_pos")
    if row is not None and _on(row["on_"]):
        return _position(flavor, _gtids(row["binlog_pos"]))
    return _position(flavor, await _variable(client, "@@GLOBAL.gtid_current_pos"))


async def replica_position(client: SqlRunner) -> Position:
    """MariaDB's `@@gtid_slave_pos`: the GTIDs the replication applier has applied."""
    return _position(Flavor.MARIADB, await _variable(client, "@@GLOBAL.gtid_slave_pos"))


async def purged_position(client: SqlRunner, flavor: Flavor) -> Position:
    """GTIDs no longer in the binlogs. MariaDB: the GTID state at the start of the oldest binlog
    (`BINLOG_GTID_POS(<oldest>, 4)`), empty with binlogging off. MySQL: `@@gtid_purged`."""
    if flavor is Flavor.MYSQL56:
        return _position(flavor, await _variable(client, "@@GLOBAL.gtid_purged"))
    logs = await binary_logs(client)
    if not logs:
        return _position(flavor, "")
    row = await client.query_one("SELECT BINLOG_GTID_POS(%s, 4) AS pos", (logs[0][0],))
    return _position(flavor, _gtids(row["pos"] if row else ""))


async def binary_logs(client: SqlRunner) -> list[tuple[str, int]]:
    """(file name, size) of every binlog, oldest first; empty when binlogging is off."""
    try:
        rows = await client.query("SHOW BINARY LOGS")
    except QueryError as e:
        if e.errno == ER_NO_BINARY_LOGGING:
            return []
        raise
    return [(str(r["Log_name"]), int(r["File_size"])) for r in rows]


async def flush_binary_logs(client: SqlRunner) -> None:
    """Close the current binlog and start a new one."""
    await client.execute("FLUSH BINARY LOGS")


async def snapshot(client: SqlRunner, flavor: Flavor) -> ReplicationSnapshot:
    """Record replication threads and read-only state, to put them back with `restore_snapshot`."""
    status = await replication_status(client, flavor)
    return ReplicationSnapshot(
        io_running=status.configured and status.io_started,
        sql_running=status.configured and status.sql_running,
        read_only=await read_only_state(client),
    )


async def restore_snapshot(client: SqlRunner, flavor: Flavor, snap: ReplicationSnapshot) -> None:
    """Put read-only state back and restart the replication threads that were running."""
    if await read_only_state(client) != snap.read_only:
        await set_read_only(client, snap.read_only)
    if not snap.replication_running:
        return
    status = await replication_status(client, flavor)
    await start_replication(
        client,
        flavor,
        io=snap.io_running and not status.io_started,
        sql=snap.sql_running and not status.sql_running,
    )


async def set_gtid_state(client: SqlRunner, position: Position) -> None:
    """After a restore, make the server know it holds `position`.

    MariaDB: stop replication and set `gtid_slave_pos`, so `MASTER_USE_GTID=slave_pos` resumes from
    there. No `RESET MASTER`: binlogs are kept. When the binlog holds no GTID yet (a restored datadir),
    `gtid_binlog_state` is set too, so `executed_position` reports the position and the server can serve
    replicas from it if promoted. MySQL: `RESET MASTER` (this deletes the binlogs) and `gtid_purged`.
    """
    flavor, position_gtids = position.flavor, str(position.gtids)
    await stop_replication(client, flavor)
    if flavor is Flavor.MARIADB:
        await client.execute("SET GLOBAL gtid_slave_pos = %s", (position_gtids,))
        row = await client.query_one("SELECT @@GLOBAL.log_bin AS on_, @@GLOBAL.gtid_binlog_pos AS binlog_pos")
        if row is not None and _on(row["on_"]) and not _gtids(row["binlog_pos"]):
            await client.execute("SET GLOBAL gtid_binlog_state = %s", (position_gtids,))
    else:
        await client.execute("RESET MASTER")
        await client.execute("SET GLOBAL gtid_purged = %s", (position_gtids,))


async def _replica_statement(
    client: SqlRunner, statement: str, old_spelling: str, query: bool = False
) -> dict[str, Any] | None:
    """Run a MySQL 8.0.22+ REPLICA statement, falling back to the SLAVE spelling of older servers."""
    for sql in (statement, old_spelling):
        try:
            if query:
                return await client.query_one(sql)
            await client.execute(sql)
            return None
        except QueryError as e:
            if e.errno != ER_PARSE_ERROR or sql == old_spelling:
                raise
    return None


async def _set_if_exists(client: SqlRunner, variable: str, on: bool) -> None:
    rows = await client.query("SHOW GLOBAL VARIABLES LIKE %s", (variable,))
    if rows:
        await client.execute(f"SET GLOBAL {variable} = {_onoff(on)}")


async def _variable(client: SqlRunner, expression: str) -> str:
    row = await client.query_one(f"SELECT {expression} AS value")
    return _gtids(row["value"] if row else "")


def _col(row: dict[str, Any], name: str, old_name: str) -> Any:
    return row[name] if name in row else row.get(old_name)


def _on(value: Any) -> bool:
    return str(value).strip().upper() not in ("", "0", "OFF", "NO", "FALSE", "NONE")


def _onoff(on: bool) -> str:
    return "ON" if on else "OFF"


def _position(flavor: Flavor, gtids: str) -> Position:
    return Position(flavor, parse_gtid_set(flavor, gtids))


def _gtids(value: Any) -> str:
    """A GTID set as returned by the server, newlines (MySQL wraps long sets) and spaces removed."""
    if isinstance(value, bytes):
        value = value.decode()
    return "".join(str(value or "").split())
