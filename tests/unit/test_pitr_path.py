"""Choosing the full backup and the incremental chain of a point-in-time restore."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.catalog.listing import BackupEntry
from agent.catalog.manifest import IncrementalDetails, Manifest, format_time
from agent.catalog.pitr_path import path_to_position, path_to_time
from agent.errors import FailedPrecondition
from agent.mysql.gtid import parse_position

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


@dataclass
class _Handle:
    name: str
    directory: str = "ks/0"


def full(name: str, pos: str, finished: int = 0, engine: str = "builtin") -> BackupEntry:
    m = Manifest(
        BackupName=name,
        BackupMethod=engine,
        Position=f"MariaDB/{pos}",
        BackupTime=format_time(T0 + timedelta(seconds=finished - 1)),
        FinishedTime=format_time(T0 + timedelta(seconds=finished)),
    )
    return BackupEntry(_Handle(name), m, True, None)  # type: ignore[arg-type]


def inc(name: str, frm: str, pos: str, started: int = 0, last: int | None = None) -> BackupEntry:
    fields: dict[str, Any] = {}
    if last is not None:
        fields["IncrementalDetails"] = IncrementalDetails(
            LastTimestamp=format_time(T0 + timedelta(seconds=last))
        )
    m = Manifest(
        BackupName=name,
        BackupMethod="builtin",
        Incremental=True,
        FromPosition=f"MariaDB/{frm}",
        Position=f"MariaDB/{pos}",
        BackupTime=format_time(T0 + timedelta(seconds=started)),
        **fields,
    )
    return BackupEntry(_Handle(name), m, True, None)  # type: ignore[arg-type]


def names(path: Any) -> list[str]:
    return [path.full.name, *(e.name for e in path.incrementals)]


ENTRIES = [
    full("f1", "0-1-10", finished=0),
    inc("i1", "0-1-8", "0-1-20", started=10),
    inc("i2", "0-1-20", "0-1-30", started=20),
    full("f2", "0-1-25", finished=25),
    inc("i3", "0-1-25", "0-1-40", started=40),
]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("0-1-10", ["f1"]),
        ("0-1-15", ["f1", "i1"]),
        ("0-1-20", ["f1", "i1"]),
        ("0-1-21", ["f1", "i1", "i2"]),
        ("0-1-25", ["f2"]),
        ("0-1-26", ["f2", "i2"]),
        ("MariaDB/0-1-40", ["f2", "i3"]),
    ],
)
def test_path_to_position(target: str, expected: list[str]) -> None:
    assert names(path_to_position(ENTRIES, parse_position(target))) == expected


def test_no_full_before_and_no_path() -> None:
    with pytest.raises(FailedPrecondition, match="no full backup found before MariaDB/0-1-5"):
        path_to_position(ENTRIES, parse_position("0-1-5"))
    with pytest.raises(FailedPrecondition, match="no path found that leads to MariaDB/0-1-41"):
        path_to_position(ENTRIES, parse_position("0-1-41"))


def test_incomplete_and_other_engines_are_skipped() -> None:
    broken = BackupEntry(_Handle("i9"), None, False, "no MANIFEST")  # type: ignore[arg-type]
    entries = [
        full("f1", "0-1-10", engine="xtrabackup"),
        full("f2", "0-1-12"),
        broken,
        inc("i1", "0-1-10", "0-1-20"),
    ]
    assert names(path_to_position(entries, parse_position("0-1-15"), ["xtrabackup"])) == ["f1", "i1"]


def test_chain_prefers_the_incremental_that_goes_furthest() -> None:
    entries = [
        full("f", "0-1-10"),
        inc("short", "0-1-10", "0-1-12"),
        inc("long", "0-1-9", "0-1-18"),
        inc("end", "0-1-18", "0-1-30"),
    ]
    assert names(path_to_position(entries, parse_position("0-1-25"))) == ["f", "long", "end"]


def test_path_to_time() -> None:
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731
    # f1 finished at 0: usable from 1 s on; i1 started at 10 reaches times up to 10
    assert names(path_to_time(ENTRIES, at(5))) == ["f1", "i1"]
    assert names(path_to_time(ENTRIES, at(15))) == ["f1", "i1", "i2"]
    assert names(path_to_time(ENTRIES, at(30))) == ["f2", "i3"]
    with pytest.raises(FailedPrecondition, match="no full backup found before"):
        path_to_time(ENTRIES, at(0.5))
    with pytest.raises(FailedPrecondition, match="no path found that leads to"):
        path_to_time(ENTRIES, at(41))


def test_time_reached_by_a_later_transaction_in_the_binlogs() -> None:
    entries = [full("f", "0-1-10", finished=0), inc("i", "0-1-10", "0-1-20", started=5, last=50)]
    assert names(path_to_time(entries, T0 + timedelta(seconds=40))) == ["f", "i"]


@pytest.mark.parametrize("seed", range(40))
def test_the_sweep_chooses_as_the_definition(seed: int) -> None:
    """One-domain MariaDB chains are found by a sweep (`_chain_scalar`); on random, overlapping, out-of-order
    incrementals it picks exactly what the definition (`_chain_general`) picks."""
    from agent.catalog.pitr_path import _chain_general, _chain_scalar, _scalar_keys

    rng = random.Random(seed)
    entries = []
    for i in range(rng.randint(1, 30)):
        begin = rng.randint(0, 60)
        end = max(0, begin + rng.randint(-3, 25))
        frm = f"0-{rng.randint(1, 3)}-{begin}" if begin else ""  # any server id; "" is the empty position
        entries.append(inc(f"i{i:02d}", frm, f"0-1-{end}", started=i))
    for _ in range(10):
        start = parse_position(f"MariaDB/0-1-{rng.randint(0, 50)}")
        target = parse_position(f"MariaDB/0-1-{rng.randint(0, 90)}")

        def reached(_e: BackupEntry, end: Any, target: Any = target) -> bool:
            return bool(end.contains(target))

        keys = _scalar_keys(entries, start)
        assert keys is not None
        fast = _chain_scalar(entries, keys, start, reached)
        slow = _chain_general(entries, start, reached)
        assert (fast is None) == (slow is None)
        if fast is not None and slow is not None:
            assert [e.name for e in fast] == [e.name for e in slow]


def test_other_positions_use_the_definition() -> None:
    from agent.catalog.pitr_path import _scalar_keys

    two_domains = [inc("a", "0-1-1", "0-1-5,1-2-3")]
    assert _scalar_keys(two_domains, parse_position("MariaDB/0-1-1")) is None
    other_domain = [inc("a", "1-1-1", "1-1-5")]
    assert _scalar_keys(other_domain, parse_position("MariaDB/0-1-1")) is None
    assert _scalar_keys([inc("a", "0-1-1", "0-1-5")], parse_position("MariaDB/0-1-1")) == [(1, 5)]
