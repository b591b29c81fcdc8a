"""Azure Blob Storage (`--backup_storage_implementation=azblob`), with Vitess's flags and layout.

Blobs are `<root>/<keyspace>/<shard>/<backup>/<file>` in the container. A writer stages fixed-size blocks
(Put Block) cut from the stream, `parallelism` in flight (memory is bounded by that), each retried with
backoff and jitter, and commits them with one Put Block List on close: before the commit nothing is
visible under the name. A failed or aborted writer never commits (its uncommitted blocks are discarded by
the service) and deletes the blob if a commit was attempted, so no committed blob remains. Small objects
are one Put Blob. Reads are one streaming GET, resumed with a Range request (If-Match the first answer's
ETag) if the connection breaks. Authentication is Shared Key (account name + key); managed identity is
left out.

Client chosen by measurement (Azurite on 127.0.0.1, 2 CPUs, 256 MiB object, 8 MiB blocks, 4 in flight,
medians of 3 passes x 5 rounds): plain aiohttp with our Shared Key signing uploads 126 MB/s and downloads
372 MB/s; azure-storage-blob's aio client 126 / 108 MB/s with 2.5x the CPU on reads; obstore 145 /
303 MB/s. Uploads are bound by Azurite and reads match obstore's, so aiohttp (already a dependency: no
new package) was chosen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import stat
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from agent.errors import AgentError, ConfigError, FailedPrecondition, NotFound, StorageError
from agent.storage.azblob_rest import (
    ATTEMPTS,
    CONNECTION_ERRORS,
    Account,
    BlobService,
    backoff,
    list_blobs,
)
from agent.storage.base import (
    BackupHandle,
    BackupWriter,
    HandleState,
    validate_backup_name,
    validate_directory,
    validate_object_name,
    validate_record_name,
)

MIB = 1 << 20
MAX_BLOCK = 4000 * MIB
MAX_BLOCKS = 50_000
TARGET_BLOCKS = 45_000  # with a size hint: room for the hint to be low by 10%
DOUBLING_EVERY = 5_000  # without one: blocks double every 5,000 (16 MiB blocks still reach 80 TiB)
READ_CHUNK = 1 << 20
DELETES_IN_FLIGHT = 8
NAME_ENV = "VT_AZBLOB_ACCOUNT_NAME"
KEY_ENV = "VT_AZBLOB_ACCOUNT_KEY"


@dataclass(frozen=True)
class AzblobSettings:
    account: Account
    container: str
    root: str = ""
    endpoint: str | None = None
    parallelism: int = 4  # blocks in flight per blob
    buffer_size: int = 16 * MIB  # block size


def block_size(size_hint: int, buffer_size: int) -> int:
    """The block size of a blob of `size_hint` bytes (-1: unknown, then the first block's size)."""
    if size_hint < 0:
        return buffer_size
    needed = -(-size_hint // TARGET_BLOCKS)
    return min(MAX_BLOCK, max(buffer_size, -(-needed // MIB) * MIB))


def block_size_for(index: int, first: int, size_hint: int) -> int:
    """Size of block `index` (0-based): constant with a hint, doubling every DOUBLING_EVERY without."""
    if size_hint >= 0:
        return first
    return min(MAX_BLOCK, first << (index // DOUBLING_EVERY))


def load_account(name: str, key_file: Path | None, environ: Mapping[str, str] | None = None) -> Account:
    """The account from the flags, else Vitess's environment variables. A key file readable by group or
    others is refused."""
    env = os.environ if environ is None else environ
    account = name or env.get(NAME_ENV, "")
    if not account:
        raise ConfigError(f"--azblob_backup_account_name (or {NAME_ENV}) is required with azblob storage")
    if key_file is not None:
        return Account.from_base64(account, _read_key_file(key_file), str(key_file))
    if env.get(KEY_ENV):
        return Account.from_base64(account, env[KEY_ENV], KEY_ENV)
    raise ConfigError(
        f"no Azure Storage account key: give --azblob_backup_account_key_file (a file holding the key, mode "
        f"0600) or set {KEY_ENV}; managed identity is not supported"
    )


def _read_key_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"--azblob_backup_account_key_file {path} is readable by group or others "
                f"(mode {stat.S_IMODE(mode):04o}): run `chmod 600 {path}`"
            )
        return path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read --azblob_backup_account_key_file {path}: {e.strerror}") from None


class AzureBlobBackupStorage:
    def __init__(self, settings: AzblobSettings) -> None:
        self.settings = settings
        self._root = settings.root.strip("/")
        self.service = BlobService(
            settings.account, settings.container, settings.endpoint, max(16, 4 * settings.parallelism)
        )

    def describe(self) -> str:
        return f"{self.service.describe()}/{self._root}".rstrip("/")

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self._root, *parts) if p)

    async def close(self) -> None:
        await self.service.close()

    async def list_backups(self, directory: str) -> list[BackupHandle]:
        validate_directory(directory)
        base = self.key(directory) + "/"
        listing = await list_blobs(self.service, base, "/")
        names = []
        for p in listing.prefixes:
            with contextlib.suppress(AgentError):
                names.append(validate_backup_name(p[len(base) :].rstrip("/")))
        return [_AzblobHandle(self, directory, n, read_only=True) for n in sorted(names)]

    async def list_directories(self) -> list[str]:
        base = self.key() + "/" if self._root else ""
        found = []
        for keyspace in (await list_blobs(self.service, base, "/")).prefixes:
            shards = (await list_blobs(self.service, keyspace, "/")).prefixes
            found += [s[len(base) :].rstrip("/") for s in shards]
        return sorted(found)

    async def exists(self, directory: str, name: str) -> bool:
        listing = await list_blobs(self.service, self.key(directory, name) + "/", limit=1)
        return bool(listing.blobs)

    async def start_backup(self, directory: str, name: str) -> BackupHandle:
        validate_directory(directory)
        validate_backup_name(name)
        if await self.exists(directory, name):
            raise FailedPrecondition(
                f"backup {directory}/{name} already exists in {self.describe()}: backup names are never reused"
            )
        return _AzblobHandle(self, directory, name, read_only=False)

    async def remove_backup(self, directory: str, name: str) -> None:
        validate_directory(directory)
        validate_backup_name(name)
        listing = await list_blobs(self.service, self.key(directory, name) + "/")
        if not listing.blobs:
            raise NotFound(f"backup {directory}/{name} not found in {self.describe()}")
        await self.delete([b for b, _ in listing.blobs])

    async def delete(self, blobs: list[str]) -> None:
        """Delete blobs (and their snapshots), a few at a time; ones already gone are fine."""
        slots = asyncio.Semaphore(DELETES_IN_FLIGHT)

        async def one(blob: str) -> None:
            async with slots:
                await delete_blob(self.service, blob)

        results = await asyncio.gather(*(one(b) for b in blobs), return_exceptions=True)
        for result in results:  # every delete was tried; report the first failure as it was raised
            if isinstance(result, BaseException):
                raise result


async def delete_blob(service: BlobService, blob: str) -> None:
    with contextlib.suppress(NotFound):
        await service.call(f"deleting {blob}", "DELETE", blob, headers={"x-ms-delete-snapshots": "include"})


class _AzblobHandle(HandleState):
    def __init__(
        self, storage: AzureBlobBackupStorage, directory: str, name: str, *, read_only: bool
    ) -> None:
        super().__init__(directory, name, read_only=read_only)
        self._storage = storage
        self._writers: dict[str, _BlobWriter] = {}

    def _blob(self, filename: str) -> str:
        return self._storage.key(self._directory, self._name, validate_object_name(filename))

    async def add_file(self, filename: str, size_hint: int = -1) -> BackupWriter:
        self._require_writable("add a file to")
        blob = self._blob(filename)
        if filename in self._writers:
            raise FailedPrecondition(f"{filename} was already added to backup {self._directory}/{self._name}")
        writer = _BlobWriter(self._storage.service, blob, size_hint, self._storage.settings)
        self._writers[filename] = writer
        return writer

    def read_file(self, filename: str) -> AsyncIterator[bytes]:
        what = f"{filename} in backup {self._directory}/{self._name}"
        return _read(self._storage.service, self._blob(filename), what)

    async def file_size(self, filename: str) -> int | None:
        blob = self._blob(filename)
        try:
            reply = await self._storage.service.call(f"reading the size of {blob}", "HEAD", blob)
        except NotFound:
            return None
        return int(reply.headers["Content-Length"])

    async def put_record(self, filename: str, data: bytes) -> None:
        validate_record_name(filename, data)
        if not await self._storage.exists(self._directory, self._name):
            raise NotFound(f"backup {self._directory}/{self._name} not found in {self._storage.describe()}")
        blob = self._storage.key(self._directory, self._name, filename)
        await put_blob(self._storage.service, blob, data)

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
        listing = await list_blobs(
            self._storage.service, self._storage.key(self._directory, self._name) + "/"
        )
        if listing.blobs:
            await self._storage.delete([b for b, _ in listing.blobs])


async def put_blob(service: BlobService, blob: str, data: bytes) -> None:
    await service.call(f"writing {blob}", "PUT", blob, headers={"x-ms-blob-type": "BlockBlob"}, body=data)


async def _read(service: BlobService, blob: str, what: str) -> AsyncIterator[bytes]:
    """One streaming GET; if the connection breaks mid-blob, resume from the next byte of the same version."""
    offset, total, etag, attempt = 0, -1, "", 0
    while True:
        headers = {"x-ms-range": f"bytes={offset}-", "If-Match": etag} if offset else {}
        try:
            resp = await service.open(f"reading {blob}", "GET", blob, headers=headers)
        except NotFound:
            raise NotFound(f"{what} not found in {service.describe()}") from None
        try:
            if not offset:
                total, etag = int(resp.headers.get("Content-Length", -1)), resp.headers.get("ETag", "")
            async for chunk in resp.content.iter_chunked(READ_CHUNK):
                offset += len(chunk)
                yield chunk
            if offset >= total:
                return
            error: BaseException = ConnectionError(f"the answer ended at byte {offset} of {total}")
        except CONNECTION_ERRORS as e:
            error = e
        finally:
            resp.release()
        attempt += 1
        if attempt >= ATTEMPTS:
            raise StorageError(
                f"reading {blob} from {service.describe()} failed at byte {offset}: {type(error).__name__}: {error}"
            )
        await asyncio.sleep(backoff(attempt))


class _BlobWriter:
    """Buffers one block at a time; full blocks are staged in background tasks, `parallelism` at most."""

    def __init__(self, service: BlobService, blob: str, size_hint: int, settings: AzblobSettings) -> None:
        self._service = service
        self._blob = blob
        self._hint = size_hint
        self._first = block_size(size_hint, settings.buffer_size)
        self._nonce = uuid.uuid4().hex[:8]  # block ids of this writer never mix with another attempt's
        self._buf = bytearray()
        self._blocks: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.parallelism)
        self._error: BaseException | None = None
        self._committing = False
        self.closed = False
        self.aborted = False

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check()
        self._buf += data
        while len(self._buf) >= (size := block_size_for(len(self._blocks), self._first, self._hint)):
            block = bytes(self._buf[:size])
            del self._buf[:size]
            await self._submit(block)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed or self.aborted:
            raise FailedPrecondition(
                f"cannot write {self._blob}: the writer is {'closed' if self.closed else 'aborted'}"
            )

    async def _submit(self, data: bytes) -> None:
        if len(self._blocks) >= MAX_BLOCKS:
            raise StorageError(
                f"{self._blob} needs more than {MAX_BLOCKS} blocks: the size hint was far too low; "
                "raise --azblob_backup_buffer_size"
            )
        block_id = base64.b64encode(f"{self._nonce}-{len(self._blocks):06d}".encode()).decode()
        self._blocks.append(block_id)
        await self._slots.acquire()  # bounded memory: wait for a free slot before buffering more
        self._check()
        task = asyncio.create_task(self._stage(len(self._blocks), block_id, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stage(self, number: int, block_id: str, data: bytes) -> None:
        try:
            await self._service.call(
                f"uploading block {number} of {self._blob}",
                "PUT",
                self._blob,
                query={"comp": "block", "blockid": block_id},
                body=data,
            )
        except BaseException as e:
            if self._error is None:
                self._error = e
        finally:
            self._slots.release()

    async def close(self) -> None:
        self._check()
        try:
            if not self._blocks:
                self._committing = True
                await put_blob(self._service, self._blob, bytes(self._buf))
            else:
                await self._commit()
        except BaseException:
            await self.abort()
            raise
        self.closed = True
        self._buf = bytearray()

    async def _commit(self) -> None:
        if self._buf:
            await self._submit(bytes(self._buf))
        self._buf = bytearray()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        self._check()
        self._committing = True
        body = "".join(f"<Latest>{b}</Latest>" for b in self._blocks)
        await self._service.call(
            f"committing the blocks of {self._blob}",
            "PUT",
            self._blob,
            query={"comp": "blocklist"},
            headers={"Content-Type": "application/xml"},
            body=f'<?xml version="1.0" encoding="utf-8"?><BlockList>{body}</BlockList>'.encode(),
        )

    async def abort(self) -> None:
        if self.closed or self.aborted:
            return
        self.aborted = True
        self._buf = bytearray()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        # A commit may have reached the service even if its answer did not reach us: delete what it made.
        # Cleanup problems are swallowed: they must never hide the error that made us abort.
        if self._committing:
            with contextlib.suppress(AgentError, aiohttp.ClientError):
                await asyncio.shield(delete_blob(self._service, self._blob))
