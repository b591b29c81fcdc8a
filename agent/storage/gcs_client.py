"""The Google Cloud Storage JSON API over aiohttp, as the GCS backend needs it: credentials, one request
with retries, listing, batch deletes, resumable upload sessions and ranged reads.

Every request is retried on its own (5xx, 408, 429, timeouts, dropped connections) with exponential
backoff and jitter. Credentials come from Google's default chain through gcloud-aio-auth
(GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials, workload identity federation,
the metadata server); an `http://` endpoint (an emulator) gets none, so a token never travels in clear
text. Tokens and resumable session URIs (which grant upload rights) never appear in messages or logs.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp

from agent.errors import PermissionDenied, StorageError, StorageUnreachable
from agent.storage.gcs_parts import (
    ATTEMPTS,
    DEFAULT_CHUNK,
    backoff,
    batch_delete_body,
    batch_statuses,
    content_range,
    is_retryable,
    object_path,
    persisted,
)

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
DELETE_BATCH = 100  # the JSON API's limit of calls per batch request
CONNECTIONS = 32
CONNECTION_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)


@dataclass(frozen=True)
class GcsSettings:
    bucket: str
    root: str = ""
    endpoint: str = ""  # empty: the real service
    chunk_size: int = DEFAULT_CHUNK  # bytes per resumable chunk (a multiple of 256 KiB) for unhinted objects


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}


class ChunkOutcome:
    """What a chunk PUT left: the upload finished, or `persisted` bytes held by the server."""

    def __init__(self, finished: bool, persisted: int) -> None:
        self.finished = finished
        self.persisted = persisted


def _error_detail(reply: Reply) -> str:
    try:
        message = str(reply.json().get("error", {}).get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    return f"HTTP {reply.status}{': ' + message[:300] if message else ''}"


def describe_error(e: BaseException) -> str:
    """A connection error for a message, without the URL some carry (a session URI grants upload rights)."""
    if isinstance(e, aiohttp.ClientResponseError):
        return f"{type(e).__name__} (HTTP {e.status})"
    if isinstance(e, aiohttp.InvalidURL):
        return type(e).__name__
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class GcsClient:
    """One aiohttp session (opened on first use) and, against the real service, one token source."""

    def __init__(self, settings: GcsSettings) -> None:
        self.settings = settings
        self.endpoint = (settings.endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.anonymous = urlsplit(self.endpoint).scheme == "http"
        self._session: aiohttp.ClientSession | None = None
        self._token: Any = None
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        root = self.settings.root.strip("/")
        return f"gs://{self.settings.bucket}/{root}".rstrip("/")

    async def session(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None:
                connector = aiohttp.TCPConnector(limit=CONNECTIONS)
                self._session = aiohttp.ClientSession(connector=connector, timeout=TIMEOUT)
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._token = None

    async def _authorization(self) -> dict[str, str]:
        if self.anonymous:
            return {}
        session = await self.session()
        try:
            if self._token is None:
                from gcloud.aio.auth import Token  # only agents on GCS load it

                self._token = Token(session=cast(Any, session), scopes=SCOPES)
            token = await self._token.get()
        except Exception as e:
            status = f" (HTTP {e.status})" if isinstance(e, aiohttp.ClientResponseError) else ""
            raise StorageError(
                f"cannot get Google Cloud credentials for {self.describe()}: {type(e).__name__}{status}; set "
                "GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run where the metadata server "
                "provides one (GCE, GKE workload identity)"
            ) from None
        return {"Authorization": f"Bearer {token}"}

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.endpoint + path

    async def _once(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str],
        data: bytes | None,
    ) -> Reply:
        session = await self.session()
        body = io.BytesIO(data) if data is not None else None  # written in slices: the loop stays free
        all_headers = {**headers, **await self._authorization()}
        async with session.request(method, url, params=params, headers=all_headers, data=body) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def request(
        self,
        what: str,
        method: str,
        path: str,
        *,
        ok: Collection[int] = (200,),
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
    ) -> Reply:
        """One API call, retried on transient failures. Answers with a status in `ok` are returned;
        others raise StorageError (PermissionDenied for 401/403) saying what failed."""
        url = self.url(path)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                reply = await self._once(method, url, params, headers or {}, data)
            except CONNECTION_ERRORS as e:
                if attempt == ATTEMPTS:
                    raise StorageUnreachable(
                        f"{what} on {self.describe()} failed after {ATTEMPTS} attempts: {describe_error(e)}"
                    ) from None
            else:
                if reply.status in ok:
                    return reply
                self.raise_unless_retryable(what, reply, last=attempt == ATTEMPTS)
            await asyncio.sleep(backoff(attempt, random.random()))
        raise AssertionError("unreachable")

    def raise_unless_retryable(self, what: str, reply: Reply, *, last: bool) -> None:
        if reply.status in (401, 403):
            raise PermissionDenied(
                f"{what} on {self.describe()} was refused ({_error_detail(reply)}): the credentials need "
                "roles/storage.objectAdmin on the bucket"
            )
        if not is_retryable(reply.status) or last:
            raise StorageError(f"{what} on {self.describe()} failed: {_error_detail(reply)}")

    async def list_names(
        self, prefix: str, delimiter: str = "", max_results: int = 0
    ) -> tuple[list[str], list[str]]:
        """(object names, prefixes) under `prefix`, all pages (just one with `max_results`)."""
        names: list[str] = []
        prefixes: list[str] = []
        params = {"prefix": prefix, "fields": "items(name),prefixes,nextPageToken"}
        if delimiter:
            params["delimiter"] = delimiter
        if max_results:
            params["maxResults"] = str(max_results)
        bucket = self.settings.bucket
        while True:
            page = (
                await self.request(f"listing {prefix}", "GET", f"/storage/v1/b/{bucket}/o", params=params)
            ).json()
            names += [item["name"] for item in page.get("items") or []]
            prefixes += list(page.get("prefixes") or [])
            token = page.get("nextPageToken")
            if not token or max_results:
                return names, prefixes
            params["pageToken"] = token

    async def size(self, name: str) -> int | None:
        reply = await self.request(
            f"reading the size of {name}", "GET", object_path(self.settings.bucket, name),
            ok=(200, 404), params={"fields": "size"},
        )  # fmt: skip
        return None if reply.status == 404 else int(reply.json()["size"])

    async def delete(self, names: list[str]) -> None:
        """Delete objects, 100 per batch request; objects already gone are fine."""
        for i in range(0, len(names), DELETE_BATCH):
            await self._delete_batch(names[i : i + DELETE_BATCH])

    async def _delete_batch(self, names: list[str]) -> None:
        boundary = "batch_" + secrets.token_hex(12)
        headers = {"Content-Type": f"multipart/mixed; boundary={boundary}"}
        body = batch_delete_body(self.settings.bucket, names, boundary)
        for attempt in range(1, ATTEMPTS + 1):
            reply = await self.request(
                "deleting objects", "POST", "/batch/storage/v1", headers=headers, data=body
            )
            statuses = batch_statuses(reply.body)
            failed = [s for s in statuses if s not in (200, 204, 404)]
            if len(statuses) < len(names):
                raise StorageError(
                    f"deleting objects on {self.describe()}: the batch answer lacks some results"
                )
            if not failed:
                return
            # the whole batch again: deleting an object twice is harmless (404)
            self.raise_unless_retryable(
                "deleting objects", Reply(failed[0], {}, b""), last=attempt == ATTEMPTS
            )
            await asyncio.sleep(backoff(attempt, random.random()))

    async def put_small(self, name: str, data: bytes) -> None:
        """Write a whole object in one request (simple media upload)."""
        await self.request(
            f"writing {name}", "POST", f"/upload/storage/v1/b/{self.settings.bucket}/o",
            params={"uploadType": "media", "name": name},
            headers={"Content-Type": "application/octet-stream"}, data=data,
        )  # fmt: skip

    async def start_upload(self, name: str) -> str:
        """Open a resumable upload session; its URI (a capability: never log it) takes the chunks."""
        reply = await self.request(
            f"starting the upload of {name}", "POST", f"/upload/storage/v1/b/{self.settings.bucket}/o",
            params={"uploadType": "resumable", "name": name},
            headers={"Content-Type": "application/json; charset=UTF-8",
                     "X-Upload-Content-Type": "application/octet-stream"},
            data=json.dumps({"name": name}).encode(),
        )  # fmt: skip
        location = reply.headers.get("Location")
        if not location:
            raise StorageError(
                f"starting the upload of {name} on {self.describe()}: no session URI in the answer"
            )
        return location

    async def put_chunk(self, session: str, data: bytes, start: int, total: int | None) -> ChunkOutcome:
        """One attempt at sending a chunk at offset `start`. Raises StorageError for answers that are not
        worth retrying, RetryableChunk for those that are, connection errors as they come."""
        headers = {"Content-Range": content_range(start, len(data), total)}
        reply = await self._once("PUT", session, None, headers, data)
        return self._chunk_outcome(reply, "uploading a chunk")

    async def upload_status(self, session: str) -> ChunkOutcome:
        """One attempt at asking how much of an upload the server holds (to resume from there)."""
        reply = await self._once("PUT", session, None, {"Content-Range": "bytes */*"}, None)
        return self._chunk_outcome(reply, "checking an upload")

    def _chunk_outcome(self, reply: Reply, what: str) -> ChunkOutcome:
        if reply.status in (200, 201):
            return ChunkOutcome(True, -1)
        if reply.status == 308:
            try:
                return ChunkOutcome(False, persisted(reply.headers.get("Range")))
            except ValueError as e:
                raise StorageError(f"{what} on {self.describe()}: {e}") from None
        if reply.status in (404, 410):
            raise StorageError(
                f"{what} on {self.describe()} failed: the upload session expired or was cancelled "
                f"({_error_detail(reply)}); run the backup again"
            )
        self.raise_unless_retryable(what, reply, last=False)
        raise RetryableChunk(_error_detail(reply))

    async def cancel_upload(self, session: str) -> None:
        """Cancel a resumable session (GCS answers 499); best effort, one attempt each."""
        for attempt in range(1, 3):
            try:
                reply = await self._once("DELETE", session, None, {"Content-Length": "0"}, None)
            except CONNECTION_ERRORS:
                reply = Reply(503, {}, b"")
            if not is_retryable(reply.status) or reply.status == 501:
                return
            await asyncio.sleep(backoff(attempt, random.random()))

    async def open_read(
        self, name: str, offset: int, generation: str | None
    ) -> aiohttp.ClientResponse | None:
        """A streaming GET of an object from byte `offset` (None if it does not exist); the caller closes
        it. `generation` pins a resumed read to the object the first read saw."""
        params = {"alt": "media"}
        if generation:
            params["generation"] = generation
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        url = self.url(object_path(self.settings.bucket, name))
        for attempt in range(1, ATTEMPTS + 1):
            session = await self.session()
            try:
                resp = await session.get(
                    url, params=params, headers={**headers, **await self._authorization()}
                )
            except CONNECTION_ERRORS as e:
                if attempt == ATTEMPTS:
                    raise StorageError(
                        f"reading {name} from {self.describe()} failed: {describe_error(e)}"
                    ) from None
            else:
                if resp.status in (200, 206):
                    return resp
                reply = Reply(resp.status, resp.headers, await resp.read())
                resp.release()
                if reply.status == 404:
                    return None
                self.raise_unless_retryable(f"reading {name}", reply, last=attempt == ATTEMPTS)
            await asyncio.sleep(backoff(attempt, random.random()))
        raise AssertionError("unreachable")


class RetryableChunk(Exception):
    """A chunk PUT got a transient error answer (5xx, 429, 408): query the upload status and resume."""
