"""Where Vitess's etcd2 topology keeps its records, and how vttablet creates them: CellInfo, Keyspace,
Shard (with its key range), VSchema, ShardReplication, all protobuf-encoded as Vitess encodes them.

Paths are `path.Join(root, ...)` as in Vitess's etcd2topo: the global root holds `cells/<cell>/CellInfo`
and `keyspaces/...`; a cell's root (from its CellInfo) holds `tablets/<alias>/Tablet` and
`keyspaces/<ks>/shards/<shard>/ShardReplication`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError

from agent.errors import AgentError, FailedPrecondition, InvalidArgument, Unavailable
from agent.log import get_logger
from agent.pb import topodata_pb2
from agent.topo.etcd import EtcdClient, KeyValue

CAS_ATTEMPTS = 20
LOCK_TTL, LOCK_WAIT, LOCK_POLL = 30, 60.0, 0.2  # Vitess: --topo_etcd_lease_ttl 30, --init_timeout 1m
M = TypeVar(
    "M", topodata_pb2.Tablet, topodata_pb2.Shard, topodata_pb2.CellInfo, topodata_pb2.ShardReplication
)
log = get_logger("agent.topo.layout")


def topo_key(root: str, *parts: str) -> bytes:
    """Vitess's `path.Join(root, parts...)`, as bytes."""
    return posixpath.normpath(posixpath.join(root or "/", *parts)).encode()


def cell_info_key(global_root: str, cell: str) -> bytes:
    return topo_key(global_root, "cells", cell, "CellInfo")


def keyspace_key(global_root: str, keyspace: str) -> bytes:
    return topo_key(global_root, "keyspaces", keyspace, "Keyspace")


def vschema_key(global_root: str, keyspace: str) -> bytes:
    return topo_key(global_root, "keyspaces", keyspace, "VSchema")


def shard_key(global_root: str, keyspace: str, shard: str) -> bytes:
    return topo_key(global_root, "keyspaces", keyspace, "shards", shard, "Shard")


def shard_replication_key(cell_root: str, keyspace: str, shard: str) -> bytes:
    return topo_key(cell_root, "keyspaces", keyspace, "shards", shard, "ShardReplication")


def tablet_key(cell_root: str, alias: str) -> bytes:
    return topo_key(cell_root, "tablets", alias, "Tablet")


def tablets_prefix(cell_root: str) -> bytes:
    return topo_key(cell_root, "tablets") + b"/"


def default_cell_root(global_root: str, cell: str) -> str:
    """`/vitess/global` -> `/vitess/<cell>`: the layout of Vitess's examples (`AddCellInfo --root`)."""
    parent = posixpath.dirname(posixpath.normpath(global_root or "/"))
    return posixpath.join(parent or "/", cell)


def parse_shard_name(shard: str) -> tuple[str, topodata_pb2.KeyRange | None]:
    """Vitess's `ValidateShardName`: `-80` -> ("-80", [, 0x80)), `80-` -> [0x80, ), `-` -> the full
    range, `0` -> no key range. Range names are lower-cased."""
    if "/" in shard:
        raise InvalidArgument(f"invalid shard name {shard!r}: it cannot contain '/'")
    if "-" not in shard:
        return shard, None
    start, _, end = shard.partition("-")
    if "-" in end:
        raise InvalidArgument(f"invalid shard name {shard!r}: a key range has one '-' (e.g. -80, 80-c0, c0-)")
    try:
        key_range = topodata_pb2.KeyRange(start=bytes.fromhex(start), end=bytes.fromhex(end))
    except ValueError:
        raise InvalidArgument(
            f"invalid shard name {shard!r}: the key range bounds must be hex with an even number of digits"
        ) from None
    if key_range.end and key_range.start >= key_range.end:
        raise InvalidArgument(f"invalid shard name {shard!r}: the start must be below the end")
    return shard.lower(), key_range


def key_ranges_intersect(a: topodata_pb2.KeyRange | None, b: topodata_pb2.KeyRange | None) -> bool:
    if a is None or b is None:
        return True
    return (not a.end or b.start < a.end) and (not b.end or a.start < b.end)


def alias_pb(alias: str) -> topodata_pb2.TabletAlias:
    cell, _, uid = alias.rpartition("-")
    return topodata_pb2.TabletAlias(cell=cell, uid=int(uid))


def alias_str(alias: topodata_pb2.TabletAlias) -> str:
    return f"{alias.cell}-{alias.uid:010d}"


def _parse(message: M, kv: KeyValue) -> M:
    try:
        message.ParseFromString(kv.value)
    except DecodeError:
        raise FailedPrecondition(
            f"topology record {kv.key.decode(errors='replace')} does not decode as {message.DESCRIPTOR.name}: "
            "fix or delete it"
        ) from None
    return message


@dataclass(frozen=True)
class CellTopo:
    """A cell's topology: its CellInfo and a client for its server."""

    name: str
    server_address: str
    root: str


async def resolve_cell(
    global_client: EtcdClient,
    global_root: str,
    cell: str,
    *,
    server_address: str,
    root: str,
    explicit: bool,
) -> CellTopo:
    """The cell's CellInfo from the global topology; created from `server_address`/`root` when missing.
    An existing CellInfo wins over the flags (it is what every Vitess component reads)."""
    key = cell_info_key(global_root, cell)
    wanted = topodata_pb2.CellInfo(server_address=server_address, root=root)
    existing = await global_client.get(key)
    if existing is None:
        existing = await global_client.create(key, wanted.SerializeToString())
        if existing is None:
            log.info(
                "cell created in the topology", key=key.decode(), server_address=server_address, root=root
            )
            return CellTopo(cell, server_address, root)
    info = _parse(topodata_pb2.CellInfo(), existing)
    if not info.server_address or not info.root:
        raise FailedPrecondition(
            f"CellInfo {key.decode()} has no server_address or root: fix it with "
            f"`vtctldclient UpdateCellInfo --server-address ... --root ... {cell}`"
        )
    if explicit and (info.server_address, info.root) != (server_address, root):
        log.warning(
            "the cell's CellInfo differs from --topo_cell_server_address/--topo_cell_root: using the CellInfo",
            cell=cell,
            cell_info=f"{info.server_address} {info.root}",
            flags=f"{server_address} {root}",
        )
    return CellTopo(cell, info.server_address, info.root)


async def list_cells(global_client: EtcdClient, global_root: str) -> list[CellTopo]:
    cells = []
    for kv in await global_client.get_prefix(topo_key(global_root, "cells") + b"/"):
        parts = kv.key.decode(errors="replace").split("/")
        if parts[-1] != "CellInfo" or len(parts) < 2:
            continue
        info = _parse(topodata_pb2.CellInfo(), kv)
        cells.append(CellTopo(parts[-2], info.server_address, info.root))
    return sorted(cells, key=lambda c: c.name)


async def get_or_create_shard(
    client: EtcdClient, global_root: str, keyspace: str, shard: str
) -> topodata_pb2.Shard:
    """vttablet's `GetOrCreateShard`: the Keyspace (empty) and its VSchema (empty) when missing, then the
    Shard with the key range of its name, serving unless it overlaps a shard already there. Existing
    records are never overwritten."""
    name, key_range = parse_shard_name(shard)
    found = await client.get(shard_key(global_root, keyspace, name))
    if found is not None:
        return _parse(topodata_pb2.Shard(), found)
    if (
        await client.create(keyspace_key(global_root, keyspace), topodata_pb2.Keyspace().SerializeToString())
        is None
    ):
        log.info("keyspace created in the topology", keyspace=keyspace)
    await client.create(vschema_key(global_root, keyspace), b"")  # an empty vschemapb.Keyspace
    record = topodata_pb2.Shard(is_primary_serving=True)
    async with keyspace_lock(client, global_root, keyspace, "CreateShard"):  # as Vitess's CreateShard
        if key_range is not None:
            record.key_range.CopyFrom(key_range)
            shards_dir = topo_key(global_root, "keyspaces", keyspace, "shards") + b"/"
            for kv in await client.get_prefix(shards_dir):
                if posixpath.basename(kv.key.decode(errors="replace")) != "Shard":
                    continue
                other = _parse(topodata_pb2.Shard(), kv)
                if key_ranges_intersect(other.key_range if other.HasField("key_range") else None, key_range):
                    record.is_primary_serving = False
        existing = await client.create(shard_key(global_root, keyspace, name), record.SerializeToString())
    if existing is not None:
        return _parse(topodata_pb2.Shard(), existing)
    log.info(
        "shard created in the topology", keyspace=keyspace, shard=name, serving=record.is_primary_serving
    )
    return record


@contextlib.asynccontextmanager
async def keyspace_lock(
    client: EtcdClient,
    global_root: str,
    keyspace: str,
    action: str,
    *,
    ttl: int = LOCK_TTL,
    wait: float = LOCK_WAIT,
) -> AsyncIterator[None]:
    """Vitess's etcd2 lock on a keyspace: a key `keyspaces/<ks>/locks/<lease id>` under a lease, held once
    no older key is left in `locks/` (polled here; Vitess watches)."""
    locks = topo_key(global_root, "keyspaces", keyspace, "locks")
    lease = await client.grant(ttl)
    try:
        key = locks + f"/{lease}".encode()
        if await client.create(key, _lock_contents(action), lease) is not None:
            raise Unavailable(f"lock {key.decode()} already exists: retry")
        mine = await client.get(key)
        revision = mine.mod_revision if mine is not None else 0
        deadline = time.monotonic() + wait
        while (older := await client.last_before(locks + b"/", revision)) is not None:
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"keyspace {keyspace} stays locked by {older.key.decode()} ({older.value[:200].decode(errors='replace')}): "
                    "wait for the Vitess operation holding it to end (a dead holder's lock expires with its lease), "
                    "then start the agent again"
                )
            await asyncio.sleep(LOCK_POLL)
        yield
    finally:
        with contextlib.suppress(AgentError):
            await client.revoke(lease)


def _lock_contents(action: str) -> bytes:
    """What Vitess writes in a lock file (`topo.Lock` as indented JSON)."""
    lock = {
        "Action": action,
        "HostName": socket.getfqdn(),
        "UserName": os.environ.get("USER", ""),
        "Time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "Status": "Running",
    }
    return json.dumps(lock, indent=2).encode()


async def add_shard_replication_node(
    client: EtcdClient, cell_root: str, keyspace: str, shard: str, alias: topodata_pb2.TabletAlias
) -> None:
    """Vitess's `UpdateShardReplicationRecord`: this tablet's node in the cell's ShardReplication, once
    (duplicates dropped), by read-modify-write with compare-and-swap on the mod revision."""

    def add(sr: topodata_pb2.ShardReplication) -> bool:
        nodes, found, modified = [], False, False
        for node in sr.nodes:
            if node.tablet_alias == alias:
                if found:
                    modified = True
                    continue
                found = True
            nodes.append(node)
        if not found:
            nodes.append(topodata_pb2.ShardReplication.Node(tablet_alias=alias))
            modified = True
        if modified:
            del sr.nodes[:]
            sr.nodes.extend(nodes)
        return modified

    await update_record(
        client,
        shard_replication_key(cell_root, keyspace, shard),
        topodata_pb2.ShardReplication,
        add,
        create=True,
    )


async def update_record(
    client: EtcdClient,
    key: bytes,
    kind: Callable[[], M],
    update: Callable[[M], bool],
    *,
    create: bool = False,
) -> M | None:
    """Read, `update` (False: nothing to write), write back only if nobody wrote in between (retried on
    a lost race). A missing record is created when `create`, else None is returned."""
    for _ in range(CAS_ATTEMPTS):
        kv = await client.get(key)
        if kv is None and not create:
            return None
        record = _parse(kind(), kv) if kv is not None else kind()
        if not update(record):
            return record
        data = record.SerializeToString()
        if kv is None:
            if await client.create(key, data) is None:
                return record
        elif await client.update(key, data, kv.mod_revision):
            return record
    raise Unavailable(
        f"topology record {key.decode()} kept changing under {CAS_ATTEMPTS} attempts: retry later"
    )
