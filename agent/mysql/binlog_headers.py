"""Read the GTID state that precedes a binlog file from its leading events, without reading the body.

A binlog file is the magic ``FE 62 69 6E`` followed by events, each with a 19-byte little-endian common header
(timestamp u32, type u8, server_id u32, event_size u32, log_pos u32, flags u16). The Format_description event
at offset 4 names the checksum algorithm; the next events hold the GTID state before the file: MariaDB's
Gtid_list or MySQL's Previous_gtids. The rest of the file is walked header by header (19 bytes per event) for
the first and last timestamps; event bodies there are neither read nor checksummed.

`read_binlog_header` is synchronous file I/O: call it in a thread from async code. The helpers at the end
parse the SQL fallbacks (``BINLOG_GTID_POS``, ``SHOW BINLOG EVENTS``) into the same GTID sets.
"""

from __future__ import annotations

import enum
import mmap
import struct
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.errors import AgentError, FailedPrecondition
from agent.mysql.gtid import (
    Flavor,
    GTIDSet,
    MariaDBGTID,
    MariaDBGTIDSet,
    MySQL56GTIDSet,
    parse_gtid_set,
    parse_mariadb_gtid,
)

BINLOG_MAGIC = b"\xfebin"
EVENT_HEADER = struct.Struct("<IBIIIH")
"""Common event header: timestamp, type, server_id, event_size, log_pos, flags."""
_WALK_HEADER = struct.Struct("<IB4xI")
"""The fields of the common header that the walk needs: timestamp, type, event_size."""
CRC_LEN = 4
LOG_EVENT_BINLOG_IN_USE_F = 0x1
CHECKSUM_OFF = 0
CHECKSUM_CRC32 = 1
_FDE_MIN_BODY = 2 + 50 + 4 + 1  # binlog_version, server_version, create_timestamp, header_length
_GTID_LIST_ENTRY = struct.Struct("<IIQ")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_MAX_LEADING_EVENTS = 8


class EventType(enum.IntEnum):
    """The binlog event types this module looks at."""

    STOP = 3
    ROTATE = 4
    FORMAT_DESCRIPTION = 15
    MYSQL_GTID = 33
    MYSQL_ANONYMOUS_GTID = 34
    MYSQL_PREVIOUS_GTIDS = 35
    MARIADB_BINLOG_CHECKPOINT = 161
    MARIADB_GTID = 162
    MARIADB_GTID_LIST = 163
    MARIADB_START_ENCRYPTION = 164


_GTID_EVENTS = frozenset({EventType.MYSQL_GTID, EventType.MYSQL_ANONYMOUS_GTID, EventType.MARIADB_GTID})
_GTID_STATE_EVENTS = frozenset({EventType.MYSQL_PREVIOUS_GTIDS, EventType.MARIADB_GTID_LIST})
_LEADING_EVENTS = _GTID_STATE_EVENTS | {EventType.MARIADB_BINLOG_CHECKPOINT}
_END_EVENTS = frozenset({EventType.ROTATE, EventType.STOP})


class BinlogFormatError(AgentError):
    """A binlog file is not what it should be: bad magic, truncated event, checksum mismatch."""

    code = grpc.StatusCode.DATA_LOSS


@dataclass(frozen=True)
class EventHeader:
    """The common header of one event and where it starts in the file."""

    offset: int
    timestamp: int
    type_code: int
    server_id: int
    size: int
    log_pos: int
    flags: int

    @property
    def end(self) -> int:
        """Offset of the next event."""
        return self.offset + self.size


@dataclass(frozen=True)
class BinlogHeader:
    """What a binlog file says about itself.

    `previous_gtids`: the GTID state before the file's first transaction. `first_timestamp`: of the first
    event after the leading events (Format_description, Gtid_list/Previous_gtids, Binlog_checkpoint) that is
    a GTID event or has a non-zero timestamp. `last_timestamp`: of the last event with a non-zero timestamp.
    `closed`: the server finished the file (in-use flag cleared, ends with Rotate, or Stop at shutdown).
    `checksum`: events carry a CRC32.
    """

    name: str
    path: Path
    size: int
    flavor: Flavor
    previous_gtids: GTIDSet
    first_timestamp: int | None
    last_timestamp: int | None
    closed: bool
    checksum: bool


def read_binlog_header(path: Path, verify_crc: bool = True, *, walk: bool = True) -> BinlogHeader:
    """Read a binlog file's leading events and walk its event headers; raises BinlogFormatError.

    `verify_crc` checks the checksum of the events whose bodies are read (the leading ones). An open file may
    end in an event still being written: that reads as truncated, so prefer closed files. Without `walk` only
    the leading events are read: no timestamps, and `closed` says only that the in-use flag is cleared.
    """
    with path.open("rb") as file:
        data = file.read(len(BINLOG_MAGIC))
        if data != BINLOG_MAGIC:
            raise BinlogFormatError(f"{path} is not a binlog file: it does not start with magic FE 62 69 6E")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return _BinlogReader(path, mapped, verify_crc).read(walk)


class _BinlogReader:
    """One pass over one mapped binlog file."""

    def __init__(self, path: Path, data: mmap.mmap, verify_crc: bool) -> None:
        self.path = path
        self.data = data
        self.size = len(data)
        self.verify_crc = verify_crc
        self.checksum = False

    def read(self, walk: bool = True) -> BinlogHeader:
        events = self._headers(len(BINLOG_MAGIC))
        fde = next(events, None)
        if fde is None or fde.type_code != EventType.FORMAT_DESCRIPTION:
            raise self._error(len(BINLOG_MAGIC), "expected a Format_description event")
        self.checksum = self._read_checksum_algorithm(fde)
        leading, first_content = self._leading_events(events)
        flavor, previous = self._gtid_state(leading, first_content)
        if walk:
            first_ts, last_ts, last_type = self._walk(first_content, [fde, *leading])
        else:
            first_ts, last_ts, last_type = None, None, EventType.STOP
        return BinlogHeader(
            name=self.path.name,
            path=self.path,
            size=self.size,
            flavor=flavor,
            previous_gtids=previous,
            first_timestamp=first_ts,
            last_timestamp=last_ts,
            closed=not fde.flags & LOG_EVENT_BINLOG_IN_USE_F and last_type in _END_EVENTS,
            checksum=self.checksum,
        )

    def _headers(self, offset: int) -> Iterator[EventHeader]:
        """Every event header from `offset` to the end of the file, checking that each event is complete."""
        while offset < self.size:
            if offset + EVENT_HEADER.size > self.size:
                raise self._error(offset, "truncated event header")
            header = EventHeader(offset, *EVENT_HEADER.unpack_from(self.data, offset))
            if header.size < EVENT_HEADER.size or header.end > self.size:
                raise self._size_error(offset, header.size)
            yield header
            offset = header.end

    def _body(self, header: EventHeader, *, has_crc: bool) -> bytes:
        """The event body without its CRC, after checking the CRC when asked to."""
        event = self.data[header.offset : header.end]
        if not has_crc:
            return event[EVENT_HEADER.size :]
        if len(event) < EVENT_HEADER.size + CRC_LEN:
            raise self._error(header.offset, "event too short for its checksum")
        if self.verify_crc:
            self._check_crc(header, event)
        return event[EVENT_HEADER.size : -CRC_LEN]

    def _check_crc(self, header: EventHeader, event: bytes) -> None:
        signed = event[:-CRC_LEN]
        if header.type_code == EventType.FORMAT_DESCRIPTION:
            flags = header.flags & ~LOG_EVENT_BINLOG_IN_USE_F
            signed = signed[:17] + flags.to_bytes(2, "little") + signed[19:]
        (stored,) = _U32.unpack_from(event, len(event) - CRC_LEN)
        computed = zlib.crc32(signed)
        if stored != computed:
            raise self._error(
                header.offset,
                f"checksum mismatch in event type {header.type_code}: "
                f"stored {stored:08x}, computed {computed:08x}",
            )

    def _read_checksum_algorithm(self, fde: EventHeader) -> bool:
        """True if events carry a CRC32 (the byte before the Format_description's own CRC says)."""
        body = self._body(fde, has_crc=False)
        if len(body) < _FDE_MIN_BODY + 1 + CRC_LEN:
            raise self._error(fde.offset, "Format_description event too short")
        algorithm = body[-1 - CRC_LEN]
        if algorithm not in (CHECKSUM_OFF, CHECKSUM_CRC32):
            raise self._error(fde.offset, f"unsupported binlog checksum algorithm {algorithm}")
        if algorithm == CHECKSUM_CRC32:
            self._body(fde, has_crc=True)
        return algorithm == CHECKSUM_CRC32

    def _leading_events(self, events: Iterator[EventHeader]) -> tuple[list[EventHeader], EventHeader | None]:
        """The events after the Format_description that describe the file (Gtid_list, Previous_gtids,
        Binlog_checkpoint), and the first event after them (None if the file ends first)."""
        leading: list[EventHeader] = []
        for header in events:
            if header.type_code == EventType.MARIADB_START_ENCRYPTION:
                raise self._error(header.offset, "encrypted binlogs are not supported")
            if header.type_code not in _LEADING_EVENTS or len(leading) >= _MAX_LEADING_EVENTS:
                return leading, header
            leading.append(header)
        return leading, None

    def _gtid_state(self, leading: list[EventHeader], after: EventHeader | None) -> tuple[Flavor, GTIDSet]:
        """The flavor and GTID set of the first Gtid_list or Previous_gtids event."""
        for header in leading:
            if header.type_code in _GTID_STATE_EVENTS:
                return self._parse_gtid_state(header)
        offset = self.size if after is None else after.offset
        raise self._error(offset, "no Gtid_list or Previous_gtids event after the Format_description")

    def _parse_gtid_state(self, header: EventHeader) -> tuple[Flavor, GTIDSet]:
        body = self._body(header, has_crc=self.checksum)
        try:
            if header.type_code == EventType.MARIADB_GTID_LIST:
                return Flavor.MARIADB, parse_gtid_list_body(body)
            return Flavor.MYSQL56, parse_previous_gtids_body(body)
        except (ValueError, struct.error) as exc:
            raise self._error(header.offset, f"bad event type {header.type_code}: {exc}") from exc

    def _walk(
        self, start: EventHeader | None, leading: list[EventHeader]
    ) -> tuple[int | None, int | None, int]:
        """First content timestamp, last non-zero timestamp and last event type, walking the headers from
        `start` (the first event after the leading ones) to the end: 13 bytes read per event, no objects."""
        last_type = leading[-1].type_code
        last_ts = next((h.timestamp for h in reversed(leading) if h.timestamp), None)
        first_ts: int | None = None
        data, size, unpack = self.data, self.size, _WALK_HEADER.unpack_from
        offset = size if start is None else start.offset
        while offset < size:
            if offset + EVENT_HEADER.size > size:
                raise self._error(offset, "truncated event header")
            timestamp, last_type, event_size = unpack(data, offset)
            if event_size < EVENT_HEADER.size or offset + event_size > size:
                raise self._size_error(offset, event_size)
            if first_ts is None and (timestamp or last_type in _GTID_EVENTS):
                first_ts = timestamp
            if timestamp:
                last_ts = timestamp
            offset += event_size
        return first_ts, last_ts, last_type

    def _size_error(self, offset: int, event_size: int) -> BinlogFormatError:
        if event_size < EVENT_HEADER.size:
            return self._error(offset, f"impossible event size {event_size}")
        return self._error(offset, f"truncated event: {event_size} bytes expected, file ends first")

    def _error(self, offset: int, what: str) -> BinlogFormatError:
        return BinlogFormatError(f"binlog {self.path} at offset {offset}: {what}")


def parse_gtid_list_body(body: bytes) -> MariaDBGTIDSet:
    """MariaDB Gtid_list body (without CRC): u32 count (low 28 bits), then (domain u32, server u32, seq u64)
    per entry (an empty list is padded). Several entries may share a domain; the last one of each domain is
    its current GTID."""
    (word,) = _U32.unpack_from(body, 0)
    count = word & 0x0FFF_FFFF
    if len(body) < _U32.size + count * _GTID_LIST_ENTRY.size:  # MariaDB pads an empty list: allow extra bytes
        raise ValueError(f"Gtid_list of {count} entries cannot fit in {len(body)} bytes")
    gtids = (
        MariaDBGTID(*_GTID_LIST_ENTRY.unpack_from(body, _U32.size + i * _GTID_LIST_ENTRY.size))
        for i in range(count)
    )
    return MariaDBGTIDSet.from_gtids(gtids, last_wins=True)


def parse_previous_gtids_body(body: bytes) -> MySQL56GTIDSet:
    """MySQL Previous_gtids body (without CRC): n_sids u64, then per sid a 16-byte uuid, n_intervals u64 and
    n_intervals x (start u64, end u64 exclusive)."""
    (n_sids,) = _U64.unpack_from(body, 0)
    if n_sids >> 56:
        raise ValueError("tagged GTID sets (MySQL 8.3+) are not supported")
    offset = _U64.size
    intervals: dict[str, list[tuple[int, int]]] = {}
    for _ in range(n_sids):
        sid = str(uuid.UUID(bytes=body[offset : offset + 16]))
        (n_intervals,) = _U64.unpack_from(body, offset + 16)
        offset += 16 + _U64.size
        for _ in range(n_intervals):
            start, end = struct.unpack_from("<QQ", body, offset)
            offset += 16
            if not 1 <= start < end:
                raise ValueError(f"bad interval [{start}, {end}) for {sid}")
            intervals.setdefault(sid, []).append((start, end - 1))
    if offset != len(body):
        raise ValueError(f"{len(body) - offset} unexpected bytes after the GTID set")
    return MySQL56GTIDSet.from_intervals(intervals)


# ------------------------------------------------------------------------------------------ SQL fallbacks

_SHOW_BINLOG_EVENTS_COLUMNS = ("Log_name", "Pos", "Event_type", "Server_id", "End_log_pos", "Info")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_binlog_gtid_pos(value: str | bytes | None) -> MariaDBGTIDSet:
    """The result of MariaDB's ``SELECT BINLOG_GTID_POS(file, 4)``: '' for the first binlog, NULL when the
    file or offset is unknown to the server."""
    if value is None:
        raise FailedPrecondition(
            "BINLOG_GTID_POS returned NULL: the server does not know that binlog file (purged or misnamed)"
        )
    return parse_gtid_set(Flavor.MARIADB, _text(value))


def previous_gtids_from_binlog_events(
    rows: Iterable[Sequence[object] | Mapping[str, object]],
) -> GTIDSet:
    """The GTID set before a binlog, from ``SHOW BINLOG EVENTS IN 'f' LIMIT 3`` rows (tuples in column order
    Log_name, Pos, Event_type, Server_id, End_log_pos, Info, or dicts keyed by those names)."""
    names: list[str] = []
    for row in rows:
        record = (
            row if isinstance(row, Mapping) else dict(zip(_SHOW_BINLOG_EVENTS_COLUMNS, row, strict=False))
        )
        event_type = _text(record.get("Event_type", ""))
        info = _text(record.get("Info") or "").strip()
        names.append(_text(record.get("Log_name", "?")))
        if event_type == "Gtid_list":
            return _parse_gtid_list_info(info)
        if event_type == "Previous_gtids":
            return parse_gtid_set(Flavor.MYSQL56, info)
    where = f" of {names[0]}" if names else ""
    raise FailedPrecondition(f"no Gtid_list or Previous_gtids event in the first binlog events{where}")


def _parse_gtid_list_info(info: str) -> MariaDBGTIDSet:
    """``[0-1-17,1-2-5]`` (several entries may share a domain: the last one counts)."""
    inner = info.removeprefix("[").removesuffix("]").strip()
    if not inner:
        return MariaDBGTIDSet()
    return MariaDBGTIDSet.from_gtids((parse_mariadb_gtid(p, info) for p in inner.split(",")), last_wins=True)
