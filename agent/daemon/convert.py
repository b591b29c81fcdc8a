"""Conversions between domain objects and protobuf messages (times, events, operations)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.operations import Event, Kind, Operation, Result
from agent.pb import agentdata_pb2, logutil_pb2, vttime_pb2

EventPb = logutil_pb2.Event

_KINDS = {
    Kind.BACKUP: agentdata_pb2.BACKUP,
    Kind.RESTORE: agentdata_pb2.RESTORE,
    Kind.VERIFY: agentdata_pb2.VERIFY,
}
_RESULTS = {
    Result.RUNNING: agentdata_pb2.RUNNING,
    Result.SUCCEEDED: agentdata_pb2.SUCCEEDED,
    Result.FAILED: agentdata_pb2.FAILED,
    Result.CANCELLED: agentdata_pb2.CANCELLED,
    Result.NOTHING_TO_DO: agentdata_pb2.NOTHING_TO_DO,
}


def time_to_pb(t: datetime | None) -> vttime_pb2.Time | None:
    if t is None:
        return None
    seconds = int(t.timestamp())
    return vttime_pb2.Time(seconds=seconds, nanoseconds=t.microsecond * 1000)


def time_from_pb(t: vttime_pb2.Time) -> datetime:
    return datetime.fromtimestamp(t.seconds, UTC) + timedelta(microseconds=t.nanoseconds // 1000)


def duration_from_pb(d: vttime_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def event_to_pb(event: Event) -> logutil_pb2.Event:
    return logutil_pb2.Event(
        time=time_to_pb(event.time),
        level=logutil_pb2.Level.ValueType(int(event.level)),
        file=event.file,
        line=event.line,
        value=event.message,
    )


def operation_to_pb(op: Operation) -> agentdata_pb2.Operation:
    return agentdata_pb2.Operation(
        id=op.id,
        kind=_KINDS[op.kind],
        phase=op.phase,
        bytes_done=op.bytes_done,
        bytes_total=op.bytes_total,
        rate_bytes_per_second=op.rate,
        eta_seconds=op.eta,
        start_time=time_to_pb(op.started),
        end_time=time_to_pb(op.ended),
        result=_RESULTS[op.result],
        error=str(op.error) if op.error else "",
        backup_name=op.backup_name,
        engine=op.engine,
        incremental=op.incremental,
        phases=[
            agentdata_pb2.PhaseTiming(phase=t.phase, seconds=t.seconds, bytes=t.bytes) for t in op.timings
        ],
    )
