"""A shard-wide lock in etcd, held under a lease: released on exit, and by etcd when the holder dies
(within the lease TTL), so a crashed `backup-shard` never blocks the shard for good."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator

from agent.errors import AgentError, FailedPrecondition
from agent.topo.etcd import EtcdClient

LOCK_TTL = 15
POLL = 0.5


def shard_lock_key(root: str, keyspace: str, shard: str, action: str) -> bytes:
    """`<root>/keyspaces/<ks>/shards/<shard>/<action>_lock`: beside Vitess's `locks/` directory, not in it,
    so Vitess's own shard locks (the lowest key under `locks/` wins) never wait behind a backup."""
    return f"{root.rstrip('/')}/keyspaces/{keyspace}/shards/{shard}/{action}_lock".encode()


def holder_value(what: str) -> bytes:
    return json.dumps(
        {
            "holder": f"{socket.gethostname()}:{os.getpid()}",
            "what": what,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    ).encode()


def describe_holder(value: bytes) -> str:
    try:
        info = json.loads(value)
        return f"{info['holder']} ({info['what']}) since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown holder"


@contextlib.asynccontextmanager
async def shard_lock(
    client: EtcdClient,
    root: str,
    keyspace: str,
    shard: str,
    what: str,
    *,
    wait: float = 0.0,
    ttl: int = LOCK_TTL,
    action: str = "backup-shard",
) -> AsyncIterator[None]:
    """Hold `<root>/keyspaces/<ks>/shards/<shard>/<action>_lock` (`backup-shard`, `expire`) for the block.
    If another holder has it, wait up to `wait` seconds, then fail with FailedPrecondition naming it."""
    key = shard_lock_key(root, keyspace, shard, action)
    lease = await client.grant(ttl)
    deadline = time.monotonic() + wait
    try:
        while (held := await client.create(key, holder_value(what), lease)) is not None:
            if time.monotonic() >= deadline:
                raise FailedPrecondition(
                    f"shard {keyspace}/{shard} is locked by {describe_holder(held.value)}: another {action} is "
                    f"running; retry when it ends (or pass --lock-wait SECONDS). A crashed holder's lock expires "
                    f"within {ttl}s"
                )
            await asyncio.sleep(POLL)
        keeper = asyncio.create_task(_keep(client, lease, ttl))
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
    finally:
        with contextlib.suppress(AgentError):
            await client.revoke(lease)


async def _keep(client: EtcdClient, lease: int, ttl: int) -> None:
    while True:
        await asyncio.sleep(ttl / 3)
        with contextlib.suppress(AgentError):
            await client.keepalive(lease)
