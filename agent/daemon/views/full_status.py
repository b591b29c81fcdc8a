"""Vitess's FullStatus RPC: what vtorc and vtctld read about a tablet's mysqld, from SQL.

Positions use Vitess's text forms: `MariaDB/<gtids>` / `MySQL56/<gtids>` and `FilePos/<file>:<offset>`.
"""

from __future__ import annotations

from typing import Any

from agent.errors import AgentError, Unavailable
from agent.mysql import replication
from agent.mysql.client import MysqlSession
from agent.mysql.gtid import Flavor
from agent.pb import replicationdata_pb2
from agent.tablet import Tablet

# Vitess's replication.ReplicationState
IO_UNKNOWN, IO_STOPPED, IO_CONNECTING, IO_RUNNING = 0, 1, 2, 3
_IO_STATES = {"yes": IO_RUNNING, "no": IO_STOPPED, "connecting": IO_CONNECTING, "preparing": IO_CONNECTING}


def _on(value: Any) -> bool:
    return str(value).strip().upper() in ("1", "ON", "YES", "TRUE")


async def _variables(session: MysqlSession, names: tuple[str, ...]) -> dict[str, str]:
    rows = await session.query(
        "SELECT VARIABLE_NAME AS name, VARIABLE_VALUE AS value FROM information_schema.GLOBAL_VARIABLES "
        f"WHERE VARIABLE_NAME IN ({', '.join(['%s'] * len(names))})",
        tuple(n.upper() for n in names),
    )
    return {str(r["name"]).lower(): str(r["value"] if r["value"] is not None else "") for r in rows}


async def _status_values(session: MysqlSession, like: str) -> dict[str, str]:
    rows = await session.query("SHOW GLOBAL STATUS LIKE %s", (like,))
    return {str(r["Variable_name"]).lower(): str(r["Value"]) for r in rows}


def _replication_pb(row: dict[str, Any], position: str) -> replicationdata_pb2.Status:
    def col(new: str, old: str) -> Any:
        return row[new] if new in row else row.get(old)

    io = str(col("Replica_IO_Running", "Slave_IO_Running") or "No").lower()
    sql = str(col("Replica_SQL_Running", "Slave_SQL_Running") or "No").lower()
    behind = col("Seconds_Behind_Source", "Seconds_Behind_Master")
    using_gtid = str(row.get("Using_Gtid", "") or "").lower() not in ("", "no")
    auto = _on(row.get("Auto_Position", 0)) or using_gtid
    source_file = col("Source_Log_File", "Master_Log_File") or ""
    exec_file = col("Relay_Source_Log_File", "Relay_Master_Log_File") or ""
    return replicationdata_pb2.Status(
        position=position,
        io_thread_running=io == "yes",
        sql_thread_running=sql == "yes",
        replication_lag_seconds=int(behind or 0),
        replication_lag_unknown=behind is None,
        source_host=str(col("Source_Host", "Master_Host") or ""),
        source_port=int(col("Source_Port", "Master_Port") or 0),
        connect_retry=int(col("Connect_Retry", "Connect_Retry") or 0),
        file_position=f"FilePos/{exec_file}:{col('Exec_Source_Log_Pos', 'Exec_Master_Log_Pos') or 0}",
        relay_log_source_bin_log_equivalent_position=f"FilePos/{source_file}:"
        f"{col('Read_Source_Log_Pos', 'Read_Master_Log_Pos') or 0}",
        relay_log_file_position=f"FilePos/{row.get('Relay_Log_File') or ''}:{row.get('Relay_Log_Pos') or 0}",
        source_server_id=int(col("Source_Server_Id", "Master_Server_Id") or 0),
        source_uuid=str(col("Source_UUID", "Master_UUID") or ""),
        io_state=_IO_STATES.get(io, IO_UNKNOWN),
        sql_state=IO_RUNNING if sql == "yes" else IO_STOPPED,
        last_io_error=str(row.get("Last_IO_Error") or ""),
        last_sql_error=str(row.get("Last_SQL_Error") or ""),
        source_user=str(col("Source_User", "Master_User") or ""),
        sql_delay=int(row.get("SQL_Delay") or 0),
        auto_position=auto,
        using_gtid=using_gtid or auto,
        has_replication_filters=any(
            row.get(k)
            for k in (
                "Replicate_Do_DB",
                "Replicate_Ignore_DB",
                "Replicate_Do_Table",
                "Replicate_Ignore_Table",
            )
        ),
        ssl_allowed=str(col("Source_SSL_Allowed", "Master_SSL_Allowed") or "").lower() == "yes",
    )


async def build_full_status(tablet: Tablet) -> replicationdata_pb2.FullStatus:
    try:
        info = await tablet.mysqld.server_info()
    except AgentError as e:
        raise Unavailable(f"FullStatus needs a running mysqld: {e}") from None
    flavor, prefix = info.flavor, f"{info.flavor}/"
    async with tablet.client.connection() as s:
        v = await _variables(
            s,
            (
                "read_only", "super_read_only", "log_bin", "binlog_format", "binlog_row_image", "gtid_mode",
                "log_slave_updates", "log_replica_updates", "gtid_binlog_pos", "gtid_slave_pos", "gtid_executed",
                "rpl_semi_sync_master_enabled", "rpl_semi_sync_slave_enabled", "rpl_semi_sync_source_enabled",
                "rpl_semi_sync_replica_enabled", "rpl_semi_sync_master_timeout", "rpl_semi_sync_source_timeout",
                "rpl_semi_sync_master_wait_for_slave_count", "rpl_semi_sync_source_wait_for_replica_count",
            ),
        )  # fmt: skip
        semi = await _status_values(s, "Rpl_semi_sync_%")
        row = await s.query_one("SHOW SLAVE STATUS" if flavor is Flavor.MARIADB else "SHOW REPLICA STATUS")
        master = await s.query_one("SHOW MASTER STATUS") if _on(v.get("log_bin", "")) else None
        purged = await replication.purged_position(s, flavor)

    def either(a: str, b: str) -> str:
        return v.get(a) or v.get(b) or ""

    executed = v.get("gtid_binlog_pos", "") if flavor is Flavor.MARIADB else v.get("gtid_executed", "")
    status = replicationdata_pb2.FullStatus(
        server_id=info.server_id,
        server_uuid=info.server_uuid,
        gtid_purged=str(purged),
        version=info.version,
        version_comment=info.version_comment,
        read_only=_on(v.get("read_only", "")),
        super_read_only=_on(v.get("super_read_only", "")),
        gtid_mode="ON" if flavor is Flavor.MARIADB else v.get("gtid_mode", ""),
        binlog_format=v.get("binlog_format", ""),
        binlog_row_image=v.get("binlog_row_image", ""),
        log_bin_enabled=_on(v.get("log_bin", "")),
        log_replica_updates=_on(either("log_replica_updates", "log_slave_updates")),
        semi_sync_primary_enabled=_on(either("rpl_semi_sync_source_enabled", "rpl_semi_sync_master_enabled")),
        semi_sync_replica_enabled=_on(either("rpl_semi_sync_replica_enabled", "rpl_semi_sync_slave_enabled")),
        semi_sync_primary_status=_on(
            semi.get("rpl_semi_sync_master_status") or semi.get("rpl_semi_sync_source_status", "")
        ),
        semi_sync_replica_status=_on(
            semi.get("rpl_semi_sync_slave_status") or semi.get("rpl_semi_sync_replica_status", "")
        ),
        semi_sync_primary_clients=int(
            semi.get("rpl_semi_sync_master_clients") or semi.get("rpl_semi_sync_source_clients") or 0
        ),
        semi_sync_primary_timeout=int(
            either("rpl_semi_sync_source_timeout", "rpl_semi_sync_master_timeout") or 0
        ),
        semi_sync_wait_for_replica_count=int(
            either("rpl_semi_sync_source_wait_for_replica_count", "rpl_semi_sync_master_wait_for_slave_count")
            or 0
        ),
    )
    if row is not None:
        # MariaDB: what the replica applied from its source; MySQL: everything it executed
        applied = v.get("gtid_slave_pos", "") if flavor is Flavor.MARIADB else executed
        status.replication_status.CopyFrom(_replication_pb(row, prefix + "".join(applied.split())))
    if master is not None:
        status.primary_status.CopyFrom(
            replicationdata_pb2.PrimaryStatus(
                position=prefix + "".join(executed.split()),
                file_position=f"FilePos/{master.get('File', '')}:{master.get('Position', 0)}",
            )
        )
    return status
