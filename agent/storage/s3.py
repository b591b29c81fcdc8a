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

from agent.errors import AgentError, FailedPrecondition, NotFound, StorageError
from agent.storage.base import (
    BackupHandle,
    BackupWriter,
    HandleState,
    validate_backup_name,
    validate_directory,
    validate_object_name,
    validate_record_name,
)
from agent.storage.s3_parts import (
    ATTEMPTS,
    MAX_PARTS,
    backoff,
    is_retryable,
    part_size,
    part_size_for,
)

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


class S3BackupStorage:
    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._root = settings.root.strip("/")
        self._client: Any = None
        self._client_cm: Any = None
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        return f"s3://{self.settings.bucket}/{self._root}".rstrip("/")

    def encryption_args(self) -> dict[str, str]:
        sse = self.settings.server_side_encryption
        return {"ServerSideEncryption": sse} if sse else {}

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self._root, *parts) if p)

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
                    raise StorageError(
                        f"{what} on {self.describe()} failed after {attempts} attempts: {_describe(e)}"
                    ) from None
            except botocore.exceptions.NoCredentialsError:
                raise StorageError(
                    "no AWS credentials for the S3 backup storage: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                    "AWS_PROFILE or an instance role"
                ) from None
            await asyncio.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    async def _keys(self, prefix: str, delimiter: str = "") -> tuple[list[str], list[str]]:
        """(object keys, common prefixes) under `prefix`."""
        keys: list[str] = []
        prefixes: list[str] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.settings.bucket, "Prefix": prefix}
            if delimiter:
                args["Delimiter"] = delimiter
            if token:
                args["ContinuationToken"] = token
            page = await self.call(f"listing {prefix}", "list_objects_v2", **args)
            keys += [o["Key"] for o in page.get("Contents", [])]
            prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return keys, prefixes
            token = page.get("NextContinuationToken")

    async def list_backups(self, directory: str) -> list[BackupHandle]:
        validate_directory(directory)
        base = self.key(directory) + "/"
        _, prefixes = await self._keys(base, "/")
        names = []
        for p in prefixes:
            name = p[len(base) :].rstrip("/")
            with contextlib.suppress(AgentError):
                names.append(validate_backup_name(name))
        return [_S3Handle(self, directory, n, read_only=True) for n in sorted(names)]

    async def list_directories(self) -> list[str]:
        base = self.key() + "/" if self._root else ""
        _, keyspaces = await self._keys(base, "/")
        found = []
        for ks in keyspaces:
            _, shards = await self._keys(ks, "/")
            found += [s[len(base) :].rstrip("/") for s in shards]
        return sorted(found)

    async def start_backup(self, directory: str, name: str) -> BackupHandle:
        validate_directory(directory)
        validate_backup_name(name)
        prefix = self.key(directory, name) + "/"
        page = await self.call(
            "checking the backup name",
            "list_objects_v2",
            Bucket=self.settings.bucket,
            Prefix=prefix,
            MaxKeys=1,
        )
        if page.get("KeyCount", 0):
            raise FailedPrecondition(
                f"backup {directory}/{name} already exists in {self.describe()}: backup names are never reused"
            )
        return _S3Handle(self, directory, name, read_only=False)

    async def remove_backup(self, directory: str, name: str) -> None:
        validate_directory(directory)
        validate_backup_name(name)
        keys, _ = await self._keys(self.key(directory, name) + "/")
        if not keys:
            raise NotFound(f"backup {directory}/{name} not found in {self.describe()}")
        await self.delete(keys)

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


class _S3Handle(HandleState):
    def __init__(self, storage: S3BackupStorage, directory: str, name: str, *, read_only: bool) -> None:
        super().__init__(directory, name, read_only=read_only)
        self._storage = storage
        self._writers: dict[str, _S3Writer] = {}

    def _key(self, filename: str) -> str:
        return self._storage.key(self._directory, self._name, validate_object_name(filename))

    async def add_file(self, filename: str, size_hint: int = -1) -> BackupWriter:
        self._require_writable("add a file to")
        key = self._key(filename)
        if filename in self._writers:
            raise FailedPrecondition(f"{filename} was already added to backup {self._directory}/{self._name}")
        writer = _S3Writer(self._storage, key, size_hint)
        self._writers[filename] = writer
        return writer

    def read_file(self, filename: str) -> AsyncIterator[bytes]:
        return _read(
            self._storage, self._key(filename), f"{filename} in backup {self._directory}/{self._name}"
        )

    async def file_size(self, filename: str) -> int | None:
        key = self._key(filename)
        try:
            head = await self._storage.call(
                f"reading the size of {key}",
                "head_object",
                Bucket=self._storage.settings.bucket,
                Key=key,
            )
        except botocore.exceptions.ClientError:
            return None
        return int(head["ContentLength"])

    async def put_record(self, filename: str, data: bytes) -> None:
        validate_record_name(filename, data)
        key = self._storage.key(self._directory, self._name, filename)
        prefix = self._storage.key(self._directory, self._name) + "/"
        page = await self._storage.call(
            "checking the backup exists",
            "list_objects_v2",
            Bucket=self._storage.settings.bucket,
            Prefix=prefix,
            MaxKeys=1,
        )
        if not page.get("KeyCount", 0):
            raise NotFound(f"backup {self._directory}/{self._name} not found in {self._storage.describe()}")
        await self._storage.call(
            f"writing {key}",
            "put_object",
            Bucket=self._storage.settings.bucket,
            Key=key,
            Body=data,
            **self._storage.encryption_args(),
        )

    async def make_durable(self) -> None:
        """Nothing to do: an object is durable once its upload completes."""

    async def end(self) -> None:
        self._require_writable("end")
        unfinished = [n for n, w in self._writers.items() if not (w.closed or w.aborted)]
        if unfinished:
            raise FailedPrecondition(f"cannot end backup {self._name}: {', '.join(unfinished)} not closed")
        self._state = "ended"

    async def abort(self) -> None:
        self._require_writable("abort")
        self._state = "aborted"
        for w in self._writers.values():
            await w.abort()
        keys, _ = await self._storage._keys(self._storage.key(self._directory, self._name) + "/")
        if keys:
            await self._storage.delete(keys)


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


class _S3Writer:
    """Buffers one part at a time; full parts upload in background tasks, IN_FLIGHT at most."""

    def __init__(self, storage: S3BackupStorage, key: str, size_hint: int) -> None:
        self._storage = storage
        self._key = key
        self._hint = size_hint
        self._first = part_size(size_hint, storage.settings.min_part_size)
        self._buf = bytearray()
        self._next_part = 1
        self._upload: _Upload | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self._error: BaseException | None = None
        self.closed = False
        self.aborted = False

    def _extra(self) -> dict[str, str]:
        return self._storage.encryption_args()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check()
        self._buf += data
        while len(self._buf) >= (size := part_size_for(self._next_part, self._first, self._hint)):
            part = bytes(self._buf[:size])
            del self._buf[:size]
            await self._submit(part)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed or self.aborted:
            raise FailedPrecondition(
                f"cannot write {self._key}: the writer is {'closed' if self.closed else 'aborted'}"
            )

    async def _submit(self, data: bytes) -> None:
        if self._next_part > MAX_PARTS:
            raise StorageError(
                f"{self._key} needs more than {MAX_PARTS} parts: the size hint was far too low"
            )
        if self._upload is None:
            extra = self._extra()
            created = await self._storage.call(
                f"starting the upload of {self._key}",
                "create_multipart_upload",
                Bucket=self._storage.settings.bucket,
                Key=self._key,
                **extra,
            )
            self._upload = _Upload(created["UploadId"])
        number = self._next_part
        self._next_part += 1
        await self._slots.acquire()  # bounded memory: wait for a free slot before buffering more
        self._check()
        task = asyncio.create_task(self._upload_part(number, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upload_part(self, number: int, data: bytes) -> None:
        upload = self._upload
        assert upload is not None
        try:
            resp = await self._storage.call(
                f"uploading part {number} of {self._key}",
                "upload_part",
                Bucket=self._storage.settings.bucket,
                Key=self._key,
                UploadId=upload.upload_id,
                PartNumber=number,
                Body=data,
            )
            upload.parts[number] = resp["ETag"]
        except BaseException as e:
            if self._error is None:
                self._error = e
        finally:
            self._slots.release()

    async def close(self) -> None:
        self._check()
        try:
            if self._upload is None:
                body, extra = bytes(self._buf), self._extra()
                await self._storage.call(
                    f"writing {self._key}",
                    "put_object",
                    Bucket=self._storage.settings.bucket,
                    Key=self._key,
                    Body=body,
                    **extra,
                )
            else:
                if self._buf or self._next_part == 1:
                    await self._submit(bytes(self._buf))
                self._buf = bytearray()
                if self._tasks:
                    await asyncio.wait(set(self._tasks))
                self._check()
                upload = self._upload
                parts = [{"PartNumber": n, "ETag": upload.parts[n]} for n in sorted(upload.parts)]
                await self._storage.call(
                    f"completing the upload of {self._key}",
                    "complete_multipart_upload",
                    Bucket=self._storage.settings.bucket,
                    Key=self._key,
                    UploadId=upload.upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            await self.abort()
            raise
        self.closed = True
        self._buf = bytearray()

    async def abort(self) -> None:
        if self.closed or self.aborted:
            return
        self.aborted = True
        self._buf = bytearray()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        upload = self._upload
        if upload is None:
            return
        # never hide the error that made us abort
        with contextlib.suppress(AgentError, botocore.exceptions.ClientError):
            await asyncio.shield(
                self._storage.call(
                    f"aborting the upload of {self._key}",
                    "abort_multipart_upload",
                    Bucket=self._storage.settings.bucket,
                    Key=self._key,
                    UploadId=upload.upload_id,
                )
            )
