"""Choose the binlog files an incremental backup must copy: a pure function of the server's state.

The caller rotates the binlog first and passes the closed files only (oldest first), each with the GTID set
that precedes it; see `select_binlogs` for the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.errors import FailedPrecondition, InvalidArgument, NothingToBackup
from agent.mysql.gtid import GTIDSet, Position, merge_gtid_sets


class BinlogInfo(Protocol):
    """A closed binlog file: its name and the GTID set that precedes it (`BinlogHeader` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def previous_gtids(self) -> GTIDSet: ...


@dataclass(frozen=True)
class BinlogSelection:
    """Files to copy, oldest first. `from_position` is the GTID set preceding the first file (at or before
    the requested position); `to_position` is the server's executed set."""

    files: tuple[str, ...]
    from_position: Position
    to_position: Position


def select_binlogs(
    binlogs: Sequence[BinlogInfo], purged: GTIDSet, requested: Position, executed: GTIDSet
) -> BinlogSelection:
    """The closed binlogs (`binlogs`, oldest first) that hold every transaction after `requested`.

    Raises NothingToBackup when `requested` already contains `executed`, FailedPrecondition when `requested`
    is not within `executed`, when the binlogs it needs were purged, when it has GTIDs the binlogs never saw
    (mismatch), or when there is no closed binlog. One pass, one containment check per file.
    """
    _check_flavors(binlogs, purged, requested, executed)
    if not executed.contains(requested.gtids):
        raise FailedPrecondition(
            f"requested position {requested} is not a subset of the server's executed GTIDs {executed}"
        )
    if requested.gtids.contains(executed):
        raise NothingToBackup(
            f"the GTID position has not changed since the requested position {requested}: nothing to back up"
        )
    start = _first_file_to_copy(binlogs, purged, requested)
    if start is None:
        raise FailedPrecondition(
            f"cannot find binary logs that cover requested GTID range {requested}..{executed}"
        )
    return BinlogSelection(
        files=tuple(b.name for b in binlogs[start:]),
        from_position=Position(requested.flavor, binlogs[start].previous_gtids),
        to_position=Position(requested.flavor, executed),
    )


def _first_file_to_copy(binlogs: Sequence[BinlogInfo], purged: GTIDSet, requested: Position) -> int | None:
    """Index of the last file whose preceding set is within `requested` (None if there are no files)."""
    for index, binlog in enumerate(binlogs):
        if requested.gtids.contains(binlog.previous_gtids):
            continue
        if index == 0:
            raise FailedPrecondition(
                f"Required entries have been purged. Oldest binary log {binlog.name} starts at "
                f"{binlog.previous_gtids}, requested position {requested}"
            )
        seen = merge_gtid_sets(requested.flavor, [purged, *(b.previous_gtids for b in binlogs[: index + 1])])
        if not seen.contains(requested.gtids):
            raise FailedPrecondition(
                f"Mismatching GTID entries: requested position {requested} is not contained in binary logs' "
                f"GTID sets {seen}"
            )
        return index - 1
    return len(binlogs) - 1 if binlogs else None


def _check_flavors(
    binlogs: Sequence[BinlogInfo], purged: GTIDSet, requested: Position, executed: GTIDSet
) -> None:
    flavor = executed.flavor
    if requested.flavor is not flavor:
        raise InvalidArgument(
            f"requested position {requested} is a {requested.flavor} position, the server is {flavor}"
        )
    for what, gtids in [("the purged GTIDs", purged), *((b.name, b.previous_gtids) for b in binlogs)]:
        if gtids.flavor is not flavor:
            raise InvalidArgument(f"the GTID set of {what} is {gtids.flavor}, the server is {flavor}")
