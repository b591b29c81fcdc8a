"""A small async etcd v3 client over etcd's JSON gateway (`/v3/...`, served by every etcd 3.4+ on its
client port): keys and values are base64 in JSON, int64s are strings. The agent already speaks gRPC as a
server; a second gRPC stack as a client would buy nothing for the handful of calls the topology makes.

Endpoints are tried in order until one answers. TLS (server CA, client certificate, server name) and
etcd's user/password authentication (`/v3/auth/authenticate`, the token sent in the `Authorization`
header and fetched again when etcd says it expired) are those of `EtcdSettings`, shared by every client
the agent opens (the global topology and each cell's).
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from agent.errors import AgentError, ConfigError, FailedPrecondition, PermissionDenied, Unavailable

TIMEOUT = aiohttp.ClientTimeout(total=10)
PASSWORD_ENV = "TABLET_AGENT_TOPO_ETCD_PASSWORD"
_AUTH_CODES = (16,)  # gRPC UNAUTHENTICATED: the token expired or was revoked


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


def split_endpoints(addresses: str) -> list[str]:
    return [e.strip() for e in addresses.split(",") if e.strip()]


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    lease: int
    create_revision: int
    mod_revision: int = 0


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")),
        value=base64.b64decode(raw.get("value", "")),
        lease=int(raw.get("lease", 0)),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
    )


class EtcdError(AgentError):
    pass


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd, as Vitess's `--topo_etcd_tls_*` flags (plus user/password authentication)."""

    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str = ""
    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca is not None else None)
            if self.tls_cert is not None:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key) if self.tls_key else None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"cannot load the etcd TLS files (--topo_etcd_tls_ca/--topo_etcd_tls_cert/--topo_etcd_tls_key): {e}"
            ) from None
        return context


class EtcdClient:
    def __init__(self, endpoints: Sequence[str], settings: EtcdSettings | None = None) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.settings = settings or EtcdSettings()
        self._endpoints = [self._url(e) for e in endpoints]
        self._ssl = self.settings.ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._token = ""

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    def _url(self, endpoint: str) -> str:
        return endpoint if "://" in endpoint else f"{'https' if self.settings.tls else 'http'}://{endpoint}"

    def serves(self, addresses: str) -> bool:
        """Whether `addresses` (a CellInfo's server_address) are this client's endpoints."""
        return [self._url(e) for e in split_endpoints(addresses)] == self._endpoints

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.settings.username and not self._token:
            await self._authenticate()
        try:
            return await self._post_once(path, body)
        except _TokenExpired:
            await self._authenticate()
            return await self._post_once(path, body)

    async def _authenticate(self) -> None:
        self._token = ""
        try:
            result = await self._post_once(
                "auth/authenticate", {"name": self.settings.username, "password": self.settings.password}
            )
        except (EtcdError, _TokenExpired) as e:
            raise PermissionDenied(
                f"etcd refused user {self.settings.username!r}: check --topo_etcd_username and the password in "
                f"{PASSWORD_ENV} ({e})"
            ) from None
        self._token = str(result.get("token", ""))

    async def _post_once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        headers = {"Authorization": self._token} if self._token else {}
        errors = []
        for endpoint in self._endpoints:
            try:
                async with self._session.post(
                    f"{endpoint}/v3/{path}",
                    data=json.dumps(body),
                    headers=headers,
                    ssl=self._ssl if self._ssl is not None else True,
                    server_hostname=self.settings.tls_server_name or None,
                ) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        _raise_for(endpoint, path, resp.status, text)
                    # keepalive answers with a stream of {"result": ...} objects; the first is enough
                    first = json.JSONDecoder().raw_decode(text.strip())[0]
                    return dict(first.get("result", first))
            except (aiohttp.ClientError, TimeoutError, ValueError, ssl.SSLError) as e:
                errors.append(f"{endpoint}: {type(e).__name__}: {e}")
        raise Unavailable(
            f"no etcd endpoint answered ({'; '.join(errors)}): check the topology server addresses "
            "(--topo_global_server_address, the cell's CellInfo) and the --topo_etcd_tls_* files"
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

    async def last_before(self, prefix: bytes, revision: int) -> KeyValue | None:
        """The most recently modified key under `prefix` older than `revision` (clientv3's
        `WithLastRev` + `WithMaxModRev(revision-1)`)."""
        result = await self._post(
            "kv/range",
            {
                "key": _b64(prefix),
                "range_end": _b64(prefix_end(prefix)),
                "sort_order": "DESCEND",
                "sort_target": "MOD",
                "limit": 1,
                "max_mod_revision": str(revision - 1),
            },
        )
        kvs = result.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def delete(self, key: bytes) -> None:
        await self._post("kv/deleterange", {"key": _b64(key)})

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> KeyValue | None:
        """Put `key` only if it does not exist (Vitess's `Create`: version 0); None on success, else the
        existing entry."""
        k = _b64(key)
        put: dict[str, Any] = {"key": k, "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        result = await self._post(
            "kv/txn",
            {
                "compare": [{"key": k, "target": "VERSION", "version": "0"}],
                "success": [{"request_put": put}],
                "failure": [{"request_range": {"key": k}}],
            },
        )
        if result.get("succeeded"):
            return None
        kvs = result["responses"][0]["response_range"].get("kvs", [])
        return _kv(kvs[0]) if kvs else KeyValue(key, b"", 0, 0)

    async def update(self, key: bytes, value: bytes, mod_revision: int) -> bool:
        """Put `key` only if it was not modified since `mod_revision` (Vitess's `Update` with a version);
        False when someone else wrote it first (read it again and retry)."""
        k = _b64(key)
        result = await self._post(
            "kv/txn",
            {
                "compare": [{"key": k, "target": "MOD", "mod_revision": str(mod_revision)}],
                "success": [{"request_put": {"key": k, "value": _b64(value)}}],
            },
        )
        return bool(result.get("succeeded"))


class _TokenExpired(Exception):
    pass


def _raise_for(endpoint: str, path: str, status: int, text: str) -> None:
    try:
        error = json.loads(text)
        code, message = int(error.get("code", 0)), str(error.get("message") or error.get("error") or text)
    except (ValueError, AttributeError):
        code, message = 0, text[:200]
    if (status == 401 or code in _AUTH_CODES) and path != "auth/authenticate":
        raise _TokenExpired(message)
    if status == 400 and "CommonName" in message:
        raise FailedPrecondition(
            f"etcd {endpoint} refuses the client certificate: with authentication on, etcd's JSON gateway "
            "(which the agent speaks) rejects client certificates that carry a Common Name; issue "
            "--topo_etcd_tls_cert without a CN (subjectAltName only): the user is --topo_etcd_username"
        )
    if code == 7 or status == 403:  # PERMISSION_DENIED: the user's role lacks the key range
        raise PermissionDenied(
            f"etcd {endpoint} /v3/{path}: {message}: grant --topo_etcd_username's role readwrite on the "
            "topology roots (etcdctl role grant-permission ROLE --prefix=true readwrite /vitess/)"
        )
    raise EtcdError(f"etcd {endpoint} /v3/{path}: HTTP {status}: {message[:200]}")
