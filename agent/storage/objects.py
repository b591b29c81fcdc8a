"""What the object-store backends (S3, GCS, Azure Blob) share: the backup layout on top of a few
primitives, the handle, and the writer that cuts a stream into parts.

A backup is the objects under `<root>/<keyspace>/<shard>/<backup>/`. A backend gives `ObjectStorage`
its primitives (list names under a prefix, delete names, open a writer, read, size, put a small
object) and its writers subclass `PartWriter` (one part sent at a time) or `ConcurrentParts` (parts
sent in background tasks); the names, checks and messages are the same for every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

import agent.storage.base as contract
from agent.errors import AgentError, FailedPrecondition, NotFound, StorageError
from agent.storage.base import BackupHandle, BackupWriter, HandleState

MIB = 1 << 20


@dataclass(frozen=True)
class PartRules:
    """A service's limits on the parts of one object and how parts are sized within them: with a size
    hint, one size so the object fits in `target_parts` (room for a low hint); without one, parts start
    at the first size and double every `doubling_every` parts."""

    unit: str  # "parts", "blocks": for messages
    max_part: int
    max_parts: int
    target_parts: int
    doubling_every: int
    advice: str = ""  # what to do when an object needs more parts, appended to the message

    def first(self, size_hint: int, floor: int, unknown: int) -> int:
        """The part size for an object of `size_hint` bytes: at least `floor` (whole MiB), `unknown`
        when the hint is -1 (then the first part's size)."""
        if size_hint < 0:
            return unknown
        needed = -(-size_hint // self.target_parts)
        return min(self.max_part, max(floor, -(-needed // MIB) * MIB))

    def size_of(self, index: int, first: int, size_hint: int) -> int:
        """Size of part `index` (0-based): constant with a hint, doubling without."""
        if size_hint >= 0:
            return first
        return min(self.max_part, first << (index // self.doubling_every))

    def capacity(self, first: int, size_hint: int) -> int:
        """Bytes an object can hold within `max_parts` parts."""
        if size_hint >= 0:
            return first * self.max_parts
        every = self.doubling_every
        return sum(self.size_of(n, first, -1) for n in range(0, self.max_parts, every)) * every


class PartWriter(ABC):
    """One object being written: bytes are buffered and cut into parts of `_part_size()` bytes, each
    handed to `_submit`; `close` hands what is left to `_finish`, and a failed close aborts. A failure
    kept in `_error` (a part lost in the background) is raised by the next write or close."""

    _hold_last = False  # True: a full part waits for one byte more, so `_finish` always has bytes

    def __init__(self, name: str) -> None:
        self._name = name
        self._buf = bytearray()
        self._error: BaseException | None = None
        self.closed = False
        self.aborted = False

    @abstractmethod
    def _part_size(self) -> int:
        """Bytes of the next part."""

    @abstractmethod
    async def _submit(self, part: bytes) -> None:
        """Send one full part (or start sending it)."""

    @abstractmethod
    async def _finish(self, last: bytes) -> None:
        """Send the rest and make the object exist under its name."""

    @abstractmethod
    async def _discard(self) -> None:
        """Stop what is in flight and leave nothing behind; never raise for cleanup problems."""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check()
        self._buf += data
        while len(self._buf) - self._hold_last >= (size := self._part_size()):
            with memoryview(self._buf) as view:
                part = bytes(view[:size])
            del self._buf[:size]
            await self._submit(part)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed or self.aborted:
            raise FailedPrecondition(
                f"cannot write {self._name}: the writer is {'closed' if self.closed else 'aborted'}"
            )

    async def close(self) -> None:
        self._check()
        last, self._buf = bytes(self._buf), bytearray()
        try:
            await self._finish(last)
        except BaseException:
            await self.abort()
            raise
        self.closed = True

    async def abort(self) -> None:
        if self.closed or self.aborted:
            return
        self.aborted = True
        self._buf = bytearray()
        await self._discard()


class ConcurrentParts(PartWriter):
    """Parts sized by `rules` upload in background tasks, `in_flight` at most (memory is bounded by
    that); the first failure is kept. Subclasses send part `number` (1-based) in `_send`."""

    def __init__(self, name: str, rules: PartRules, first: int, size_hint: int, in_flight: int) -> None:
        super().__init__(name)
        self._rules = rules
        self._first = first
        self._hint = size_hint
        self._parts = 0  # parts submitted
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(in_flight)

    def _part_size(self) -> int:
        return self._rules.size_of(self._parts, self._first, self._hint)

    async def _prepare(self) -> None:
        """Before the first part is sent, e.g. start the upload."""

    @abstractmethod
    async def _send(self, number: int, data: bytes) -> None:
        """Upload part `number`."""

    async def _submit(self, part: bytes) -> None:
        rules = self._rules
        if self._parts >= rules.max_parts:
            raise StorageError(
                f"{self._name} needs more than {rules.max_parts} {rules.unit}: the size hint was far too low"
                + rules.advice
            )
        await self._prepare()
        self._parts += 1
        await self._slots.acquire()  # bounded memory: wait for a free slot before buffering more
        self._check()
        task = asyncio.create_task(self._send_in_slot(self._parts, part))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_in_slot(self, number: int, data: bytes) -> None:
        try:
            await self._send(number, data)
        except BaseException as e:
            if self._error is None:
                self._error = e
        finally:
            self._slots.release()

    async def _drain(self) -> None:
        """Wait for the parts in flight; raise the first failure."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        self._check()

    async def _discard(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))


class ObjectStorage(ABC):
    """A `BackupStorage` in an object store, from the backend's primitives."""

    def __init__(self, root: str) -> None:
        self._root = root.strip("/")

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self._root, *parts) if p)

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def list_names(
        self, prefix: str, delimiter: str = "", limit: int = 0
    ) -> tuple[list[str], list[str]]:
        """(object names, prefixes) under `prefix`: every page, or only the first `limit` entries."""

    @abstractmethod
    async def delete(self, names: list[str]) -> None:
        """Delete objects; ones already gone are fine."""

    @abstractmethod
    def writer(self, name: str, size_hint: int) -> PartWriter: ...

    @abstractmethod
    def read(self, name: str, what: str) -> AsyncIterator[bytes]:
        """The object's bytes; NotFound naming `what` if it does not exist."""

    @abstractmethod
    async def size(self, name: str) -> int | None: ...

    @abstractmethod
    async def put(self, name: str, data: bytes) -> None:
        """Write a small object in one request."""

    async def exists(self, directory: str, name: str, why: str = "checking the backup exists") -> bool:
        """Whether the backup has any object; `why` is for backends whose messages name the check."""
        names, _ = await self.list_names(self.key(directory, name) + "/", limit=1)
        return bool(names)

    async def list_backups(self, directory: str) -> list[BackupHandle]:
        contract.validate_directory(directory)
        base = self.key(directory) + "/"
        _, prefixes = await self.list_names(base, "/")
        names = []
        for p in prefixes:
            with contextlib.suppress(AgentError):
                names.append(contract.validate_backup_name(p[len(base) :].rstrip("/")))
        return [ObjectHandle(self, directory, n, read_only=True) for n in sorted(names)]

    async def list_directories(self) -> list[str]:
        base = self.key() + "/" if self._root else ""
        _, keyspaces = await self.list_names(base, "/")
        found = []
        for keyspace in keyspaces:
            _, shards = await self.list_names(keyspace, "/")
            found += [s[len(base) :].rstrip("/") for s in shards]
        return sorted(found)

    async def start_backup(self, directory: str, name: str) -> BackupHandle:
        contract.validate_directory(directory)
        contract.validate_backup_name(name)
        if await self.exists(directory, name, "checking the backup name"):
            raise FailedPrecondition(
                f"backup {directory}/{name} already exists in {self.describe()}: backup names are never reused"
            )
        return ObjectHandle(self, directory, name, read_only=False)

    async def remove_backup(self, directory: str, name: str) -> None:
        contract.validate_directory(directory)
        contract.validate_backup_name(name)
        names, _ = await self.list_names(self.key(directory, name) + "/")
        if not names:
            raise NotFound(f"backup {directory}/{name} not found in {self.describe()}")
        await self.delete(names)


class ObjectHandle(HandleState):
    def __init__(self, storage: ObjectStorage, directory: str, name: str, *, read_only: bool) -> None:
        super().__init__(directory, name, read_only=read_only)
        self._storage = storage
        self._writers: dict[str, PartWriter] = {}

    def _key(self, filename: str) -> str:
        return self._storage.key(self._directory, self._name, contract.validate_object_name(filename))

    async def add_file(self, filename: str, size_hint: int = -1) -> BackupWriter:
        self._require_writable("add a file to")
        key = self._key(filename)
        if filename in self._writers:
            raise FailedPrecondition(f"{filename} was already added to backup {self._directory}/{self._name}")
        writer = self._storage.writer(key, size_hint)
        self._writers[filename] = writer
        return writer

    def read_file(self, filename: str) -> AsyncIterator[bytes]:
        key = self._key(filename)
        return self._storage.read(key, f"{filename} in backup {self._directory}/{self._name}")

    async def file_size(self, filename: str) -> int | None:
        return await self._storage.size(self._key(filename))

    async def put_record(self, filename: str, data: bytes) -> None:
        contract.validate_record_name(filename, data)
        if not await self._storage.exists(self._directory, self._name):
            raise NotFound(f"backup {self._directory}/{self._name} not found in {self._storage.describe()}")
        await self._storage.put(self._storage.key(self._directory, self._name, filename), data)

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
        names, _ = await self._storage.list_names(self._storage.key(self._directory, self._name) + "/")
        if names:
            await self._storage.delete(names)
