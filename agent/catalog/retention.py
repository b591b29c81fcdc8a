"""Backup retention: which backups of a shard a policy keeps and why, as a pure function of the listing.

The policy (`--backup_retention_full N`, `--backup_retention_days D`, `--binlog_retention_days B`):

- full backups: the newest N complete ones; with D, every one not finished D days ago, and the newest one
  that was (so a point-in-time restore to any second of the last D days has a full backup to start from).
  With both, a full backup is kept when either keeps it. With neither, every full backup is kept.
- incrementals: every one started at or after the *anchor*, the kept full backup point-in-time restores
  start from: the oldest kept one (B = 0), or with B the newest kept one finished B days ago (or the
  oldest kept one when none was). Older incrementals go: no kept full backup reaches them.
- chains: an incremental a kept incremental names as its base (`FromBackup`) is kept, and so is a full
  backup one names, whatever the counts say: a kept backup never loses what it needs.
- incomplete backups (no readable MANIFEST) older than INCOMPLETE_GRACE go, unless they are being written
  (`running`) or their tablet has started no backup since (it may still be writing them: a tablet runs one
  operation at a time, so a newer backup of the same tablet means the older one's writer is gone).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent.catalog.listing import BackupEntry
from agent.catalog.manifest import format_time, parse_time

INCOMPLETE_GRACE = timedelta(hours=1)
TIME_RESOLUTION = timedelta(seconds=1)  # MANIFEST times have second resolution
_NAME_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})\.(\d{2})(\d{2})(\d{2})\.(.+)$")

FULL, INCREMENTAL, INCOMPLETE = "full", "incremental", "incomplete"


@dataclass(frozen=True)
class Policy:
    """What to keep. Zero means "not configured" for each setting."""

    full_count: int = 0  # --backup_retention_full
    full_age: timedelta = timedelta(0)  # --backup_retention_days
    binlog_age: timedelta = timedelta(0)  # --binlog_retention_days (0: follow the full-backup policy)
    incomplete_grace: timedelta = INCOMPLETE_GRACE

    @property
    def configured(self) -> bool:
        return bool(self.full_count or self.full_age or self.binlog_age)

    def describe(self) -> str:
        parts = []
        if self.full_count:
            parts.append(f"the newest {self.full_count} full backups")
        if self.full_age:
            parts.append(f"full backups covering the last {_days(self.full_age)}")
        if not parts:
            parts.append("every full backup")
        binlogs = f"the last {_days(self.binlog_age)}" if self.binlog_age else "the full backups kept"
        return f"keep {' and '.join(parts)}; incrementals covering {binlogs}"


@dataclass(frozen=True)
class Decision:
    entry: BackupEntry
    kind: str  # full, incremental or incomplete
    keep: bool
    reason: str

    @property
    def name(self) -> str:
        return self.entry.name

    def describe(self) -> str:
        return f"{'keep' if self.keep else 'remove'} {self.kind} {self.name}: {self.reason}"


@dataclass(frozen=True)
class Plan:
    """Every listed backup with its fate, oldest first."""

    decisions: tuple[Decision, ...]
    anchor: BackupEntry | None  # the full backup point-in-time restores start from, if any

    @property
    def removals(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def kept(self) -> list[BackupEntry]:
        return [d.entry for d in self.decisions if d.keep]

    @property
    def window_start(self) -> datetime | None:
        """The earliest time a point-in-time restore reaches with the kept backups: a second after the
        anchor finished (None without an anchor or an incremental after it)."""
        if self.anchor is None or self.anchor.manifest is None:
            return None
        if not any(d.keep and d.kind == INCREMENTAL for d in self.decisions):
            return None
        try:
            return parse_time(self.anchor.manifest.finished_time) + TIME_RESOLUTION
        except ValueError:
            return None


def name_time(name: str) -> datetime | None:
    """The UTC start time a backup name carries (`2026-11-23.184500.zone1-0000000102`), or None."""
    m = _NAME_TIME.match(name)
    if m is None:
        return None
    try:
        return datetime.strptime("".join(m.groups()[:6]), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def name_alias(name: str) -> str:
    m = _NAME_TIME.match(name)
    return m.group(7) if m else ""


def started(entry: BackupEntry) -> datetime | None:
    """When the backup started: its MANIFEST's BackupTime, else its name's time."""
    m = entry.manifest
    t = m.backup_datetime if m is not None else None
    return t if t is not None else name_time(entry.name)


def finished_before(entry: BackupEntry, cutoff: datetime) -> bool:
    """True if every transaction of the full backup is older than `cutoff` (as `pitr_path` decides)."""
    m = entry.manifest
    if m is None or not m.finished_time:
        return False
    try:
        return parse_time(m.finished_time) + TIME_RESOLUTION <= cutoff
    except ValueError:
        return False


def _days(age: timedelta) -> str:
    seconds = age.total_seconds()
    if seconds >= 86400:
        days = seconds / 86400
        return f"{days:g} day{'' if days == 1 else 's'}"
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds:g}s"


def plan_retention(
    entries: Sequence[BackupEntry],
    policy: Policy,
    now: datetime,
    *,
    running: Collection[str] = (),
    own_alias: str = "",
) -> Plan:
    """Decide every backup of `entries` (oldest first, as listed). `running`: names being written or read
    by an operation now (never removed). `own_alias`: this tablet's alias (its own dead backups need no
    newer backup of the same tablet to be known dead)."""
    fulls = [e for e in entries if e.complete and e.manifest is not None and not e.manifest.incremental]
    incrementals = [e for e in entries if e.complete and e.manifest is not None and e.manifest.incremental]
    reasons: dict[str, tuple[bool, str]] = {}

    # full backups
    keep_full: dict[str, str] = {}
    if policy.full_count:
        for e in fulls[-policy.full_count :]:
            keep_full[e.name] = f"one of the newest {policy.full_count} full backups"
    if policy.full_age:
        cutoff = now - policy.full_age
        older = [e for e in fulls if finished_before(e, cutoff)]
        for e in fulls:
            if not finished_before(e, cutoff):
                keep_full.setdefault(e.name, f"newer than {_days(policy.full_age)}")
        if older:
            keep_full.setdefault(
                older[-1].name,
                f"the newest full backup older than {_days(policy.full_age)}: restores to "
                f"{format_time(cutoff)} and later start from it",
            )
    if not policy.full_count and not policy.full_age:
        for e in fulls:
            keep_full[e.name] = "no full-backup retention configured"
    kept_fulls = [e for e in fulls if e.name in keep_full]
    for e in fulls:
        if e.name in keep_full:
            reasons[e.name] = (True, keep_full[e.name])
        else:
            reasons[e.name] = (False, f"older than the full backups kept ({policy.describe()})")

    # incrementals: from the anchor on
    anchor: BackupEntry | None = kept_fulls[0] if kept_fulls else None
    if policy.binlog_age and kept_fulls:
        cutoff = now - policy.binlog_age
        older_kept = [e for e in kept_fulls if finished_before(e, cutoff)]
        if older_kept:
            anchor = older_kept[-1]
    anchor_time = started(anchor) if anchor is not None else None
    for e in incrementals:
        t = started(e)
        if anchor is None:
            reasons[e.name] = (True, "no full backup is kept to anchor point-in-time restores")
        elif anchor_time is None or t is None:
            reasons[e.name] = (True, "its start time is unknown")
        elif t >= anchor_time:
            what = f"the last {_days(policy.binlog_age)}" if policy.binlog_age else "the kept full backups"
            reasons[e.name] = (
                True,
                f"on the chain from full backup {anchor.name} (point-in-time over {what})",
            )
        else:
            reasons[e.name] = (
                False,
                f"older than full backup {anchor.name}, where point-in-time restores now start",
            )

    # chains: what a kept incremental names as its base stays
    by_name = {e.name: e for e in entries}
    for e in reversed(incrementals):
        if not reasons[e.name][0]:
            continue
        assert e.manifest is not None
        base = by_name.get(e.manifest.from_backup)
        if base is not None and base.name in reasons and not reasons[base.name][0]:
            reasons[base.name] = (True, f"the base of kept incremental {e.name}")

    # incomplete backups
    complete = {e.name for e in fulls} | {e.name for e in incrementals}
    for e in entries:
        if e.name in complete:
            continue
        reasons[e.name] = _incomplete(
            e, entries, policy=policy, now=now, running=running, own_alias=own_alias
        )

    for name in running:
        if name in reasons and not reasons[name][0]:
            reasons[name] = (True, "in use by the running operation")

    decisions = tuple(
        Decision(e, _kind(e, complete), reasons[e.name][0], reasons[e.name][1]) for e in entries
    )
    return Plan(decisions, anchor)


def _kind(e: BackupEntry, complete: set[str]) -> str:
    if e.name not in complete or e.manifest is None:
        return INCOMPLETE
    return INCREMENTAL if e.manifest.incremental else FULL


def _incomplete(
    e: BackupEntry,
    entries: Sequence[BackupEntry],
    *,
    policy: Policy,
    now: datetime,
    running: Collection[str],
    own_alias: str,
) -> tuple[bool, str]:
    if e.name in running:
        return True, "being written by the running operation"
    t = name_time(e.name)
    if t is None:
        return True, "incomplete, and its name carries no start time to judge its age"
    if now - t < policy.incomplete_grace:
        return (
            True,
            f"incomplete, started less than {_days(policy.incomplete_grace)} ago: it may still be running",
        )
    alias = name_alias(e.name)
    if alias != own_alias and not any(
        name_alias(o.name) == alias and (ot := name_time(o.name)) is not None and ot > t for o in entries
    ):
        return True, f"incomplete, and tablet {alias} started no backup since: it may still be writing it"
    return False, f"incomplete ({e.problem or 'no MANIFEST'}) and abandoned since {format_time(t)}"
