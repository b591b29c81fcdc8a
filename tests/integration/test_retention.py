"""Retention through the real agent against real MariaDB, on directory storage and on S3 (moto): four full
backups with incrementals between them under `--backup_retention_full 2` leave exactly what the policy
keeps, every second of the kept window is still restorable (dry runs) and sampled points really restore;
the metrics come from storage right after a restart; one expirer per shard through etcd."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from agent.daemon.convert import time_from_pb, time_to_pb
from agent.pb import agentdata_pb2
from agent.topo.etcd import EtcdClient
from agent.topo.locks import shard_lock_key
from tests.agent_process import REPO, AgentProcess, free_port
from tests.conftest import SandboxFactory
from tests.etcdserver import MISSING_ETCD, EtcdServer, find_etcd
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, restore, rpc_error
from tests.s3server import CREDENTIALS, S3Server
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration
KEEP_TWO = ["--backup_retention_full", "2"]


@dataclass(frozen=True)
class Cycle:
    """One full backup, then writes and an incremental: a time between the writes and the position after."""

    full: str
    incremental: str
    at: datetime  # between two write batches
    rows_at: int  # rows in test.t at `at`
    position: str  # after the second batch, in the incremental
    rows: int


def listing(agent: AgentProcess) -> list[agentdata_pb2.BackupInfo]:
    with agent.channel() as ch:
        req = agentdata_pb2.ListBackupsRequest(include_incomplete=True)
        return list(agent.stub(ch).ListBackups(req, timeout=30).backups)


def rows(sb: Sandbox) -> int:
    return int(sb.value("SELECT COUNT(*) FROM test.t"))


def history(primary: Sandbox, replica: Sandbox, agent: AgentProcess, cycles: int = 4) -> list[Cycle]:
    out = []
    total = 0
    for _ in range(cycles):
        replica.wait_for_gtid(primary.write_rows(5))
        total += 5
        backup(agent)  # expiry runs after it
        full = listing(agent)[-1].name
        replica.wait_for_gtid(primary.write_rows(3))
        total += 3
        time.sleep(1.1)
        at, rows_at = datetime.now(UTC), total
        time.sleep(1.1)
        position = primary.write_rows(4)
        total += 4
        replica.wait_for_gtid(position)
        backup(agent, incremental_from_pos="auto")
        out.append(Cycle(full, listing(agent)[-1].name, at, rows_at, position, total))
    return out


def ctl(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "agent.ctl.main", "--server", agent.address, *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def scrape(port: int, wanted: str, timeout: float = 20.0) -> dict[str, float]:
    """The metrics (name{labels} -> value) once a line starting with `wanted` is there."""
    deadline = time.monotonic() + timeout
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        values = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        if any(k.startswith(wanted) for k in values) or time.monotonic() > deadline:
            return values
        time.sleep(0.2)


@pytest.fixture(params=["file", "s3"])
def storage_flags(request: pytest.FixtureRequest) -> Iterator[tuple[list[str], dict[str, str]]]:
    if request.param == "file":
        yield [], {}
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    flags = [
        "--backup_storage_implementation", "s3", "--s3_backup_storage_bucket", bucket,
        "--s3_backup_storage_root", "prod", "--s3_backup_aws_endpoint", server.endpoint,
        "--s3_backup_force_path_style",
    ]  # fmt: skip
    yield flags, dict(CREDENTIALS)


def test_keep_two_full_backups_and_restore_every_second_of_the_window(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_flags: tuple[list[str], dict[str, str]],
) -> None:
    flags, env = storage_flags
    metrics_port = free_port()
    agent = agent_factory(replica, extra=[*flags, *KEEP_TWO, "--metrics_port", str(metrics_port)], env=env)
    cycles = history(primary, replica, agent)

    # exactly what the policy keeps: the two newest full backups, the incrementals from the older on
    kept = listing(agent)
    expected = [cycles[2].full, cycles[2].incremental, cycles[3].full, cycles[3].incremental]
    assert [b.name for b in kept] == expected
    names = {b.name for b in kept}
    assert all(b.from_backup in names for b in kept if b.incremental), "a kept incremental lost its base"
    log = agent.log()
    for c in cycles[:2]:
        assert (
            f"removed full backup ks/0/{c.full}" in log
            and f"removed incremental backup ks/0/{c.incremental}" in log
        )
    values = scrape(metrics_port, "tablet_agent_backups_removed_total")
    assert values['tablet_agent_backups_removed_total{type="full"}'] == 2.0
    assert values['tablet_agent_backups_removed_total{type="incremental"}'] == 2.0
    # nothing more to remove; the plan says why each stays
    dry = ctl(agent, "expire", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "0 backup(s) would be removed, 4 kept" in dry.stdout, dry.stdout
    assert f"point-in-time restores start from full backup {cycles[2].full}" in dry.stdout
    assert "one of the newest 2 full backups" in dry.stdout

    # every second of the kept window restores (dry runs choose the path and read every object back)
    target = sandbox_factory()
    target.make_replica_of(primary, start=False)
    restorer = agent_factory(target, alias="zone1-0000000103", extra=flags, env=env)
    info = {b.name: b for b in kept}
    seconds = 0
    for c in cycles[2:]:
        first = time_from_pb(info[c.full].finished_time) + timedelta(seconds=1)
        last = time_from_pb(info[c.incremental].backup_time)
        t = first
        while t <= last:
            events = restore(restorer, restore_to_timestamp=time_to_pb(t), dry_run=True)
            assert any(c.full in e and c.incremental in e for e in events), (t, events)
            t += timedelta(seconds=1)
            seconds += 1
    assert seconds >= 4
    # what was removed is no longer reachable
    err = rpc_error(restore, restorer, restore_to_timestamp=time_to_pb(cycles[1].at), dry_run=True)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "no full backup found before" in (
        err.details() or ""
    )
    # real restores through the kept chains
    samples = [(c.at, c.rows_at) for c in cycles[2:]] if not flags else [(cycles[3].at, cycles[3].rows_at)]
    for at, count in samples:
        restore(restorer, restore_to_timestamp=time_to_pb(at))
        assert rows(target) == count
    restore(restorer, restore_to_pos=cycles[3].position)
    assert rows(target) == cycles[3].rows

    # after a restart, the newest backups are in /metrics without a new backup
    agent.stop()
    port = free_port()
    again = agent_factory(replica, extra=[*flags, *KEEP_TWO, "--metrics_port", str(port)], env=env)
    values = scrape(port, "tablet_agent_newest_backup_timestamp_seconds")
    assert (
        values['tablet_agent_newest_backup_timestamp_seconds{type="full"}']
        == time_from_pb(info[cycles[3].full].backup_time).timestamp()
    )
    assert (
        values['tablet_agent_newest_backup_timestamp_seconds{type="incremental"}']
        == time_from_pb(info[cycles[3].incremental].backup_time).timestamp()
    )
    assert values['tablet_agent_newest_backup_size_bytes{type="full"}'] > 0
    point = values["tablet_agent_recovery_point_timestamp_seconds"]
    assert cycles[3].at.timestamp() - 5 < point <= time.time()
    assert 0 <= values["tablet_agent_binlog_archive_lag_seconds"] < 600
    assert values["tablet_agent_binlog_archive_interval_seconds"] == 0.0
    assert 'tablet_agent_health_problem{problem="last_backup_failed"}' in scrape(
        port, "tablet_agent_health_problem"
    )
    assert again.log()


def test_expire_without_a_policy_and_dry_run_restores_are_not_counted(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory
) -> None:
    port = free_port()
    agent = agent_factory(replica, extra=["--metrics_port", str(port)])
    replica.wait_for_gtid(primary.write_rows(5))
    backup(agent)
    res = ctl(agent, "expire")
    assert res.returncode == 1 and "--backup_retention_full" in res.stderr, res.stderr
    restore(agent, dry_run=True)
    values = scrape(port, "tablet_agent_operations_total")
    assert not any(k.startswith("tablet_agent_operations_total{") and 'kind="restore"' in k for k in values)
    assert values['tablet_agent_operations_total{engine="builtin",kind="backup",result="succeeded"}'] == 1.0


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    if find_etcd() is None:
        pytest.skip(MISSING_ETCD)
    server = EtcdServer(tmp_path / "etcd")
    yield server
    server.close()


def test_one_expirer_per_shard_through_etcd(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, etcd: EtcdServer
) -> None:
    root = "/vitess/global"
    topo = ["--topo_implementation", "etcd2", "--topo_global_server_address", etcd.address,
            "--topo_global_root", root]  # fmt: skip
    agent = agent_factory(replica, extra=[*topo, *KEEP_TWO])
    key = shard_lock_key(root, "ks", "0", "expire")
    holder_ttl = 4

    async def hold() -> None:
        async with EtcdClient([etcd.address]) as c:
            lease = await c.grant(holder_ttl)  # never kept alive: another tablet's expirer that crashed
            assert (
                await c.create(key, b'{"holder": "other:1", "what": "expire", "since": "now"}', lease) is None
            )

    async def held() -> bool:
        async with EtcdClient([etcd.address]) as c:
            return await c.get(key) is not None

    asyncio.run(hold())
    begin = time.monotonic()
    with agent.channel() as ch:
        agent.stub(ch).ExpireBackups(agentdata_pb2.ExpireBackupsRequest(), timeout=60)
    assert time.monotonic() - begin >= holder_ttl - 2, "the expiry did not wait for the other expirer"
    assert not asyncio.run(held()), "the expire lock was not released"
