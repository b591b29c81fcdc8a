"""The topology's records without an etcd: shard names to key ranges as Vitess parses them, key paths,
the tablet record vttablet would write, the type during operations, and the start hooks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.config import build_config
from agent.daemon.main import parse_config
from agent.errors import ConfigError, InvalidArgument
from agent.operations import Kind, Operation, OperationRunner
from agent.pb import topodata_pb2
from agent.topo.layout import (
    cell_info_key,
    default_cell_root,
    key_ranges_intersect,
    parse_shard_name,
    shard_replication_key,
    tablet_key,
)
from agent.topo.tablets import alive_key, record_address, tablet_record, type_during

KR = topodata_pb2.KeyRange
BASE = {"tablet_alias": "zone1-102", "init_keyspace": "ks", "init_shard": "-80", "mycnf_file": "/tmp/my.cnf",
        "file_backup_storage_root": "/tmp/backups", "tablet_hostname": "db1.example"}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "shard", "key_range"),
    [
        ("0", "0", None),
        ("-80", "-80", KR(start=b"", end=b"\x80")),
        ("80-", "80-", KR(start=b"\x80", end=b"")),
        ("80-C0", "80-c0", KR(start=b"\x80", end=b"\xc0")),
        ("-", "-", KR()),
    ],
)
def test_shard_names_parse_like_vitess(name: str, shard: str, key_range: KR | None) -> None:
    assert parse_shard_name(name) == (shard, key_range)


@pytest.mark.parametrize("bad", ["c0-80", "8-", "-80-c0", "a/b", "x-y"])
def test_bad_shard_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid shard name"):
        parse_shard_name(bad)


def test_key_ranges_intersect() -> None:
    assert key_ranges_intersect(None, KR(end=b"\x80"))
    assert key_ranges_intersect(KR(), KR(start=b"\x80"))
    assert not key_ranges_intersect(KR(end=b"\x80"), KR(start=b"\x80"))
    assert key_ranges_intersect(KR(end=b"\x80"), KR(start=b"\x40", end=b"\xc0"))


def test_paths_are_vitess_paths() -> None:
    assert cell_info_key("/vitess/global/", "zone1") == b"/vitess/global/cells/zone1/CellInfo"
    assert tablet_key("/vitess/zone1", "zone1-0000000102") == b"/vitess/zone1/tablets/zone1-0000000102/Tablet"
    assert (
        shard_replication_key("/vitess/zone1", "ks", "-80")
        == b"/vitess/zone1/keyspaces/ks/shards/-80/ShardReplication"
    )
    assert default_cell_root("/vitess/global", "zone1") == "/vitess/zone1"
    assert default_cell_root("/", "zone1") == "/zone1"
    # the liveness key is outside `tablets`, which Vitess lists by prefix and decodes as Tablets
    assert not alive_key("/vitess/zone1", "zone1-0000000102").startswith(b"/vitess/zone1/tablets")


def test_the_record_has_what_vttablet_writes() -> None:
    config = build_config({**BASE, "init_db_name_override": "custom"}, environ={})
    socket_only = tablet_record(config, 16002, "1.2.3", 1_700_000_000.5, mysql_host=None, mysql_port=3306)
    assert socket_only.hostname == socket_only.mysql_hostname == "db1.example"
    assert socket_only.mysql_port == 0  # filled from mysqld's @@port once it answers, as vttablet does
    assert (
        dict(socket_only.port_map) == {"grpc": 16002} and record_address(socket_only) == "db1.example:16002"
    )
    assert socket_only.shard == "-80" and socket_only.key_range == KR(end=b"\x80")
    assert socket_only.db_name_override == "custom" and socket_only.type == topodata_pb2.REPLICA
    assert socket_only.tablet_start_time.seconds == 1_700_000_000
    assert not socket_only.HasField("primary_term_start_time")
    tcp = tablet_record(config, 16002, "1.2.3", 0, mysql_host="10.0.0.5", mysql_port=3307)
    assert (tcp.mysql_hostname, tcp.mysql_port) == ("10.0.0.5", 3307)
    primary = build_config({**BASE, "init_tablet_type": "PRIMARY"}, environ={})
    assert tablet_record(primary, 1, "v", 5.0, mysql_host=None, mysql_port=0).HasField(
        "primary_term_start_time"
    )


def test_type_during_operations_follows_vitess() -> None:
    assert type_during(Operation(Kind.RESTORE)) == "RESTORE"
    assert type_during(Operation(Kind.BACKUP, engine="builtin")) == "BACKUP"  # offline: drained
    assert type_during(Operation(Kind.BACKUP, engine="xtrabackup")) is None  # online: keeps serving
    assert type_during(Operation(Kind.BACKUP, engine="binlog", incremental=True)) is None


async def test_start_hooks_run_before_the_work_and_a_failing_hook_fails_nothing() -> None:
    runner = OperationRunner("zone1-0000000102")
    calls: list[str] = []

    def broken(_op: Operation) -> None:
        raise RuntimeError("hook bug")

    runner.on_start(lambda op: calls.append(f"start {op.kind}"))
    runner.on_start(broken)
    runner.on_finish(broken)
    runner.on_finish(lambda op: calls.append(f"finish {op.result}"))

    async def work(_op: Operation) -> None:
        calls.append("work")
        await asyncio.sleep(0)

    op = runner.start(Kind.BACKUP, work)
    assert calls == ["start backup"]  # synchronously, before the work
    async for _ in op.watch():
        pass
    await asyncio.sleep(0)
    assert calls == ["start backup", "work", "finish succeeded"]


def test_topology_passwords_are_refused_on_the_command_line(tmp_path: Path) -> None:
    argv = ["--tablet-path", "zone1-1", "--init_keyspace", "ks", "--init_shard", "0", "--mycnf_file", "/x",
            "--file_backup_storage_root", "/b"]  # fmt: skip
    for flag in (["--topo_etcd_password=pw"], ["--topo-etcd-password", "pw"]):
        with pytest.raises(ConfigError, match="TABLET_AGENT_TOPO_ETCD_PASSWORD") as e:
            parse_config([*argv, *flag])
        assert "pw" not in str(e.value).replace("password", "")
    with pytest.raises(ConfigError, match="--topo_etcd_tls_cert and --topo_etcd_tls_key"):
        parse_config([*argv, "--topo_etcd_tls_cert", str(tmp_path / "c.pem")])
