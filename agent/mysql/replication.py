"""Replication, read-only and GTID state of a mysqld, for both flavors, over a `SqlRunner`.

MariaDB: `SHOW SLAVE STATUS`, `STOP/START SLAVE`, `@@gtid_*_pos`. MySQL: `SHOW REPLICA STATUS`,
`STOP/START REPLICA` (falling back to the SLAVE spellings before 8.0.22), `@@gtid_executed/purged`.
Positions are `Position` values (their text form carries the flavor prefix).

The second half reads what Vitess's replication RPCs report (`replica_status`, `primary_status`,
`replication_configuration`, semi-sync and binlog settings), parsed as Vitess's `go/mysql` parses it.
"""

from __future__ import annotations

import enum
import re
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


# ---------------------------------------------------------------------- what Vitess's replication RPCs read

ER_UNKNOWN_SYSTEM_VARIABLE = 1193
_FILTER_COLUMNS = (
    "Replicate_Do_DB", "Replicate_Ignore_DB", "Replicate_Do_Table", "Replicate_Ignore_Table",
    "Replicate_Wild_Do_Table", "Replicate_Wild_Ignore_Table",
)  # fmt: skip
_UNSIGNED = re.compile(r"\d+")


class ThreadState(enum.IntEnum):
    """State of one replication thread, with Vitess's numbers (`replication.ReplicationState`)."""

    UNKNOWN = 0
    STOPPED = 1
    CONNECTING = 2
    RUNNING = 3

    @classmethod
    def parse(cls, value: Any) -> ThreadState:
        """From `Slave_IO_Running`/`Slave_SQL_Running`: Yes, No, Connecting; anything else is unknown."""
        return _THREAD_STATES.get(str(value or "").lower(), cls.UNKNOWN)


_THREAD_STATES = {"yes": ThreadState.RUNNING, "no": ThreadState.STOPPED, "connecting": ThreadState.CONNECTING}


@dataclass(frozen=True)
class FilePosition:
    """A place in a binlog or relay log file; text form `FilePos/<file>:<offset>` (Vitess's filePos flavor)."""

    file: str
    offset: int

    def __str__(self) -> str:
        return f"FilePos/{self.file}:{self.offset}"


@dataclass(frozen=True)
class ReplicaStatus:
    """The replication connection of a replica, as Vitess parses `SHOW ALL SLAVES STATUS` (MariaDB) or
    `SHOW REPLICA STATUS` (MySQL)."""

    position: Position  # MariaDB: Gtid_Slave_Pos; MySQL: Executed_Gtid_Set
    relay_log_position: Position | None  # MySQL: executed + retrieved GTIDs; MariaDB does not expose it
    file_position: FilePosition | None  # source binlog coordinates the SQL thread executed up to
    relay_log_source_binlog_equivalent_position: FilePosition | None  # ... the IO thread read up to
    relay_log_file_position: FilePosition | None  # the SQL thread's place in the relay log
    source_host: str
    source_port: int
    source_user: str
    source_server_id: int
    source_uuid: str  # MySQL: the source's server_uuid; MariaDB: "" (it has no server UUIDs)
    connect_retry: int
    io_state: ThreadState
    sql_state: ThreadState
    last_io_error: str
    last_sql_error: str
    lag_seconds: int | None  # None: unknown (Seconds_Behind_Master is NULL)
    sql_delay: int
    auto_position: bool  # MySQL's GTID auto-positioning (MariaDB: always False)
    using_gtid: bool  # MariaDB: Using_Gtid is Current_Pos or Slave_Pos
    has_replication_filters: bool
    ssl_allowed: bool
    heartbeat_period: float | None  # MariaDB's Slave_heartbeat_period; None where the status lacks it


@dataclass(frozen=True)
class PrimaryStatus:
    """What a server with binlogging on reports as a source (`SHOW MASTER STATUS`)."""

    position: Position
    file_position: FilePosition
    server_uuid: str  # MySQL's server_uuid; MariaDB: ""


@dataclass(frozen=True)
class ReplicationConfiguration:
    heartbeat_interval: float  # seconds between heartbeats the source sends when idle
    replica_net_timeout: int  # seconds without data or heartbeat before the replica reconnects


@dataclass(frozen=True)
class BinlogSettings:
    binlog_format: str
    log_bin: bool
    log_replica_updates: bool
    binlog_row_image: str


class SemiSyncType(enum.StrEnum):
    """Which semi-sync variables the server has (MariaDB: built in, `master`/`slave` names)."""

    SOURCE = "source"  # rpl_semi_sync_source_* (MySQL 8.0.26+ plugins)
    MASTER = "master"  # rpl_semi_sync_master_* (MariaDB, older MySQL plugins)
    OFF = "off"  # no semi-sync support loaded


@dataclass(frozen=True)
class SemiSyncState:
    primary_enabled: bool
    replica_enabled: bool
    primary_status: bool  # the source currently waits for acknowledgements
    replica_status: bool
    primary_clients: int
    primary_timeout: int  # milliseconds
    wait_for_replica_count: int  # 0 where the server has no such setting (MariaDB)


async def replica_status(client: SqlRunner, flavor: Flavor) -> ReplicaStatus | None:
    """The replication connection; None when there is none (Vitess: "not a replica").

    MariaDB's `SHOW ALL SLAVES STATUS` lists every named connection: more than one is refused, as
    Vitess refuses it."""
    if flavor is Flavor.MARIADB:
        rows = await client.query("SHOW ALL SLAVES STATUS")
        if len(rows) > 1:
            names = ", ".join(repr(str(r.get("Connection_name", ""))) for r in rows)
            raise FailedPrecondition(
                f"mysqld has {len(rows)} replication connections ({names}): like Vitess, tablet-agent handles "
                "one source only; remove the extra ones with RESET SLAVE '<name>' ALL"
            )
        row = rows[0] if rows else None
    else:
        row = await _replica_statement(client, "SHOW REPLICA STATUS", "SHOW SLAVE STATUS", query=True)
    if row is None:
        return None
    behind = _col(row, "Seconds_Behind_Source", "Seconds_Behind_Master")
    if flavor is Flavor.MARIADB:
        position = _position(flavor, _gtids(row.get("Gtid_Slave_Pos")))
        relay: Position | None = None
        heartbeat = row.get("Slave_heartbeat_period")
    else:
        position = _position(flavor, _gtids(row.get("Executed_Gtid_Set")))
        relay = Position(
            flavor, position.gtids.union(parse_gtid_set(flavor, _gtids(row.get("Retrieved_Gtid_Set"))))
        )
        heartbeat = None
    using_gtid = str(row.get("Using_Gtid") or "")
    return ReplicaStatus(
        position=position,
        relay_log_position=relay,
        file_position=_file_position(
            _col(row, "Relay_Source_Log_File", "Relay_Master_Log_File"),
            _col(row, "Exec_Source_Log_Pos", "Exec_Master_Log_Pos"),
        ),
        relay_log_source_binlog_equivalent_position=_file_position(
            _col(row, "Source_Log_File", "Master_Log_File"),
            _col(row, "Read_Source_Log_Pos", "Read_Master_Log_Pos"),
        ),
        relay_log_file_position=_file_position(row.get("Relay_Log_File"), row.get("Relay_Log_Pos")),
        source_host=str(_col(row, "Source_Host", "Master_Host") or ""),
        source_port=_int(_col(row, "Source_Port", "Master_Port")),
        source_user=str(_col(row, "Source_User", "Master_User") or ""),
        source_server_id=_int(_col(row, "Source_Server_Id", "Master_Server_Id")),
        source_uuid=str(_col(row, "Source_UUID", "Master_UUID") or "") if flavor is Flavor.MYSQL56 else "",
        connect_retry=_int(row.get("Connect_Retry")),
        io_state=ThreadState.parse(_col(row, "Replica_IO_Running", "Slave_IO_Running")),
        sql_state=ThreadState.parse(_col(row, "Replica_SQL_Running", "Slave_SQL_Running")),
        last_io_error=str(row.get("Last_IO_Error") or ""),
        last_sql_error=str(row.get("Last_SQL_Error") or ""),
        lag_seconds=int(behind) if behind is not None and _UNSIGNED.fullmatch(str(behind)) else None,
        sql_delay=_int(row.get("SQL_Delay")),
        auto_position=str(row.get("Auto_Position", "")) == "1",
        using_gtid=using_gtid not in ("", "No"),
        has_replication_filters=any(row.get(c) for c in _FILTER_COLUMNS),
        ssl_allowed=str(_col(row, "Source_SSL_Allowed", "Master_SSL_Allowed") or "") == "Yes",
        heartbeat_period=float(heartbeat) if heartbeat is not None else None,
    )


async def primary_position(client: SqlRunner, flavor: Flavor) -> Position:
    """What this server wrote to its binlog: MariaDB `@@gtid_binlog_pos` (empty with binlogging off),
    MySQL `@@gtid_executed` (Vitess's PrimaryPosition)."""
    variable = "@@GLOBAL.gtid_binlog_pos" if flavor is Flavor.MARIADB else "@@GLOBAL.gtid_executed"
    return _position(flavor, await _variable(client, variable))


async def primary_status(client: SqlRunner, flavor: Flavor) -> PrimaryStatus | None:
    """The binlog coordinates and GTID position as a source; None with binlogging off."""
    if flavor is Flavor.MARIADB:
        row = await client.query_one("SHOW MASTER STATUS")
    else:
        row = await _replica_statement(client, "SHOW BINARY LOG STATUS", "SHOW MASTER STATUS", query=True)
    if row is None:
        return None
    return PrimaryStatus(
        position=await primary_position(client, flavor),
        file_position=FilePosition(str(row.get("File") or ""), _int(row.get("Position"))),
        server_uuid=await server_uuid(client, flavor),
    )


async def server_uuid(client: SqlRunner, flavor: Flavor) -> str:
    """MySQL's `@@server_uuid`; "" on MariaDB, which identifies servers by server_id only."""
    if flavor is Flavor.MARIADB:
        return ""
    return await _variable(client, "@@GLOBAL.server_uuid")


async def gtid_mode(client: SqlRunner, flavor: Flavor) -> str:
    """MySQL's `@@gtid_mode` (OFF ... ON); "" on MariaDB, where GTIDs are always on and have no mode."""
    if flavor is Flavor.MARIADB:
        return ""
    return await _variable(client, "@@GLOBAL.gtid_mode")


async def replication_configuration(
    client: SqlRunner, flavor: Flavor, replica: ReplicaStatus | None
) -> ReplicationConfiguration | None:
    """Heartbeat period and net timeout of the replication connection; None without one.

    MariaDB: the connection's `Slave_heartbeat_period` and `@@slave_net_timeout` (the values MariaDB's
    performance_schema.replication_connection_configuration shows, but readable with performance_schema
    off). MySQL: that table's HEARTBEAT_INTERVAL and `@@replica_net_timeout`, as Vitess reads them."""
    if replica is None:
        return None
    if flavor is Flavor.MARIADB:
        heartbeat = replica.heartbeat_period or 0.0
        timeout = await _variable(client, "@@GLOBAL.slave_net_timeout")
        return ReplicationConfiguration(heartbeat, int(timeout or 0))
    row = await client.query_one(
        "SELECT HEARTBEAT_INTERVAL AS heartbeat FROM performance_schema.replication_connection_configuration "
        "WHERE CHANNEL_NAME = ''"
    )
    if row is None:
        return None
    try:
        timeout = await _variable(client, "@@GLOBAL.replica_net_timeout")
    except QueryError as e:
        if e.errno != ER_UNKNOWN_SYSTEM_VARIABLE:
            raise
        timeout = await _variable(client, "@@GLOBAL.slave_net_timeout")
    return ReplicationConfiguration(float(row["heartbeat"] or 0), int(timeout or 0))


async def binlog_settings(client: SqlRunner) -> BinlogSettings:
    """binlog_format, log_bin, log_slave_updates / log_replica_updates, binlog_row_image."""
    values = await _globals(
        client, ("binlog_format", "log_bin", "log_slave_updates", "log_replica_updates", "binlog_row_image")
    )
    return BinlogSettings(
        binlog_format=values.get("binlog_format", ""),
        log_bin=_on(values.get("log_bin")),
        log_replica_updates=_on(values.get("log_replica_updates", values.get("log_slave_updates"))),
        binlog_row_image=values.get("binlog_row_image", ""),
    )


async def semi_sync_type(client: SqlRunner) -> SemiSyncType:
    names = {
        str(r["Variable_name"]).lower()
        for r in await client.query("SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync_%_enabled'")
    }
    if "rpl_semi_sync_source_enabled" in names:
        return SemiSyncType.SOURCE
    if "rpl_semi_sync_master_enabled" in names:
        return SemiSyncType.MASTER
    return SemiSyncType.OFF


async def semi_sync_state(client: SqlRunner) -> SemiSyncState:
    """Settings and live status of semi-sync replication (all off/0 where it is not loaded)."""
    kind = await semi_sync_type(client)
    if kind is SemiSyncType.OFF:
        return SemiSyncState(False, False, False, False, 0, 0, 0)
    source, replica = ("source", "replica") if kind is SemiSyncType.SOURCE else ("master", "slave")
    variables = {
        str(r["Variable_name"]).lower(): str(r["Value"])
        for r in await client.query("SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync_%'")
    }
    status = {
        str(r["Variable_name"]).lower(): str(r["Value"])
        for r in await client.query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_%'")
    }
    return SemiSyncState(
        primary_enabled=variables.get(f"rpl_semi_sync_{source}_enabled") == "ON",
        replica_enabled=variables.get(f"rpl_semi_sync_{replica}_enabled") == "ON",
        primary_status=status.get(f"rpl_semi_sync_{source}_status") == "ON",
        replica_status=status.get(f"rpl_semi_sync_{replica}_status") == "ON",
        primary_clients=_int(status.get(f"rpl_semi_sync_{source}_clients")),
        primary_timeout=_int(variables.get(f"rpl_semi_sync_{source}_timeout")),
        wait_for_replica_count=_int(variables.get(f"rpl_semi_sync_{source}_wait_for_{replica}_count")),
    )


async def set_semi_sync(client: SqlRunner, primary: bool, replica: bool) -> None:
    """Turn the source side and the replica side of semi-sync on or off (Vitess's SetSemiSyncEnabled)."""
    kind = await semi_sync_type(client)
    if kind is SemiSyncType.OFF:
        raise FailedPrecondition(
            "semi-sync replication is not available on this mysqld: load the semisync plugins "
            "(MySQL: INSTALL PLUGIN rpl_semi_sync_source ...) or ask without semi-sync"
        )
    source, replica_side = ("source", "replica") if kind is SemiSyncType.SOURCE else ("master", "slave")
    await client.execute(
        f"SET GLOBAL rpl_semi_sync_{source}_enabled = {int(primary)}, "
        f"GLOBAL rpl_semi_sync_{replica_side}_enabled = {int(replica)}"
    )


async def _globals(client: SqlRunner, names: tuple[str, ...]) -> dict[str, str]:
    rows = await client.query(
        f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({', '.join(['%s'] * len(names))})", names
    )
    return {str(r["Variable_name"]).lower(): str(r["Value"] if r["Value"] is not None else "") for r in rows}


def _file_position(file: Any, offset: Any) -> FilePosition | None:
    """Vitess sets a file position only when both the file and the offset are known."""
    if not file or offset is None or str(offset) == "":
        return None
    return FilePosition(str(file), int(offset))


def _int(value: Any) -> int:
    text = str(value if value is not None else "").strip()
    return int(text) if _UNSIGNED.fullmatch(text) else 0
