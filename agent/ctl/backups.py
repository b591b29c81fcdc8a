"""`tabletctl backups` and restore planning: backup chains from the listing, the table, JSON, names as times."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.table import Table

from agent.ctl.render import Console, human_age, human_duration, human_size, pb_time, rfc3339
from agent.errors import InvalidArgument
from agent.mysql.gtid import Position, parse_position
from agent.pb import agentdata_pb2

Info = agentdata_pb2.BackupInfo
COLUMNS = ("BACKUP", "ENGINE", "TYPE", "SIZE", "AGE", "DURATION", "STATE", "VERIFIED", "POSITION")


def _position(text: str, like: Position | None = None) -> Position | None:
    """A MANIFEST position, or None when empty, unparsable or of another flavor than `like`."""
    if not text:
        return None
    try:
        p = parse_position(text, default_flavor=like.flavor if like is not None else None)
    except InvalidArgument:
        return None
    return p if like is None or p.flavor is like.flavor else None


def _extends(b: Info, start: Position) -> Position | None:
    """Where incremental `b` ends when it continues from `start` (starts within it, goes further)."""
    begin, end = _position(b.from_position, start), _position(b.position, start)
    if begin is None or end is None or not start.contains(begin) or start.contains(end):
        return None
    return end


@dataclass(frozen=True)
class Row:
    """One listed backup and where it sits in its chain."""

    info: Info
    parent: str  # the backup an incremental continues from; "" for full backups and unknown bases
    base: str  # the full backup at the root of an incremental's chain; "" when none is listed
    depth: int  # 1: an incremental under its full backup; 0: the others


def chain_rows(backups: Sequence[Info]) -> list[Row]:
    """Backups in display order: each full backup followed by the incrementals that chain from it
    (by FromBackup, else by FromPosition within an older backup's Position), oldest first."""
    by_name = {b.name: b for b in backups}
    parents: dict[str, str] = {}
    for i, b in enumerate(backups):
        if not (b.complete and b.incremental):
            continue
        if b.from_backup in by_name and by_name[b.from_backup].complete:
            parents[b.name] = b.from_backup
            continue
        for older in reversed(backups[:i]):  # the newest older backup whose position it continues
            start = _position(older.position) if older.complete else None
            if start is not None and _extends(b, start) is not None:
                parents[b.name] = older.name
                break

    def base_of(name: str) -> str:
        seen = {name}
        while name in parents:
            name = parents[name]
            if name in seen:  # a loop (forged MANIFESTs): no base
                return ""
            seen.add(name)
        root = by_name[name]
        return name if root.complete and not root.incremental else ""

    rows: list[Row] = []
    children: dict[str, list[Row]] = {}
    for b in backups:
        base = base_of(b.name) if b.name in parents else ""
        row = Row(b, parents.get(b.name, ""), base, 1 if base else 0)
        if base:
            children.setdefault(base, []).append(row)
        else:
            rows.append(row)
    ordered: list[Row] = []
    for row in rows:
        ordered.append(row)
        ordered.extend(children.get(row.info.name, ()))
    return ordered


def verification_text(b: Info) -> str:
    """`ok (deep)`, `failed (light)`; `-` when never verified (or the agent does not say)."""
    if not b.verification:
        return "-"
    return f"{b.verification} ({b.verification_depth})" if b.verification_depth else b.verification


def _cells(row: Row, now: datetime) -> list[str]:
    b = row.info
    started, finished = pb_time(b.backup_time), pb_time(b.finished_time)
    if not b.complete:
        kind = "-"
    elif b.incremental:
        kind = "incremental" if row.base else "incremental (no base)"
    else:
        kind = "full"
    return [
        b.name,
        b.engine or "-",
        kind,
        human_size(b.size_bytes) if b.size_bytes else "-",
        human_age(started, now) if started else "-",
        human_duration((finished - started).total_seconds()) if started and finished else "-",
        "complete" if b.complete else "incomplete",
        verification_text(b),
        b.position or "-",
    ]


def render_plain(rows: Sequence[Row], now: datetime) -> str:
    """Aligned columns under a header; incrementals indented under their full backup."""
    table = [list(COLUMNS)]
    for row in rows:
        cells = _cells(row, now)
        cells[0] = "  " * row.depth + cells[0]
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


def render_rich(rows: Sequence[Row], now: datetime, directory: str, console: Console) -> None:
    table = Table(box=box.SIMPLE_HEAD, title=f"backups in {directory}", title_justify="left")
    for name in COLUMNS:
        table.add_column(name, no_wrap=name != "POSITION", justify="right" if name == "SIZE" else "left")
    for row in rows:
        cells = _cells(row, now)
        if row.depth:
            cells[0] = "  └ " + cells[0]
        style = "dim" if not row.info.complete else ("bold" if not row.info.incremental else "")
        table.add_row(*cells, style=style)
    console.print(table)


def as_json(backups: Sequence[Info], directory: str) -> dict[str, Any]:
    """One document with the same keys for every backup (null when unknown), oldest first."""
    rows = {r.info.name: r for r in chain_rows(backups)}
    out = []
    for b in backups:
        row = rows[b.name]
        started, finished = pb_time(b.backup_time), pb_time(b.finished_time)
        out.append(
            {
                "name": b.name,
                "directory": b.directory,
                "complete": b.complete,
                "engine": b.engine or None,
                "kind": None if not b.complete else "incremental" if b.incremental else "full",
                "position": b.position or None,
                "from_position": b.from_position or None,
                "from_backup": b.from_backup or None,
                "chained_from": row.parent or None,
                "base": row.base or None,
                "backup_time": rfc3339(started),
                "finished_time": rfc3339(finished),
                "duration_seconds": (finished - started).total_seconds() if started and finished else None,
                "size_bytes": b.size_bytes or None,
                "tablet_alias": b.tablet_alias or None,
                "compression_engine": b.compression_engine or None,
                "verification": b.verification or None,
                "verification_depth": b.verification_depth or None,
                "verified_time": rfc3339(pb_time(b.verified_time)),
                "verification_problems": list(b.verification_problems),
            }
        )
    return {"directory": directory, "backups": out}


# --- restore planning ---


def full_for_restore(
    backups: Sequence[Info], before: datetime | None, allowed_engines: Sequence[str]
) -> Info | None:
    """The full backup a plain restore takes (as the agent chooses it): the newest complete one, taken
    at or before `before`, made by an allowed engine, whose last verification did not fail."""
    for b in reversed(backups):
        if not b.complete or b.incremental or (allowed_engines and b.engine not in allowed_engines):
            continue
        if b.verification == "failed":
            continue
        started = pb_time(b.backup_time)
        if before is not None and (started is None or started > before):
            continue
        return b
    return None


def furthest_chain(backups: Sequence[Info], full: Info) -> list[Info]:
    """The incrementals that continue `full`, each from where the previous one ended, going as far as
    the listing allows (at each step the candidate that reaches furthest)."""
    current = _position(full.position)
    if current is None:
        return []
    chain: list[Info] = []
    while True:
        steps = [
            (b, end)
            for b in backups
            if b.complete and b.incremental and (end := _extends(b, current)) is not None
        ]
        if not steps:
            return chain
        b, current = max(steps, key=lambda s: (sum(1 for o in steps if s[1].contains(o[1])), s[0].name))
        chain.append(b)


def find(backups: Sequence[Info], name: str) -> Info | None:
    return next((b for b in backups if b.name == name and b.complete), None)


def now_utc() -> datetime:
    return datetime.now(UTC)
