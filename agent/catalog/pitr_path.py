"""Which backups a point-in-time restore uses: a full backup, then a chain of incrementals that reaches the
target. Pure functions of the listed backups (as Vitess's FindPITRPath).

To a position (inclusive): the newest full backup whose position the target contains, then incrementals,
each starting at or before where the previous one ended (`FromPosition` within the current position) and
going further, until one's `Position` contains the target.

To a time (exclusive): the newest full backup certainly made of transactions older than the time (finished
at least a second before it: MANIFEST times have second resolution), then incrementals until one that
reaches the time: it started after it, or it holds a transaction at or after it. Which transactions of the
chain are older than the time is decided later, by reading the binlogs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent.catalog.listing import BackupEntry
from agent.catalog.manifest import Manifest, format_time, parse_time
from agent.errors import FailedPrecondition, InvalidArgument
from agent.mysql.gtid import Flavor, MariaDBGTIDSet, Position, parse_position

TIME_RESOLUTION = timedelta(seconds=1)


@dataclass(frozen=True)
class RestorePath:
    full: BackupEntry
    incrementals: tuple[BackupEntry, ...]

    def describe(self) -> str:
        steps = [f"full {self.full.name} at {_manifest(self.full).position}"]
        steps += [
            f"incremental {e.name} {_manifest(e).from_position}..{_manifest(e).position}"
            for e in self.incrementals
        ]
        return " -> ".join(steps)


def _manifest(entry: BackupEntry) -> Manifest:
    assert entry.manifest is not None
    return entry.manifest


def _position(entry: BackupEntry, text: str, target: Position) -> Position | None:
    """A MANIFEST position of the target's flavor, or None (unusable for this target)."""
    try:
        position = parse_position(text, default_flavor=target.flavor)
    except InvalidArgument:
        return None
    return position if position.flavor is target.flavor else None


def _usable(
    entries: Sequence[BackupEntry], allowed_engines: Sequence[str] | None
) -> tuple[list[BackupEntry], list[BackupEntry]]:
    """Complete full backups (made by an allowed engine) and complete incrementals, oldest first."""
    fulls, incrementals = [], []
    for e in entries:
        m = e.manifest
        if not e.complete or m is None or not m.position:
            continue
        if m.incremental:
            incrementals.append(e)
        elif not allowed_engines or m.engine in allowed_engines:
            fulls.append(e)
    return fulls, incrementals


def _chain(
    incrementals: Sequence[BackupEntry], start: Position, reached: Callable[[BackupEntry, Position], bool]
) -> list[BackupEntry] | None:
    """Incrementals from `start` until one is `reached`; None if the chain breaks first. Each step takes a
    reaching candidate if there is one (the first listed), else the one that goes furthest."""
    keys = _scalar_keys(incrementals, start)
    if keys is not None:
        return _chain_scalar(incrementals, keys, start, reached)
    return _chain_general(incrementals, start, reached)


def _chain_general(
    incrementals: Sequence[BackupEntry], start: Position, reached: Callable[[BackupEntry, Position], bool]
) -> list[BackupEntry] | None:
    """The definition, for any GTID sets: every step looks at every incremental."""
    parsed = []
    for e in incrementals:
        m = _manifest(e)
        begin, end = _position(e, m.from_position, start), _position(e, m.position, start)
        if begin is not None and end is not None:
            parsed.append((e, begin, end))
    current, chain = start, []
    while True:
        candidates = [
            (e, end) for e, begin, end in parsed if current.contains(begin) and not current.contains(end)
        ]
        if not candidates:
            return None
        done = [c for c in candidates if reached(*c)]
        entry, end = (
            done[0]
            if done
            else max(candidates, key=lambda c: sum(1 for o in candidates if c[1].contains(o[1])))
        )
        chain.append(entry)
        if done:
            return chain
        current = end


# A MariaDB position of at most one GTID (`MariaDB/0-1-42`, bare `0-1-42`, or empty): positions of one
# domain are totally ordered by sequence number, which makes a chain a sweep instead of a search.
_ONE_GTID = re.compile(r"^\s*(?:mariadb/)?(?:(\d{1,10})-(\d{1,10})-(\d{1,20}))?\s*$", re.IGNORECASE)
_U32, _U64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF


def _scalar_key(text: str) -> tuple[int, int] | None:
    """(domain, sequence) of a one-GTID MariaDB position, (-1, -1) for the empty one, None otherwise."""
    m = _ONE_GTID.match(text)
    if m is None:
        return None
    if m.group(1) is None:
        return (-1, -1) if text.strip().lower() in ("mariadb/", "") else None
    domain, server, seq = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if domain > _U32 or server > _U32 or seq > _U64:
        return None
    return domain, seq


def _scalar_keys(incrementals: Sequence[BackupEntry], start: Position) -> list[tuple[int, int]] | None:
    """Every incremental's (begin, end) sequence numbers, when the start and every incremental are one-GTID
    MariaDB positions of one domain (where `a.contains(b)` is `seq(a) >= seq(b)`); else None."""
    if start.flavor is not Flavor.MARIADB or not isinstance(start.gtids, MariaDBGTIDSet):
        return None
    gtids = start.gtids.gtids
    if len(gtids) > 1:
        return None
    domain = gtids[0].domain if gtids else -1
    keys = []
    for e in incrementals:
        m = _manifest(e)
        begin, end = _scalar_key(m.from_position), _scalar_key(m.position)
        if begin is None or end is None:
            return None
        for d, _ in (begin, end):
            if d != -1:
                if domain not in (-1, d):
                    return None
                domain = d
        keys.append((begin[1], end[1]))
    return keys


def _chain_scalar(
    incrementals: Sequence[BackupEntry],
    keys: list[tuple[int, int]],
    start: Position,
    reached: Callable[[BackupEntry, Position], bool],
) -> list[BackupEntry] | None:
    """`_chain_general` for totally ordered positions, as one sweep: the candidates at `current` are the
    incrementals with begin <= current < end; `current` only grows, so an incremental whose end it passed
    never comes back, and one whose begin it passed stays entered."""
    gtids = start.gtids.gtids if isinstance(start.gtids, MariaDBGTIDSet) else ()
    current = gtids[0].seq if gtids else -1
    by_begin = sorted(range(len(keys)), key=lambda i: keys[i][0])
    entered = 0
    active: list[int] = []
    chain: list[BackupEntry] = []
    while True:
        while entered < len(by_begin) and keys[by_begin[entered]][0] <= current:
            active.append(by_begin[entered])
            entered += 1
        active = sorted(i for i in active if keys[i][1] > current)  # listed order, as the definition
        if not active:
            return None
        for i in active:
            end = _position(incrementals[i], _manifest(incrementals[i]).position, start)
            if end is not None and reached(incrementals[i], end):
                chain.append(incrementals[i])
                return chain
        best = max(active, key=lambda i: keys[i][1])  # the first listed of those that go furthest
        chain.append(incrementals[best])
        current = keys[best][1]


def path_to_position(
    entries: Sequence[BackupEntry], target: Position, allowed_engines: Sequence[str] | None = None
) -> RestorePath:
    fulls, incrementals = _usable(entries, allowed_engines)
    candidates = []
    for e in reversed(fulls):
        position = _position(e, _manifest(e).position, target)
        if position is not None and target.contains(position):
            candidates.append((e, position))
    if not candidates:
        raise FailedPrecondition(
            f"no full backup found before {target}: every complete full backup is at a position the target "
            "does not contain; restore to a later position or take a full backup earlier"
        )
    for full, position in candidates:
        if position.contains(target):
            return RestorePath(full, ())
        chain = _chain(incrementals, position, lambda _e, end: end.contains(target))
        if chain is not None:
            return RestorePath(full, tuple(chain))
    raise FailedPrecondition(
        f"no path found that leads to {target}: no chain of incremental backups goes from a full backup "
        "(newest first: " + ", ".join(f"{e.name} at {p}" for e, p in candidates[:3]) + ") to the target; "
        "take an incremental backup (incremental_from_pos=auto) that covers it"
    )


def path_to_time(
    entries: Sequence[BackupEntry], target: datetime, allowed_engines: Sequence[str] | None = None
) -> RestorePath:
    """The full backup and the incrementals up to the first one that reaches `target`."""
    if target.tzinfo is None:
        raise InvalidArgument(f"restore_to_timestamp {target} has no time zone")
    fulls, incrementals = _usable(entries, allowed_engines)
    candidates = [e for e in reversed(fulls) if _finished_before(e, target)]
    if not candidates:
        raise FailedPrecondition(
            f"no full backup found before {format_time(target)}: every complete full backup finished less than "
            "a second before it, or after it"
        )

    def reached(e: BackupEntry, _end: Position) -> bool:
        m = _manifest(e)
        started = m.backup_datetime
        last = m.incremental_details.last_timestamp if m.incremental_details else ""
        return (started is not None and started >= target) or (bool(last) and parse_time(last) >= target)

    for full in candidates:
        start = parse_position(_manifest(full).position)
        chain = _chain(incrementals, start, reached)
        if chain is not None:
            return RestorePath(full, tuple(chain))
    raise FailedPrecondition(
        f"no path found that leads to {format_time(target)}: no chain of incremental backups from full backup "
        f"{candidates[0].name} reaches that time; take an incremental backup (incremental_from_pos=auto) after it"
    )


def _finished_before(e: BackupEntry, target: datetime) -> bool:
    """True if every transaction of the full backup is older than `target`."""
    text = _manifest(e).finished_time
    try:
        return bool(text) and parse_time(text) + TIME_RESOLUTION <= target
    except ValueError:
        return False
