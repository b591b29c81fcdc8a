"""GTID sets and replication positions for the MySQL56 and MariaDB flavors (pure, immutable values).

Two flavors, one contract (`GTIDSet`):

- MySQL56: a set of transactions, ``uuid:1-5:7-9,uuid2:1-3``. Set operations are exact.
- MariaDB: a GTID *position*, ``domain-server-seq[,...]`` with at most one GTID per replication domain,
  meaning "every transaction of that domain up to seq has been applied". The set operations work per domain
  on the sequence numbers (the server id is carried along but never decides containment):

  - ``a.contains(b)``: every domain of b is in a with a seq >= b's seq.
  - ``a.union(b)``: per domain the entry with the higher seq (ties: the higher server id, so that union is
    commutative).
  - ``a.subtract(b)``: the entries of a whose domain is missing in b or whose seq is greater than b's: the
    domains in which a is ahead of b. It is not an exact set difference (a position cannot express
    "from seq x to seq y"); ``a.subtract(b).is_empty()`` iff ``b.contains(a)``.
  - ``a.intersect(b)``: the domains present in both, each with the lower seq.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Self, TypeVar, overload

from agent.errors import InvalidArgument

MAX_SEQ = (1 << 63) - 1
"""Largest MySQL transaction number (MySQL stores them as signed 64-bit integers)."""
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MARIADB_GTID_RE = re.compile(r"(\d+)-(\d+)-(\d+)", re.ASCII)

Interval = tuple[int, int]
"""An inclusive range of MySQL transaction numbers, ``1 <= start <= end``."""


class Flavor(enum.StrEnum):
    """The GTID dialect of a server; its value is the prefix of a position string."""

    MYSQL56 = "MySQL56"
    MARIADB = "MariaDB"


class GTIDSet(abc.ABC):
    """An immutable set of GTIDs of one flavor. Equal sets have equal canonical strings."""

    flavor: Flavor

    @abc.abstractmethod
    def union(self, other: GTIDSet) -> Self:
        """Everything in self or other."""

    @abc.abstractmethod
    def subtract(self, other: GTIDSet) -> Self:
        """What self has beyond other (see the module doc for the MariaDB meaning)."""

    @abc.abstractmethod
    def intersect(self, other: GTIDSet) -> Self:
        """What self and other have in common."""

    @abc.abstractmethod
    def contains(self, other: GTIDSet) -> bool:
        """True if self is a superset of, or equal to, other."""

    @abc.abstractmethod
    def is_empty(self) -> bool:
        """True if the set holds no GTID."""

    @abc.abstractmethod
    def __str__(self) -> str:
        """The canonical text form (without flavor prefix)."""

    def _same_flavor(self, other: GTIDSet) -> Self:
        if not isinstance(other, type(self)):
            raise InvalidArgument(
                f"cannot combine a {self.flavor} GTID set ({self}) with a {other.flavor} one ({other})"
            )
        return other


# ---------------------------------------------------------------------------------------------- MySQL56


def _merge_intervals(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    """Sort inclusive intervals and coalesce overlapping or adjacent ones."""
    merged: list[list[int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return tuple((s, e) for s, e in merged)


def _intervals_contain(outer: tuple[Interval, ...], inner: tuple[Interval, ...]) -> bool:
    """True if every interval of `inner` lies within one interval of `outer` (both canonical)."""
    i = 0
    for start, end in inner:
        while i < len(outer) and outer[i][1] < start:
            i += 1
        if i == len(outer) or outer[i][0] > start or outer[i][1] < end:
            return False
    return True


def _intervals_subtract(left: tuple[Interval, ...], right: tuple[Interval, ...]) -> tuple[Interval, ...]:
    """The numbers of `left` that are not in `right` (both canonical)."""
    out: list[Interval] = []
    j = 0
    for start, end in left:
        cur = start
        while j < len(right) and right[j][1] < cur:
            j += 1
        k = j
        while k < len(right) and right[k][0] <= end and cur <= end:
            if right[k][0] > cur:
                out.append((cur, right[k][0] - 1))
            cur = max(cur, right[k][1] + 1)
            k += 1
        if cur <= end:
            out.append((cur, end))
    return tuple(out)


def _intervals_intersect(left: tuple[Interval, ...], right: tuple[Interval, ...]) -> tuple[Interval, ...]:
    """The numbers in both `left` and `right` (both canonical)."""
    out: list[Interval] = []
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i][0], right[j][0])
        end = min(left[i][1], right[j][1])
        if start <= end:
            out.append((start, end))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _format_intervals(intervals: tuple[Interval, ...]) -> str:
    return ":".join(str(s) if s == e else f"{s}-{e}" for s, e in intervals)


@dataclass(frozen=True)
class MySQL56GTIDSet(GTIDSet):
    """A MySQL GTID set: per server uuid, sorted disjoint inclusive intervals.

    Build one with `parse_gtid_set`, `from_intervals` or `from_gtids`; the constructor expects canonical
    entries (lower-case uuids sorted, intervals merged and sorted, no empty interval list).
    """

    entries: tuple[tuple[str, tuple[Interval, ...]], ...] = ()
    flavor = Flavor.MYSQL56

    @classmethod
    def from_intervals(cls, intervals: Mapping[str, Iterable[Interval]]) -> Self:
        """Canonical set from ``{uuid: [(start, end), ...]}`` with inclusive intervals."""
        return cls._from_lists({uuid.lower(): list(ivs) for uuid, ivs in intervals.items()})

    @classmethod
    def from_gtids(cls, gtids: Iterable[tuple[str, int]]) -> Self:
        """Canonical set from single ``(uuid, transaction number)`` pairs."""
        lists: dict[str, list[Interval]] = {}
        for uuid, seq in gtids:
            lists.setdefault(uuid.lower(), []).append((seq, seq))
        return cls._from_lists(lists)

    @classmethod
    def merge(cls, sets: Iterable[MySQL56GTIDSet]) -> Self:
        """The union of many sets in one pass (cheaper than folding `union`)."""
        lists: dict[str, list[Interval]] = {}
        for gtid_set in sets:
            for uuid, intervals in gtid_set.entries:
                lists.setdefault(uuid, []).extend(intervals)
        return cls._from_lists(lists)

    @classmethod
    def _from_lists(cls, lists: Mapping[str, list[Interval]]) -> Self:
        entries = ((uuid, _merge_intervals(ivs)) for uuid, ivs in sorted(lists.items()))
        return cls(tuple((uuid, ivs) for uuid, ivs in entries if ivs))

    def _map(self) -> dict[str, tuple[Interval, ...]]:
        return dict(self.entries)

    def union(self, other: GTIDSet) -> Self:
        return type(self).merge((self, self._same_flavor(other)))

    def subtract(self, other: GTIDSet) -> Self:
        theirs = self._same_flavor(other)._map()
        return type(self)._from_lists(
            {uuid: list(_intervals_subtract(ivs, theirs.get(uuid, ()))) for uuid, ivs in self.entries}
        )

    def intersect(self, other: GTIDSet) -> Self:
        theirs = self._same_flavor(other)._map()
        return type(self)._from_lists(
            {uuid: list(_intervals_intersect(ivs, theirs.get(uuid, ()))) for uuid, ivs in self.entries}
        )

    def contains(self, other: GTIDSet) -> bool:
        ours = self._map()
        return all(
            _intervals_contain(ours.get(uuid, ()), ivs) for uuid, ivs in self._same_flavor(other).entries
        )

    def contains_gtid(self, uuid: str, seq: int) -> bool:
        """True if transaction `uuid:seq` is in the set."""
        return _intervals_contain(self._map().get(uuid.lower(), ()), ((seq, seq),))

    def is_empty(self) -> bool:
        return not self.entries

    def __iter__(self) -> Iterator[tuple[str, tuple[Interval, ...]]]:
        return iter(self.entries)

    def __str__(self) -> str:
        return ",".join(f"{uuid}:{_format_intervals(ivs)}" for uuid, ivs in self.entries)


def _parse_seq(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdecimal()):
        raise InvalidArgument(f"invalid transaction number {text!r} in MySQL GTID set {whole!r}")
    value = int(text)
    if not 1 <= value <= MAX_SEQ:
        raise InvalidArgument(
            f"transaction number {text} out of range 1..{MAX_SEQ} in MySQL GTID set {whole!r}"
        )
    return value


def _parse_interval(text: str, whole: str) -> Interval:
    start_text, dash, end_text = text.strip().partition("-")
    start = _parse_seq(start_text, whole)
    end = _parse_seq(end_text, whole) if dash else start
    if end < start:
        raise InvalidArgument(f"reversed interval {text!r} in MySQL GTID set {whole!r}")
    return start, end


def _parse_mysql56(text: str) -> MySQL56GTIDSet:
    lists: dict[str, list[Interval]] = {}
    if not text.strip():
        return MySQL56GTIDSet()
    for part in text.split(","):
        uuid, *intervals = (field.strip() for field in part.split(":"))
        uuid = uuid.lower()
        if not _UUID_RE.fullmatch(uuid):
            raise InvalidArgument(f"invalid server uuid {uuid!r} in MySQL GTID set {text!r}")
        if not intervals:
            raise InvalidArgument(f"missing transaction interval after {uuid!r} in MySQL GTID set {text!r}")
        lists.setdefault(uuid, []).extend(_parse_interval(iv, text) for iv in intervals)
    return MySQL56GTIDSet._from_lists(lists)


# ---------------------------------------------------------------------------------------------- MariaDB


@dataclass(frozen=True, order=True)
class MariaDBGTID:
    """One MariaDB GTID ``domain-server-seq``."""

    domain: int
    server: int
    seq: int

    def __str__(self) -> str:
        return f"{self.domain}-{self.server}-{self.seq}"


@dataclass(frozen=True)
class MariaDBGTIDSet(GTIDSet):
    """A MariaDB GTID position: at most one GTID per domain, sorted by domain.

    Build one with `parse_gtid_set` or `from_gtids`; the constructor expects canonical entries.
    """

    gtids: tuple[MariaDBGTID, ...] = ()
    flavor = Flavor.MARIADB

    @classmethod
    def from_gtids(cls, gtids: Iterable[MariaDBGTID], *, last_wins: bool = False) -> Self:
        """Position from GTIDs; a repeated domain is an error unless `last_wins` (then the last one counts,
        as in a binlog's Gtid_list event, which lists the latest GTID of each domain last)."""
        by_domain: dict[int, MariaDBGTID] = {}
        for gtid in gtids:
            if gtid.domain in by_domain and not last_wins:
                raise InvalidArgument(
                    f"MariaDB GTID position has two GTIDs for domain {gtid.domain}: "
                    f"{by_domain[gtid.domain]} and {gtid}"
                )
            by_domain[gtid.domain] = gtid
        return cls(tuple(by_domain[d] for d in sorted(by_domain)))

    @classmethod
    def merge(cls, sets: Iterable[MariaDBGTIDSet]) -> Self:
        """The union of many positions in one pass."""
        best: dict[int, MariaDBGTID] = {}
        for gtid_set in sets:
            for gtid in gtid_set.gtids:
                known = best.get(gtid.domain)
                if known is None or (gtid.seq, gtid.server) > (known.seq, known.server):
                    best[gtid.domain] = gtid
        return cls(tuple(best[d] for d in sorted(best)))

    def by_domain(self) -> dict[int, MariaDBGTID]:
        """The GTIDs keyed by domain."""
        return {gtid.domain: gtid for gtid in self.gtids}

    def union(self, other: GTIDSet) -> Self:
        return type(self).merge((self, self._same_flavor(other)))

    def subtract(self, other: GTIDSet) -> Self:
        theirs = self._same_flavor(other).by_domain()
        return type(self)(
            tuple(g for g in self.gtids if g.domain not in theirs or g.seq > theirs[g.domain].seq)
        )

    def intersect(self, other: GTIDSet) -> Self:
        theirs = self._same_flavor(other).by_domain()
        return type(self)(
            tuple(
                min(g, theirs[g.domain], key=lambda x: (x.seq, x.server))
                for g in self.gtids
                if g.domain in theirs
            )
        )

    def contains(self, other: GTIDSet) -> bool:
        ours = self.by_domain()
        for gtid in self._same_flavor(other).gtids:
            mine = ours.get(gtid.domain)
            if mine is None or mine.seq < gtid.seq:
                return False
        return True

    def contains_gtid(self, gtid: MariaDBGTID) -> bool:
        """True if `gtid` is at or before this position in its domain."""
        mine = self.by_domain().get(gtid.domain)
        return mine is not None and mine.seq >= gtid.seq

    def is_empty(self) -> bool:
        return not self.gtids

    def __iter__(self) -> Iterator[MariaDBGTID]:
        return iter(self.gtids)

    def __str__(self) -> str:
        return ",".join(str(g) for g in self.gtids)


def parse_mariadb_gtid(text: str, whole: str | None = None) -> MariaDBGTID:
    """Parse one ``domain-server-seq``; `whole` is the text to name in errors."""
    match = _MARIADB_GTID_RE.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument(f"invalid MariaDB GTID {text.strip()!r} in {whole or text!r}")
    domain, server, seq = (int(v) for v in match.groups())
    if domain > _U32 or server > _U32 or seq > _U64:
        raise InvalidArgument(f"MariaDB GTID {text.strip()!r} out of range in {whole or text!r}")
    return MariaDBGTID(domain, server, seq)


def _parse_mariadb(text: str) -> MariaDBGTIDSet:
    if not text.strip():
        return MariaDBGTIDSet()
    gtids = [parse_mariadb_gtid(part, text) for part in text.split(",")]
    try:
        return MariaDBGTIDSet.from_gtids(gtids)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{exc}, in {text!r}") from None


# ---------------------------------------------------------------------------------------------- parsing


@overload
def parse_gtid_set(flavor: Literal[Flavor.MYSQL56], text: str) -> MySQL56GTIDSet: ...
@overload
def parse_gtid_set(flavor: Literal[Flavor.MARIADB], text: str) -> MariaDBGTIDSet: ...
@overload
def parse_gtid_set(flavor: Flavor, text: str) -> MySQL56GTIDSet | MariaDBGTIDSet: ...
def parse_gtid_set(flavor: Flavor, text: str) -> MySQL56GTIDSet | MariaDBGTIDSet:
    """Parse a GTID set (no flavor prefix) into its canonical form; raises InvalidArgument naming the text."""
    if flavor is Flavor.MYSQL56:
        return _parse_mysql56(text)
    return _parse_mariadb(text)


def empty_gtid_set(flavor: Flavor) -> MySQL56GTIDSet | MariaDBGTIDSet:
    """The empty set of a flavor."""
    return MySQL56GTIDSet() if flavor is Flavor.MYSQL56 else MariaDBGTIDSet()


def merge_gtid_sets(flavor: Flavor, sets: Iterable[GTIDSet]) -> GTIDSet:
    """The union of any number of sets of one flavor, computed in one pass."""
    if flavor is Flavor.MYSQL56:
        return MySQL56GTIDSet.merge(_checked(MySQL56GTIDSet, sets))
    return MariaDBGTIDSet.merge(_checked(MariaDBGTIDSet, sets))


_SetT = TypeVar("_SetT", bound=GTIDSet)


def _checked(kind: type[_SetT], sets: Iterable[GTIDSet]) -> Iterator[_SetT]:
    for gtid_set in sets:
        if not isinstance(gtid_set, kind):
            raise InvalidArgument(f"cannot combine {kind.flavor} GTID sets with a {gtid_set.flavor} one")
        yield gtid_set


def detect_flavor(text: str) -> Flavor:
    """Guess the flavor of an unprefixed, non-empty GTID set: uuid form vs ``domain-server-seq`` form."""
    first = text.strip().split(",", 1)[0].strip()
    if ":" in first:
        return Flavor.MYSQL56
    if _MARIADB_GTID_RE.fullmatch(first):
        return Flavor.MARIADB
    raise InvalidArgument(
        f"cannot tell the flavor of GTID position {text!r}: expected 'MySQL56/<uuid>:<from>-<to>' "
        "or 'MariaDB/<domain>-<server>-<seq>'"
    )


@dataclass(frozen=True)
class Position:
    """A replication position: a flavor and a GTID set; text form ``<flavor>/<gtids>``."""

    flavor: Flavor
    gtids: GTIDSet

    def __post_init__(self) -> None:
        if self.gtids.flavor is not self.flavor:
            raise InvalidArgument(f"a {self.flavor} position cannot hold a {self.gtids.flavor} GTID set")

    def is_empty(self) -> bool:
        """True if the position holds no GTID."""
        return self.gtids.is_empty()

    def contains(self, other: Position) -> bool:
        """True if this position is at or after `other` (see `GTIDSet.contains`)."""
        return self.gtids.contains(other.gtids)

    def __str__(self) -> str:
        return f"{self.flavor}/{self.gtids}"


def parse_position(text: str, default_flavor: Flavor | None = None) -> Position:
    """Parse ``<flavor>/<gtids>`` or bare ``<gtids>`` (flavor: `default_flavor`, else detected).

    An empty set is written ``MariaDB/`` or ``MySQL56/`` (or ``""`` when `default_flavor` is given).
    """
    prefix, slash, rest = text.strip().partition("/")
    if slash:
        flavor = _flavor_from_prefix(prefix, text)
    else:
        rest = prefix
        if default_flavor is not None:
            flavor = default_flavor
        elif not rest:
            raise InvalidArgument(
                "empty GTID position without a flavor: write 'MySQL56/' or 'MariaDB/' for an empty position"
            )
        else:
            flavor = detect_flavor(rest)
    return Position(flavor, parse_gtid_set(flavor, rest))


def _flavor_from_prefix(prefix: str, text: str) -> Flavor:
    for flavor in Flavor:
        if prefix.strip().lower() == flavor.value.lower():
            return flavor
    names = ", ".join(f.value for f in Flavor)
    raise InvalidArgument(f"unknown GTID flavor {prefix!r} in position {text!r}: expected one of {names}")
