"""Tablets registered in a real etcd, and `tabletctl backup-shard` choosing among real MariaDB tablets."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.topo.etcd import EtcdClient
from agent.topo.locks import shard_lock_key
from agent.topo.tablets import list_tablets
from tests.agent_process import AgentProcess
from tests.conftest import SandboxFactory
from tests.etcdserver import MISSING_ETCD, EtcdServer, find_etcd
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import complete_backups, manifest
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ROOT = "/vitess/global"
TTL = 3
XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]
SLOW = ["--xtrabackup_backup_flags=--throttle=100"]  # ~5 s on a fresh sandbox


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    if find_etcd() is None:
        pytest.skip(MISSING_ETCD)
    server = EtcdServer(tmp_path / "etcd")
    yield server
    server.stop()


def topo_flags(etcd: EtcdServer) -> list[str]:
    return ["--topo_implementation", "etcd2", "--topo_global_server_address", etcd.address,
            "--topo_global_root", ROOT, "--topo_lease_ttl", str(TTL)]  # fmt: skip


def registered(etcd: EtcdServer) -> list[str]:
    async def aliases() -> list[str]:
        async with EtcdClient([etcd.address]) as c:
            return [f"{r.alias.cell}-{r.alias.uid:010d}" for r in await list_tablets(c, ROOT, "ks", "0")]

    return asyncio.run(aliases())


def ctl(etcd: EtcdServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TABLETCTL_TOPO_SERVER": etcd.address}
    return subprocess.run(
        [sys.executable, "-m", "agent.ctl.main", *args], capture_output=True, text=True, env=env, timeout=180
    )


@dataclass
class Shard:
    primary: Sandbox
    replicas: list[Sandbox]
    agents: dict[str, AgentProcess]


@pytest.fixture
def shard(
    primary: Sandbox, sandbox_factory: SandboxFactory, agent_factory: AgentFactory, etcd: EtcdServer
) -> Shard:
    replicas = []
    for _ in range(2):
        r = sandbox_factory()
        r.make_replica_of(primary)
        replicas.append(r)
    pos = primary.write_rows(30)
    for r in replicas:
        r.wait_for_gtid(pos)
    flags = topo_flags(etcd)
    agents = {
        "zone1-0000000101": agent_factory(
            primary, alias="zone1-0000000101", extra=[*flags, "--init_tablet_type", "PRIMARY"]
        )
    }
    for i, r in enumerate(replicas):
        alias = f"zone1-000000010{i + 2}"
        agents[alias] = agent_factory(r, alias=alias, extra=flags)
    deadline = time.monotonic() + 15  # an agent answers Ping a moment before its record is written
    while len(registered(etcd)) < 3:
        assert time.monotonic() < deadline, f"registered: {registered(etcd)}"
        time.sleep(0.1)
    return Shard(primary, replicas, agents)


def test_backup_shard_picks_the_healthy_replica_and_reports_reasons(
    shard: Shard, etcd: EtcdServer, storage_root
) -> None:
    assert registered(etcd) == ["zone1-0000000101", "zone1-0000000102", "zone1-0000000103"]
    shard.replicas[1].sql("STOP SLAVE SQL_THREAD")
    listing = ctl(etcd, "tablets", "ks/0")
    assert listing.returncode == 0, listing.stderr
    assert "replication SQL thread stopped" in listing.stdout and "PRIMARY" in listing.stdout

    res = ctl(etcd, "backup-shard", "ks/0")
    assert res.returncode == 0, res.stderr
    assert "on zone1-0000000102" in res.stdout
    (done,) = complete_backups(storage_root)
    assert manifest(done)["TabletAlias"] == "zone1-0000000102"

    # both replicas unhealthy: the reasons per tablet; the primary only when allowed
    shard.replicas[0].sql("STOP SLAVE")
    res = ctl(etcd, "backup-shard", "ks/0")
    assert res.returncode == 1
    assert "no tablet available for backup in ks/0" in res.stderr
    for text in ("zone1-0000000101 (PRIMARY): PRIMARY: pass --allow-primary", "zone1-0000000102 (REPLICA): replication",
                 "zone1-0000000103 (REPLICA): replication SQL thread stopped"):  # fmt: skip
        assert text in res.stderr
    res = ctl(etcd, "backup-shard", "ks/0", "--allow-primary")
    assert res.returncode == 0 and "on zone1-0000000101" in res.stdout, res.stderr


def test_incremental_shard_backup_chains_across_tablets(shard: Shard, etcd: EtcdServer, storage_root) -> None:
    shard.replicas[1].sql("STOP SLAVE SQL_THREAD")
    assert ctl(etcd, "backup-shard", "ks/0").returncode == 0
    full = complete_backups(storage_root)[0]
    pos = shard.primary.write_rows(12)
    shard.replicas[1].sql("START SLAVE SQL_THREAD")
    shard.replicas[1].wait_for_gtid(pos)
    shard.replicas[0].sql("STOP SLAVE SQL_THREAD")
    res = ctl(etcd, "backup-shard", "ks/0", "--incremental-from-pos", "auto")
    assert res.returncode == 0, res.stderr
    assert "on zone1-0000000103" in res.stdout
    m = manifest(complete_backups(storage_root)[-1])
    assert (
        m["Incremental"] is True and m["FromBackup"] == full.name and m["TabletAlias"] == "zone1-0000000103"
    )


def test_records_leave_with_their_agent(shard: Shard, etcd: EtcdServer) -> None:
    shard.agents["zone1-0000000102"].stop()
    assert registered(etcd) == ["zone1-0000000101", "zone1-0000000103"]  # clean stop: at once
    shard.agents["zone1-0000000103"].kill()
    start = time.monotonic()
    while "zone1-0000000103" in registered(etcd):
        assert time.monotonic() - start < TTL + 3, "the dead agent's record outlived its lease"
        time.sleep(0.2)


def test_shard_lock_blocks_a_second_run_and_expires_with_a_crashed_holder(
    shard: Shard, etcd: EtcdServer
) -> None:
    async def hold() -> None:
        async with EtcdClient([etcd.address]) as c:
            lease = await c.grant(TTL)  # never kept alive: a holder that crashed
            held = await c.create(shard_lock_key(ROOT, "ks", "0", "backup-shard"),
                                  b'{"holder": "other:1", "what": "backup-shard", "since": "now"}', lease)  # fmt: skip
            assert held is None

    asyncio.run(hold())
    res = ctl(etcd, "backup-shard", "ks/0")
    assert res.returncode == 1 and "shard ks/0 is locked by other:1 (backup-shard)" in res.stderr, res.stderr
    res = ctl(etcd, "backup-shard", "ks/0", "--lock-wait", str(TTL + 5))
    assert res.returncode == 0, res.stderr  # the crashed holder's lock expired


def test_two_backup_shard_runs_never_overlap(
    shard: Shard, etcd: EtcdServer, agent_factory: AgentFactory, storage_root
) -> None:
    # a slow backup on the first replica's tablet, so the second run finds the lock held
    shard.agents["zone1-0000000102"].stop()
    agent_factory(shard.replicas[0], alias="zone1-0000000102", extra=[*topo_flags(etcd), *XTRA, *SLOW])
    shard.replicas[1].sql("STOP SLAVE SQL_THREAD")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TABLETCTL_TOPO_SERVER": etcd.address}
    first = subprocess.Popen(
        [sys.executable, "-m", "agent.ctl.main", "backup-shard", "ks/0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip

    async def locked() -> bool:
        async with EtcdClient([etcd.address]) as c:
            return await c.get(shard_lock_key(ROOT, "ks", "0", "backup-shard")) is not None

    deadline = time.monotonic() + 60
    while not asyncio.run(locked()):
        assert time.monotonic() < deadline and first.poll() is None, "the first run never took the lock"
        time.sleep(0.1)
    second = ctl(etcd, "backup-shard", "ks/0")
    out, err = first.communicate(timeout=180)
    assert "on zone1-0000000102" in out
    assert first.returncode == 0, err
    assert second.returncode == 1 and "shard ks/0 is locked by" in second.stderr, second.stderr
    assert "(backup-shard of ks/0)" in second.stderr
    assert len(complete_backups(storage_root)) == 1
