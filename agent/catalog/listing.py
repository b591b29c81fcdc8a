"""The backups of a directory with their MANIFESTs, and the choice of the one to restore.

A backup is complete iff its MANIFEST is readable and valid (it is written last). Choosing follows
Vitess's FindBackupToRestore: the newest complete full backup, optionally at or before a time
(compared with the MANIFEST's BackupTime) and made by an allowed engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from agent.aio.tasks import in_thread
from agent.catalog.manifest import (
    MANIFEST_FILENAME,
    MAX_MANIFEST_SIZE,
    Manifest,
    format_time,
    manifest_pieces,
    parse_manifest,
)
from agent.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from agent.storage.base import BackupHandle, BackupStorage

READ_CONCURRENCY = 8
CONFIRM_CONCURRENCY = 16  # a restore path's MANIFESTs, read again before it is used


@dataclass(frozen=True)
class BackupEntry:
    """A listed backup; `problem` says why it is not complete."""

    handle: BackupHandle
    manifest: Manifest | None
    complete: bool
    problem: str | None

    @property
    def name(self) -> str:
        return self.handle.name

    @property
    def directory(self) -> str:
        return self.handle.directory


async def read_manifest(handle: BackupHandle) -> Manifest:
    """The backup's MANIFEST; NotFound when it has none, DataLoss when it is unusable."""
    where = f"{handle.directory}/{handle.name}"
    data = bytearray()
    chunks = handle.read_file(MANIFEST_FILENAME)
    try:
        async for chunk in chunks:
            data += chunk
            if len(data) > MAX_MANIFEST_SIZE:
                raise DataLoss(f"MANIFEST of backup {where} is over the {MAX_MANIFEST_SIZE >> 20} MiB limit")
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    return parse_manifest(bytes(data), backup=where)


async def write_manifest(handle: BackupHandle, manifest: Manifest) -> None:
    """Write the MANIFEST; call it after every data file is closed, then `handle.end()`."""
    writer = await handle.add_file(MANIFEST_FILENAME)
    pieces = manifest_pieces(manifest)
    try:
        # encoded in a thread a piece at a time: thousands of file entries take a while
        while (piece := await in_thread(next, pieces, None)) is not None:
            await writer.write(piece)
        await writer.close()
    except BaseException:
        await writer.abort()
        raise


class ManifestCache:
    """The parsed MANIFESTs of complete backups of one storage, by directory and backup name. A backup is
    immutable once its MANIFEST is written, so a listing with a cache reads only the MANIFESTs it has not
    seen complete (incomplete backups are read again every time); names no longer listed are dropped."""

    def __init__(self) -> None:
        self._manifests: dict[str, dict[str, Manifest]] = {}

    def get(self, directory: str, name: str) -> Manifest | None:
        return self._manifests.get(directory, {}).get(name)

    def put(self, directory: str, name: str, manifest: Manifest) -> None:
        self._manifests.setdefault(directory, {})[name] = manifest

    def retain(self, directory: str, names: set[str]) -> None:
        known = self._manifests.get(directory)
        if known is not None:
            for name in [n for n in known if n not in names]:
                del known[name]

    def __len__(self) -> int:
        return sum(len(m) for m in self._manifests.values())

    async def confirm(self, chosen: Sequence[BackupEntry]) -> bool:
        """Read the MANIFESTs of the backups an operation is about to use again: True when each is still
        the cached one. When one changed or can no longer be read (storage is writable by others), forget
        the directory and return False: the caller lists again, reading every MANIFEST as stored now."""
        limit = asyncio.Semaphore(CONFIRM_CONCURRENCY)

        async def same(entry: BackupEntry) -> bool:
            async with limit:
                try:
                    return await read_manifest(entry.handle) == entry.manifest
                except (NotFound, DataLoss):
                    return False

        results = await asyncio.gather(*(same(e) for e in chosen))
        if all(results):
            return True
        for entry in chosen:
            self._manifests.pop(entry.directory, None)
        return False


async def list_backup_entries(
    storage: BackupStorage,
    directory: str,
    *,
    concurrency: int = READ_CONCURRENCY,
    cache: ManifestCache | None = None,
) -> list[BackupEntry]:
    """Every backup of `directory`, oldest first, with its MANIFEST read (concurrently; from `cache` when
    it holds it).

    A missing or invalid MANIFEST makes an incomplete entry; other storage errors propagate, so an
    outage never silently turns the newest backup into an "incomplete" one.
    """
    handles = await storage.list_backups(directory)
    if cache is not None:
        cache.retain(directory, {h.name for h in handles})
    limit = asyncio.Semaphore(concurrency)

    async def entry(handle: BackupHandle) -> BackupEntry:
        async with limit:
            try:
                m = await read_manifest(handle)
            except NotFound:
                return BackupEntry(
                    handle, None, False, "no MANIFEST: the backup is incomplete or still running"
                )
            except DataLoss as e:
                return BackupEntry(handle, None, False, str(e))
        if cache is not None:
            cache.put(directory, handle.name, m)
        return BackupEntry(handle, m, True, None)

    found: dict[int, BackupEntry] = {}
    unread: list[tuple[int, BackupHandle]] = []
    for i, h in enumerate(handles):
        cached = cache.get(directory, h.name) if cache is not None else None
        if cached is not None:
            found[i] = BackupEntry(h, cached, True, None)
        else:
            unread.append((i, h))
    tasks = [asyncio.ensure_future(entry(h)) for _, h in unread]
    try:
        for (i, _), read in zip(unread, await asyncio.gather(*tasks), strict=True):
            found[i] = read
    except BaseException:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        raise
    return [found[i] for i in range(len(handles))]


def newest_complete_full(
    entries: Sequence[BackupEntry],
    *,
    before: datetime | None = None,
    allowed_engines: Sequence[str] | None = None,
    directory: str | None = None,
) -> BackupEntry:
    """The newest complete full (not incremental) backup matching the filters.

    `before`: newest backup whose BackupTime is at or before it (Vitess's backup_time).
    `allowed_engines`: BackupMethod must be one of them (empty BackupMethod means builtin).
    """
    where = directory or (entries[0].directory if entries else None)
    in_where = f" in {where}" if where else ""
    if not entries:
        raise FailedPrecondition(f"no available backup{in_where}: take a backup first")
    if before is not None and before.tzinfo is None:
        raise InvalidArgument(f"backup time {before} has no time zone")
    allowed = set(allowed_engines) if allowed_engines else None
    incomplete = too_new = other_engine = incremental = 0
    for e in reversed(entries):
        m = e.manifest
        if not e.complete or m is None:
            incomplete += 1
            continue
        if m.incremental:
            incremental += 1
            continue
        if allowed is not None and m.engine not in allowed:
            other_engine += 1
            continue
        if before is not None:
            t = m.backup_datetime
            if t is None or t > before:
                too_new += 1
                continue
        return e
    complete = len(entries) - incomplete
    if complete == 0:
        raise FailedPrecondition(
            f"backup(s) found but none are complete{in_where}: {incomplete} incomplete backup(s) skipped "
            "(no readable MANIFEST)"
        )
    reasons = []
    if too_new and before is not None:
        reasons.append(f"{too_new} taken after {format_time(before)}")
    if other_engine:
        reasons.append(f"{other_engine} made by engines not in {sorted(allowed or ())}")
    if incremental:
        reasons.append(f"{incremental} incremental")
    if incomplete:
        reasons.append(f"{incomplete} incomplete")
    raise FailedPrecondition(
        f"no complete full backup{in_where} matches the request: skipped {', '.join(reasons)}"
    )
