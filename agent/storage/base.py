"""The backup storage contract (the shape of Vitess's mysqlctl backupstorage) and its naming rules.

A backup is a set of named objects in `<keyspace>/<shard>/<name>/` of a storage. `BackupStorage`
lists, starts and removes backups; `BackupHandle` reads or writes one backup's objects. Handles from
`start_backup` are read-write, handles from `list_backups` read-only. Every backend applies the same
name rules (`validate_*`), so a forged name can never address anything outside its backup.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from agent.errors import FailedPrecondition, InvalidArgument

Buffer = bytes | bytearray | memoryview
MAX_NAME_LENGTH = 255
RECORD_PREFIX = "tablet-agent-"  # records beside a backup's objects (ours; Vitess ignores them)
MAX_RECORD_SIZE = 1 << 20
_COMPONENT = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


class BackupWriter(Protocol):
    """One object being written. Exactly one of `close` or `abort` ends it."""

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append data. The caller may reuse its buffer once this returns."""

    async def close(self) -> None:
        """Complete the object under its final name; it is durable once the handle's `make_durable` or
        `end` returns (or at once, on storages where every object is). Before close returns successfully
        the object does not exist under that name, so a listed object is always complete."""

    async def abort(self) -> None:
        """Discard what was written; never raises for cleanup problems. No-op after close."""


class BackupHandle(Protocol):
    """One backup: `directory` is `<keyspace>/<shard>`, `name` the backup's name."""

    @property
    def directory(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def read_only(self) -> bool:
        """True for handles from `list_backups`: they can only read."""

    async def add_file(self, filename: str, size_hint: int = -1) -> BackupWriter:
        """Start writing object `filename` of this read-write handle. An object name is written at
        most once (FailedPrecondition otherwise); `size_hint` (bytes, -1 unknown) may help the backend."""

    def read_file(self, filename: str) -> AsyncIterator[bytes]:
        """The object's bytes as an async iterator of chunks; raises NotFound when iterated if the
        object does not exist."""

    async def file_size(self, filename: str) -> int | None:
        """The stored size of the object in bytes, or None if it does not exist."""

    async def put_record(self, filename: str, data: bytes) -> None:
        """Write or replace a small record beside the backup's objects (e.g. the result of verifying
        it), on any handle, ended or not. Records are never data objects or the MANIFEST: their names
        start with `tablet-agent-` (`validate_record_name`); NotFound when the backup does not exist."""

    async def make_durable(self) -> None:
        """Make every object closed so far durable: the barrier before the MANIFEST. Objects closed
        afterwards are durable when their `close` returns. A no-op where every object is durable on close."""

    async def end(self) -> None:
        """Durably finish the backup (everything written through it made durable). Every writer must be
        closed first; afterwards the backup is immutable (no more `add_file`)."""

    async def abort(self) -> None:
        """Remove everything of this unfinished backup (open writers are aborted)."""


class BackupStorage(Protocol):
    """A place holding backups, e.g. a directory or an object-store bucket."""

    async def list_backups(self, directory: str) -> list[BackupHandle]:
        """Read-only handles of the backups in `directory`, oldest first (by name). Complete or not:
        a backup is complete only when its MANIFEST is readable."""

    async def start_backup(self, directory: str, name: str) -> BackupHandle:
        """A read-write handle for a new backup. Names are never reused or overwritten: if the name
        exists, raise FailedPrecondition."""

    async def remove_backup(self, directory: str, name: str) -> None:
        """Delete a backup and all its objects; NotFound if there is no such backup."""

    def describe(self) -> str:
        """Where the backups live, for messages, e.g. `file:/var/backups`."""

    async def close(self) -> None:
        """Release connections and clients; called once at shutdown."""


class HandleState:
    """What every backend's handle keeps: which backup, read-only or not, and open/ended/aborted."""

    def __init__(self, directory: str, name: str, *, read_only: bool) -> None:
        self._directory = directory
        self._name = name
        self._read_only = read_only
        self._state = "open"

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def name(self) -> str:
        return self._name

    @property
    def read_only(self) -> bool:
        return self._read_only

    def _require_writable(self, action: str) -> None:
        if self._read_only:
            raise FailedPrecondition(
                f"cannot {action} backup {self._directory}/{self._name}: read-only handle"
            )
        if self._state != "open":
            raise FailedPrecondition(
                f"cannot {action} backup {self._directory}/{self._name}: it was already {self._state}"
            )


@runtime_checkable
class WritesBatches(Protocol):
    """Optional handle capability: several small complete objects written in one step."""

    async def put_objects(self, objects: Sequence[tuple[str, Buffer]]) -> None:
        """Each object as `add_file` + `write` + `close` would store it, with the same rules, except that
        an object may be seen partly written until this returns (the backup has no MANIFEST then, so
        nothing restores from it). A failure leaves no object it did not complete."""


@runtime_checkable
class ReadsBatches(Protocol):
    """Optional handle capability: several small objects read whole in one step."""

    async def get_objects(self, filenames: Sequence[str]) -> list[bytes]:
        """Each object's bytes, in order; NotFound naming the first missing one."""


@runtime_checkable
class ListsObjects(Protocol):
    """Optional handle capability: the stored sizes of all its objects in one listing."""

    async def object_sizes(self) -> dict[str, int]:
        """Every data object (and the MANIFEST) by name with its stored size; no records, no temporaries."""


async def put_objects(handle: BackupHandle, objects: Sequence[tuple[str, Buffer]]) -> None:
    """Store small complete objects: in one step where the handle can, else one by one."""
    if isinstance(handle, WritesBatches):
        await handle.put_objects(objects)
        return
    for name, data in objects:
        writer = await handle.add_file(name, len(data))
        try:
            await writer.write(data)
            await writer.close()
        except BaseException:
            await writer.abort()
            raise


async def get_objects(handle: BackupHandle, filenames: Sequence[str]) -> list[bytes]:
    """Small objects read whole: in one step where the handle can, else one by one."""
    if isinstance(handle, ReadsBatches):
        return await handle.get_objects(filenames)
    return [b"".join([bytes(chunk) async for chunk in handle.read_file(name)]) for name in filenames]


async def object_sizes(handle: BackupHandle, names: Sequence[str]) -> list[int | None]:
    """The stored size of each named object (None: missing): one listing where the handle can list."""
    if isinstance(handle, ListsObjects):
        sizes = await handle.object_sizes()
        return [sizes.get(name) for name in names]
    return list(await asyncio.gather(*(handle.file_size(name) for name in names)))


@runtime_checkable
class ListsDirectories(Protocol):
    """Optional storage capability: enumerate the `<keyspace>/<shard>` directories holding backups."""

    async def list_directories(self) -> list[str]:
        """The `<keyspace>/<shard>` directories, sorted."""


def _check_component(kind: str, value: str) -> None:
    if not value or len(value) > MAX_NAME_LENGTH or not _COMPONENT.match(value):
        raise InvalidArgument(
            f"invalid {kind} {value!r}: use letters, digits, '_', '-' and '.', not starting with '.', "
            f"at most {MAX_NAME_LENGTH} characters"
        )


def validate_directory(directory: str) -> list[str]:
    """Check a `<keyspace>/<shard>` directory and return its components."""
    parts = directory.split("/")
    if len(parts) > 4:
        raise InvalidArgument(f"invalid backup directory {directory!r}: expected <keyspace>/<shard>")
    for part in parts:
        _check_component("backup directory component", part)
    return parts


def validate_backup_name(name: str) -> str:
    """Check a backup name such as `2026-11-23.184500.zone1-0000000102`."""
    _check_component("backup name", name)
    return name


def validate_object_name(filename: str) -> str:
    """Check an object (file) name inside a backup: no '/', no '..', no NUL or control characters,
    no leading '.' (reserved for temporary files)."""
    if (
        not filename
        or len(filename) > MAX_NAME_LENGTH
        or filename.startswith(".")
        or "/" in filename
        or ".." in filename
        or any(ord(c) < 32 or c == "\x7f" for c in filename)
    ):
        raise InvalidArgument(
            f"invalid backup object name {filename!r}: it must be a plain file name without '/', '..', "
            "control characters or a leading '.'"
        )
    return filename


def validate_record_name(filename: str, data: bytes = b"") -> str:
    """Check a record's name (`tablet-agent-...`) and size."""
    validate_object_name(filename)
    if not filename.startswith(RECORD_PREFIX):
        raise InvalidArgument(f"invalid record name {filename!r}: records are named {RECORD_PREFIX}*")
    if len(data) > MAX_RECORD_SIZE:
        raise InvalidArgument(f"record {filename} is {len(data)} bytes, over {MAX_RECORD_SIZE}")
    return filename
