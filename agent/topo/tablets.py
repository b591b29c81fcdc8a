"""This tablet in the topology, as vttablet keeps it: the `topodata.Tablet` record at
`<cell root>/tablets/<alias>/Tablet` (a plain key, kept after a clean stop with its shutdown time), the
Keyspace/Shard records and the cell's ShardReplication, the record's type following the operations
(BACKUP, RESTORE, back), and our own liveness key beside it, tied to a lease, so tools can tell a dead
agent: `<cell root>/tablet-agent/alive/<alias>` (outside `tablets/`, which Vitess lists and decodes whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.config import AgentConfig
from agent.errors import AgentError, FailedPrecondition
from agent.log import get_logger
from agent.operations import Kind, Operation
from agent.pb import topodata_pb2, vttime_pb2
from agent.topo.etcd import EtcdClient, split_endpoints
from agent.topo.layout import (
    CellTopo,
    add_shard_replication_node,
    alias_pb,
    alias_str,
    get_or_create_shard,
    list_cells,
    parse_shard_name,
    tablet_key,
    tablets_prefix,
    topo_key,
    update_record,
)

log = get_logger("agent.topo.tablets")
RETRY_MIN, RETRY_MAX = 1.0, 10.0
PROBE_INTERVAL = 2.0
STOP_TIMEOUT = 5.0
DRAINING_ENGINES = ("builtin",)  # Vitess's ShouldDrainForBackup: the offline engine, full backups only


def alive_prefix(cell_root: str) -> bytes:
    return topo_key(cell_root, "tablet-agent", "alive") + b"/"


def alive_key(cell_root: str, alias: str) -> bytes:
    return alive_prefix(cell_root) + alias.encode()


def advertised_host(config: AgentConfig) -> str:
    if config.tablet_hostname:
        return config.tablet_hostname
    if config.grpc_bind_address not in ("0.0.0.0", "::", ""):
        return config.grpc_bind_address
    return socket.getfqdn()


def vttime(seconds: float) -> vttime_pb2.Time:
    return vttime_pb2.Time(seconds=int(seconds), nanoseconds=int((seconds % 1) * 1e9))


@dataclass(frozen=True)
class MysqldFacts:
    """What the record needs from mysqld itself: its port (socket-only connections) and the ID of its
    default utf8mb4 collation (Vitess's `default_conn_collation`)."""

    port: int
    collation: int


def tablet_record(
    config: AgentConfig,
    grpc_port: int,
    agent_version: str,
    started: float,
    *,
    mysql_host: str | None,
    mysql_port: int,
) -> topodata_pb2.Tablet:
    """The record vttablet's `BuildTabletFromInput` + `checkMysql` write. `mysql_host` None: mysqld is
    reached over its socket, so (as vttablet) the tablet's host name and mysqld's own port are recorded."""
    shard, key_range = parse_shard_name(config.init_shard)
    hostname = advertised_host(config)
    record = topodata_pb2.Tablet(
        alias=alias_pb(config.tablet_alias),
        hostname=hostname,
        keyspace=config.init_keyspace,
        shard=shard,
        type=topodata_pb2.TabletType.Value(str(config.init_tablet_type)),
        db_name_override=config.init_db_name_override,
        mysql_hostname=mysql_host if mysql_host is not None else hostname,
        mysql_port=mysql_port if mysql_host is not None else 0,
        tablet_start_time=vttime(started),
    )
    if key_range is not None:
        record.key_range.CopyFrom(key_range)
    if record.type == topodata_pb2.PRIMARY:
        record.primary_term_start_time.CopyFrom(vttime(started))
    record.port_map["grpc"] = grpc_port  # no "vt": the agent serves no vttablet HTTP port
    record.tags["agent"] = "tablet-agent"
    record.tags["agent_version"] = agent_version
    record.tags["start_time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    return record


def record_alias(record: topodata_pb2.Tablet) -> str:
    return alias_str(record.alias)


def record_address(record: topodata_pb2.Tablet) -> str:
    port = record.port_map.get("grpc", 0)
    return f"{record.hostname}:{port}" if record.hostname and port else "-"


def type_during(op: Operation) -> str | None:
    """The type vttablet shows while `op` runs: BACKUP for a backup that takes the tablet out of serving
    (builtin, full), RESTORE for a restore; None: the type does not change (online/incremental backups)."""
    if op.kind is Kind.RESTORE:
        return "RESTORE"
    if op.engine in DRAINING_ENGINES and not op.incremental:
        return "BACKUP"
    return None


@dataclass(frozen=True)
class TabletEntry:
    """A tablet record of the topology, and whether a running agent holds its liveness key."""

    record: topodata_pb2.Tablet
    alive: bool
    cell: str

    @property
    def alias(self) -> str:
        return record_alias(self.record)


async def list_tablets(client: EtcdClient, global_root: str, keyspace: str, shard: str) -> list[TabletEntry]:
    """The shard's tablets in every cell (CellInfo -> the cell's topology), with their liveness."""
    wanted_shard, _ = parse_shard_name(shard)
    found: list[TabletEntry] = []
    for cell in await list_cells(client, global_root):
        same = client.serves(cell.server_address)
        cell_client = client if same else EtcdClient(split_endpoints(cell.server_address), client.settings)
        try:
            records = await cell_client.get_prefix(tablets_prefix(cell.root))
            alive = {
                kv.key.rsplit(b"/", 1)[-1].decode()
                for kv in await cell_client.get_prefix(alive_prefix(cell.root))
            }
        finally:
            if cell_client is not client:
                await cell_client.close()
        for kv in records:
            if not kv.key.endswith(b"/Tablet"):
                continue
            record = topodata_pb2.Tablet()
            with contextlib.suppress(Exception):
                record.ParseFromString(kv.value)
                if record.keyspace == keyspace and record.shard == wanted_shard:
                    found.append(TabletEntry(record, record_alias(record) in alive, cell.name))
    return sorted(found, key=lambda e: e.alias)


@dataclass
class Registration:
    """Keeps this tablet in the topology while the agent runs. `start` writes the records (exit 2 on
    failure); afterwards, updates never block nor fail the caller: a background task retries them."""

    global_client: EtcdClient
    global_root: str
    cell: CellTopo
    cell_client: EtcdClient
    record: topodata_pb2.Tablet
    ttl: int
    probe: Callable[[], Awaitable[MysqldFacts]] | None = None
    _lease: int = 0
    _dirty: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def alias(self) -> str:
        return record_alias(self.record)

    @property
    def key(self) -> bytes:
        return tablet_key(self.cell.root, self.alias)

    async def start(self) -> None:
        record = self.record
        await get_or_create_shard(self.global_client, self.global_root, record.keyspace, record.shard)
        existing = await self.cell_client.get(self.key)
        if existing is not None:
            old = topodata_pb2.Tablet()
            with contextlib.suppress(Exception):
                old.ParseFromString(existing.value)
            if (old.keyspace, old.shard) != (record.keyspace, record.shard):
                raise FailedPrecondition(
                    f"tablet {self.alias} is already registered in {old.keyspace}/{old.shard} "
                    f"({self.key.decode()}), not {record.keyspace}/{record.shard}: give this tablet another "
                    f"--tablet-path, or delete the old record (`vtctldclient DeleteTablets {self.alias}`)"
                )
        await add_shard_replication_node(
            self.cell_client, self.cell.root, record.keyspace, record.shard, record.alias
        )
        await self.cell_client.put(self.key, record.SerializeToString())  # vttablet's UpdateTablet: overwrite
        await self._live()
        log.info("tablet registered in the topology", key=self.key.decode(), type=self.type_name)
        self._tasks = [
            asyncio.create_task(self._keep_alive(), name="topo-keepalive"),
            asyncio.create_task(self._publish(), name="topo-publish"),
        ]
        if self.probe is not None and (not record.mysql_port or not record.default_conn_collation):
            self._tasks.append(asyncio.create_task(self._probe_mysqld(self.probe), name="topo-mysqld-probe"))

    @property
    def type_name(self) -> str:
        return topodata_pb2.TabletType.Name(self.record.type)

    def set_type(self, type_name: str) -> None:
        """Record `type_name` (BACKUP, RESTORE, REPLICA, DRAINED...) in the topology, in the background."""
        value = topodata_pb2.TabletType.Value(type_name)
        if value != self.record.type:
            self.record.type = value
            self._dirty.set()

    async def _live(self) -> None:
        self._lease = await self.cell_client.grant(self.ttl)
        value = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        ).encode()
        await self.cell_client.put(alive_key(self.cell.root, self.alias), value, self._lease)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.ttl / 3))
            try:
                if await self.cell_client.keepalive(self._lease) <= 0:
                    log.warning("topology lease expired: writing the liveness key again")
                    await self._live()
            except AgentError as e:
                log.warning("cannot renew the topology lease", error=str(e))

    async def _publish(self) -> None:
        """Write the fields that change while the agent runs, whenever they change, until it stops."""
        delay = RETRY_MIN
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._write(self._owned_fields)
            except AgentError as e:
                self._dirty.set()
                log.warning(
                    "cannot update the tablet record in the topology; retrying",
                    error=str(e),
                    type=self.type_name,
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            else:
                delay = RETRY_MIN
                log.info("tablet record updated in the topology", type=self.type_name)

    def _owned_fields(self, stored: topodata_pb2.Tablet) -> bool:
        mine = self.record
        before = stored.SerializeToString(deterministic=True)
        stored.type = mine.type
        stored.mysql_hostname, stored.mysql_port = mine.mysql_hostname, mine.mysql_port
        stored.default_conn_collation = mine.default_conn_collation
        return stored.SerializeToString(deterministic=True) != before

    async def _write(self, update: Callable[[topodata_pb2.Tablet], bool]) -> None:
        if await update_record(self.cell_client, self.key, topodata_pb2.Tablet, update) is None:
            log.warning(
                "the tablet record was deleted from the topology: writing it again", key=self.key.decode()
            )
            await self.cell_client.create(self.key, self.record.SerializeToString())

    async def _probe_mysqld(self, probe: Callable[[], Awaitable[MysqldFacts]]) -> None:
        """vttablet's `findMysqlPort`: ask mysqld until it answers (it may be down at start-up)."""
        while True:
            try:
                facts = await probe()
            except AgentError as e:
                log.debug("mysqld not reachable for the tablet record yet", error=str(e))
                await asyncio.sleep(PROBE_INTERVAL)
                continue
            if not self.record.mysql_port:
                self.record.mysql_port = facts.port
            self.record.default_conn_collation = facts.collation
            self._dirty.set()
            return

    async def stop(self) -> None:
        """A clean stop, as vttablet's: the record stays, with its shutdown time, no start time and no
        host or ports (how vttablets before v24 marked it); the liveness key goes with its lease."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        now = time.time()

        def shut_down(stored: topodata_pb2.Tablet) -> bool:
            self._owned_fields(stored)
            stored.ClearField("tablet_start_time")
            stored.tablet_shutdown_time.CopyFrom(vttime(now))
            stored.hostname = stored.mysql_hostname = ""
            stored.ClearField("port_map")
            return True

        try:
            await asyncio.wait_for(self._write_shutdown(shut_down), STOP_TIMEOUT)
        except (AgentError, TimeoutError) as e:
            log.warning("cannot mark the tablet record as shut down", error=str(e) or "timeout")
        with contextlib.suppress(AgentError, TimeoutError):
            await asyncio.wait_for(self.cell_client.revoke(self._lease), STOP_TIMEOUT)
        if self.cell_client is not self.global_client:
            await self.cell_client.close()
        await self.global_client.close()

    async def _write_shutdown(self, update: Callable[[topodata_pb2.Tablet], bool]) -> None:
        await update_record(self.cell_client, self.key, topodata_pb2.Tablet, update)
