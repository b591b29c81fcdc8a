"""The retention policy: what it keeps, and the guarantee that matters. A simulated shard history (full
backups, binlog rotations, `auto` incrementals chaining onto the newest backup, writes during backups) is
planned, and a point-in-time restore to every second of the window the policy promises, and to every
position since its anchor, finds a path through the kept backups wherever it found one through all of them
(the same pure functions a restore uses: catalog/pitr_path.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from agent.catalog.listing import BackupEntry
from agent.catalog.manifest import IncrementalDetails, Manifest, backup_name, format_time, parse_time
from agent.catalog.pitr_path import path_to_position, path_to_time
from agent.catalog.retention import (
    INCOMPLETE_GRACE,
    Plan,
    Policy,
    name_time,
    plan_retention,
)
from agent.errors import FailedPrecondition
from agent.mysql.gtid import parse_position

T0 = datetime(2026, 11, 1, 0, 0, 0, tzinfo=UTC)
ALIAS = "zone1-0000000102"


@dataclass
class _Handle:
    name: str
    directory: str = "ks/0"


@dataclass
class History:
    """A shard's life: transactions with their times, binlog files, and the backups taken."""

    rng: random.Random
    now: datetime = T0
    seq: int = 0
    times: dict[int, datetime] = field(default_factory=dict)
    file_starts: list[int] = field(default_factory=lambda: [0])  # GTID seq before each binlog file
    entries: list[BackupEntry] = field(default_factory=list)
    last_position: int | None = None
    last_name: str = ""

    def tick(self, low: int = 1, high: int = 20) -> None:
        self.now += timedelta(seconds=self.rng.randint(low, high))

    def write(self, count: int) -> None:
        for _ in range(count):
            self.tick()
            self.seq += 1
            self.times[self.seq] = self.now

    def rotate(self) -> None:
        self.file_starts.append(self.seq)

    def _name(self) -> str:
        self.now += timedelta(seconds=1)
        return backup_name(self.now, ALIAS)

    def full(self, writes_during: int = 0) -> BackupEntry:
        name, start, position = self._name(), self.now, self.seq
        self.write(writes_during)  # the primary goes on; the backup holds what it had at its start
        self.tick(5, 60)
        m = Manifest(
            BackupName=name,
            BackupMethod="builtin",
            Position=f"MariaDB/0-1-{position}",
            BackupTime=format_time(start),
            FinishedTime=format_time(self.now),
        )
        return self._add(BackupEntry(_Handle(name), m, True, None), position)  # type: ignore[arg-type]

    def incremental(self) -> BackupEntry | None:
        """`incremental_from_pos=auto`: rotate, copy from the file holding the first transaction after the
        newest backup's position to the newest closed file. None: nothing to back up."""
        assert self.last_position is not None
        if self.seq == self.last_position:
            return None
        name, start = self._name(), self.now
        self.rotate()
        first_file = max(s for s in self.file_starts[:-1] if s <= self.last_position)
        m = Manifest(
            BackupName=name,
            BackupMethod="builtin",
            Incremental=True,
            FromPosition=f"MariaDB/0-1-{first_file}" if first_file else "MariaDB/",
            FromBackup=self.last_name,
            Position=f"MariaDB/0-1-{self.seq}",
            BackupTime=format_time(start),
            FinishedTime=format_time(start + timedelta(seconds=1)),
            IncrementalDetails=IncrementalDetails(
                FirstTimestamp=format_time(self.times[first_file + 1]),
                LastTimestamp=format_time(self.times[self.seq]),
            ),
        )
        self.tick(1, 3)
        return self._add(BackupEntry(_Handle(name), m, True, None), self.seq)  # type: ignore[arg-type]

    def incomplete(self, alias: str = ALIAS) -> BackupEntry:
        self.now += timedelta(seconds=1)
        e = BackupEntry(_Handle(backup_name(self.now, alias)), None, False, "no MANIFEST")  # type: ignore[arg-type]
        self.entries.append(e)
        return e

    def _add(self, e: BackupEntry, position: int) -> BackupEntry:
        self.entries.append(e)
        self.last_position, self.last_name = position, e.name
        return e


def simulate(seed: int, fulls: int = 4) -> History:
    """`fulls` full backups, each followed by 0-4 incrementals, writes and extra rotations between."""
    h = History(random.Random(seed))
    h.write(h.rng.randint(1, 5))
    for _ in range(fulls):
        h.full(writes_during=h.rng.randint(0, 3))
        for _ in range(h.rng.randint(0, 4)):
            h.write(h.rng.randint(0, 6))
            for _ in range(h.rng.randint(0, 2)):
                h.rotate()
                h.write(h.rng.randint(0, 2))
            h.incremental()
        h.write(h.rng.randint(0, 4))
    return h


def _ok_time(entries: list[BackupEntry], t: datetime) -> bool:
    try:
        path_to_time(entries, t)
    except FailedPrecondition:
        return False
    return True


def _ok_position(entries: list[BackupEntry], seq: int) -> bool:
    try:
        path_to_position(entries, parse_position(f"MariaDB/0-1-{seq}"))
    except FailedPrecondition:
        return False
    return True


def _finished(e: BackupEntry) -> datetime:
    assert e.manifest is not None
    return parse_time(e.manifest.finished_time)


def promised_start(h: History, policy: Policy, now: datetime) -> datetime:
    """The earliest second the policy promises point-in-time restores to (from the flags alone)."""
    fulls = [e for e in h.entries if e.manifest is not None and not e.manifest.incremental]
    first = _finished(fulls[0]) + timedelta(seconds=1)
    starts = []
    if policy.full_count:
        starts.append(_finished(fulls[-min(policy.full_count, len(fulls))]) + timedelta(seconds=1))
    if policy.full_age:
        starts.append(max(now - policy.full_age, first))
    start = min(starts) if starts else first
    return max(start, now - policy.binlog_age) if policy.binlog_age else start


def interesting_times(entries: list[BackupEntry], low: datetime, high: datetime) -> list[datetime]:
    """Every time at which restorability can change (it depends on a target only through comparisons
    with MANIFEST times), with its neighbours: checking these checks every second."""
    marks = {low, high}
    for e in entries:
        m = e.manifest
        assert m is not None
        for text in (
            m.backup_time,
            m.finished_time,
            m.incremental_details.last_timestamp if m.incremental_details else "",
        ):
            if text:
                t = parse_time(text)
                marks.update(t + timedelta(seconds=d) for d in (-1, 0, 1, 2))
    return sorted(t for t in marks if low <= t <= high)


def check_guarantee(h: History, policy: Policy, now: datetime, *, every_second: bool = False) -> Plan:
    plan = plan_retention(h.entries, policy, now, own_alias=ALIAS)
    kept = plan.kept
    kept_names = {e.name for e in kept}
    # nothing a kept backup names as its base was removed
    for e in kept:
        if e.manifest is not None and e.manifest.from_backup:
            assert e.manifest.from_backup in kept_names, (e.name, e.manifest.from_backup)
    complete = [e for e in h.entries if e.complete]
    start = promised_start(h, policy, now)
    end = max(h.times.values()) + timedelta(seconds=2)
    if every_second:
        times = [start + timedelta(seconds=s) for s in range(int((end - start).total_seconds()) + 1)]
    else:
        times = interesting_times(complete, start, end)
    restorable = 0
    for t in times:
        if _ok_time(complete, t):
            restorable += 1
            assert _ok_time(kept, t), f"{format_time(t)} was restorable before retention and no longer is"
    assert plan.window_start is None or plan.window_start <= start or restorable == 0
    # positions: every one since the anchor's
    if plan.anchor is not None and plan.anchor.manifest is not None:
        first = int(plan.anchor.manifest.position.rsplit("-", 1)[1])
        for seq in range(first, h.seq + 1):
            if _ok_position(complete, seq):
                assert _ok_position(kept, seq), f"position 0-1-{seq} lost"
    return plan


POLICIES = [
    Policy(full_count=1),
    Policy(full_count=2),
    Policy(full_count=3, binlog_age=timedelta(seconds=400)),
    Policy(full_age=timedelta(seconds=600)),
    Policy(full_age=timedelta(seconds=900), binlog_age=timedelta(seconds=300)),
    Policy(full_count=2, full_age=timedelta(seconds=1200)),
    Policy(binlog_age=timedelta(seconds=500)),
]


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.describe())
def test_kept_backups_restore_every_second_of_the_promised_window(seed: int, policy: Policy) -> None:
    h = simulate(seed, fulls=3 + seed % 4)
    check_guarantee(h, policy, h.now + timedelta(seconds=30))


@pytest.mark.parametrize("seed", range(3))
def test_every_second_literally(seed: int) -> None:
    h = simulate(100 + seed, fulls=4)
    check_guarantee(h, Policy(full_count=2), h.now + timedelta(seconds=30), every_second=True)


def test_two_newest_full_backups_after_four() -> None:
    """The integration scenario: 4 full backups with incrementals between; exactly the two newest full
    backups and the incrementals from the older of them on remain."""
    h = History(random.Random(1))
    h.write(3)
    for _ in range(4):
        h.full()
        for _ in range(2):
            h.write(3)
            h.incremental()
    plan = check_guarantee(h, Policy(full_count=2), h.now)
    fulls = [e.name for e in h.entries if e.manifest and not e.manifest.incremental]
    anchor = fulls[2]
    assert plan.anchor is not None and plan.anchor.name == anchor
    expected = [e.name for e in h.entries if e.name >= anchor]
    assert [e.name for e in plan.kept] == expected
    assert len(plan.removals) == 6  # 2 full backups and their 4 incrementals
    assert all("older than" in d.reason for d in plan.removals)


def test_days_keep_the_newest_full_backup_older_than_the_window() -> None:
    h = History(random.Random(2))
    h.write(2)
    fulls = []
    for _ in range(5):
        fulls.append(h.full())
        h.write(2)
        h.incremental()
        h.now += timedelta(days=1)
    now = T0 + timedelta(days=5)  # the backups took minutes after each midnight
    plan = plan_retention(h.entries, Policy(full_age=timedelta(days=2)), now)
    kept_fulls = [d.name for d in plan.decisions if d.keep and d.kind == "full"]
    # finished 2 days ago or less: the last two; plus the newest older one
    assert kept_fulls == [e.name for e in fulls[-3:]]
    assert "newest full backup older than 2 days" in next(
        d.reason for d in plan.decisions if d.name == fulls[-3].name
    )


def test_binlog_retention_shorter_than_full_retention() -> None:
    h = History(random.Random(3))
    h.write(2)
    for _ in range(4):
        h.full()
        for _ in range(2):
            h.write(2)
            h.incremental()
        h.now += timedelta(hours=12)
    now = h.now
    plan = plan_retention(h.entries, Policy(full_count=4, binlog_age=timedelta(hours=13)), now)
    assert all(d.keep for d in plan.decisions if d.kind == "full")
    fulls = [d.entry for d in plan.decisions if d.kind == "full"]
    assert plan.anchor is not None and plan.anchor.name == fulls[-2].name
    removed = [d.name for d in plan.removals]
    assert removed and all(d.kind == "incremental" for d in plan.removals)
    assert all(n < fulls[-2].name for n in removed)


def test_no_policy_keeps_everything_complete() -> None:
    h = simulate(7)
    plan = plan_retention(h.entries, Policy(), h.now)
    assert not plan.removals


def test_a_base_named_by_a_kept_incremental_stays() -> None:
    h = History(random.Random(4))
    h.write(2)
    old = h.full()
    h.write(2)
    h.full()
    h.write(2)
    h.full()
    h.write(2)
    last = h.incremental()
    assert last is not None and last.manifest is not None
    # an incremental taken with incremental_from_pos=<the oldest backup's name>
    forced = last.manifest.model_copy(update={"from_backup": old.name})
    h.entries[-1] = BackupEntry(last.handle, forced, True, None)
    plan = plan_retention(h.entries, Policy(full_count=1), h.now)
    decision = next(d for d in plan.decisions if d.name == old.name)
    assert decision.keep and "base of kept incremental" in decision.reason


@pytest.mark.parametrize(
    ("age", "alias", "later_from_same", "running", "removed"),
    [
        (INCOMPLETE_GRACE + timedelta(seconds=1), ALIAS, False, False, True),
        (INCOMPLETE_GRACE - timedelta(seconds=1), ALIAS, True, False, False),  # may still run
        (INCOMPLETE_GRACE * 3, ALIAS, False, True, False),  # this tablet is writing it
        (INCOMPLETE_GRACE * 3, "zone2-0000000200", False, False, False),  # its tablet moved on? unknown
        (INCOMPLETE_GRACE * 3, "zone2-0000000200", True, False, True),  # its tablet started another
    ],
)
def test_incomplete_backups(
    age: timedelta, alias: str, later_from_same: bool, running: bool, removed: bool
) -> None:
    now = T0 + timedelta(days=1)
    stale = BackupEntry(_Handle(backup_name(now - age, alias)), None, False, "no MANIFEST")  # type: ignore[arg-type]
    entries = [stale]
    if later_from_same:
        entries.append(
            BackupEntry(
                _Handle(backup_name(now - age + timedelta(seconds=5), alias)), None, False, "no MANIFEST"
            )  # type: ignore[arg-type]
        )
    plan = plan_retention(
        entries, Policy(full_count=1), now, running={stale.name} if running else (), own_alias=ALIAS
    )
    assert (stale.name in {d.name for d in plan.removals}) is removed


def test_name_time() -> None:
    assert name_time("2026-11-23.184500.zone1-0000000102") == datetime(2026, 11, 23, 18, 45, tzinfo=UTC)
    assert name_time("not-a-backup") is None
    assert name_time("2026-13-23.184500.zone1-0000000102") is None
