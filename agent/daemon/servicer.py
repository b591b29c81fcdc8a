"""TabletManager servicer: translation between protobuf messages and domain calls, and errors to the wire.

Every AgentError is mapped here, once, to its gRPC status; anything else becomes INTERNAL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from agent.catalog.verification import Depth
from agent.daemon import convert
from agent.daemon.requests import backup_params, restore_params
from agent.daemon.views import replication
from agent.daemon.views.backups import expire, list_backups, remove_backup
from agent.daemon.views.full_status import build_full_status
from agent.daemon.views.status import build_status
from agent.errors import AgentError
from agent.log import get_logger
from agent.operations import Operation, error_status
from agent.ops.backup import start_backup
from agent.ops.check import State, run_checks
from agent.ops.restore.run import discard_previous, start_restore
from agent.ops.verify import start_verify
from agent.pb import agentdata_pb2, tabletmanagerdata_pb2, tabletmanagerservice_pb2_grpc
from agent.tablet import Tablet

log = get_logger("agent.daemon.servicer")
CHECK_STATES = {
    State.OK: agentdata_pb2.CHECK_OK,
    State.WARN: agentdata_pb2.CHECK_WARN,
    State.FAIL: agentdata_pb2.CHECK_FAIL,
}
T = TypeVar("T")
Ctx = grpc.aio.ServicerContext[Any, Any]


async def _call(context: Ctx, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return await fn()
    except AgentError as e:
        await context.abort(e.code, str(e))
    except Exception as e:
        log.exception("rpc failed")
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
    raise AssertionError("unreachable")


class TabletManagerServicer(tabletmanagerservice_pb2_grpc.TabletManagerServicer):
    def __init__(self, tablet: Tablet) -> None:
        self.tablet = tablet

    async def Ping(
        self, request: tabletmanagerdata_pb2.PingRequest, context: Ctx
    ) -> tabletmanagerdata_pb2.PingResponse:
        return tabletmanagerdata_pb2.PingResponse(payload=request.payload)

    async def Backup(
        self, request: tabletmanagerdata_pb2.BackupRequest, context: Ctx
    ) -> AsyncIterator[tabletmanagerdata_pb2.BackupResponse]:
        op = await _call(
            context, lambda: start_backup(self.tablet, backup_params(request, self.tablet.config))
        )
        async for event in self._follow(op, context, request.cancel_on_disconnect):
            yield tabletmanagerdata_pb2.BackupResponse(event=event)

    async def RestoreFromBackup(
        self, request: tabletmanagerdata_pb2.RestoreFromBackupRequest, context: Ctx
    ) -> AsyncIterator[tabletmanagerdata_pb2.RestoreFromBackupResponse]:
        op = await _call(context, lambda: start_restore(self.tablet, restore_params(request)))
        async for event in self._follow(op, context, request.cancel_on_disconnect):
            yield tabletmanagerdata_pb2.RestoreFromBackupResponse(event=event)

    async def _follow(
        self, op: Operation, context: Ctx, cancel_on_disconnect: bool
    ) -> AsyncIterator[convert.EventPb]:
        """Stream an operation's events; end with its status. The operation outlives a disconnect by default."""
        finished = False
        try:
            async for event in op.watch():
                yield convert.event_to_pb(event)
            finished = True
        finally:
            if not finished and cancel_on_disconnect and not op.done:
                log.info("client went away: cancelling operation", op=op.id)
                self.tablet.runner.request_cancel(op.id, "the client went away: cancelling")
        status = error_status(op)
        if status is not None:
            await context.abort(*status)

    async def FullStatus(
        self, request: tabletmanagerdata_pb2.FullStatusRequest, context: Ctx
    ) -> tabletmanagerdata_pb2.FullStatusResponse:
        async def full() -> tabletmanagerdata_pb2.FullStatusResponse:
            return tabletmanagerdata_pb2.FullStatusResponse(status=await build_full_status(self.tablet))

        return await _call(context, full)

    async def ReplicationStatus(
        self, request: tabletmanagerdata_pb2.ReplicationStatusRequest, context: Ctx
    ) -> tabletmanagerdata_pb2.ReplicationStatusResponse:
        return await _call(context, lambda: replication.replication_status(self.tablet))

    async def PrimaryStatus(
        self, request: tabletmanagerdata_pb2.PrimaryStatusRequest, context: Ctx
    ) -> tabletmanagerdata_pb2.PrimaryStatusResponse:
        return await _call(context, lambda: replication.primary_status(self.tablet))

    async def PrimaryPosition(
        self, request: tabletmanagerdata_pb2.PrimaryPositionRequest, context: Ctx
    ) -> tabletmanagerdata_pb2.PrimaryPositionResponse:
        return await _call(context, lambda: replication.primary_position(self.tablet))

    async def StopReplication(
        self, request: tabletmanagerdata_pb2.StopReplicationRequest, context: Ctx
    ) -> tabletmanagerdata_pb2.StopReplicationResponse:
        return await _call(context, lambda: replication.stop_replication(self.tablet))

    async def StartReplication(
        self, request: tabletmanagerdata_pb2.StartReplicationRequest, context: Ctx
    ) -> tabletmanagerdata_pb2.StartReplicationResponse:
        return await _call(context, lambda: replication.start_replication(self.tablet, request.semiSync))

    async def Status(
        self, request: agentdata_pb2.StatusRequest, context: Ctx
    ) -> agentdata_pb2.StatusResponse:
        limit = request.finished_operations or 10
        return await _call(context, lambda: build_status(self.tablet, limit))

    async def ListBackups(
        self, request: agentdata_pb2.ListBackupsRequest, context: Ctx
    ) -> agentdata_pb2.ListBackupsResponse:
        return await _call(context, lambda: list_backups(self.tablet, request.include_incomplete))

    async def RemoveBackup(
        self, request: agentdata_pb2.RemoveBackupRequest, context: Ctx
    ) -> agentdata_pb2.RemoveBackupResponse:
        return await _call(context, lambda: remove_backup(self.tablet, request.name, request.force))

    async def ExpireBackups(
        self, request: agentdata_pb2.ExpireBackupsRequest, context: Ctx
    ) -> agentdata_pb2.ExpireBackupsResponse:
        return await _call(context, lambda: expire(self.tablet, request.dry_run))

    async def CancelOperation(
        self, request: agentdata_pb2.CancelOperationRequest, context: Ctx
    ) -> agentdata_pb2.CancelOperationResponse:
        async def cancel() -> agentdata_pb2.CancelOperationResponse:
            op = await self.tablet.runner.cancel(request.id)
            return agentdata_pb2.CancelOperationResponse(operation=convert.operation_to_pb(op))

        return await _call(context, cancel)

    async def VerifyBackup(
        self, request: agentdata_pb2.VerifyBackupRequest, context: Ctx
    ) -> AsyncIterator[agentdata_pb2.VerifyBackupResponse]:
        depth = Depth.DEEP if request.deep else Depth.LIGHT
        op = await _call(context, lambda: start_verify(self.tablet, list(request.names), request.all, depth))
        async for event in self._follow(op, context, request.cancel_on_disconnect):
            yield agentdata_pb2.VerifyBackupResponse(event=event)

    async def DiscardPrevious(
        self, request: agentdata_pb2.DiscardPreviousRequest, context: Ctx
    ) -> agentdata_pb2.DiscardPreviousResponse:
        async def discard() -> agentdata_pb2.DiscardPreviousResponse:
            return agentdata_pb2.DiscardPreviousResponse(removed=await discard_previous(self.tablet))

        return await _call(context, discard)

    async def Check(self, request: agentdata_pb2.CheckRequest, context: Ctx) -> agentdata_pb2.CheckResponse:
        async def check() -> agentdata_pb2.CheckResponse:
            results = await run_checks(self.tablet)
            return agentdata_pb2.CheckResponse(
                results=[
                    agentdata_pb2.CheckResult(
                        name=r.name, state=CHECK_STATES[r.state], detail=r.detail, fix=r.fix
                    )
                    for r in results
                ]
            )

        return await _call(context, check)

    async def WatchOperation(
        self, request: agentdata_pb2.WatchOperationRequest, context: Ctx
    ) -> AsyncIterator[agentdata_pb2.WatchOperationResponse]:
        async def get() -> Operation:
            return self.tablet.runner.get(request.id)

        op = await _call(context, get)
        async for event in op.watch():
            yield agentdata_pb2.WatchOperationResponse(
                event=convert.event_to_pb(event),
                operation=convert.operation_to_pb(op),
                fields={k: str(v) for k, v in event.fields.items()},
            )
        yield agentdata_pb2.WatchOperationResponse(operation=convert.operation_to_pb(op))
