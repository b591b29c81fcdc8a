"""Binlog replay pieces that need no server: decoder arguments and resolving a time to a position."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.binlogs.apply import binlog_argv, own_transactions, position_before
from agent.mysql.binlog_transactions import read_transactions
from agent.mysql.gtid import Flavor, parse_position
from tests.unit.test_binlog_headers import T0, BinlogBuilder


def _files(tmp_path: Path) -> list[Path]:
    first = (
        BinlogBuilder()
        .gtid_list((0, 1, 4))
        .transaction(T0 + 10, seq=5)
        .transaction(T0 + 20, seq=6)
        .rotate(T0 + 21)
    )
    second = (
        BinlogBuilder()
        .gtid_list((0, 1, 6))
        .transaction(T0 + 30, seq=7)
        .transaction(T0 + 40, seq=8)
        .rotate(T0 + 41)
    )
    return [first.write(tmp_path / "binlog.000001"), second.write(tmp_path / "binlog.000002")]


def test_transactions_are_read_with_gtid_time_and_offset(tmp_path: Path) -> None:
    txs = list(read_transactions(_files(tmp_path)[0]))
    assert [str(t.gtid) for t in txs] == ["0-1-5", "0-1-6"]
    assert [t.timestamp for t in txs] == [T0 + 10, T0 + 20]
    assert txs[0].offset < txs[1].offset


def test_position_before_a_time_is_exclusive_and_skips_applied_transactions(tmp_path: Path) -> None:
    files = _files(tmp_path)
    start = parse_position("MariaDB/0-1-4")
    at = lambda s: datetime.fromtimestamp(T0 + s, UTC)  # noqa: E731
    assert position_before(files, start, at(10)) == (start, True)
    assert position_before(files, start, at(10.5)) == (parse_position("MariaDB/0-1-5"), True)
    assert position_before(files, start, at(35)) == (parse_position("MariaDB/0-1-7"), True)
    assert position_before(files, start, at(99)) == (parse_position("MariaDB/0-1-8"), False)
    # a start past some transactions: they are not counted again
    assert position_before(files, parse_position("MariaDB/0-1-6"), at(35)) == (
        parse_position("MariaDB/0-1-7"),
        True,
    )


def test_own_transactions_are_detected(tmp_path: Path) -> None:
    files = _files(tmp_path)
    assert own_transactions(files, 1) and not own_transactions(files, 2)


def test_decoder_arguments_for_both_flavors() -> None:
    files = [Path("/b/binlog.000001")]
    maria = binlog_argv(
        "mariadb-binlog", parse_position("MariaDB/0-1-4"), parse_position("MariaDB/0-1-9"), files
    )
    assert maria == [
        "mariadb-binlog",
        "--no-defaults",
        "--start-position=0-1-4",
        "--stop-position=0-1-9",
        "/b/binlog.000001",
    ]
    empty = binlog_argv("mariadb-binlog", parse_position("MariaDB/"), parse_position("MariaDB/0-1-9"), files)
    assert "--start-position" not in " ".join(empty)
    u = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
    mysql = binlog_argv(
        "mysqlbinlog", parse_position(f"MySQL56/{u}:1-4"), parse_position(f"MySQL56/{u}:1-9"), files
    )
    assert mysql[2:4] == [f"--exclude-gtids={u}:1-4", f"--include-gtids={u}:1-9"]
    assert parse_position(f"MySQL56/{u}:1-4").flavor is Flavor.MYSQL56
