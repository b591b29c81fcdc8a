import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.catalog.listing import (
    BackupEntry,
    list_backup_entries,
    newest_complete_full,
    read_manifest,
    write_manifest,
)
from agent.catalog.manifest import FileEntry, Manifest, format_time
from agent.errors import FailedPrecondition, StorageError
from agent.storage.base import BackupHandle, BackupWriter
from agent.storage.file import FileBackupStorage

DIR = "commerce/0"


def _t(hour: int) -> datetime:
    return datetime(2026, 11, 23, hour, tzinfo=UTC)


async def _backup(storage: FileBackupStorage, hour: int, manifest: Manifest | bytes | None) -> None:
    handle = await storage.start_backup(DIR, f"2026-11-23.{hour:02d}0000.zone1-0000000102")
    if isinstance(manifest, Manifest):
        await write_manifest(handle, manifest.model_copy(update={"backup_time": format_time(_t(hour))}))
    elif isinstance(manifest, bytes):
        w = await handle.add_file("MANIFEST")
        await w.write(manifest)
        await w.close()
    await handle.end()


async def test_entries_are_oldest_first_with_completeness(tmp_path: Path) -> None:
    storage = FileBackupStorage(tmp_path)
    await _backup(storage, 12, Manifest(BackupMethod="builtin"))
    await _backup(storage, 10, None)
    await _backup(storage, 11, b"{truncated")
    entries = await list_backup_entries(storage, DIR)
    assert [e.name[:17] for e in entries] == ["2026-11-23.100000", "2026-11-23.110000", "2026-11-23.120000"]
    assert [e.complete for e in entries] == [False, False, True]
    assert entries[0].problem is not None and "no MANIFEST" in entries[0].problem
    assert entries[1].problem is not None and "not valid JSON" in entries[1].problem
    assert entries[1].problem.startswith("MANIFEST of backup commerce/0/2026-11-23.110000")
    assert entries[2].manifest is not None and entries[2].manifest.backup_datetime == _t(12)


async def test_no_backups_at_all(tmp_path: Path) -> None:
    entries = await list_backup_entries(FileBackupStorage(tmp_path), DIR)
    with pytest.raises(FailedPrecondition, match=r"^no available backup in commerce/0"):
        newest_complete_full(entries, directory=DIR)


async def test_only_incomplete_backups_says_how_many_were_skipped(tmp_path: Path) -> None:
    storage = FileBackupStorage(tmp_path)
    await _backup(storage, 10, None)
    await _backup(storage, 11, b"[]")
    entries = await list_backup_entries(storage, DIR)
    with pytest.raises(
        FailedPrecondition, match=r"^backup\(s\) found but none are complete in commerce/0: 2 incomplete"
    ):
        newest_complete_full(entries)


async def test_choice_honours_time_engine_and_skips_incremental_and_incomplete(tmp_path: Path) -> None:
    storage = FileBackupStorage(tmp_path)
    await _backup(storage, 9, Manifest(BackupMethod=""))  # empty method means builtin
    await _backup(storage, 10, Manifest(BackupMethod="xtrabackup"))
    await _backup(storage, 11, Manifest(BackupMethod="builtin", Incremental=True))
    await _backup(storage, 12, None)
    entries = await list_backup_entries(storage, DIR)
    assert newest_complete_full(entries).name.startswith("2026-11-23.100000")
    assert newest_complete_full(entries, before=_t(10)).name.startswith("2026-11-23.100000")
    assert newest_complete_full(entries, before=_t(9)).name.startswith("2026-11-23.090000")
    assert newest_complete_full(entries, allowed_engines=["builtin"]).name.startswith("2026-11-23.090000")
    with pytest.raises(
        FailedPrecondition, match="skipped 2 taken after 2026-11-23T08:00:00Z, 1 incremental, 1 incomplete"
    ):
        newest_complete_full(entries, before=_t(8))
    with pytest.raises(FailedPrecondition, match="made by engines not in \\['mysqlshell'\\]"):
        newest_complete_full(entries, allowed_engines=["mysqlshell"])


class _SlowHandle:
    active = 0
    peak = 0

    def __init__(self, name: str) -> None:
        self.name = name
        self.directory = DIR
        self.read_only = True

    async def add_file(self, filename: str, size_hint: int = -1) -> BackupWriter:
        raise NotImplementedError

    async def read_file(self, filename: str) -> AsyncIterator[bytes]:
        _SlowHandle.active += 1
        _SlowHandle.peak = max(_SlowHandle.peak, _SlowHandle.active)
        try:
            await asyncio.sleep(0.02)
            yield b"{}"
        finally:
            _SlowHandle.active -= 1

    async def file_size(self, filename: str) -> int | None:
        return 2

    async def end(self) -> None:
        raise NotImplementedError

    async def abort(self) -> None:
        raise NotImplementedError


class _SlowStorage:
    def __init__(self, handles: list[BackupHandle]) -> None:
        self.handles = handles

    async def list_backups(self, directory: str) -> list[BackupHandle]:
        return self.handles

    async def start_backup(self, directory: str, name: str) -> BackupHandle:
        raise NotImplementedError

    async def remove_backup(self, directory: str, name: str) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return "slow:"


async def test_manifests_are_read_concurrently_but_bounded() -> None:
    storage = _SlowStorage([_SlowHandle(f"b{i:02d}") for i in range(20)])
    started = asyncio.get_running_loop().time()
    entries = await list_backup_entries(storage, DIR, concurrency=4)
    elapsed = asyncio.get_running_loop().time() - started
    assert [e.name for e in entries] == [f"b{i:02d}" for i in range(20)]
    assert all(e.complete for e in entries)
    assert _SlowHandle.peak == 4
    assert elapsed < 20 * 0.02


async def test_storage_errors_propagate_instead_of_marking_incomplete(tmp_path: Path) -> None:
    class Broken(_SlowHandle):
        async def read_file(self, filename: str) -> AsyncIterator[bytes]:
            raise StorageError("cannot read /b/MANIFEST: Input/output error (EIO)")
            yield b""

    with pytest.raises(StorageError, match="EIO"):
        await list_backup_entries(_SlowStorage([_SlowHandle("a"), Broken("b")]), DIR)


async def test_manifest_round_trip_through_storage(tmp_path: Path) -> None:
    storage = FileBackupStorage(tmp_path)
    handle = await storage.start_backup(DIR, "b1")
    m = Manifest(BackupName="b1", Position="MariaDB/0-1-5")
    await write_manifest(handle, m)
    await handle.end()
    assert await read_manifest(handle) == m
    entry = BackupEntry(handle, m, True, None)
    assert entry.directory == DIR and entry.name == "b1"


async def test_the_manifest_cache_reads_each_complete_backup_once(tmp_path: Path) -> None:
    from agent.catalog.listing import ManifestCache

    storage = FileBackupStorage(tmp_path)
    await _backup(storage, 10, Manifest(BackupMethod="builtin", Position="MariaDB/0-1-5"))
    await _backup(storage, 11, None)
    cache = ManifestCache()
    first = await list_backup_entries(storage, DIR, cache=cache)
    assert len(cache) == 1  # incomplete backups are never cached
    done = tmp_path / DIR / first[0].name / "MANIFEST"
    original = done.read_bytes()
    done.write_bytes(original.replace(b"0-1-5", b"0-1-6"))
    again = await list_backup_entries(storage, DIR, cache=cache)
    assert again[0].manifest == first[0].manifest  # from the cache: complete backups are immutable
    assert not again[1].complete
    # an operation about to use a backup confirms it: a changed MANIFEST forgets the directory
    assert await cache.confirm([again[0]]) is None
    assert len(cache) == 0
    fresh = await list_backup_entries(storage, DIR, cache=cache)
    assert fresh[0].manifest is not None and fresh[0].manifest.position == "MariaDB/0-1-6"
    assert await cache.confirm([fresh[0]]) is not None
    # removed backups leave the cache with the next listing
    await storage.remove_backup(DIR, fresh[0].name)
    await list_backup_entries(storage, DIR, cache=cache)
    assert len(cache) == 0


async def test_the_manifest_cache_keeps_no_file_entries_and_confirm_gives_them_back(tmp_path: Path) -> None:
    from agent.catalog.listing import ManifestCache

    storage = FileBackupStorage(tmp_path)
    entries = [
        FileEntry(Base="Data", Name=f"db/t{i}.ibd", Hash="00000000", Size=100, StoredSize=40 + i)
        for i in range(1000)
    ]
    await _backup(
        storage, 10, Manifest(BackupMethod="builtin", Position="MariaDB/0-1-5", FileEntries=entries)
    )
    cache = ManifestCache()
    size = sum(40 + i for i in range(1000))
    for _ in range(2):  # read, then from the cache
        (listed,) = await list_backup_entries(storage, DIR, cache=cache)
        assert listed.manifest is not None and listed.manifest.file_entries is None
        assert listed.manifest.source is None  # nor the JSON it was read from
        assert listed.manifest.position == "MariaDB/0-1-5" and listed.stored_size == size
    confirmed = await cache.confirm([listed])
    assert confirmed is not None and confirmed[0].manifest is not None
    assert confirmed[0].manifest.file_entries == entries and confirmed[0].stored_size == size
    assert confirmed[0].manifest.source is not None
    (uncached,) = await list_backup_entries(storage, DIR)
    assert uncached.manifest is not None and uncached.manifest.file_entries == entries
