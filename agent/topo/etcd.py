"""A small async etcd v3 client over etcd's JSON gateway (`/v3/...`, served by every etcd 3.4+ on its
client port): keys and values are base64 in JSON, int64s are strings. The agent already speaks gRPC as a
server; a second gRPC stack as a client would buy nothing for the handful of calls the topology makes.

Endpoints are tried in order until one answers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from agent.errors import AgentError, Unavailable

TIMEOUT = aiohttp.ClientTimeout(total=10)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    lease: int
    create_revision: int


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")),
        value=base64.b64decode(raw.get("value", "")),
        lease=int(raw.get("lease", 0)),
        create_revision=int(raw.get("create_revision", 0)),
    )


class EtcdError(AgentError):
    pass


class EtcdClient:
    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self._endpoints = [e if "://" in e else f"http://{e}" for e in endpoints]
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        errors = []
        for endpoint in self._endpoints:
            try:
                async with self._session.post(f"{endpoint}/v3/{path}", data=json.dumps(body)) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise EtcdError(f"etcd {endpoint} /v3/{path}: HTTP {resp.status}: {text[:200]}")
                    # keepalive answers with a stream of {"result": ...} objects; the first is enough
                    first = json.JSONDecoder().raw_decode(text.strip())[0]
                    return dict(first.get("result", first))
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                errors.append(f"{endpoint}: {type(e).__name__}: {e}")
        raise Unavailable(
            f"no etcd endpoint answered ({'; '.join(errors)}): check --topo_global_server_address"
        )

    async def grant(self, ttl: int) -> int:
        return int((await self._post("lease/grant", {"TTL": ttl}))["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew a lease; its remaining TTL (0: it expired, its keys are gone)."""
        return int((await self._post("lease/keepalive", {"ID": str(lease)})).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self._post("lease/revoke", {"ID": str(lease)})

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        await self._post("kv/put", body)

    async def get_prefix(self, prefix: bytes) -> list[KeyValue]:
        result = await self._post("kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return [_kv(raw) for raw in result.get("kvs", [])]

    async def get(self, key: bytes) -> KeyValue | None:
        kvs = (await self._post("kv/range", {"key": _b64(key)})).get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def delete(self, key: bytes) -> None:
        await self._post("kv/deleterange", {"key": _b64(key)})

    async def create(self, key: bytes, value: bytes, lease: int) -> KeyValue | None:
        """Put `key` only if it does not exist; None on success, else the existing entry."""
        k = _b64(key)
        result = await self._post(
            "kv/txn",
            {
                "compare": [{"key": k, "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": k, "value": _b64(value), "lease": str(lease)}}],
                "failure": [{"request_range": {"key": k}}],
            },
        )
        if result.get("succeeded"):
            return None
        kvs = result["responses"][0]["response_range"].get("kvs", [])
        return _kv(kvs[0]) if kvs else KeyValue(key, b"", 0, 0)
