"""The Azure Blob REST calls the azblob backend makes: Shared Key signing, one aiohttp session, retries.

Every request is signed with the account key (Shared Key, the scheme Vitess's azblob storage uses) and
retried with exponential backoff and jitter on 5xx, 408/429 (throttling), timeouts and dropped
connections. The key is held decoded, only in memory, and never put in a message, a log line or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import random
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import quote

import aiohttp
from yarl import URL

from agent.errors import (
    AgentError,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    StorageError,
    StorageUnreachable,
)

API_VERSION = "2021-12-02"  # blocks up to 4000 MiB, 50,000 blocks per blob
ATTEMPTS = 5
BACKOFF_BASE = 0.2
BACKOFF_MAX = 8.0
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # longest silence on a socket (a slow block upload, a stalled download)
READ_BUFFER = 1 << 20  # bytes a response may buffer before the socket is paused (aiohttp: 64 KiB)
SIGNED_HEADERS = (
    "content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
    "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range",
)  # fmt: skip
CONNECTION_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


@dataclass(frozen=True)
class Account:
    """A storage account and its Shared Key (decoded). The key never shows in a repr."""

    name: str
    key: bytes = field(repr=False)

    @classmethod
    def from_base64(cls, name: str, key: str, source: str) -> Account:
        """`source` names where the key came from, for the message when it is not valid base64."""
        try:
            decoded = base64.b64decode(key.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise FailedPrecondition(
                f"the Azure Storage account key from {source} is not valid base64: copy the key1 or key2 "
                "value of the storage account (Access keys) exactly"
            ) from None
        if not decoded:
            raise FailedPrecondition(f"the Azure Storage account key from {source} is empty")
        return cls(name, decoded)


def canonical_headers(headers: Mapping[str, str]) -> str:
    ms = sorted((k.lower(), " ".join(v.split())) for k, v in headers.items() if k.lower().startswith("x-ms-"))
    return "".join(f"{k}:{v}\n" for k, v in ms)


def canonical_resource(account: str, path: str, query: Mapping[str, str]) -> str:
    """`/<account><path as sent>` and the query parameters, sorted, decoded."""
    params = "".join(f"\n{k.lower()}:{v}" for k, v in sorted(query.items(), key=lambda kv: kv[0].lower()))
    return f"/{account}{path}{params}"


def string_to_sign(
    method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], account: str
) -> str:
    lower = {k.lower(): v for k, v in headers.items()}
    standard = [lower.get(h, "") for h in SIGNED_HEADERS]
    if standard[2] == "0":
        standard[2] = ""  # Content-Length 0 is signed as empty (API versions 2015-02-21 and later)
    return (
        "\n".join([method, *standard])
        + "\n"
        + canonical_headers(headers)
        + canonical_resource(account, path, query)
    )


def authorization(
    account: Account, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]
) -> str:
    """The `Authorization: SharedKey` header value for one request."""
    text = string_to_sign(method, path, query, headers, account.name)
    digest = hmac.new(account.key, text.encode(), hashlib.sha256).digest()
    return f"SharedKey {account.name}:{base64.b64encode(digest).decode()}"


def backoff(attempt: int) -> float:
    """Seconds before retry `attempt` (1-based): exponential, capped, with jitter (50-100%)."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1)) * (0.5 + random.random() / 2))


def is_retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class ServiceError(Exception):
    """A non-retryable answer of the service; callers turn it into an AgentError."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code or 'error'} (HTTP {status}){': ' + message if message else ''}")
        self.status = status
        self.code = code


def _service_error(status: int, headers: Mapping[str, str], body: bytes) -> ServiceError:
    code = headers.get("x-ms-error-code", "")
    message = ""
    try:
        root = ET.fromstring(body) if body else None
    except ET.ParseError:
        root = None
    if root is not None:
        code = code or (root.findtext("Code") or "")
        message = (root.findtext("Message") or "").splitlines()[0] if root.findtext("Message") else ""
    return ServiceError(status, code, message)


class BlobService:
    """One container of one account, reached at `endpoint` (default: the public Azure cloud)."""

    def __init__(self, account: Account, container: str, endpoint: str | None, connections: int) -> None:
        self.account = account
        self.container = container
        base = URL(endpoint or f"https://{account.name}.blob.core.windows.net")
        self._origin = base.origin()
        self._prefix = base.raw_path.rstrip("/")
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def describe(self) -> str:
        return f"azblob://{self.account.name}/{self.container}"

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
                auto_decompress=False,
                read_bufsize=READ_BUFFER,
                skip_auto_headers=("Content-Type",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def path(self, blob: str | None) -> str:
        """The URL path (percent-encoded, as sent and as signed) of the container or one of its blobs."""
        container = f"{self._prefix}/{quote(self.container, safe='')}"
        return container if blob is None else f"{container}/{quote(blob, safe='/')}"

    def _prepare(
        self,
        method: str,
        blob: str | None,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> tuple[URL, dict[str, str]]:
        path = self.path(blob)
        all_headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": API_VERSION, **headers}
        if body is not None:
            all_headers["Content-Length"] = str(len(body))
            all_headers.setdefault("Content-Type", "application/octet-stream")
        all_headers["Authorization"] = authorization(self.account, method, path, query, all_headers)
        qs = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items())
        return URL(f"{self._origin}{path}{'?' + qs if qs else ''}", encoded=True), all_headers

    async def open(
        self,
        what: str,
        method: str,
        blob: str | None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> aiohttp.ClientResponse:
        """One request, retried while the answer is transient; the successful response is returned unread
        (the caller releases it). 404 raises NotFound; other refusals a StorageError that says why."""
        for attempt in range(1, ATTEMPTS + 1):
            url, signed = self._prepare(method, blob, query or {}, headers or {}, body)
            try:
                resp = await self.session().request(method, url, headers=signed, data=body)
            except CONNECTION_ERRORS as e:
                if attempt == ATTEMPTS:
                    raise StorageUnreachable(
                        f"{what} on {self.describe()} failed after {ATTEMPTS} attempts: {type(e).__name__}: {e}"
                    ) from None
                await asyncio.sleep(backoff(attempt))
                continue
            if resp.status < 300:
                return resp
            try:
                error_body = await resp.read()
            except CONNECTION_ERRORS:
                error_body = b""
            finally:
                resp.release()
            error = _service_error(resp.status, resp.headers, error_body if method != "HEAD" else b"")
            if not is_retryable(resp.status) or attempt == ATTEMPTS:
                raise self._agent_error(what, error, attempt)
            await asyncio.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    async def call(
        self,
        what: str,
        method: str,
        blob: str | None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        """A request whose (small) answer is read whole; a connection lost while reading it is retried too."""
        for attempt in range(1, ATTEMPTS + 1):
            resp = await self.open(what, method, blob, query=query, headers=headers, body=body)
            try:
                data = await resp.read()
                return Reply(resp.status, resp.headers, data)
            except CONNECTION_ERRORS as e:
                if attempt == ATTEMPTS:
                    raise StorageError(
                        f"{what} on {self.describe()} failed reading the answer: {e}"
                    ) from None
            finally:
                resp.release()
            await asyncio.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def _agent_error(self, what: str, error: ServiceError, attempts: int) -> AgentError:
        where = self.describe()
        if error.code == "ContainerNotFound":
            return FailedPrecondition(
                f"{what} failed: container {self.container!r} does not exist in storage account "
                f"{self.account.name!r}: create it or fix --azblob_backup_container_name"
            )
        if error.status == 404:
            return NotFound(f"{what} on {where}: not found ({error})")
        if error.status == 403:
            return PermissionDenied(
                f"{what} on {where} was refused: {error}; check --azblob_backup_account_name and the account "
                "key (--azblob_backup_account_key_file or VT_AZBLOB_ACCOUNT_KEY), and the machine's clock"
            )
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return StorageError(f"{what} on {where} failed{tries}: {error}")


@dataclass(frozen=True)
class Listing:
    blobs: list[tuple[str, int]]  # (name, size)
    prefixes: list[str]


async def list_blobs(service: BlobService, prefix: str, delimiter: str = "", limit: int = 0) -> Listing:
    """Blobs (committed only) and, with a delimiter, the prefixes under `prefix`; every page, or only the
    first `limit` entries when limit > 0."""
    blobs: list[tuple[str, int]] = []
    prefixes: list[str] = []
    marker = ""
    while True:
        query = {"restype": "container", "comp": "list", "prefix": prefix}
        if delimiter:
            query["delimiter"] = delimiter
        if limit:
            query["maxresults"] = str(limit)
        if marker:
            query["marker"] = marker
        reply = await service.call(f"listing {prefix or '/'}", "GET", None, query=query)
        root = ET.fromstring(reply.body)
        for b in root.iterfind("Blobs/Blob"):
            blobs.append((b.findtext("Name") or "", int(b.findtext("Properties/Content-Length") or 0)))
        prefixes += [p.findtext("Name") or "" for p in root.iterfind("Blobs/BlobPrefix")]
        marker = root.findtext("NextMarker") or ""
        if not marker or limit:
            return Listing(blobs, prefixes)
