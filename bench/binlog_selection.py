"""Time binlog selection for an incremental backup among 10,000 closed binlogs (both flavors).

Prints ``BENCH binlog_selection files=10000 seconds=<x>`` (the slower flavor, best of a few runs) and the
command that reproduces it. The selection must take well under a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.binlog_selection import select_binlogs
from agent.mysql.gtid import Flavor, GTIDSet, MariaDBGTID, MariaDBGTIDSet, MySQL56GTIDSet, Position

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


def main() -> None:
    seconds = max(time_selection(Flavor.MYSQL56, mysql_set), time_selection(Flavor.MARIADB, mariadb_set))
    print(f"BENCH binlog_selection files={FILES} seconds={seconds:.4f}")
    print("reproduce: .venv/bin/python -m bench.binlog_selection")


if __name__ == "__main__":
    main()
