"""The backups of a directory with their MANIFESTs, and the choice of the one to restore.

A backup is complete iff its MANIFEST is readable and valid (it is written last). Choosing follows
Vitess's FindBackupToRestore: the newest complete full backup, optionally at or before a time
(compared with the MANIFEST's BackupTime) and made by an allowed engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
    stored_size,
)
from agent.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from agent.storage.base import BackupHandle, BackupStorage

READ_CONCURRENCY = 8
CONFIRM_CONCURRENCY = 16  # a restore path's MANIFESTs, read again before it is used


@dataclass(frozen=True)
class BackupEntry:
    """A listed backup; `problem` says why it is not complete."""

    handle: BackupHandle
    manifest: Manifest | None  # without its file entries when it came from a ManifestCache (see `lean`)
    complete: bool
    problem: str | None
    stored_size: int = 0  # bytes as stored, from the MANIFEST's integrity keys (0 when unrecorded)

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


def lean(manifest: Manifest) -> Manifest:
    """The MANIFEST without its file entries: what listings, path finding and retention use. A backup of
    10,000 tables has 20,000 entries, tens of MB once parsed, which a daemon must not keep per backup.
    Its encryption tag cannot be checked (`confirm` gives the whole MANIFEST to an operation)."""
    if manifest.file_entries is None and manifest.source is None:
        return manifest
    slim = manifest.model_copy(update={"file_entries": None})
    slim._source = None  # the JSON it was read from holds the entries too (an encrypted one's tag needs it)
    return slim


class ManifestCache:
    """The MANIFESTs of complete backups of one storage, lean (`lean`) with their stored sizes, by
    directory and backup name. A backup is immutable once its MANIFEST is written, so a listing with a
    cache reads only the MANIFESTs it has not seen complete (incomplete backups are read again every
    time); names no longer listed are dropped. An operation that needs the file entries gets them from
    `confirm`, which reads the chosen MANIFESTs again anyway."""

    def __init__(self) -> None:
        self._manifests: dict[str, dict[str, tuple[Manifest, int]]] = {}

    def get(self, directory: str, name: str) -> tuple[Manifest, int] | None:
        return self._manifests.get(directory, {}).get(name)

    def put(self, directory: str, name: str, manifest: Manifest, size: int) -> None:
        self._manifests.setdefault(directory, {})[name] = (lean(manifest), size)

    def retain(self, directory: str, names: set[str]) -> None:
        known = self._manifests.get(directory)
        if known is not None:
            for name in [n for n in known if n not in names]:
                del known[name]

    def __len__(self) -> int:
        return sum(len(m) for m in self._manifests.values())

    async def confirm(self, chosen: Sequence[BackupEntry]) -> list[BackupEntry] | None:
        """Read the MANIFESTs of the backups an operation is about to use again: the entries with their
        whole MANIFESTs when each is still the listed one. When one changed or can no longer be read
        (storage is writable by others), forget the directory and return None: the caller lists again,
        reading every MANIFEST as stored now."""
        limit = asyncio.Semaphore(CONFIRM_CONCURRENCY)

        async def again(entry: BackupEntry) -> BackupEntry | None:
            async with limit:
                try:
                    m = await read_manifest(entry.handle)
                except (NotFound, DataLoss):
                    return None
            same = entry.manifest is not None and lean(m) == lean(entry.manifest)
            return dataclasses.replace(entry, manifest=m) if same else None

        results = await asyncio.gather(*(again(e) for e in chosen))
        confirmed = [r for r in results if r is not None]
        if len(confirmed) == len(results):
            return confirmed
        for entry in chosen:
            self._manifests.pop(entry.directory, None)
        return None


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
        size = stored_size(m)
        if cache is None:
            return BackupEntry(handle, m, True, None, size)
        slim = lean(m)
        cache.put(directory, handle.name, slim, size)
        return BackupEntry(handle, slim, True, None, size)

    found: dict[int, BackupEntry] = {}
    unread: list[tuple[int, BackupHandle]] = []
    for i, h in enumerate(handles):
        cached = cache.get(directory, h.name) if cache is not None else None
        if cached is not None:
            found[i] = BackupEntry(h, cached[0], True, None, cached[1])
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
