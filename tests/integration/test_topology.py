"""Tablets registered in a real etcd, and `tabletctl backup-shard` choosing among real MariaDB tablets."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agent.errors import AgentError
from agent.pb import topodata_pb2
from agent.topo.etcd import PASSWORD_ENV, EtcdClient, EtcdSettings, KeyValue, prefix_end
from agent.topo.layout import get_or_create_shard, keyspace_lock
from agent.topo.locks import shard_lock_key
from agent.topo.tablets import TabletEntry, list_tablets
from tests.agent_process import AgentProcess
from tests.certs import CertificateAuthority
from tests.conftest import SandboxFactory
from tests.etcdserver import MISSING_ETCD, EtcdServer, EtcdTls, find_etcd
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, complete_backups, manifest, restore
from tests.sandbox import Sandbox
from tests.vitess_topo import compile_vitess_topodata, decode, vitess_proto_dir

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ROOT = "/vitess/global"
TTL = 3
XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]
HOLDER_TTL = 8  # long enough for a loaded machine to start tabletctl before the crashed holder's lock expires
SLOW = ["--xtrabackup_backup_flags=--throttle=100"]  # ~5 s on a fresh sandbox


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    if find_etcd() is None:
        pytest.skip(MISSING_ETCD)
    server = EtcdServer(tmp_path / "etcd")
    yield server
    server.close()


def topo_flags(etcd: EtcdServer) -> list[str]:
    return ["--topo_implementation", "etcd2", "--topo_global_server_address", etcd.address,
            "--topo_global_root", ROOT, "--topo_lease_ttl", str(TTL)]  # fmt: skip


def entries(etcd: EtcdServer, keyspace: str = "ks", shard: str = "0") -> list[TabletEntry]:
    async def listing() -> list[TabletEntry]:
        async with EtcdClient([etcd.address]) as c:
            return await list_tablets(c, ROOT, keyspace, shard)

    return asyncio.run(listing())


def registered(etcd: EtcdServer) -> list[str]:
    """The aliases of the tablets whose agent is alive."""
    return [e.alias for e in entries(etcd) if e.alive]


def ctl(etcd: EtcdServer, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TABLETCTL_TOPO_SERVER": etcd.address, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "agent.ctl.main", *args], capture_output=True, text=True, env=env, timeout=180
    )


def until_listed(etcd: EtcdServer, expected: dict[str, str]) -> str:
    """The `tablets` listing once each alias's line shows its expected health: an agent serves a mysqld
    state up to a second old (agent/mysql/state.py FRESH), so a change made a moment ago shows soon after."""
    deadline = time.monotonic() + 15
    while True:
        listing = ctl(etcd, "tablets", "ks/0")
        assert listing.returncode == 0, listing.stderr
        lines = {line.split()[0]: line for line in listing.stdout.splitlines()[1:] if line.strip()}
        if all(text in lines.get(alias, "") for alias, text in expected.items()):
            return listing.stdout
        assert time.monotonic() < deadline, f"expected {expected}, listed:\n{listing.stdout}"
        time.sleep(0.2)


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
    listing = until_listed(etcd, {"zone1-0000000103": "replication SQL thread stopped"})
    assert "zone1-0000000101   PRIMARY" in listing

    res = ctl(etcd, "backup-shard", "ks/0")
    assert res.returncode == 0, res.stderr
    assert "on zone1-0000000102" in res.stdout
    (done,) = complete_backups(storage_root)
    assert manifest(done)["TabletAlias"] == "zone1-0000000102"

    # both replicas unhealthy: the reasons per tablet; the primary only when allowed
    shard.replicas[0].sql("STOP SLAVE")
    until_listed(etcd, {"zone1-0000000102": "replication"})
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
    until_listed(etcd, {"zone1-0000000103": "replication SQL thread stopped"})
    assert ctl(etcd, "backup-shard", "ks/0").returncode == 0
    full = complete_backups(storage_root)[0]
    pos = shard.primary.write_rows(12)
    shard.replicas[1].sql("START SLAVE SQL_THREAD")
    shard.replicas[1].wait_for_gtid(pos)
    shard.replicas[0].sql("STOP SLAVE SQL_THREAD")
    until_listed(etcd, {"zone1-0000000102": "replication SQL thread stopped", "zone1-0000000103": " ok"})
    res = ctl(etcd, "backup-shard", "ks/0", "--incremental-from-pos", "auto")
    assert res.returncode == 0, res.stderr
    assert "on zone1-0000000103" in res.stdout
    m = manifest(complete_backups(storage_root)[-1])
    assert (
        m["Incremental"] is True and m["FromBackup"] == full.name and m["TabletAlias"] == "zone1-0000000103"
    )


def test_liveness_leaves_with_the_agent_and_the_record_stays(shard: Shard, etcd: EtcdServer) -> None:
    shard.agents["zone1-0000000102"].stop()
    assert registered(etcd) == ["zone1-0000000101", "zone1-0000000103"]  # clean stop: at once
    shard.agents["zone1-0000000103"].kill()
    start = time.monotonic()
    while "zone1-0000000103" in registered(etcd):
        assert time.monotonic() - start < TTL + 3, "the dead agent's liveness key outlived its lease"
        time.sleep(0.2)
    # as vttablet's, the records stay: stopped cleanly (shutdown time) or not (a crash leaves it as it was)
    records = {e.alias: e.record for e in entries(etcd)}
    assert sorted(records) == ["zone1-0000000101", "zone1-0000000102", "zone1-0000000103"]
    assert records["zone1-0000000102"].HasField("tablet_shutdown_time")
    assert not records["zone1-0000000103"].HasField("tablet_shutdown_time")
    assert records["zone1-0000000103"].hostname == "127.0.0.1"
    listing = ctl(etcd, "tablets", "ks/0")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert "not alive" in lines["zone1-0000000102"] and "not alive" in lines["zone1-0000000103"]
    assert "not alive" not in lines["zone1-0000000101"]


def test_shard_lock_blocks_a_second_run_and_expires_with_a_crashed_holder(
    shard: Shard, etcd: EtcdServer
) -> None:
    async def hold() -> None:
        async with EtcdClient([etcd.address]) as c:
            lease = await c.grant(HOLDER_TTL)  # never kept alive: a holder that crashed
            held = await c.create(shard_lock_key(ROOT, "ks", "0", "backup-shard"),
                                  b'{"holder": "other:1", "what": "backup-shard", "since": "now"}', lease)  # fmt: skip
            assert held is None

    asyncio.run(hold())
    res = ctl(etcd, "backup-shard", "ks/0")
    assert res.returncode == 1 and "shard ks/0 is locked by other:1 (backup-shard)" in res.stderr, res.stderr
    res = ctl(etcd, "backup-shard", "ks/0", "--lock-wait", str(HOLDER_TTL + 5))
    assert res.returncode == 0, res.stderr  # the crashed holder's lock expired


def test_two_backup_shard_runs_never_overlap(
    shard: Shard, etcd: EtcdServer, agent_factory: AgentFactory, storage_root
) -> None:
    # a slow backup on the first replica's tablet, so the second run finds the lock held
    shard.agents["zone1-0000000102"].stop()
    agent_factory(shard.replicas[0], alias="zone1-0000000102", extra=[*topo_flags(etcd), *XTRA, *SLOW])
    shard.replicas[1].sql("STOP SLAVE SQL_THREAD")
    until_listed(etcd, {"zone1-0000000103": "replication SQL thread stopped"})
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


# --- the records as Vitess reads them ---------------------------------------------------------------


@pytest.fixture(scope="module")
def vitess_topodata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if vitess_proto_dir() is None:
        pytest.skip("shared/vitess-proto is missing: Vitess's messages are needed to decode the records")
    return compile_vitess_topodata(tmp_path_factory.mktemp("vitess-proto"))


def dump(etcd: EtcdServer, prefix: str = "/") -> dict[str, KeyValue]:
    async def read() -> dict[str, KeyValue]:
        async with EtcdClient([etcd.address]) as c:
            return {kv.key.decode(): kv for kv in await c.get_prefix(prefix.encode())}

    return asyncio.run(read())


def tablet_pb(etcd: EtcdServer, alias: str) -> topodata_pb2.Tablet:
    kv = dump(etcd, f"/vitess/zone1/tablets/{alias}/Tablet")[f"/vitess/zone1/tablets/{alias}/Tablet"]
    record = topodata_pb2.Tablet()
    record.ParseFromString(kv.value)
    return record


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def type_of(etcd: EtcdServer, alias: str) -> str:
    return topodata_pb2.TabletType.Name(tablet_pb(etcd, alias).type)


def types_while(etcd: EtcdServer, alias: str, run: Callable[[], object]) -> list[str]:
    """The record's types seen while `run` runs in a thread (polled), then after it (deduplicated)."""
    seen: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(run)
        while not future.done():
            now = type_of(etcd, alias)
            if not seen or seen[-1] != now:
                seen.append(now)
            time.sleep(0.02)
        future.result()
    return seen


@pytest.fixture
def pair(
    primary: Sandbox, sandbox_factory: SandboxFactory, agent_factory: AgentFactory, etcd: EtcdServer
) -> Shard:
    """A primary and a replica tablet of ks/0 in cell zone1, each with its agent."""
    replica = sandbox_factory()
    replica.make_replica_of(primary)
    replica.wait_for_gtid(primary.write_rows(200))
    agents = {
        "zone1-0000000101": agent_factory(
            primary, alias="zone1-0000000101", extra=[*topo_flags(etcd), "--init_tablet_type", "PRIMARY"]
        ),
        "zone1-0000000102": agent_factory(
            replica,
            alias="zone1-0000000102",
            extra=[
                *topo_flags(etcd),
                "--init_db_name_override",
                "vt_custom",
                "--tablet_hostname",
                "db-102.test",
            ],
        ),
    }
    wait_for("both agents registered", lambda: len(registered(etcd)) == 2)
    return Shard(primary, [replica], agents)


def test_records_sit_where_vitess_reads_them(pair: Shard, etcd: EtcdServer, vitess_topodata: Path) -> None:
    replica = pair.replicas[0]
    # the record waits for mysqld's port from mysqld itself (socket connections), as vttablet does
    wait_for(
        "mysql_port in the record", lambda: tablet_pb(etcd, "zone1-0000000102").mysql_port == replica.port
    )
    everything = dump(etcd)
    kinds = {
        "/vitess/global/cells/zone1/CellInfo": "CellInfo",
        "/vitess/global/keyspaces/ks/Keyspace": "Keyspace",
        "/vitess/global/keyspaces/ks/shards/0/Shard": "Shard",
        "/vitess/zone1/keyspaces/ks/shards/0/ShardReplication": "ShardReplication",
        "/vitess/zone1/tablets/zone1-0000000101/Tablet": "Tablet",
        "/vitess/zone1/tablets/zone1-0000000102/Tablet": "Tablet",
    }
    # nothing else but our liveness keys (outside `tablets/`, which Vitess lists and decodes whole)
    # and the empty VSchema vttablet creates with the keyspace
    others = sorted(set(everything) - set(kinds))
    assert others == [
        "/vitess/global/keyspaces/ks/VSchema",
        "/vitess/zone1/tablet-agent/alive/zone1-0000000101",
        "/vitess/zone1/tablet-agent/alive/zone1-0000000102",
    ]
    assert everything["/vitess/global/keyspaces/ks/VSchema"].value == b""
    assert all(everything[k].lease == 0 for k in kinds)  # plain keys, as Vitess's
    assert everything["/vitess/zone1/tablet-agent/alive/zone1-0000000102"].lease != 0
    got = decode(vitess_topodata, {k: (kind, everything[k].value) for k, kind in kinds.items()})
    assert all(v["unknown_fields"] == 0 for v in got.values()), got
    msg = {k: v["message"] for k, v in got.items()}
    assert msg["/vitess/global/cells/zone1/CellInfo"] == {
        "server_address": etcd.address,
        "root": "/vitess/zone1",
    }
    assert msg["/vitess/global/keyspaces/ks/Keyspace"] == {}
    assert msg["/vitess/global/keyspaces/ks/shards/0/Shard"] == {"is_primary_serving": True}
    nodes = msg["/vitess/zone1/keyspaces/ks/shards/0/ShardReplication"]["nodes"]
    assert nodes == [
        {"tablet_alias": {"cell": "zone1", "uid": 101}},
        {"tablet_alias": {"cell": "zone1", "uid": 102}},
    ]

    tablet = msg["/vitess/zone1/tablets/zone1-0000000102/Tablet"]
    start = tablet.pop("tablet_start_time")
    assert abs(int(start["seconds"]) - time.time()) < 120
    tags = tablet.pop("tags")
    assert tags["agent"] == "tablet-agent" and tags["agent_version"] and tags["start_time"]
    assert tablet.pop("default_conn_collation") > 0  # mysqld's default utf8mb4 collation
    assert tablet == {
        "alias": {"cell": "zone1", "uid": 102},
        "hostname": "db-102.test",
        "port_map": {"grpc": pair.agents["zone1-0000000102"].port},
        "keyspace": "ks",
        "shard": "0",
        "type": "REPLICA",
        "db_name_override": "vt_custom",
        "mysql_hostname": "db-102.test",
        "mysql_port": replica.port,
    }
    primary = msg["/vitess/zone1/tablets/zone1-0000000101/Tablet"]
    assert (
        primary["type"] == "PRIMARY"
        and primary["hostname"] == "127.0.0.1"
        and "primary_term_start_time" in primary
    )
    assert "db_name_override" not in primary


def test_type_follows_backup_and_restore_then_a_clean_stop_keeps_the_record(
    pair: Shard, etcd: EtcdServer, vitess_topodata: Path
) -> None:
    agent = pair.agents["zone1-0000000102"]
    assert type_of(etcd, "zone1-0000000102") == "REPLICA"
    seen = types_while(etcd, "zone1-0000000102", lambda: backup(agent))
    assert seen[:2] == ["REPLICA", "BACKUP"] or seen[0] == "BACKUP", seen
    wait_for("the type back to REPLICA", lambda: type_of(etcd, "zone1-0000000102") == "REPLICA")
    # an incremental backup keeps the tablet serving (Vitess drains only for a full builtin backup)
    pair.replicas[0].wait_for_gtid(pair.primary.write_rows(5))
    seen = types_while(etcd, "zone1-0000000102", lambda: backup(agent, incremental_from_pos="auto"))
    assert set(seen) == {"REPLICA"}, seen
    seen = types_while(etcd, "zone1-0000000102", lambda: restore(agent))
    assert "RESTORE" in seen, seen
    wait_for("the type back to REPLICA", lambda: type_of(etcd, "zone1-0000000102") == "REPLICA")
    assert type_of(etcd, "zone1-0000000101") == "PRIMARY"

    agent.stop()
    key = "/vitess/zone1/tablets/zone1-0000000102/Tablet"
    record = decode(vitess_topodata, {key: ("Tablet", dump(etcd, key)[key].value)})[key]["message"]
    assert "tablet_shutdown_time" in record and "tablet_start_time" not in record
    assert record["type"] == "REPLICA" and record["keyspace"] == "ks"
    assert "hostname" not in record and "port_map" not in record  # as vttablet marks a clean stop
    assert "/vitess/zone1/tablet-agent/alive/zone1-0000000102" not in dump(etcd)
    listing = ctl(etcd, "tablets", "ks/0")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert "not alive" in lines["zone1-0000000102"] and "ok" in lines["zone1-0000000101"], listing.stdout


def test_type_updates_never_block_while_etcd_is_down(pair: Shard, etcd: EtcdServer) -> None:
    agent = pair.agents["zone1-0000000102"]
    etcd.stop()
    started = time.monotonic()
    backup(agent)
    assert time.monotonic() - started < 30
    assert "cannot update the tablet record in the topology; retrying" in agent.log()
    etcd.start()
    wait_for("the type written once etcd is back", lambda: type_of(etcd, "zone1-0000000102") == "REPLICA", 30)
    assert "tablet record updated in the topology" in agent.log()


# --- etcd with TLS (client certificates required) and user/password authentication -----------------

AGENT_USER, AGENT_PASSWORD = "agent", "s3cret-topo"
TOKEN_TTL = 2  # seconds an idle auth token lives: the clients must fetch a new one


@dataclass
class SecureEtcd:
    server: EtcdServer
    tls: EtcdTls
    settings: EtcdSettings  # root's

    def flags(self, server_name: str = "etcd.test") -> list[str]:
        return ["--topo_etcd_tls_ca", str(self.tls.ca), "--topo_etcd_tls_cert", str(self.tls.client_cert),
                "--topo_etcd_tls_key", str(self.tls.client_key), "--topo_etcd_tls_server_name", server_name,
                "--topo_etcd_username", AGENT_USER]  # fmt: skip


@pytest.fixture
def secure_etcd(tmp_path: Path) -> Iterator[SecureEtcd]:
    if find_etcd() is None:
        pytest.skip(MISSING_ETCD)
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = CertificateAuthority(certs)
    server_cert, server_key = ca.issue(
        "etcd.test"
    )  # its only name: 127.0.0.1 needs --topo_etcd_tls_server_name
    # no Common Name: with auth on, etcd's JSON gateway refuses client certificates that carry one
    client_cert, client_key = ca.issue("topo-client", common_name=False)
    tls = EtcdTls(ca.path, server_cert, server_key, client_cert, client_key)
    server = EtcdServer(tmp_path / "etcd", tls, extra=["--auth-token-ttl", str(TOKEN_TTL)])
    base = EtcdSettings(tls_ca=ca.path, tls_cert=client_cert, tls_key=client_key, tls_server_name="etcd.test")

    async def enable_auth() -> None:
        async with EtcdClient([server.address], base) as c:
            vitess = base64.b64encode(b"/vitess/").decode()
            vitess_end = base64.b64encode(prefix_end(b"/vitess/")).decode()
            for path, body in (
                ("auth/user/add", {"name": "root", "password": "rootpw"}),
                ("auth/user/grant", {"user": "root", "role": "root"}),
                ("auth/role/add", {"name": "tablets"}),
                ("auth/role/grant", {"name": "tablets",
                                     "perm": {"permType": "READWRITE", "key": vitess, "range_end": vitess_end}}),
                ("auth/user/add", {"name": AGENT_USER, "password": AGENT_PASSWORD}),
                ("auth/user/grant", {"user": AGENT_USER, "role": "tablets"}),
                ("auth/enable", {}),
            ):  # fmt: skip
                await c._post(path, body)

    asyncio.run(enable_auth())
    yield SecureEtcd(server, tls, replace(base, username="root", password="rootpw"))
    server.close()


def test_tls_and_user_password_auth(
    primary: Sandbox, agent_factory: AgentFactory, secure_etcd: SecureEtcd
) -> None:
    etcd = secure_etcd.server
    flags = ["--topo_implementation", "etcd2", "--topo_global_server_address", etcd.address, "--init_shard=-80",
             "--topo_lease_ttl", str(TTL)]  # fmt: skip
    for extra, env, text in (
        (secure_etcd.flags(), {PASSWORD_ENV: "wrong"}, f"etcd refused user '{AGENT_USER}'"),
        (secure_etcd.flags(server_name=""), {PASSWORD_ENV: AGENT_PASSWORD}, "CERTIFICATE_VERIFY_FAILED"),
        ([*secure_etcd.flags(), f"--topo_etcd_password={AGENT_PASSWORD}"], {}, "never taken from flags"),
    ):
        agent = agent_factory(primary, extra=[*flags, *extra], env=env, start=False)
        done = subprocess.run(agent.argv, env=agent.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and text in done.stderr, done.stderr[-2000:]
        assert AGENT_PASSWORD not in done.stderr

    agent = agent_factory(primary, extra=[*flags, *secure_etcd.flags()], env={PASSWORD_ENV: AGENT_PASSWORD})
    assert AGENT_PASSWORD not in agent.log()

    async def read(key: str) -> bytes:
        async with EtcdClient([etcd.address], secure_etcd.settings) as c:
            for _ in range(150):  # the agent answers Ping a moment before it registers
                if (kv := await c.get(key.encode())) is not None:
                    return kv.value
                await asyncio.sleep(0.1)
        raise AssertionError(f"{key} never appeared")

    async def anonymous() -> None:
        async with EtcdClient([etcd.address], replace(secure_etcd.settings, username="", password="")) as c:
            await c.get(b"/vitess/zone1/tablets/zone1-0000000102/Tablet")

    with pytest.raises(AgentError):  # auth is on: nothing without a user
        asyncio.run(anonymous())

    async def after_token_expiry() -> None:
        async with EtcdClient([etcd.address], secure_etcd.settings) as c:
            assert await c.get(b"/vitess/global/keyspaces/ks/Keyspace") is not None
            await asyncio.sleep(TOKEN_TTL + 1.5)
            assert await c.get(b"/vitess/global/keyspaces/ks/Keyspace") is not None

    asyncio.run(after_token_expiry())
    record = topodata_pb2.Tablet.FromString(
        asyncio.run(read("/vitess/zone1/tablets/zone1-0000000102/Tablet"))
    )
    assert record.shard == "-80" and record.key_range == topodata_pb2.KeyRange(start=b"", end=b"\x80")
    shard = topodata_pb2.Shard.FromString(asyncio.run(read("/vitess/global/keyspaces/ks/shards/-80/Shard")))
    assert shard.key_range.end == b"\x80" and shard.is_primary_serving

    tls_args = ["--topo-etcd-tls-ca", str(secure_etcd.tls.ca), "--topo-etcd-tls-cert", str(secure_etcd.tls.client_cert),
                "--topo-etcd-tls-key", str(secure_etcd.tls.client_key), "--topo-etcd-tls-server-name", "etcd.test",
                "--topo-etcd-username", AGENT_USER]  # fmt: skip
    listing = ctl(etcd, "tablets", "ks/-80", *tls_args, env={PASSWORD_ENV: AGENT_PASSWORD})
    assert listing.returncode == 0, listing.stderr
    assert "zone1-0000000102" in listing.stdout and "not alive" not in listing.stdout, listing.stdout
    agent.stop()


def test_a_cell_with_its_own_etcd(
    primary: Sandbox, agent_factory: AgentFactory, etcd: EtcdServer, tmp_path: Path
) -> None:
    cell_etcd = EtcdServer(tmp_path / "etcd-zone2")
    try:
        agent_factory(
            primary,
            alias="zone2-0000000201",
            extra=[
                *topo_flags(etcd),
                "--topo_cell_server_address",
                cell_etcd.address,
                "--topo_cell_root",
                "/vt/zone2",
            ],
        )
        wait_for(
            "the tablet in zone2's etcd",
            lambda: "/vt/zone2/tablets/zone2-0000000201/Tablet" in dump(cell_etcd),
        )
        info = topodata_pb2.CellInfo.FromString(dump(etcd)["/vitess/global/cells/zone2/CellInfo"].value)
        assert (info.server_address, info.root) == (cell_etcd.address, "/vt/zone2")
        assert "/vitess/global/keyspaces/ks/shards/0/Shard" in dump(etcd)
        assert "/vt/zone2/keyspaces/ks/shards/0/ShardReplication" in dump(cell_etcd)
        assert sorted(dump(etcd)) == [  # the global topology: no tablet, no liveness key
            "/vitess/global/cells/zone2/CellInfo",
            "/vitess/global/keyspaces/ks/Keyspace",
            "/vitess/global/keyspaces/ks/VSchema",
            "/vitess/global/keyspaces/ks/shards/0/Shard",
        ]
        wait_for(
            "the agent alive", lambda: [e.alias for e in entries(etcd) if e.alive] == ["zone2-0000000201"]
        )
        listing = ctl(etcd, "tablets", "ks/0")  # through the global topology's CellInfo
        assert listing.returncode == 0 and "zone2-0000000201" in listing.stdout, listing.stderr
    finally:
        cell_etcd.close()


def test_shards_are_created_under_vitess_keyspace_lock(etcd: EtcdServer) -> None:
    async def run() -> None:
        async with EtcdClient([etcd.address]) as c:

            async def under(prefix: str) -> dict[str, KeyValue]:
                return {kv.key.decode(): kv for kv in await c.get_prefix(prefix.encode())}

            for name in ("-80", "80-", "-"):
                await get_or_create_shard(c, ROOT, "sharded", name)
            shards = {
                k.rsplit("/", 2)[-2]: topodata_pb2.Shard.FromString(kv.value)
                for k, kv in (await under("/vitess/global/keyspaces/sharded/shards/")).items()
            }
            assert {k: s.is_primary_serving for k, s in shards.items()} == {
                "-80": True,
                "80-": True,
                "-": False,
            }
            assert shards["80-"].key_range == topodata_pb2.KeyRange(start=b"\x80")
            assert not await under("/vitess/global/keyspaces/sharded/locks/")  # released

            async with keyspace_lock(c, ROOT, "other", "Reshard"):  # e.g. vtctld's, held
                (held,) = (await under("/vitess/global/keyspaces/other/locks/")).values()
                assert json.loads(held.value)["Action"] == "Reshard" and held.lease
                with pytest.raises(AgentError, match="keyspace other stays locked by"):
                    async with keyspace_lock(c, ROOT, "other", "CreateShard", wait=0.5):
                        pass
            async with keyspace_lock(c, ROOT, "other", "CreateShard", wait=0.5):
                pass

    asyncio.run(run())
