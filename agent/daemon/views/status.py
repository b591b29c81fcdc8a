"""The Status RPC's answer: identity, mysqld state, operations, backups and health problems."""

from __future__ import annotations

import time

from agent import AGENT_VERSION
from agent.catalog.listing import BackupEntry
from agent.catalog.summary import Newest
from agent.config import is_loopback
from agent.daemon import convert
from agent.daemon.views.backups import backup_info
from agent.mysql.state import MysqldState
from agent.operations import Result
from agent.pb import agentdata_pb2, topodata_pb2
from agent.tablet import Tablet


def _mysqld_pb(state: MysqldState) -> agentdata_pb2.MysqldState:
    repl = state.replication
    return agentdata_pb2.MysqldState(
        running=state.running,
        flavor=state.flavor,
        version=state.version,
        read_only=state.read_only,
        super_read_only=state.super_read_only,
        replication=agentdata_pb2.ReplicationState(
            configured=repl.configured,
            io_running=repl.io_running,
            sql_running=repl.sql_running,
            lag_seconds=-1 if repl.seconds_behind is None else repl.seconds_behind,
            source_host=repl.source_host,
            source_port=repl.source_port,
            last_error=repl.last_sql_error or repl.last_io_error,
        )
        if repl is not None
        else None,
        gtid_executed=state.gtid_executed,
        gtid_purged=state.gtid_purged,
        error=state.error,
    )


async def build_status(tablet: Tablet, finished_limit: int) -> agentdata_pb2.StatusResponse:
    config = tablet.config
    state = await tablet.mysqld_states.get()
    problems = list(state.problems)
    finished = tablet.runner.finished[: max(0, finished_limit)]
    last_backup = next(
        (op for op in finished if op.kind == "backup" and op.result is not Result.NOTHING_TO_DO), None
    )
    if last_backup is not None and last_backup.result is Result.FAILED:
        problems.append("last backup failed")
    problems += backup_problems(tablet.summary.newest, tablet.backup_directory, config.backup_max_age_hours)
    if config.grpc_cert is None and not is_loopback(config.grpc_bind_address):
        problems.append(f"INSECURE: plaintext gRPC on {config.grpc_bind_address} (--grpc_insecure)")
    current = tablet.runner.current
    return agentdata_pb2.StatusResponse(
        tablet_alias=tablet.alias,
        keyspace=config.init_keyspace,
        shard=config.init_shard,
        tablet_type=topodata_pb2.TabletType.Value(
            "DRAINED" if tablet.drained else str(config.init_tablet_type)
        ),
        agent_version=AGENT_VERSION,
        uptime_seconds=tablet.uptime,
        mysqld=_mysqld_pb(state),
        current_operation=convert.operation_to_pb(current) if current is not None else None,
        finished_operations=[convert.operation_to_pb(op) for op in finished],
        storage=str(config.backup_storage_implementation),
        backup_engine=str(config.backup_engine_implementation),
        health_problems=problems,
        restored_to=tablet.restored_to,
        last_full_backup=_info(tablet.summary.newest.full),
        last_incremental_backup=_info(tablet.summary.newest.incremental),
    )


def _info(entry: BackupEntry | None) -> agentdata_pb2.BackupInfo | None:
    return backup_info(entry) if entry is not None else None


def backup_problems(
    newest: Newest, directory: str, max_age_hours: float, now: float | None = None
) -> list[str]:
    """'no backup in 24h' and friends, from the cached listing."""
    if newest.error:
        return [f"cannot list backups: {newest.error}"]
    if not newest.listed_at:
        return []
    if newest.full is None:
        return [f"no complete full backup in {directory}"]
    times = [
        e.manifest.backup_datetime
        for e in (newest.full, newest.incremental)
        if e is not None and e.manifest is not None and e.manifest.backup_datetime is not None
    ]
    if max_age_hours and times:
        age = ((now or time.time()) - max(times).timestamp()) / 3600
        if age > max_age_hours:
            return [f"no backup in {max_age_hours:g}h (the newest is {age:.0f}h old)"]
    return []
