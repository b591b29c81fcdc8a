"""How tabletctl prints events and status."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from agent.pb import agentdata_pb2, logutil_pb2, topodata_pb2

LEVEL_NAMES = {0: "I", 1: "W", 2: "E", 3: "C"}


def format_event(event: logutil_pb2.Event) -> str:
    when = datetime.fromtimestamp(event.time.seconds, UTC).strftime("%H:%M:%S")
    return f"{LEVEL_NAMES.get(event.level, '?')} {when} {event.value}"


def print_event(event: logutil_pb2.Event) -> None:
    stream = sys.stderr if event.level == logutil_pb2.ERROR else sys.stdout
    print(format_event(event), file=stream, flush=True)


def _op_line(op: agentdata_pb2.Operation) -> str:
    kind = agentdata_pb2.OperationKind.Name(op.kind).lower()
    result = agentdata_pb2.OperationResult.Name(op.result).lower()
    line = f"{op.id} {kind} {result} phase={op.phase}"
    if op.bytes_total:
        line += f" {op.bytes_done * 100 // max(op.bytes_total, 1)}% of {op.bytes_total / 2**20:.0f} MiB"
    if op.error:
        line += f" error={op.error}"
    return line


def render_status(s: agentdata_pb2.StatusResponse) -> str:
    m = s.mysqld
    r = m.replication
    lines = [
        f"tablet       {s.tablet_alias}  keyspace={s.keyspace} shard={s.shard} "
        f"type={topodata_pb2.TabletType.Name(s.tablet_type)}",
        f"agent        version {s.agent_version}, up {s.uptime_seconds:.0f}s, storage={s.storage} "
        f"engine={s.backup_engine}",
        f"mysqld       {'running' if m.running else 'NOT RUNNING'} {m.flavor} {m.version}"
        + (f" read_only={'on' if m.read_only else 'off'}" if m.running else f" ({m.error})"),
    ]
    if m.running:
        if r.configured:
            lag = "unknown" if r.lag_seconds < 0 else f"{r.lag_seconds}s"
            lines.append(
                f"replication  source {r.source_host}:{r.source_port} io={'yes' if r.io_running else 'no'} "
                f"sql={'yes' if r.sql_running else 'no'} lag={lag}"
            )
        else:
            lines.append("replication  not configured")
        lines.append(f"gtid         executed={m.gtid_executed} purged={m.gtid_purged}")
    if s.restored_to:
        lines.append(f"restored to  {s.restored_to}")
    if s.HasField("current_operation"):
        lines.append(f"operation    {_op_line(s.current_operation)}")
    else:
        lines.append("operation    idle")
    for op in s.finished_operations[:5]:
        lines.append(f"finished     {_op_line(op)}")
    for label, b in (("last full", s.last_full_backup), ("last incr", s.last_incremental_backup)):
        if b.name:
            lines.append(f"{label:<12} {b.name} ({b.engine or 'builtin'}) position={b.position}")
    lines.append("health       " + ("ok" if not s.health_problems else "; ".join(s.health_problems)))
    return "\n".join(lines)
