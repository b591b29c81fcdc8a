"""How tabletctl prints events and status."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import rich.console

from agent.pb import agentdata_pb2, logutil_pb2, topodata_pb2, vttime_pb2

LEVEL_NAMES = {0: "I", 1: "W", 2: "E", 3: "C"}
SIZE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


class Console(rich.console.Console):
    """rich's console, but a closed pipe raises BrokenPipeError for `tabletctl` to exit quietly with
    its own exit code (rich's default exits with 1, which means "the operation failed" here)."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def human_size(n: float) -> str:
    """`512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB` (binary units)."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in SIZE_UNITS:
        n /= 1024
        if n < 1024 or unit == SIZE_UNITS[-1]:
            break
    return f"{n:.1f} {unit}"


def human_duration(seconds: float) -> str:
    """`8s`, `3m12s`, `1h05m`, `2d03h`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def human_age(then: datetime, now: datetime) -> str:
    """`45s ago`, `12m ago`, `3h ago`, `2d ago` (the largest unit only)."""
    s = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size * (2 if unit == "d" else 1):
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def pb_time(t: vttime_pb2.Time) -> datetime | None:
    """A vttime.Time as an aware UTC datetime; None when unset (zero)."""
    if not t.seconds and not t.nanoseconds:
        return None
    return datetime.fromtimestamp(t.seconds + t.nanoseconds / 1e9, UTC)


def rfc3339(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        line += f" {op.bytes_done * 100 // max(op.bytes_total, 1)}% of {human_size(op.bytes_total)}"
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


def render_expiry(r: agentdata_pb2.ExpireBackupsResponse) -> str:
    """The retention plan: every backup, kept or removed and why, then a summary."""
    lines = [f"policy: {r.policy}"]
    removed = set(r.removed)
    for d in r.decisions:
        if d.keep:
            action = "keep"
        elif r.dry_run:
            action = "would remove"
        else:
            action = "removed" if d.name in removed else "not removed"
        lines.append(f"{action:<13}{d.kind:<12}{d.name}  ({d.reason})")
    going = sum(1 for d in r.decisions if not d.keep)
    kept = len(r.decisions) - going
    verb = "would be removed" if r.dry_run else "removed"
    count = going if r.dry_run else len(r.removed)
    lines.append(f"{count} backup(s) {verb}, {kept} kept")
    if r.anchor:
        since = ""
        if r.HasField("window_start"):
            since = f" from {datetime.fromtimestamp(r.window_start.seconds, UTC):%Y-%m-%dT%H:%M:%SZ} on"
        lines.append(f"point-in-time restores start from full backup {r.anchor}{since}")
    return "\n".join(lines)
