"""Binlog selection for incremental backups: every branch of the rule, both flavors, from tables."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest

from agent.binlogs.selection import BinlogSelection, select_binlogs
from agent.errors import AgentError, FailedPrecondition, InvalidArgument, NothingToBackup
from agent.mysql.gtid import Flavor, GTIDSet, MySQL56GTIDSet, Position, parse_gtid_set, parse_position

A = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
B = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


@dataclass(frozen=True)
class Binlog:
    name: str
    previous_gtids: GTIDSet


@dataclass(frozen=True)
class Case:
    id: str
    flavor: Flavor
    binlogs: tuple[tuple[str, str], ...]
    purged: str
    requested: str
    executed: str
    files: tuple[str, ...] = ()
    from_position: str = ""
    error: type[AgentError] | None = None
    message: str = ""

    def run(self) -> BinlogSelection:
        return select_binlogs(
            [Binlog(name, parse_gtid_set(self.flavor, prev)) for name, prev in self.binlogs],
            parse_gtid_set(self.flavor, self.purged),
            parse_position(self.requested, self.flavor),
            parse_gtid_set(self.flavor, self.executed),
        )


# MySQL56: binlog.000001 was purged (it held A:1-10); the active binlog.000006 (after A:1-45) is excluded.
MYSQL_LOGS = (
    ("binlog.000002", f"{A}:1-10"),
    ("binlog.000003", f"{A}:1-20"),
    ("binlog.000004", f"{A}:1-30"),
    ("binlog.000005", f"{A}:1-40"),
)
# Two servers' GTIDs: B:1-3 were written in binlog.000004.
MYSQL_TWO_UUIDS = (
    ("binlog.000002", f"{A}:1-10"),
    ("binlog.000003", f"{A}:1-20"),
    ("binlog.000004", f"{A}:1-30"),
    ("binlog.000005", f"{A}:1-40,{B}:1-3"),
)
# MariaDB, two domains; binlog.000001 (empty start) still exists in MARIA_FROM_START.
MARIA_LOGS = (
    ("binlog.000002", "0-1-10"),
    ("binlog.000003", "0-1-20,1-2-5"),
    ("binlog.000004", "0-1-30,1-2-5"),
    ("binlog.000005", "0-1-30,1-2-9"),
)
MARIA_FROM_START = (("binlog.000001", ""), *MARIA_LOGS)

MY, MARIA = Flavor.MYSQL56, Flavor.MARIADB
NOTHING = "the GTID position has not changed since the requested position {}: nothing to back up"

CASES = [
    # ---- MySQL56
    Case("mysql-mid-file", MY, MYSQL_LOGS, f"{A}:1-10", f"{A}:1-25", f"{A}:1-45",
         ("binlog.000003", "binlog.000004", "binlog.000005"), f"MySQL56/{A}:1-20"),
    Case("mysql-at-file-start", MY, MYSQL_LOGS, f"{A}:1-10", f"{A}:1-20", f"{A}:1-45",
         ("binlog.000003", "binlog.000004", "binlog.000005"), f"MySQL56/{A}:1-20"),
    Case("mysql-in-newest-closed-file", MY, MYSQL_LOGS, f"{A}:1-10", f"MySQL56/{A}:1-42", f"{A}:1-45",
         ("binlog.000005",), f"MySQL56/{A}:1-40"),
    Case("mysql-nothing-new", MY, MYSQL_LOGS, f"{A}:1-10", f"{A}:1-45", f"{A}:1-45",
         error=NothingToBackup, message=NOTHING.format(f"MySQL56/{A}:1-45")),
    Case("mysql-requested-beyond-executed", MY, MYSQL_LOGS, f"{A}:1-10", f"{A}:1-50", f"{A}:1-45",
         error=FailedPrecondition,
         message=f"requested position MySQL56/{A}:1-50 is not a subset of the server's executed GTIDs {A}:1-45"),
    Case("mysql-other-server", MY, MYSQL_LOGS, f"{A}:1-10", f"{B}:1-3", f"{A}:1-45",
         error=FailedPrecondition,
         message=f"requested position MySQL56/{B}:1-3 is not a subset of the server's executed GTIDs "
         f"{A}:1-45"),
    Case("mysql-purged", MY, MYSQL_LOGS, f"{A}:1-10", f"{A}:1-5", f"{A}:1-45", error=FailedPrecondition,
         message=f"Required entries have been purged. Oldest binary log binlog.000002 starts at {A}:1-10, "
         f"requested position MySQL56/{A}:1-5"),
    Case("mysql-mismatch", MY, MYSQL_TWO_UUIDS, f"{A}:1-10", f"{A}:1-15,{B}:1-3", f"{A}:1-45,{B}:1-3",
         error=FailedPrecondition,
         message=f"Mismatching GTID entries: requested position MySQL56/{A}:1-15,{B}:1-3 is not contained in "
         f"binary logs' GTID sets {A}:1-20"),
    Case("mysql-purged-set-fills-the-gap", MY, MYSQL_TWO_UUIDS, f"{A}:1-10,{B}:1-3", f"{A}:1-15,{B}:1-3",
         f"{A}:1-45,{B}:1-3", ("binlog.000002", "binlog.000003", "binlog.000004", "binlog.000005"),
         f"MySQL56/{A}:1-10"),
    Case("mysql-two-uuids", MY, MYSQL_TWO_UUIDS, f"{A}:1-10", f"{A}:1-35,{B}:1-3", f"{A}:1-45,{B}:1-3",
         ("binlog.000004", "binlog.000005"), f"MySQL56/{A}:1-30"),
    Case("mysql-no-closed-binlogs", MY, (), "", f"{A}:1-25", f"{A}:1-45", error=FailedPrecondition,
         message=f"cannot find binary logs that cover requested GTID range MySQL56/{A}:1-25..{A}:1-45"),
    # ---- MariaDB
    Case("maria-mid-file", MARIA, MARIA_LOGS, "", "0-1-25,1-2-5", "0-1-35,1-2-9",
         ("binlog.000003", "binlog.000004", "binlog.000005"), "MariaDB/0-1-20,1-2-5"),
    Case("maria-server-id-ignored", MARIA, MARIA_LOGS, "", "MariaDB/0-7-25,1-9-5", "0-1-35,1-2-9",
         ("binlog.000003", "binlog.000004", "binlog.000005"), "MariaDB/0-1-20,1-2-5"),
    Case("maria-in-newest-closed-file", MARIA, MARIA_LOGS, "", "0-1-32,1-2-9", "0-1-35,1-2-9",
         ("binlog.000005",), "MariaDB/0-1-30,1-2-9"),
    Case("maria-from-the-first-binlog", MARIA, MARIA_FROM_START, "", "MariaDB/", "0-1-35,1-2-9",
         ("binlog.000001", "binlog.000002", "binlog.000003", "binlog.000004", "binlog.000005"), "MariaDB/"),
    Case("maria-nothing-new", MARIA, MARIA_LOGS, "", "1-2-9,0-1-35", "0-1-35,1-2-9",
         error=NothingToBackup, message=NOTHING.format("MariaDB/0-1-35,1-2-9")),
    Case("maria-future", MARIA, MARIA_LOGS, "", "0-1-40,1-2-3", "0-1-35,1-2-9", error=FailedPrecondition,
         message="requested position MariaDB/0-1-40,1-2-3 is not a subset of the server's executed GTIDs "
         "0-1-35,1-2-9"),
    Case("maria-unknown-domain", MARIA, MARIA_LOGS, "", "0-1-25,5-1-1", "0-1-35,1-2-9",
         error=FailedPrecondition, message="is not a subset of the server's executed GTIDs"),
    Case("maria-purged", MARIA, MARIA_LOGS, "0-1-10", "0-1-5", "0-1-35,1-2-9", error=FailedPrecondition,
         message="Required entries have been purged. Oldest binary log binlog.000002 starts at 0-1-10, "
         "requested position MariaDB/0-1-5"),
    Case("maria-empty-requested-after-purge", MARIA, MARIA_LOGS, "0-1-10", "MariaDB/", "0-1-35,1-2-9",
         error=FailedPrecondition,
         message="Required entries have been purged. Oldest binary log binlog.000002"),
    Case("maria-mismatch", MARIA, MARIA_LOGS, "", "0-1-25", "0-1-35,1-2-9", error=FailedPrecondition,
         message="Mismatching GTID entries: requested position MariaDB/0-1-25 is not contained in binary "
         "logs' GTID sets 0-1-20,1-2-5"),
    Case("maria-no-closed-binlogs", MARIA, (), "", "0-1-25", "0-1-35", error=FailedPrecondition,
         message="cannot find binary logs that cover requested GTID range MariaDB/0-1-25..0-1-35"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_select_binlogs(case: Case) -> None:
    if case.error is not None:
        with pytest.raises(case.error) as info:
            case.run()
        assert case.message in str(info.value)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        return
    selection = case.run()
    assert selection.files == case.files
    assert str(selection.from_position) == case.from_position
    assert selection.to_position == Position(case.flavor, parse_gtid_set(case.flavor, case.executed))


def test_nothing_to_backup_is_a_failed_precondition() -> None:
    assert issubclass(NothingToBackup, FailedPrecondition)


def test_flavor_mismatch_is_invalid_argument() -> None:
    executed = parse_gtid_set(Flavor.MARIADB, "0-1-5")
    with pytest.raises(InvalidArgument, match="is a MySQL56 position, the server is MariaDB"):
        select_binlogs([], executed, parse_position(f"{A}:1"), executed)
    with pytest.raises(
        InvalidArgument, match=r"GTID set of binlog\.000001 is MySQL56, the server is MariaDB"
    ):
        select_binlogs(
            [Binlog("binlog.000001", parse_gtid_set(Flavor.MYSQL56, ""))],
            executed,
            parse_position("0-1-1"),
            executed,
        )


def synthetic_mysql_binlogs(count: int, per_file: int = 100) -> list[Binlog]:
    """`count` closed binlogs over two servers' GTIDs, `per_file` transactions each."""
    return [
        Binlog(
            f"binlog.{i + 1:06d}",
            MySQL56GTIDSet.from_intervals({A: [(1, i * per_file + 1)], B: [(1, i + 1)]}),
        )
        for i in range(count)
    ]


def test_selects_among_ten_thousand_binlogs() -> None:
    binlogs = synthetic_mysql_binlogs(10_000)
    requested = Position(Flavor.MYSQL56, MySQL56GTIDSet.from_intervals({A: [(1, 500_050)], B: [(1, 5001)]}))
    executed = MySQL56GTIDSet.from_intervals({A: [(1, 1_000_000)], B: [(1, 10_000)]})
    selection = select_binlogs(binlogs, binlogs[0].previous_gtids, requested, executed)
    assert selection.files[0] == "binlog.005001"
    assert selection.files[-1] == "binlog.010000"
    assert len(selection.files) == 5000
    assert requested.contains(selection.from_position)
