"""The Status RPC's answer: identity, mysqld state, operations, backups and health problems."""

from __future__ import annotations

from agent import AGENT_VERSION
from agent.catalog.listing import BackupEntry
from agent.catalog.verification import Verification
from agent.daemon import convert
from agent.daemon.views.backups import backup_info
from agent.mysql.state import MysqldState
from agent.ops.health import health_problems, planned_state
from agent.ops.tablet_type import current_type
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
    finished = tablet.runner.finished[: max(0, finished_limit)]
    current = tablet.runner.current
    mysqld = _mysqld_pb(state)
    planned = planned_state(tablet)
    if planned and not state.running:
        mysqld.error = planned
    return agentdata_pb2.StatusResponse(
        tablet_alias=tablet.alias,
        keyspace=config.init_keyspace,
        shard=config.init_shard,
        tablet_type=topodata_pb2.TabletType.Value(current_type(tablet)),
        agent_version=AGENT_VERSION,
        uptime_seconds=tablet.uptime,
        mysqld=mysqld,
        current_operation=convert.operation_to_pb(current) if current is not None else None,
        finished_operations=[convert.operation_to_pb(op) for op in finished],
        storage=str(config.backup_storage_implementation),
        backup_engine=str(config.backup_engine_implementation),
        health_problems=health_problems(tablet, state),
        restored_to=tablet.restored_to,
        last_full_backup=_info(tablet.summary.newest.full, tablet.summary.newest.full_verification),
        last_incremental_backup=_info(tablet.summary.newest.incremental, None),
    )


def _info(entry: BackupEntry | None, verification: Verification | None) -> agentdata_pb2.BackupInfo | None:
    return backup_info(entry, verification) if entry is not None else None
