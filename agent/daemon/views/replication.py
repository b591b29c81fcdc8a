"""Vitess's replication RPCs (ReplicationStatus, PrimaryStatus, PrimaryPosition, StopReplication,
StartReplication) and the replicationdata messages they share with FullStatus, as vttablet answers them.

Positions are Vitess's text forms: `MariaDB/0-1-5`, `MySQL56/<uuid>:1-5`, `FilePos/<file>:<offset>`.
Errors Vitess clients recognise keep vttablet's text and code: a tablet without replication answers
ReplicationStatus with `no replication status (errno 100) (sqlstate HY000)` (vtctld reads the errno)
and code UNKNOWN, as vttablet's ErrNotReplica does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from agent.errors import AgentError, FailedPrecondition, Unavailable
from agent.mysql import replication
from agent.mysql.client import MysqlSession
from agent.mysql.gtid import Flavor
from agent.mysql.mysqld import ServerInfo
from agent.operations import Kind
from agent.ops.tablet_type import current_type
from agent.pb import replicationdata_pb2, tabletmanagerdata_pb2
from agent.tablet import Tablet
from agent.topo.tablets import type_during

# Vitess prints a MariaDB replica's source UUID from an all-zero SID: MariaDB has no server UUIDs.
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


class NotReplica(AgentError):
    """vttablet's ErrNotReplica: no replication source is configured (gRPC UNKNOWN, errno 100 in the text)."""

    code = grpc.StatusCode.UNKNOWN


class NoPrimaryStatus(AgentError):
    """vttablet's ErrNoPrimaryStatus: SHOW MASTER STATUS returned nothing (binlogging is off)."""

    code = grpc.StatusCode.UNKNOWN


def not_replica() -> NotReplica:
    return NotReplica(
        "no replication status (errno 100) (sqlstate HY000): this tablet's mysqld has no replication "
        "source; configure one with CHANGE MASTER TO ... (Vitess: SetReplicationSource) to make it a replica"
    )


def backup_running(tablet: Tablet) -> bool:
    """A backup operation runs on this tablet (vttablet's IsBackupRunning: any engine, online or not)."""
    op = tablet.runner.current
    return op is not None and op.kind is Kind.BACKUP


@contextlib.asynccontextmanager
async def mysqld_session(tablet: Tablet, rpc: str) -> AsyncIterator[tuple[MysqlSession, ServerInfo]]:
    """A session on the tablet's mysqld and what server it is; Unavailable, saying why, when it is down."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            session = await stack.enter_async_context(tablet.client.connection())
            info = await tablet.mysqld.server_info(session)
        except AgentError as e:
            op = tablet.runner.current
            why = (
                f"; the running {op.kind} (operation {op.id}) stopped it and starts it again when it ends"
                if op is not None and type_during(op) is not None
                else "; start it, or check the agent's --mycnf_file and credentials"
            )
            raise Unavailable(f"{rpc} needs a running mysqld: {e}{why}") from None
        yield session, info


def status_pb(status: replication.ReplicaStatus, backup: bool) -> replicationdata_pb2.Status:
    """Vitess's ReplicationStatusToProto (positions absent in Vitess's parse are sent empty)."""

    def text(position: object | None) -> str:
        return "" if position is None else str(position)

    flavor = status.position.flavor
    return replicationdata_pb2.Status(
        position=str(status.position),
        relay_log_position=text(status.relay_log_position),
        file_position=text(status.file_position),
        relay_log_source_binlog_equivalent_position=text(status.relay_log_source_binlog_equivalent_position),
        relay_log_file_position=text(status.relay_log_file_position),
        source_server_id=status.source_server_id,
        replication_lag_seconds=status.lag_seconds or 0,
        replication_lag_unknown=status.lag_seconds is None,
        sql_delay=status.sql_delay,
        source_host=status.source_host,
        source_user=status.source_user,
        source_port=status.source_port,
        connect_retry=status.connect_retry,
        source_uuid=status.source_uuid or (ZERO_UUID if flavor is Flavor.MARIADB else ""),
        io_state=int(status.io_state),
        last_io_error=status.last_io_error,
        sql_state=int(status.sql_state),
        last_sql_error=status.last_sql_error,
        ssl_allowed=status.ssl_allowed,
        has_replication_filters=status.has_replication_filters,
        auto_position=status.auto_position,
        using_gtid=status.using_gtid,
        backup_running=backup,
    )


def primary_status_pb(status: replication.PrimaryStatus) -> replicationdata_pb2.PrimaryStatus:
    return replicationdata_pb2.PrimaryStatus(
        position=str(status.position), file_position=str(status.file_position), server_uuid=status.server_uuid
    )


async def replication_status(tablet: Tablet) -> tabletmanagerdata_pb2.ReplicationStatusResponse:
    async with mysqld_session(tablet, "ReplicationStatus") as (s, info):
        status = await replication.replica_status(s, info.flavor)
    if status is None:
        raise not_replica()
    return tabletmanagerdata_pb2.ReplicationStatusResponse(status=status_pb(status, backup_running(tablet)))


async def primary_status(tablet: Tablet) -> tabletmanagerdata_pb2.PrimaryStatusResponse:
    async with mysqld_session(tablet, "PrimaryStatus") as (s, info):
        status = await replication.primary_status(s, info.flavor)
    if status is None:
        raise NoPrimaryStatus(
            "no master status: binary logging is off on this tablet's mysqld, so it cannot serve as a "
            "replication source; start it with log_bin"
        )
    return tabletmanagerdata_pb2.PrimaryStatusResponse(status=primary_status_pb(status))


async def primary_position(tablet: Tablet) -> tabletmanagerdata_pb2.PrimaryPositionResponse:
    async with mysqld_session(tablet, "PrimaryPosition") as (s, info):
        position = await replication.primary_position(s, info.flavor)
    return tabletmanagerdata_pb2.PrimaryPositionResponse(position=str(position))


def _check_not_locked(tablet: Tablet, rpc: str) -> None:
    """vttablet runs these under its action lock, which an offline backup or a restore holds throughout:
    they would wait for it. Refuse instead: that operation stops mysqld and puts replication back itself."""
    op = tablet.runner.current
    if op is not None and type_during(op) is not None:
        raise FailedPrecondition(
            f"{rpc} refused: a {op.engine + ' ' if op.engine else ''}{op.kind} (operation {op.id}) is running "
            "and controls mysqld and replication until it ends; retry when it has finished, or cancel it "
            f"(`tabletctl cancel {op.id}`)"
        )


async def stop_replication(tablet: Tablet) -> tabletmanagerdata_pb2.StopReplicationResponse:
    """Stop both replication threads (nothing to do on a tablet without a source, as STOP SLAVE)."""
    _check_not_locked(tablet, "StopReplication")
    async with mysqld_session(tablet, "StopReplication") as (s, info):
        await replication.stop_replication(s, info.flavor)
    return tabletmanagerdata_pb2.StopReplicationResponse()


async def start_replication(
    tablet: Tablet, semi_sync: bool
) -> tabletmanagerdata_pb2.StartReplicationResponse:
    """Fix semi-sync for the tablet's type as vttablet does, then start both replication threads.

    semiSync true: the replica side on, the source side on only for a PRIMARY. False: both sides off
    (where semi-sync is available; without it, only a request for it is an error)."""
    _check_not_locked(tablet, "StartReplication")
    async with mysqld_session(tablet, "StartReplication") as (s, info):
        if not (await replication.replication_status(s, info.flavor)).configured:
            raise FailedPrecondition(
                "cannot start replication: this tablet's mysqld has no replication source; configure one with "
                "CHANGE MASTER TO ... (Vitess: SetReplicationSource) first"
            )
        if await replication.semi_sync_type(s) is not replication.SemiSyncType.OFF:
            primary = semi_sync and current_type(tablet) == "PRIMARY"
            await replication.set_semi_sync(s, primary=primary, replica=semi_sync)
        elif semi_sync:
            await replication.set_semi_sync(s, primary=False, replica=True)  # raises: not available
        await replication.start_replication(s, info.flavor)
    return tabletmanagerdata_pb2.StartReplicationResponse()
