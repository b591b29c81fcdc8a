"""Binlog header reading from files built byte by byte, and the SQL fallbacks."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import FailedPrecondition
from agent.mysql.binlog_headers import (
    BINLOG_MAGIC,
    BinlogFormatError,
    EventType,
    parse_binlog_gtid_pos,
    parse_gtid_list_body,
    parse_previous_gtids_body,
    previous_gtids_from_binlog_events,
    read_binlog_header,
)
from agent.mysql.gtid import Flavor, MariaDBGTID, MariaDBGTIDSet, MySQL56GTIDSet, parse_gtid_set

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
T0 = 1_700_000_000
IN_USE = 0x1


# ------------------------------------------------------------------------------------------- the builder


def gtid_list_body(gtids: list[tuple[int, int, int]]) -> bytes:
    """MariaDB Gtid_list body; an empty list is padded with two bytes, as MariaDB 10.11 writes it."""
    body = struct.pack("<I", len(gtids)) + b"".join(struct.pack("<IIQ", *g) for g in gtids)
    return body if gtids else body + b"\0\0"


def previous_gtids_body(sids: Mapping[str, Sequence[tuple[int, int]]]) -> bytes:
    """MySQL Previous_gtids body from inclusive intervals (stored with exclusive ends)."""
    out = struct.pack("<Q", len(sids))
    for sid, intervals in sids.items():
        out += bytes.fromhex(sid.replace("-", "")) + struct.pack("<Q", len(intervals))
        out += b"".join(struct.pack("<QQ", start, end + 1) for start, end in intervals)
    return out


@dataclass
class BinlogBuilder:
    """Writes a binlog file event by event with correct sizes, positions and CRC32s."""

    flavor: Flavor = Flavor.MARIADB
    checksum: bool = True
    in_use: bool = False
    events: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        version = b"10.11.6-MariaDB-log" if self.flavor is Flavor.MARIADB else b"8.0.36"
        body = struct.pack("<H50sIB", 4, version, T0, 19) + bytes(range(1, 41)) + bytes([int(self.checksum)])
        self.add(EventType.FORMAT_DESCRIPTION, body, flags=IN_USE if self.in_use else 0, force_crc=True)

    @property
    def offset(self) -> int:
        return len(BINLOG_MAGIC) + sum(len(e) for e in self.events)

    def add(
        self, type_code: int, body: bytes, *, timestamp: int = T0, flags: int = 0, force_crc: bool = False
    ) -> BinlogBuilder:
        with_crc = self.checksum or force_crc
        size = 19 + len(body) + (4 if with_crc else 0)
        header = struct.pack("<IBIIIH", timestamp, type_code, 1, size, self.offset + size, flags)
        event = header + body
        if with_crc:
            signed = struct.pack(
                "<IBIIIH", timestamp, type_code, 1, size, self.offset + size, flags & ~IN_USE
            )
            event += struct.pack("<I", zlib.crc32(signed + body) if self.checksum else 0)
        self.events.append(event)
        return self

    def gtid_list(self, *gtids: tuple[int, int, int]) -> BinlogBuilder:
        return self.add(EventType.MARIADB_GTID_LIST, gtid_list_body(list(gtids)))

    def previous_gtids(self, sids: dict[str, list[tuple[int, int]]]) -> BinlogBuilder:
        return self.add(EventType.MYSQL_PREVIOUS_GTIDS, previous_gtids_body(sids))

    def checkpoint(self) -> BinlogBuilder:
        return self.add(EventType.MARIADB_BINLOG_CHECKPOINT, struct.pack("<I", 12) + b"binlog.000001")

    def transaction(self, timestamp: int, seq: int = 1) -> BinlogBuilder:
        """A GTID event, a Query and an Xid event, all at `timestamp`."""
        if self.flavor is Flavor.MARIADB:
            self.add(EventType.MARIADB_GTID, struct.pack("<QIB", seq, 0, 0) + bytes(6), timestamp=timestamp)
        else:
            self.add(EventType.MYSQL_GTID, bytes(1) + bytes(16) + struct.pack("<Q", seq), timestamp=timestamp)
        self.add(2, b"query body " * 10, timestamp=timestamp)
        return self.add(16, struct.pack("<Q", seq), timestamp=timestamp)

    def rotate(self, timestamp: int, next_name: bytes = b"binlog.000002") -> BinlogBuilder:
        return self.add(EventType.ROTATE, struct.pack("<Q", 4) + next_name, timestamp=timestamp)

    def stop(self, timestamp: int) -> BinlogBuilder:
        return self.add(EventType.STOP, b"", timestamp=timestamp)

    def data(self) -> bytes:
        return BINLOG_MAGIC + b"".join(self.events)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.data())
        return path


def mariadb_closed() -> BinlogBuilder:
    return (
        BinlogBuilder()
        .gtid_list((0, 1, 3), (3, 1, 1), (0, 7, 4))
        .checkpoint()
        .transaction(T0 + 10, seq=5)
        .transaction(T0 + 20, seq=6)
        .rotate(T0 + 30)
    )


def mysql_closed() -> BinlogBuilder:
    return (
        BinlogBuilder(Flavor.MYSQL56)
        .previous_gtids({U2: [(1, 3)], U1: [(1, 5), (7, 9)]})
        .transaction(T0 + 10)
        .transaction(T0 + 20)
        .rotate(T0 + 30)
    )


# ------------------------------------------------------------------------------------------------ reading


def test_reads_a_closed_mariadb_binlog(tmp_path: Path) -> None:
    path = mariadb_closed().write(tmp_path / "binlog.000002")
    header = read_binlog_header(path)
    assert header.name == "binlog.000002"
    assert header.path == path
    assert header.size == path.stat().st_size
    assert header.flavor is Flavor.MARIADB
    assert str(header.previous_gtids) == "0-7-4,3-1-1"  # the last GTID listed for each domain
    assert header.first_timestamp == T0 + 10
    assert header.last_timestamp == T0 + 30
    assert header.closed
    assert header.checksum


def test_reads_a_closed_mysql_binlog(tmp_path: Path) -> None:
    header = read_binlog_header(mysql_closed().write(tmp_path / "mysql-bin.000007"))
    assert header.flavor is Flavor.MYSQL56
    assert str(header.previous_gtids) == f"{U1}:1-5:7-9,{U2}:1-3"
    assert (header.first_timestamp, header.last_timestamp) == (T0 + 10, T0 + 30)
    assert header.closed


def test_first_binlog_has_an_empty_padded_gtid_list(tmp_path: Path) -> None:
    path = BinlogBuilder().gtid_list().checkpoint().transaction(T0 + 1).rotate(T0 + 2).write(tmp_path / "b.1")
    header = read_binlog_header(path)
    assert header.previous_gtids == MariaDBGTIDSet()
    assert header.previous_gtids.is_empty()


def test_open_binlog_is_not_closed_and_its_in_use_flag_is_ignored_by_the_crc(tmp_path: Path) -> None:
    builder = BinlogBuilder(in_use=True).gtid_list((0, 1, 9)).checkpoint().transaction(T0 + 5)
    header = read_binlog_header(builder.write(tmp_path / "b.3"))
    assert not header.closed
    assert str(header.previous_gtids) == "0-1-9"
    assert header.last_timestamp == T0 + 5


def test_binlog_with_only_leading_events(tmp_path: Path) -> None:
    header = read_binlog_header(BinlogBuilder(in_use=True).gtid_list((0, 1, 9)).write(tmp_path / "b.4"))
    assert header.first_timestamp is None
    assert header.last_timestamp == T0
    assert not header.closed


@pytest.mark.parametrize(
    ("in_use", "ending", "closed"),
    [
        (False, "rotate", True),
        (False, "stop", True),
        (True, "rotate", False),
        (False, "transaction", False),
    ],
)
def test_closed_needs_cleared_in_use_flag_and_a_final_rotate_or_stop(
    tmp_path: Path, in_use: bool, ending: str, closed: bool
) -> None:
    builder = BinlogBuilder(in_use=in_use).gtid_list((0, 1, 1)).transaction(T0 + 1)
    {"rotate": builder.rotate, "stop": builder.stop, "transaction": builder.transaction}[ending](T0 + 2)
    assert read_binlog_header(builder.write(tmp_path / "b")).closed is closed


def test_first_timestamp_skips_zero_timestamp_events_but_not_gtid_events(tmp_path: Path) -> None:
    builder = BinlogBuilder().gtid_list((0, 1, 1)).checkpoint().add(2, b"x", timestamp=0)
    builder.transaction(T0 + 7).rotate(0)
    header = read_binlog_header(builder.write(tmp_path / "b"))
    assert header.first_timestamp == T0 + 7
    assert header.last_timestamp == T0 + 7  # the final rotate has no timestamp


def test_binlog_without_checksums(tmp_path: Path) -> None:
    builder = BinlogBuilder(checksum=False).gtid_list((0, 1, 4)).transaction(T0 + 1).rotate(T0 + 2)
    header = read_binlog_header(builder.write(tmp_path / "b"))
    assert not header.checksum
    assert str(header.previous_gtids) == "0-1-4"
    assert header.closed


def test_mysql_binlog_without_checksums(tmp_path: Path) -> None:
    builder = BinlogBuilder(Flavor.MYSQL56, checksum=False).previous_gtids({U1: [(1, 2)]}).rotate(T0 + 2)
    header = read_binlog_header(builder.write(tmp_path / "b"))
    assert str(header.previous_gtids) == f"{U1}:1-2"
    assert header.first_timestamp == T0 + 2


# ----------------------------------------------------------------------------------------------- failures


def corrupt(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


def fails(path: Path, match: str, verify_crc: bool = True) -> BinlogFormatError:
    with pytest.raises(BinlogFormatError, match=match) as info:
        read_binlog_header(path, verify_crc=verify_crc)
    assert info.value.code == grpc.StatusCode.DATA_LOSS
    assert str(path) in str(info.value)
    return info.value


def test_crc_mismatch_in_gtid_list_is_detected(tmp_path: Path) -> None:
    builder = mariadb_closed()
    gtid_list_offset = len(BINLOG_MAGIC) + len(builder.events[0])
    path = tmp_path / "b"
    path.write_bytes(corrupt(builder.data(), gtid_list_offset + 19 + 4))  # the first domain id
    fails(path, f"offset {gtid_list_offset}: checksum mismatch in event type 163")
    assert str(read_binlog_header(path, verify_crc=False).previous_gtids) != "0-7-4,3-1-1"


def test_crc_mismatch_in_format_description_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "b"
    path.write_bytes(corrupt(mariadb_closed().data(), 4 + 19 + 10))  # in the server version
    fails(path, "offset 4: checksum mismatch in event type 15")


def test_crc_mismatch_in_previous_gtids_is_detected(tmp_path: Path) -> None:
    builder = mysql_closed()
    path = tmp_path / "b"
    path.write_bytes(corrupt(builder.data(), len(BINLOG_MAGIC) + len(builder.events[0]) + 19 + 8 + 3))
    fails(path, "checksum mismatch in event type 35")


def test_bodies_after_the_leading_events_are_not_read(tmp_path: Path) -> None:
    builder = mariadb_closed()
    transaction_offset = len(BINLOG_MAGIC) + sum(len(e) for e in builder.events[:3])
    path = tmp_path / "b"
    path.write_bytes(corrupt(builder.data(), transaction_offset + 19 + 2))
    assert read_binlog_header(path).closed


@pytest.mark.parametrize("cut", [1, 10, 19, 24])
def test_truncated_last_event_is_detected(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "b"
    path.write_bytes(mariadb_closed().data()[:-cut])
    fails(path, "truncated event: 44 bytes expected")


def test_truncated_event_header_is_detected(tmp_path: Path) -> None:
    builder = mariadb_closed()
    path = tmp_path / "b"
    path.write_bytes(builder.data()[: -len(builder.events[-1]) + 7])
    fails(path, "truncated event header")


def test_truncated_leading_event_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "b"
    path.write_bytes(mariadb_closed().data()[: 4 + 100])
    fails(path, "offset 4: truncated event")


@pytest.mark.parametrize("data", [b"", b"\xfeb", b"\xfebim" + bytes(100), b"PK\x03\x04" + bytes(100)])
def test_bad_magic_is_detected(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "b"
    path.write_bytes(data)
    fails(path, "is not a binlog file: it does not start with magic FE 62 69 6E")


def test_impossible_event_size_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "b"
    path.write_bytes(mariadb_closed().data() + struct.pack("<IBIIIH", T0, 2, 1, 5, 0, 0))
    fails(path, "impossible event size 5")


def test_first_event_must_be_format_description(tmp_path: Path) -> None:
    builder = mariadb_closed()
    path = tmp_path / "b"
    path.write_bytes(BINLOG_MAGIC + b"".join(builder.events[1:]))
    fails(path, "offset 4: expected a Format_description event")
    path.write_bytes(BINLOG_MAGIC)
    fails(path, "offset 4: expected a Format_description event")


def test_missing_gtid_list_is_detected(tmp_path: Path) -> None:
    fails(
        BinlogBuilder().checkpoint().transaction(T0).write(tmp_path / "b"), "no Gtid_list or Previous_gtids"
    )
    fails(BinlogBuilder().write(tmp_path / "c"), "no Gtid_list or Previous_gtids")


def test_encrypted_binlog_is_refused(tmp_path: Path) -> None:
    builder = BinlogBuilder().add(EventType.MARIADB_START_ENCRYPTION, bytes(17)).gtid_list((0, 1, 1))
    fails(builder.write(tmp_path / "b"), "encrypted binlogs are not supported")


def test_unknown_checksum_algorithm_is_refused(tmp_path: Path) -> None:
    builder = mariadb_closed()
    fde = bytearray(builder.events[0])
    fde[-5] = 7
    path = tmp_path / "b"
    path.write_bytes(BINLOG_MAGIC + bytes(fde) + b"".join(builder.events[1:]))
    fails(path, "unsupported binlog checksum algorithm 7")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (previous_gtids_body({U1: [(1, 5)]}) + b"\0", "1 unexpected bytes"),
        (struct.pack("<Q", 1) + bytes(16) + struct.pack("<QQQ", 1, 5, 5), r"bad interval \[5, 5\)"),
        (struct.pack("<Q", 2) + bytes(16), "unpack_from requires"),
        (struct.pack("<Q", 1 << 56), "tagged GTID sets"),
    ],
)
def test_malformed_previous_gtids_is_detected(tmp_path: Path, body: bytes, match: str) -> None:
    path = BinlogBuilder(Flavor.MYSQL56).add(EventType.MYSQL_PREVIOUS_GTIDS, body).write(tmp_path / "b")
    fails(path, f"bad event type 35: .*{match}")


def test_malformed_gtid_list_is_detected(tmp_path: Path) -> None:
    path = (
        BinlogBuilder()
        .add(EventType.MARIADB_GTID_LIST, struct.pack("<I", 2) + bytes(16))
        .write(tmp_path / "b")
    )
    fails(path, "bad event type 163: Gtid_list of 2 entries cannot fit in 20 bytes")


def test_gtid_list_count_ignores_the_flag_bits() -> None:
    body = struct.pack("<I", (0xA << 28) | 1) + struct.pack("<IIQ", 2, 3, 4)
    assert str(parse_gtid_list_body(body)) == "2-3-4"


# ------------------------------------------------------------------------------------ body round trips


@given(st.dictionaries(st.integers(0, 5), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))))
def test_gtid_list_body_round_trips(domains: dict[int, tuple[int, int]]) -> None:
    expected = MariaDBGTIDSet.from_gtids(MariaDBGTID(d, s, q) for d, (s, q) in domains.items())
    body = gtid_list_body([(g.domain, g.server, g.seq) for g in reversed(expected.gtids)])
    assert parse_gtid_list_body(body) == expected


@given(
    st.dictionaries(
        st.sampled_from([U1, U2]),
        st.lists(
            st.tuples(st.integers(1, 1000), st.integers(0, 50)).map(lambda p: (p[0], p[0] + p[1])), min_size=1
        ),
    )
)
def test_previous_gtids_body_round_trips(sids: dict[str, list[tuple[int, int]]]) -> None:
    expected = MySQL56GTIDSet.from_intervals(sids)
    assert parse_previous_gtids_body(previous_gtids_body(dict(expected.entries))) == expected


# ---------------------------------------------------------------------------------------- SQL fallbacks


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3-1-1,0-7-4", "0-7-4,3-1-1"), ("", ""), (b"0-1-5", "0-1-5"), ("0-1-100", "0-1-100")],
)
def test_parse_binlog_gtid_pos(value: str | bytes, expected: str) -> None:
    assert str(parse_binlog_gtid_pos(value)) == expected


def test_parse_binlog_gtid_pos_null_means_unknown_file() -> None:
    with pytest.raises(FailedPrecondition, match="BINLOG_GTID_POS returned NULL"):
        parse_binlog_gtid_pos(None)


MARIADB_ROWS = [
    ("binlog.000003", 4, "Format_desc", 1, 256, "Server ver: 10.11.19-MariaDB-0+deb12u1-log, Binlog ver: 4"),
    ("binlog.000003", 256, "Gtid_list", 1, 331, "[0-1-3,0-7-4,3-1-1]"),
    ("binlog.000003", 331, "Binlog_checkpoint", 1, 371, "binlog.000002"),
]


def test_previous_gtids_from_mariadb_show_binlog_events() -> None:
    assert str(previous_gtids_from_binlog_events(MARIADB_ROWS)) == "0-7-4,3-1-1"


def test_previous_gtids_from_dict_rows_and_empty_list() -> None:
    rows = [
        {"Log_name": "binlog.000001", "Pos": 4, "Event_type": "Format_desc", "Info": "Server ver: ..."},
        {"Log_name": "binlog.000001", "Pos": 256, "Event_type": "Gtid_list", "Info": "[]"},
    ]
    assert previous_gtids_from_binlog_events(rows) == MariaDBGTIDSet()


def test_previous_gtids_from_mysql_show_binlog_events() -> None:
    rows = [
        ("mysql-bin.000002", 4, "Format_desc", 1, 126, "Server ver: 8.0.36, Binlog ver: 4"),
        ("mysql-bin.000002", 126, "Previous_gtids", 1, 197, f"{U1.upper()}:1-5,\n{U2}:1-3"),
    ]
    gtids = previous_gtids_from_binlog_events(rows)
    assert gtids == parse_gtid_set(Flavor.MYSQL56, f"{U1}:1-5,{U2}:1-3")
    assert previous_gtids_from_binlog_events([(*rows[1][:5], b"")]) == MySQL56GTIDSet()


def test_previous_gtids_missing_from_show_binlog_events() -> None:
    with pytest.raises(
        FailedPrecondition, match=r"no Gtid_list or Previous_gtids event .* of binlog\.000003"
    ):
        previous_gtids_from_binlog_events(MARIADB_ROWS[:1])
    with pytest.raises(FailedPrecondition, match="no Gtid_list or Previous_gtids event"):
        previous_gtids_from_binlog_events([])
