"""S3-compatible object storage (`--backup_storage_implementation=s3`), with Vitess's flags and layout.

Objects are `<root>/<keyspace>/<shard>/<backup>/<file>` in the bucket. A writer streams a multipart
upload: parts are cut from the stream (bounded memory: at most IN_FLIGHT parts buffered), uploaded
concurrently, each retried with backoff on 5xx/throttling/connection errors; a failure aborts the
upload so no part lingers. Small objects are one PutObject. An object exists under its name only once
its upload completed, so a MANIFEST (written last) is only listed when every data object is complete.
Reads are one streaming GET, resumed with a Range request if the connection breaks. Credentials come
from the AWS default chain (environment, shared files, instance roles) and are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from agent.errors import AgentError, NotFound, StorageError, StorageUnreachable
from agent.storage.objects import ConcurrentParts, ObjectStorage, PartRules

MIB = 1 << 20
MIN_PART = 5 * MIB
DEFAULT_PART = 16 * MIB
# S3 limits: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000 parts per object, objects
# up to 5 TiB. With a size hint, one part size is chosen so the object fits in 9,000 parts (room for the
# hint to be low by 10%). Without one, parts start at the minimum and double every 1,000 parts, which
# still reaches 5 TiB within 10,000 parts while small streams use little memory.
PARTS = PartRules("parts", max_part=5 << 30, max_parts=10_000, target_parts=9_000, doubling_every=1_000)
RETRYABLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "InternalError",
     "ServiceUnavailable", "503", "500", "502", "504"}
)  # fmt: skip
ATTEMPTS = 5
BACKOFF_BASE = 0.2
BACKOFF_MAX = 5.0
IN_FLIGHT = 4
READ_CHUNK = 1 << 20
DELETE_BATCH = 1000
CONNECTION_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    root: str = ""
    region: str | None = None
    endpoint: str | None = None
    force_path_style: bool = False
    server_side_encryption: str = ""
    min_part_size: int = 5 << 20
    attempts: int = ATTEMPTS  # per request (Vitess's --s3_backup_aws_retries, -1 meaning the default)
    verify_tls: bool = True  # False: --s3_backup_tls_skip_verify_cert


def part_size(size_hint: int, min_part: int = MIN_PART) -> int:
    """The part size for an object of `size_hint` bytes (-1: unknown, then the first part's size)."""
    floor = max(MIN_PART, min_part)
    return PARTS.first(size_hint, floor, max(floor, DEFAULT_PART))


def backoff(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (1-based)."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * (2 ** (attempt - 1))))


def is_retryable(status: int | None, code: str) -> bool:
    return (status is not None and status >= 500) or status == 429 or code in RETRYABLE_CODES


def _status(e: botocore.exceptions.ClientError) -> tuple[int | None, str]:
    meta = e.response.get("ResponseMetadata", {})
    status = meta.get("HTTPStatusCode")
    return (int(status) if status is not None else None), str(e.response.get("Error", {}).get("Code", ""))


def _describe(e: BaseException) -> str:
    if isinstance(e, botocore.exceptions.ClientError):
        status, code = _status(e)
        message = e.response.get("Error", {}).get("Message", "")
        return f"{code or 'error'} (HTTP {status}){': ' + message if message else ''}"
    return f"{type(e).__name__}: {e}"


class S3BackupStorage(ObjectStorage):
    def __init__(self, settings: S3Settings) -> None:
        super().__init__(settings.root)
        self.settings = settings
        self._client: Any = None
        self._client_cm: Any = None
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        return f"s3://{self.settings.bucket}/{self._root}".rstrip("/")

    def encryption_args(self) -> dict[str, str]:
        sse = self.settings.server_side_encryption
        return {"ServerSideEncryption": sse} if sse else {}

    async def client(self) -> Any:
        async with self._lock:
            if self._client is None:
                s = self.settings
                config = AioConfig(
                    s3={"addressing_style": "path" if s.force_path_style else "auto"},
                    retries={"total_max_attempts": 1},  # retries are ours, per part
                    max_pool_connections=IN_FLIGHT * 4,
                    connect_timeout=10,
                    read_timeout=60,
                )
                self._client_cm = get_session().create_client(
                    "s3",
                    region_name=s.region or "us-east-1",
                    endpoint_url=s.endpoint or None,
                    config=config,
                    verify=s.verify_tls,
                )
                self._client = await self._client_cm.__aenter__()
            return self._client

    async def close(self) -> None:
        if self._client_cm is not None:
            await self._client_cm.__aexit__(None, None, None)
            self._client = self._client_cm = None

    async def call(self, what: str, method: str, **kwargs: Any) -> Any:
        """Run one S3 request (`method` of the client) with retries on transient errors; StorageError
        when they persist. Not found is raised as botocore's ClientError for the caller to decide."""
        client = await self.client()
        attempts = self.settings.attempts
        for attempt in range(1, attempts + 1):
            try:
                return await getattr(client, method)(**kwargs)
            except botocore.exceptions.ClientError as e:
                status, code = _status(e)
                if status == 404 or code in ("NoSuchKey", "NotFound", "NoSuchUpload"):
                    raise
                if not is_retryable(status, code) or attempt == attempts:
                    raise StorageError(f"{what} on {self.describe()} failed: {_describe(e)}") from None
            except CONNECTION_ERRORS as e:
                if attempt == attempts:
                    raise StorageUnreachable(
                        f"{what} on {self.describe()} failed after {attempts} attempts: {_describe(e)}"
                    ) from None
            except botocore.exceptions.NoCredentialsError:
                raise StorageError(
                    "no AWS credentials for the S3 backup storage: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    "AWS_PROFILE or an instance role"
                ) from None
            await asyncio.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    async def list_names(
        self, prefix: str, delimiter: str = "", limit: int = 0
    ) -> tuple[list[str], list[str]]:
        keys: list[str] = []
        prefixes: list[str] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.settings.bucket, "Prefix": prefix}
            if delimiter:
                args["Delimiter"] = delimiter
            if limit:
                args["MaxKeys"] = limit
            if token:
                args["ContinuationToken"] = token
            page = await self.call(f"listing {prefix}", "list_objects_v2", **args)
            keys += [o["Key"] for o in page.get("Contents", [])]
            prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated") or limit:
                return keys, prefixes
            token = page.get("NextContinuationToken")

    async def exists(self, directory: str, name: str, why: str = "checking the backup exists") -> bool:
        prefix = self.key(directory, name) + "/"
        page = await self.call(why, "list_objects_v2", Bucket=self.settings.bucket, Prefix=prefix, MaxKeys=1)
        return bool(page.get("KeyCount", 0))

    async def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), DELETE_BATCH):
            batch = {"Objects": [{"Key": k} for k in keys[i : i + DELETE_BATCH]], "Quiet": True}
            result = await self.call(
                "deleting objects", "delete_objects", Bucket=self.settings.bucket, Delete=batch
            )
            if result.get("Errors"):
                first = result["Errors"][0]
                raise StorageError(
                    f"cannot delete {first.get('Key')} in {self.describe()}: {first.get('Message')}"
                )

    def writer(self, name: str, size_hint: int) -> _S3Writer:
        return _S3Writer(self, name, size_hint)

    def read(self, name: str, what: str) -> AsyncIterator[bytes]:
        return _read(self, name, what)

    async def size(self, name: str) -> int | None:
        try:
            head = await self.call(
                f"reading the size of {name}", "head_object", Bucket=self.settings.bucket, Key=name
            )
        except botocore.exceptions.ClientError:
            return None
        return int(head["ContentLength"])

    async def put(self, name: str, data: bytes) -> None:
        await self.call(
            f"writing {name}", "put_object", Bucket=self.settings.bucket, Key=name, Body=data,
            **self.encryption_args(),
        )  # fmt: skip


async def _read(storage: S3BackupStorage, key: str, what: str) -> AsyncIterator[bytes]:
    """One streaming GET; if the connection breaks mid-object, resume from the next byte."""
    offset, attempt = 0, 0
    bucket = storage.settings.bucket
    while True:
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if offset:
            args["Range"] = f"bytes={offset}-"
        try:
            resp = await storage.call(f"reading {key}", "get_object", **args)
        except botocore.exceptions.ClientError as e:
            raise NotFound(f"{what} not found in {storage.describe()}") from e
        body = resp["Body"]
        try:
            while chunk := await body.read(READ_CHUNK):
                offset += len(chunk)
                yield chunk
            return
        except CONNECTION_ERRORS as e:
            attempt += 1
            if attempt >= storage.settings.attempts:
                raise StorageError(
                    f"reading {key} from {storage.describe()} failed at byte {offset}: {_describe(e)}"
                ) from None
            await asyncio.sleep(backoff(attempt))
        finally:
            body.close()


@dataclass
class _Upload:
    upload_id: str
    parts: dict[int, str] = field(default_factory=dict)  # part number -> ETag


class _S3Writer(ConcurrentParts):
    """A multipart upload, started with the first full part; a smaller object is one PutObject."""

    def __init__(self, storage: S3BackupStorage, key: str, size_hint: int) -> None:
        first = part_size(size_hint, storage.settings.min_part_size)
        super().__init__(key, PARTS, first, size_hint, IN_FLIGHT)
        self._storage = storage
        self._upload: _Upload | None = None

    async def _prepare(self) -> None:
        if self._upload is None:
            created = await self._storage.call(
                f"starting the upload of {self._name}",
                "create_multipart_upload",
                Bucket=self._storage.settings.bucket,
                Key=self._name,
                **self._storage.encryption_args(),
            )
            self._upload = _Upload(created["UploadId"])

    async def _send(self, number: int, data: bytes) -> None:
        upload = self._upload
        assert upload is not None
        resp = await self._storage.call(
            f"uploading part {number} of {self._name}",
            "upload_part",
            Bucket=self._storage.settings.bucket,
            Key=self._name,
            UploadId=upload.upload_id,
            PartNumber=number,
            Body=data,
        )
        upload.parts[number] = resp["ETag"]

    async def _finish(self, last: bytes) -> None:
        if self._upload is None:
            await self._storage.put(self._name, last)
            return
        if last or not self._parts:
            await self._submit(last)
        await self._drain()
        upload = self._upload
        parts = [{"PartNumber": n, "ETag": upload.parts[n]} for n in sorted(upload.parts)]
        await self._storage.call(
            f"completing the upload of {self._name}",
            "complete_multipart_upload",
            Bucket=self._storage.settings.bucket,
            Key=self._name,
            UploadId=upload.upload_id,
            MultipartUpload={"Parts": parts},
        )

    async def _discard(self) -> None:
        await super()._discard()
        upload = self._upload
        if upload is None:
            return
        # never hide the error that made us abort
        with contextlib.suppress(AgentError, botocore.exceptions.ClientError):
            await asyncio.shield(
                self._storage.call(
                    f"aborting the upload of {self._name}",
                    "abort_multipart_upload",
                    Bucket=self._storage.settings.bucket,
                    Key=self._name,
                    UploadId=upload.upload_id,
                )
            )
