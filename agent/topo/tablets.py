"""Tablet records in the topology: Vitess's `topodata.Tablet` message at `<root>/tablets/<alias>/Tablet`,
written under a lease the agent keeps alive, so a dead agent's record disappears within the lease TTL.

Differences from Vitess: Vitess keeps tablet records in each cell's topology (ours live under the global
root) and does not tie them to a lease (a crashed vttablet leaves its record behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass

import structlog

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.pb import topodata_pb2
from agent.topo.etcd import EtcdClient

log = structlog.get_logger(__name__)


def tablets_prefix(root: str) -> bytes:
    return f"{root.rstrip('/')}/tablets/".encode()


def tablet_key(root: str, alias: str) -> bytes:
    return tablets_prefix(root) + f"{alias}/Tablet".encode()


def split_alias(alias: str) -> tuple[str, int]:
    cell, _, uid = alias.rpartition("-")
    return cell, int(uid)


def advertised_host(config: AgentConfig) -> str:
    if config.tablet_hostname:
        return config.tablet_hostname
    if config.grpc_bind_address not in ("0.0.0.0", "::", ""):
        return config.grpc_bind_address
    return socket.getfqdn()


def tablet_record(
    config: AgentConfig, grpc_port: int, agent_version: str, started: float
) -> topodata_pb2.Tablet:
    cell, uid = split_alias(config.tablet_alias)
    record = topodata_pb2.Tablet(
        alias=topodata_pb2.TabletAlias(cell=cell, uid=uid),
        hostname=advertised_host(config),
        keyspace=config.init_keyspace,
        shard=config.init_shard,
        type=topodata_pb2.TabletType.Value(str(config.init_tablet_type)),
    )
    record.port_map["grpc"] = grpc_port
    record.tags["agent"] = "tablet-agent"
    record.tags["agent_version"] = agent_version
    record.tags["start_time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    return record


def record_alias(record: topodata_pb2.Tablet) -> str:
    return f"{record.alias.cell}-{record.alias.uid:010d}"


def record_address(record: topodata_pb2.Tablet) -> str:
    return f"{record.hostname}:{record.port_map['grpc']}"


async def list_tablets(client: EtcdClient, root: str, keyspace: str, shard: str) -> list[topodata_pb2.Tablet]:
    found = []
    for kv in await client.get_prefix(tablets_prefix(root)):
        if not kv.key.endswith(b"/Tablet"):
            continue
        record = topodata_pb2.Tablet()
        with contextlib.suppress(Exception):
            record.ParseFromString(kv.value)
            if record.keyspace == keyspace and record.shard == shard:
                found.append(record)
    return sorted(found, key=record_alias)


@dataclass
class Registration:
    """Keeps this tablet's record in etcd while the agent runs."""

    client: EtcdClient
    root: str
    alias: str
    record: topodata_pb2.Tablet
    ttl: int
    _lease: int = 0
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._register()
        self._task = asyncio.create_task(self._keep_alive())

    async def _register(self) -> None:
        self._lease = await self.client.grant(self.ttl)
        await self.client.put(tablet_key(self.root, self.alias), self.record.SerializeToString(), self._lease)
        log.info(
            "tablet registered in the topology", key=tablet_key(self.root, self.alias).decode(), ttl=self.ttl
        )

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.ttl / 3))
            try:
                if await self.client.keepalive(self._lease) <= 0:
                    log.warning("topology lease expired: registering again")
                    await self._register()
            except AgentError as e:
                log.warning("cannot renew the topology lease", error=str(e))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(AgentError):
            await self.client.revoke(self._lease)  # the record goes with its lease
        await self.client.close()
