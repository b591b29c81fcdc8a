"""The transactions of a binlog file, as their GTID events say: which GTID, when, where.

A point-in-time restore to a timestamp turns the time into a GTID position with these: every transaction
whose GTID event is older than the time, up to the first one that is not. Only the 19-byte headers and
the GTID event bodies are read.
"""

from __future__ import annotations

import mmap
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.mysql.binlog_headers import BINLOG_MAGIC, EVENT_HEADER, BinlogFormatError, EventType
from agent.mysql.gtid import GTIDSet, MariaDBGTID, MariaDBGTIDSet, MySQL56GTIDSet

_MARIADB_GTID = struct.Struct("<QI")  # seq_no, domain_id; the server id is the event header's
_MYSQL_GTID = struct.Struct("<B16sQ")  # flags, source uuid, transaction number


@dataclass(frozen=True)
class BinlogTransaction:
    """One transaction: its GTID as a one-element set, the timestamp of its GTID event (seconds since
    the epoch, the statement's start on the source) and the offset of that event."""

    gtid: GTIDSet
    timestamp: int
    offset: int


def read_transactions(path: Path) -> Iterator[BinlogTransaction]:
    """The transactions of a (closed) binlog file in file order. Raises BinlogFormatError."""
    with path.open("rb") as file:
        if file.read(len(BINLOG_MAGIC)) != BINLOG_MAGIC:
            raise BinlogFormatError(f"{path} is not a binlog file: it does not start with magic FE 62 69 6E")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield from _transactions(path, data)


def _transactions(path: Path, data: mmap.mmap) -> Iterator[BinlogTransaction]:
    offset, size = len(BINLOG_MAGIC), len(data)
    while offset < size:
        if offset + EVENT_HEADER.size > size:
            raise BinlogFormatError(f"binlog {path} at offset {offset}: truncated event header")
        timestamp, type_code, server_id, event_size, _, _ = EVENT_HEADER.unpack_from(data, offset)
        if event_size < EVENT_HEADER.size or offset + event_size > size:
            raise BinlogFormatError(f"binlog {path} at offset {offset}: impossible event size {event_size}")
        body = offset + EVENT_HEADER.size
        if type_code == EventType.MARIADB_GTID:
            seq, domain = _MARIADB_GTID.unpack_from(data, body)
            gtid: GTIDSet = MariaDBGTIDSet((MariaDBGTID(domain, server_id, seq),))
            yield BinlogTransaction(gtid, timestamp, offset)
        elif type_code == EventType.MYSQL_GTID:
            _, sid, gno = _MYSQL_GTID.unpack_from(data, body)
            gtid = MySQL56GTIDSet.from_gtids([(str(uuid.UUID(bytes=sid)), gno)])
            yield BinlogTransaction(gtid, timestamp, offset)
        offset += event_size
