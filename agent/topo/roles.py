"""A shard-wide role held by one agent at a time (the binlog archiver): a key in etcd under a lease the
holder keeps alive. Taking it never waits; a holder that dies loses it within the lease TTL, and a
holder whose lease ran out (etcd unreachable for a while) knows it lost it."""

from __future__ import annotations

import contextlib
import time

from agent.errors import AgentError
from agent.topo.etcd import EtcdClient
from agent.topo.locks import describe_holder, holder_value, shard_lock_key


class ShardRole:
    """`try_take()` until it returns True; `held` while the lease lives; `give_up()` at the end."""

    def __init__(
        self, client: EtcdClient, root: str, keyspace: str, shard: str, *, action: str, ttl: int
    ) -> None:
        self._client = client
        self._key = shard_lock_key(root, keyspace, shard, action)
        self._what = action
        self._ttl = ttl
        self._lease = 0
        self._expires = 0.0
        self.holder = ""  # who holds it, when someone else does

    @property
    def held(self) -> bool:
        return self._lease != 0 and time.monotonic() < self._expires

    async def try_take(self) -> bool:
        """Hold the role or keep holding it (renewing the lease); False when another agent holds it."""
        try:
            if self._lease:
                if await self._client.keepalive(self._lease) > 0:
                    self._expires = time.monotonic() + self._ttl
                    return True
                self._lease = 0  # expired: the key went with it
            lease = await self._client.grant(self._ttl)
            held = await self._client.create(self._key, holder_value(self._what), lease)
        except AgentError:
            return self.held  # etcd unreachable: keep what the lease still guarantees
        if held is not None:
            self.holder = describe_holder(held.value)
            with contextlib.suppress(AgentError):
                await self._client.revoke(lease)
            return False
        self._lease, self._expires, self.holder = lease, time.monotonic() + self._ttl, ""
        return True

    async def give_up(self) -> None:
        if self._lease:
            with contextlib.suppress(AgentError):
                await self._client.revoke(self._lease)
        self._lease = 0
