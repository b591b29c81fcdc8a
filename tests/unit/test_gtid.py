"""GTID sets and positions: parsing, canonical text, set operations and their laws, for both flavors."""

from __future__ import annotations

from functools import reduce

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import InvalidArgument
from agent.mysql.gtid import (
    Flavor,
    GTIDSet,
    MariaDBGTID,
    MariaDBGTIDSet,
    MySQL56GTIDSet,
    Position,
    detect_flavor,
    empty_gtid_set,
    merge_gtid_sets,
    parse_gtid_set,
    parse_position,
)

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
U3 = "00000000-0000-0000-0000-000000000001"


def my(text: str) -> MySQL56GTIDSet:
    return parse_gtid_set(Flavor.MYSQL56, text)


def maria(text: str) -> MariaDBGTIDSet:
    return parse_gtid_set(Flavor.MARIADB, text)


# ------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("  \n", ""),
        (f"{U1}:5", f"{U1}:5"),
        (f"{U1}:1-5", f"{U1}:1-5"),
        (f"{U1}:5-5", f"{U1}:5"),
        (f"{U1.upper()}:1-5", f"{U1}:1-5"),
        (f"{U1}:7-9:1-5", f"{U1}:1-5:7-9"),
        (f"{U1}:1-5:6-9", f"{U1}:1-9"),
        (f"{U1}:1-5:3-9:20", f"{U1}:1-9:20"),
        (f"{U2}:1-3,{U1}:1-5", f"{U1}:1-5,{U2}:1-3"),
        (f"{U1}:1-3,\n{U1}:4-6", f"{U1}:1-6"),
        (f" {U1} : 1-3 ,\n {U2}:2 ", f"{U1}:1-3,{U2}:2"),
        (f"{U1}:9223372036854775807", f"{U1}:9223372036854775807"),
    ],
)
def test_mysql56_parse_gives_canonical_text(text: str, canonical: str) -> None:
    assert str(my(text)) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "3e11fa47-71ca-11e1-9e33:1-5",
        "3e11fa47-71ca-11e1-9e33-c80aa942956z:1",
        U1,
        f"{U1}:",
        f"{U1}:0",
        f"{U1}:0-5",
        f"{U1}:5-3",
        f"{U1}:1-",
        f"{U1}:-3",
        f"{U1}:1-2-3",
        f"{U1}:a",
        f"{U1}:1,,{U2}:1",
        f"{U1}:9223372036854775808",
        f"{U1}:1-5,",
        f"{U1}:\u0661",  # a non-ASCII digit
        "0-1-5",
    ],
)
def test_mysql56_parse_rejects_bad_text_naming_it(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        my(text)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert repr(text) in str(info.value) or repr(text.strip()) in str(info.value)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("0-1-100", "0-1-100"),
        ("2-1-5,0-1-100", "0-1-100,2-1-5"),
        (" 1-2-3 , 0-1-0 ", "0-1-0,1-2-3"),
        ("4294967295-4294967295-18446744073709551615", "4294967295-4294967295-18446744073709551615"),
    ],
)
def test_mariadb_parse_gives_canonical_text(text: str, canonical: str) -> None:
    assert str(maria(text)) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "0-1",
        "0-1-x",
        "a-b-c",
        "0-1-2-3",
        "0-1-5,",
        "0-1-5,0-2-6",
        "4294967296-1-1",
        "0-1-18446744073709551616",
        "-1-1",
    ],
)
def test_mariadb_parse_rejects_bad_text_naming_it(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        maria(text)
    assert repr(text) in str(info.value)


def test_mariadb_parse_error_names_the_whole_text() -> None:
    with pytest.raises(InvalidArgument, match=r"'0-1-5,0-1-x'"):
        maria("0-1-5,0-1-x")


def test_mariadb_duplicate_domain_error_names_both_gtids() -> None:
    with pytest.raises(InvalidArgument, match="domain 0: 0-1-5 and 0-2-6"):
        maria("0-1-5,0-2-6")


def test_mariadb_from_gtids_last_wins_keeps_the_last_gtid_of_each_domain() -> None:
    gtids = [MariaDBGTID(0, 1, 3), MariaDBGTID(3, 1, 1), MariaDBGTID(0, 7, 2)]
    assert str(MariaDBGTIDSet.from_gtids(gtids, last_wins=True)) == "0-7-2,3-1-1"


# ---------------------------------------------------------------------------------------------- positions


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        (f"MySQL56/{U1}:1-53", None, f"MySQL56/{U1}:1-53"),
        (f"{U1}:1-53", None, f"MySQL56/{U1}:1-53"),
        (f"{U1.upper()}:1-53,{U2}:1", None, f"MySQL56/{U1}:1-53,{U2}:1"),
        ("MariaDB/0-1-100", None, "MariaDB/0-1-100"),
        ("mariadb/0-1-100,1-2-7", None, "MariaDB/0-1-100,1-2-7"),
        ("0-1-100", None, "MariaDB/0-1-100"),
        ("0-1-100", Flavor.MARIADB, "MariaDB/0-1-100"),
        (f"{U1}:1-3", Flavor.MYSQL56, f"MySQL56/{U1}:1-3"),
        ("MariaDB/", None, "MariaDB/"),
        ("MySQL56/", None, "MySQL56/"),
        ("", Flavor.MARIADB, "MariaDB/"),
        ("  ", Flavor.MYSQL56, "MySQL56/"),
        ("MariaDB/0-1-5", Flavor.MYSQL56, "MariaDB/0-1-5"),
    ],
)
def test_parse_position_with_or_without_flavor(text: str, default: Flavor | None, expected: str) -> None:
    position = parse_position(text, default)
    assert str(position) == expected
    assert parse_position(str(position)) == position


@pytest.mark.parametrize(
    ("text", "default", "match"),
    [
        ("", None, "empty GTID position without a flavor"),
        ("FilePos/binlog.000001:4", None, "unknown GTID flavor 'FilePos'"),
        ("hello", None, "cannot tell the flavor of GTID position 'hello'"),
        ("0-1-5", Flavor.MYSQL56, "invalid server uuid '0-1-5'"),
        (f"MariaDB/{U1}:1", None, "invalid MariaDB GTID"),
    ],
)
def test_parse_position_rejects_bad_input(text: str, default: Flavor | None, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        parse_position(text, default)


def test_position_flavor_must_match_its_set() -> None:
    with pytest.raises(InvalidArgument, match="MariaDB position cannot hold a MySQL56"):
        Position(Flavor.MARIADB, my(f"{U1}:1"))


def test_position_contains_and_is_empty() -> None:
    later = parse_position("MariaDB/0-1-10,1-1-3")
    earlier = parse_position("MariaDB/0-1-5")
    assert later.contains(earlier)
    assert not earlier.contains(later)
    assert parse_position("MariaDB/").is_empty()
    assert not earlier.is_empty()


def test_detect_flavor() -> None:
    assert detect_flavor(f"{U1}:1") is Flavor.MYSQL56
    assert detect_flavor(" 0-1-2,1-1-1") is Flavor.MARIADB


def test_flavor_values_are_the_position_prefixes() -> None:
    assert [f.value for f in Flavor] == ["MySQL56", "MariaDB"]


# -------------------------------------------------------------------------------------- MySQL56 operations


@pytest.mark.parametrize(
    ("left", "right", "union", "subtract", "intersect"),
    [
        (f"{U1}:1-5", f"{U1}:3-9", f"{U1}:1-9", f"{U1}:1-2", f"{U1}:3-5"),
        (f"{U1}:1-5", f"{U1}:6-9", f"{U1}:1-9", f"{U1}:1-5", ""),
        (f"{U1}:1-10", f"{U1}:3-4:7", f"{U1}:1-10", f"{U1}:1-2:5-6:8-10", f"{U1}:3-4:7"),
        (f"{U1}:1-5", f"{U2}:1-5", f"{U1}:1-5,{U2}:1-5", f"{U1}:1-5", ""),
        (f"{U1}:1-5,{U2}:1-3", f"{U2}:1-3", f"{U1}:1-5,{U2}:1-3", f"{U1}:1-5", f"{U2}:1-3"),
        (f"{U1}:2-3:8-9", f"{U1}:1-10", f"{U1}:1-10", "", f"{U1}:2-3:8-9"),
        ("", f"{U1}:1", f"{U1}:1", "", ""),
    ],
)
def test_mysql56_set_operations(left: str, right: str, union: str, subtract: str, intersect: str) -> None:
    a, b = my(left), my(right)
    assert str(a.union(b)) == union
    assert str(a.subtract(b)) == subtract
    assert str(a.intersect(b)) == intersect


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        (f"{U1}:1-10", f"{U1}:3-5", True),
        (f"{U1}:1-10", f"{U1}:1-10", True),
        (f"{U1}:1-10", "", True),
        ("", "", True),
        ("", f"{U1}:1", False),
        (f"{U1}:1-10", f"{U1}:5-11", False),
        (f"{U1}:1-4:6-10", f"{U1}:3-7", False),
        (f"{U1}:1-4:6-10", f"{U1}:2:7-8", True),
        (f"{U1}:1-10", f"{U1}:1-5,{U2}:1", False),
        (f"{U1}:1-10,{U2}:1-3", f"{U2}:2", True),
    ],
)
def test_mysql56_contains(outer: str, inner: str, expected: bool) -> None:
    assert my(outer).contains(my(inner)) is expected


def test_mysql56_contains_gtid() -> None:
    gtids = my(f"{U1}:1-4:6-10")
    assert gtids.contains_gtid(U1.upper(), 4)
    assert not gtids.contains_gtid(U1, 5)
    assert not gtids.contains_gtid(U2, 1)


def test_mysql56_builders_agree_with_parse() -> None:
    assert MySQL56GTIDSet.from_intervals({U1.upper(): [(7, 9), (1, 5)], U2: []}) == my(f"{U1}:1-5:7-9")
    assert MySQL56GTIDSet.from_gtids([(U1, 3), (U1, 1), (U1, 2), (U2, 9)]) == my(f"{U1}:1-3,{U2}:9")


# -------------------------------------------------------------------------------------- MariaDB operations


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        ("0-1-10", "0-1-5", True),
        ("0-1-10", "0-2-10", True),
        ("0-1-10", "0-1-11", False),
        ("0-1-10", "1-1-1", False),
        ("0-1-10,1-1-1", "1-2-1", True),
        ("0-1-10", "", True),
        ("", "0-1-0", False),
    ],
)
def test_mariadb_contains_compares_seq_per_domain(outer: str, inner: str, expected: bool) -> None:
    assert maria(outer).contains(maria(inner)) is expected


@pytest.mark.parametrize(
    ("left", "right", "union", "subtract", "intersect"),
    [
        ("0-1-10", "0-2-12", "0-2-12", "", "0-1-10"),
        ("0-1-10", "0-2-5", "0-1-10", "0-1-10", "0-2-5"),
        ("0-1-10,1-1-5", "1-3-7,2-1-1", "0-1-10,1-3-7,2-1-1", "0-1-10", "1-1-5"),
        ("0-1-10", "0-2-10", "0-2-10", "", "0-1-10"),
        ("0-1-10", "", "0-1-10", "0-1-10", ""),
    ],
)
def test_mariadb_set_operations(left: str, right: str, union: str, subtract: str, intersect: str) -> None:
    a, b = maria(left), maria(right)
    assert str(a.union(b)) == union
    assert str(a.subtract(b)) == subtract
    assert str(a.intersect(b)) == intersect


def test_mariadb_contains_gtid() -> None:
    position = maria("0-1-10,1-1-5")
    assert position.contains_gtid(MariaDBGTID(0, 9, 10))
    assert not position.contains_gtid(MariaDBGTID(0, 1, 11))
    assert not position.contains_gtid(MariaDBGTID(2, 1, 1))


# ------------------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize(("a", "b"), [(my(f"{U1}:1"), maria("0-1-1")), (maria("0-1-1"), my(f"{U1}:1"))])
def test_mixing_flavors_is_rejected(a: GTIDSet, b: GTIDSet) -> None:
    for operation in (a.union, a.subtract, a.intersect, a.contains):
        with pytest.raises(InvalidArgument, match="cannot combine"):
            operation(b)
    with pytest.raises(InvalidArgument, match="cannot combine"):
        merge_gtid_sets(a.flavor, [a, b])


@pytest.mark.parametrize("flavor", list(Flavor))
def test_empty_set(flavor: Flavor) -> None:
    empty = empty_gtid_set(flavor)
    assert empty.is_empty()
    assert str(empty) == ""
    assert empty == parse_gtid_set(flavor, "")
    assert empty.flavor is flavor


def test_sets_are_hashable_values() -> None:
    assert len({my(f"{U1}:1-3"), my(f"{U1}:1-2:3"), maria("0-1-1"), maria("0-1-1")}) == 2
    mysql_set: GTIDSet = my(f"{U1}:1")
    assert mysql_set != maria("0-1-1")
    with pytest.raises(AttributeError):
        my(f"{U1}:1").entries = ()  # type: ignore[misc]


# ------------------------------------------------------------------------------------------- properties

UUIDS = (U1, U2, U3)


def mysql56_sets() -> st.SearchStrategy[MySQL56GTIDSet]:
    interval = st.tuples(st.integers(1, 60), st.integers(0, 8)).map(lambda p: (p[0], p[0] + p[1]))
    return st.dictionaries(st.sampled_from(UUIDS), st.lists(interval, max_size=4), max_size=3).map(
        MySQL56GTIDSet.from_intervals
    )


def mariadb_sets() -> st.SearchStrategy[MariaDBGTIDSet]:
    gtid = st.builds(MariaDBGTID, st.integers(0, 3), st.integers(1, 3), st.integers(0, 20))
    return st.lists(gtid, max_size=4).map(lambda gs: MariaDBGTIDSet.from_gtids(gs, last_wins=True))


def sets(flavor: Flavor) -> st.SearchStrategy[GTIDSet]:
    strategy: st.SearchStrategy[GTIDSet] = mysql56_sets() if flavor is Flavor.MYSQL56 else mariadb_sets()
    return strategy


FLAVORS = pytest.mark.parametrize("flavor", list(Flavor))


@FLAVORS
@given(data=st.data())
def test_union_is_commutative_associative_idempotent(flavor: Flavor, data: st.DataObject) -> None:
    a, b, c = (data.draw(sets(flavor)) for _ in range(3))
    assert a.union(b) == b.union(a)
    assert a.union(b).union(c) == a.union(b.union(c))
    assert a.union(a) == a


@FLAVORS
@given(data=st.data())
def test_union_contains_both_operands(flavor: Flavor, data: st.DataObject) -> None:
    a, b = data.draw(sets(flavor)), data.draw(sets(flavor))
    assert a.union(b).contains(a)
    assert a.union(b).contains(b)


@FLAVORS
@given(data=st.data())
def test_text_round_trips(flavor: Flavor, data: st.DataObject) -> None:
    a = data.draw(sets(flavor))
    assert parse_gtid_set(flavor, str(a)) == a
    position = Position(flavor, a)
    assert parse_position(str(position)) == position
    if not a.is_empty():
        assert parse_position(str(a)) == position


@FLAVORS
@given(data=st.data())
def test_contains_is_reflexive_and_transitive(flavor: Flavor, data: st.DataObject) -> None:
    c, x, y = (data.draw(sets(flavor)) for _ in range(3))
    b = c.union(x)
    a = b.union(y)
    assert a.contains(a)
    assert a.contains(b)
    assert b.contains(c)
    assert a.contains(c)
    if x.contains(y) and y.contains(c):
        assert x.contains(c)


@FLAVORS
@given(data=st.data())
def test_subtract_is_empty_exactly_when_contained(flavor: Flavor, data: st.DataObject) -> None:
    a, b = data.draw(sets(flavor)), data.draw(sets(flavor))
    assert a.subtract(b).is_empty() == b.contains(a)
    assert a.contains(a.subtract(b))
    assert a.contains(a.intersect(b))


@FLAVORS
@given(data=st.data())
def test_merge_equals_folded_union(flavor: Flavor, data: st.DataObject) -> None:
    many = data.draw(st.lists(sets(flavor), max_size=6))
    assert merge_gtid_sets(flavor, many) == reduce(lambda x, y: x.union(y), many, empty_gtid_set(flavor))


@given(mysql56_sets(), mysql56_sets())
def test_mysql56_difference_laws(a: MySQL56GTIDSet, b: MySQL56GTIDSet) -> None:
    assert a.subtract(b).intersect(b).is_empty()
    assert a.subtract(b).union(a.intersect(b)) == a
    assert a.intersect(b) == b.intersect(a)
    assert a.contains(b) == (a.union(b) == a)


@given(mysql56_sets(), st.sampled_from(UUIDS), st.integers(1, 70))
def test_mysql56_contains_gtid_matches_set_containment(a: MySQL56GTIDSet, uuid: str, seq: int) -> None:
    assert a.contains_gtid(uuid, seq) == a.contains(MySQL56GTIDSet.from_gtids([(uuid, seq)]))


@given(mariadb_sets(), mariadb_sets())
def test_mariadb_subtract_keeps_domains_where_left_is_ahead(a: MariaDBGTIDSet, b: MariaDBGTIDSet) -> None:
    theirs = b.by_domain()
    for gtid in a.subtract(b):
        assert gtid.domain not in theirs or gtid.seq > theirs[gtid.domain].seq
    assert a.contains(b) == a.union(b).subtract(a).is_empty()
