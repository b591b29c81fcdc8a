"""Time resolving the binlogs of an incremental backup among 10,000 closed binlogs: reading their headers
from disk (cold cache) plus the selection (the slower flavor, best of a few runs).

Prints ``BENCH binlog_selection files=10000 seconds=<x>`` and the command that reproduces it. It must take
well under a second.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.binlogs.selection import select_binlogs
from agent.mysql.binlog_headers import read_binlog_header
from agent.mysql.gtid import Flavor, GTIDSet, MariaDBGTID, MariaDBGTIDSet, MySQL56GTIDSet, Position
from bench.common import drop_caches
from tests.unit.test_binlog_headers import BinlogBuilder

FILES = 10_000
RUNS = 3
UUID_A = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
UUID_B = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


@dataclass(frozen=True)
class Binlog:
    name: str
    previous_gtids: GTIDSet


def mysql_set(i: int) -> MySQL56GTIDSet:
    """What precedes binlog i: 100 transactions of server A and one of server B per file."""
    return MySQL56GTIDSet.from_intervals({UUID_A: [(1, i * 100 + 1)], UUID_B: [(1, i + 1)]})


def mariadb_set(i: int) -> MariaDBGTIDSet:
    """What precedes binlog i: 100 transactions of domain 0 and one of domain 1 per file."""
    return MariaDBGTIDSet((MariaDBGTID(0, 1, i * 100 + 1), MariaDBGTID(1, 2, i + 1)))


def time_selection(flavor: Flavor, make_set: Callable[[int], GTIDSet]) -> float:
    """Best time of `RUNS` selections starting in the middle of `FILES` binlogs."""
    binlogs = [Binlog(f"binlog.{i + 1:06d}", make_set(i)) for i in range(FILES)]
    requested = Position(flavor, make_set(FILES // 2))
    executed = make_set(FILES)
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        selection = select_binlogs(binlogs, binlogs[0].previous_gtids, requested, executed)
        best = min(best, time.perf_counter() - start)
        assert len(selection.files) == FILES // 2
    return best


def time_headers(directory: Path, cold: bool) -> float:
    """Seconds to read the preceding GTID set of FILES real binlog files, as an incremental backup does
    (leading events only, CRC checked), with the page cache dropped first or not."""
    for i in range(FILES):
        builder = BinlogBuilder().gtid_list((0, 1, i * 100 + 1), (1, 2, i + 1))
        builder.transaction(1_700_000_000 + i, seq=i * 100 + 2).rotate(1_700_000_001 + i)
        builder.write(directory / f"binlog.{i + 1:06d}")
    if cold:
        drop_caches()
    start = time.perf_counter()
    sets = [
        read_binlog_header(directory / f"binlog.{i + 1:06d}", walk=False).previous_gtids for i in range(FILES)
    ]
    elapsed = time.perf_counter() - start
    assert sets[-1] == mariadb_set(FILES - 1)
    return elapsed


def main() -> None:
    selection = max(time_selection(Flavor.MYSQL56, mysql_set), time_selection(Flavor.MARIADB, mariadb_set))
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        warm = time_headers(Path(tmp), cold=False)
        cold = time_headers(Path(tmp), cold=True)
    print(
        f"selection among {FILES} binlogs: {selection:.4f} s; reading their headers: {warm:.3f} s from the page "
        f"cache, {cold:.3f} s with it dropped (one random read per file)"
    )
    print(f"BENCH binlog_selection files={FILES} seconds={selection + warm:.4f}")
    print("reproduce: .venv/bin/python -m bench.binlog_selection")


if __name__ == "__main__":
    main()
