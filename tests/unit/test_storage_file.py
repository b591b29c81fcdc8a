import asyncio
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import agent.storage.file as file_mod
from agent.aio.tasks import in_thread
from agent.errors import FailedPrecondition, InvalidArgument, NotFound, StorageError
from agent.storage import STORAGES, FileBackupStorage, ListsDirectories
from agent.storage.base import BackupHandle
from agent.storage.file import storage_error

DIR = "commerce/-80"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def _read(handle: BackupHandle, name: str) -> bytes:
    return b"".join([c async for c in handle.read_file(name)])


async def test_written_file_appears_only_after_close(tmp_path: Path) -> None:
    storage = FileBackupStorage(tmp_path)
    handle = await storage.start_backup(DIR, "2026-11-23.184500.zone1-0000000102")
    backup_dir = tmp_path / "commerce" / "-80" / "2026-11-23.184500.zone1-0000000102"
    writer = await handle.add_file("0")
    for i in range(100):
        await writer.write(bytes([i]) * 1000)
    await writer.write(memoryview(b"tail"))
    assert not (backup_dir / "0").exists()
    assert await handle.file_size("0") is None
    temps = [p.name for p in backup_dir.iterdir()]
    assert len(temps) == 1 and temps[0].startswith(".0.tmp-")
    await writer.close()
    assert sorted(p.name for p in backup_dir.iterdir()) == ["0"]
    expected = b"".join(bytes([i]) * 1000 for i in range(100)) + b"tail"
    assert await handle.file_size("0") == len(expected)
    assert await _read(handle, "0") == expected
    await handle.end()


async def test_modes_are_not_world_readable(tmp_path: Path) -> None:
    storage = FileBackupStorage(tmp_path / "root")
    handle = await storage.start_backup(DIR, "b1")
    writer = await handle.add_file("MANIFEST")
    await writer.write(b"{}")
    await writer.close()
    mask = _umask()
    backup_dir = tmp_path / "root" / "commerce" / "-80" / "b1"
    for d in (tmp_path / "root", tmp_path / "root" / "commerce", backup_dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o750 & ~mask
    mode = stat.S_IMODE((backup_dir / "MANIFEST").stat().st_mode)
    assert mode == 0o640 & ~mask
    assert not mode & 0o007


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    events: list[str] = []
    real_fsync, real_rename, real_syncfs = os.fsync, os.rename, file_mod._syncfs

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def rename(a: Any, b: Any, **dir_fds: Any) -> None:
        events.append("rename")
        real_rename(a, b, **dir_fds)

    def syncfs(fd: int) -> None:
        events.append("syncfs")
        real_syncfs(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(file_mod, "_syncfs", syncfs)
    return events


async def test_objects_appear_complete_and_are_made_durable_by_one_barrier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    events = _record_syncs(monkeypatch)
    for name in ("0", "1"):
        writer = await handle.add_file(name)
        await writer.write(b"data")
        await writer.close()
    await handle.put_objects([("2", b"x"), ("3", b"y")])
    assert events == ["rename", "rename"]  # batched objects are created under their names
    events.clear()
    await handle.make_durable()
    assert events == ["syncfs", "fsync-dir"]


async def test_after_the_barrier_each_object_is_fsynced_renamed_then_its_directory_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    await handle.make_durable()
    events = _record_syncs(monkeypatch)
    writer = await handle.add_file("MANIFEST")
    await writer.write(b"{}")
    await writer.close()
    assert events == ["fsync-file", "rename", "fsync-dir"]
    events.clear()
    await handle.end()  # nothing left unsynced: no second syncfs
    assert events == ["fsync-dir", "fsync-dir"]


async def test_end_makes_unsynced_objects_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    events = _record_syncs(monkeypatch)
    await handle.put_objects([("0", b"x")])
    await handle.end()
    assert events == ["syncfs", "fsync-dir", "fsync-dir"]


async def test_syncfs_failure_is_a_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    await handle.put_objects([("0", b"x")])

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(file_mod, "_syncfs", failing)
    with pytest.raises(StorageError, match="EIO"):
        await handle.make_durable()
    monkeypatch.undo()
    await handle.make_durable()  # the objects are still owed a barrier, and get it


async def test_real_syncfs_runs(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        file_mod._syncfs(fd)
    finally:
        os.close(fd)


async def test_put_objects_stores_each_like_add_file_and_refuses_names_twice(tmp_path: Path) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    writer = await handle.add_file("0")
    await writer.write(b"streamed")
    await writer.close()
    await handle.put_objects([("1", b"one"), ("2", memoryview(b"two")), ("3", b"")])
    assert [await _read(handle, n) for n in ("0", "1", "2", "3")] == [b"streamed", b"one", b"two", b""]
    with pytest.raises(FailedPrecondition, match="already added"):
        await handle.put_objects([("4", b"x"), ("1", b"again")])
    with pytest.raises(InvalidArgument):
        await handle.put_objects([("../x", b"x")])
    await handle.put_objects([("4", b"four")])
    await handle.put_record("tablet-agent-note", b"r")
    sizes = await handle.object_sizes()
    assert sizes == {"0": 8, "1": 3, "2": 3, "3": 0, "4": 4}
    backup_dir = tmp_path / "commerce" / "-80" / "b1"
    assert not [p for p in backup_dir.iterdir() if p.name.startswith(".")]
    await handle.end()


async def test_a_batched_object_is_written_whole_under_its_mode_and_never_over_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    await handle.put_objects([("0", b"zero" * 1000), ("1", b"")])
    backup_dir = tmp_path / "commerce" / "-80" / "b1"
    assert sorted(p.name for p in backup_dir.iterdir()) == ["0", "1"]
    assert (backup_dir / "0").read_bytes() == b"zero" * 1000
    assert stat.S_IMODE((backup_dir / "0").stat().st_mode) == 0o640 & ~_umask()
    fd = os.open(backup_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FailedPrecondition, match="never overwritten"):
            file_mod._write_object(fd, backup_dir, "0", b"other", sync=False)
    finally:
        os.close(fd)
    assert (backup_dir / "0").read_bytes() == b"zero" * 1000
    assert sorted(p.name for p in backup_dir.iterdir()) == ["0", "1"]


async def test_put_objects_failure_leaves_no_temporary_and_frees_the_unwritten_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    real_write = file_mod._write_all
    calls = 0

    def write_all(fd: int, data: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(file_mod, "_write_all", write_all)
    with pytest.raises(StorageError, match="free space"):
        await handle.put_objects([("0", b"a"), ("1", b"b"), ("2", b"c")])
    backup_dir = tmp_path / "commerce" / "-80" / "b1"
    assert sorted(p.name for p in backup_dir.iterdir()) == ["0"]
    monkeypatch.undo()
    await handle.put_objects([("1", b"b"), ("2", b"c")])
    with pytest.raises(FailedPrecondition):
        await handle.put_objects([("0", b"a")])


async def test_small_writes_are_batched_into_few_thread_hops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    writer = await handle.add_file("0")
    hops = 0
    real = in_thread

    async def counting(fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal hops
        hops += 1
        return await real(fn, *args)

    monkeypatch.setattr(file_mod, "in_thread", counting)
    for _ in range(4096):
        await writer.write(b"x" * 1024)  # 4 MiB in 1 KiB writes
    await writer.close()
    assert hops <= 5
    assert await handle.file_size("0") == 4 << 20


async def test_names_are_never_reused(tmp_path: Path) -> None:
    storage = FileBackupStorage(tmp_path)
    handle = await storage.start_backup(DIR, "b1")
    with pytest.raises(FailedPrecondition, match="already exists"):
        await storage.start_backup(DIR, "b1")
    w = await handle.add_file("0")
    await w.close()
    with pytest.raises(FailedPrecondition):
        await handle.add_file("0")


@pytest.mark.parametrize(
    "bad", ["", "../x", "a/b", ".hidden", "a\x00b", "a..b", "x\n", "/etc/passwd", "a" * 256]
)
async def test_unsafe_object_names_are_rejected(tmp_path: Path, bad: str) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    with pytest.raises(InvalidArgument):
        await handle.add_file(bad)
    with pytest.raises(InvalidArgument):
        await _read(handle, bad)


@pytest.mark.parametrize(
    ("directory", "name"), [("../x", "b"), ("ks/..", "b"), ("/abs", "b"), ("ks/0", ".."), ("ks/0", "a/b")]
)
async def test_unsafe_directories_and_backup_names_are_rejected(
    tmp_path: Path, directory: str, name: str
) -> None:
    storage = FileBackupStorage(tmp_path)
    with pytest.raises(InvalidArgument):
        await storage.start_backup(directory, name)


async def test_listing_is_oldest_first_read_only_and_skips_temp_and_plain_files(tmp_path: Path) -> None:
    storage = FileBackupStorage(tmp_path)
    for name in ["2026-11-23.184500.zone1-0000000102", "2026-01-01.000000.zone1-0000000101"]:
        await storage.start_backup(DIR, name)
    base = tmp_path / "commerce" / "-80"
    (base / ".2026-12-01.tmp").mkdir()
    (base / "stray-file").write_text("x")
    handles = await storage.list_backups(DIR)
    assert [h.name for h in handles] == [
        "2026-01-01.000000.zone1-0000000101",
        "2026-11-23.184500.zone1-0000000102",
    ]
    assert all(h.read_only and h.directory == DIR for h in handles)
    with pytest.raises(FailedPrecondition, match="read-only"):
        await handles[0].add_file("x")
    with pytest.raises(FailedPrecondition, match="read-only"):
        await handles[0].abort()
    assert await storage.list_backups("other/0") == []
    assert isinstance(storage, ListsDirectories)
    assert await storage.list_directories() == [DIR]


async def test_missing_object_is_not_found(tmp_path: Path) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    with pytest.raises(NotFound, match="MANIFEST not found in backup commerce/-80/b1"):
        await _read(handle, "MANIFEST")


async def test_abort_removes_the_partial_backup(tmp_path: Path) -> None:
    storage = FileBackupStorage(tmp_path)
    handle = await storage.start_backup(DIR, "b1")
    done = await handle.add_file("0")
    await done.write(b"x")
    await done.close()
    pending = await handle.add_file("1")
    await pending.write(b"y" * (2 << 20))
    await handle.abort()
    assert not (tmp_path / "commerce" / "-80" / "b1").exists()
    assert await storage.list_backups(DIR) == []
    with pytest.raises(FailedPrecondition):
        await pending.write(b"z")
    await handle.abort()  # idempotent


async def test_writer_abort_removes_its_temp_file(tmp_path: Path) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    writer = await handle.add_file("0")
    await writer.write(b"x" * (3 << 20))
    await writer.abort()
    assert list((tmp_path / "commerce" / "-80" / "b1").iterdir()) == []
    again = await handle.add_file("0")  # an aborted name may be written again
    await again.close()
    await handle.end()


async def test_end_requires_closed_writers_and_makes_the_backup_immutable(tmp_path: Path) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    writer = await handle.add_file("0")
    with pytest.raises(FailedPrecondition, match="still being written: 0"):
        await handle.end()
    await writer.close()
    await handle.end()
    with pytest.raises(FailedPrecondition, match="already ended"):
        await handle.add_file("1")
    with pytest.raises(FailedPrecondition, match="remove it instead"):
        await handle.abort()


async def test_remove_backup(tmp_path: Path) -> None:
    storage = FileBackupStorage(tmp_path)
    handle = await storage.start_backup(DIR, "b1")
    w = await handle.add_file("0")
    await w.close()
    await handle.end()
    await storage.remove_backup(DIR, "b1")
    assert await storage.list_backups(DIR) == []
    with pytest.raises(NotFound):
        await storage.remove_backup(DIR, "b1")


async def test_write_errors_become_storage_errors_naming_path_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    writer = await handle.add_file("0")

    def full(fd: int, data: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(file_mod, "_write_all", full)
    with pytest.raises(StorageError) as info:
        await writer.write(b"x" * (2 << 20))
    message = str(info.value)
    assert "No space left on device (ENOSPC)" in message
    assert str(tmp_path) in message
    assert "free space" in message
    with pytest.raises(FailedPrecondition):
        await writer.close()
    await handle.abort()


def test_storage_error_messages() -> None:
    e = storage_error("cannot write", Path("/b/x"), OSError(errno.EROFS, os.strerror(errno.EROFS)))
    assert str(e) == (
        "cannot write /b/x: Read-only file system (EROFS); "
        "the backup storage is mounted read-only; remount it read-write"
    )
    assert "EACCES" in str(
        storage_error("cannot create", Path("/b"), PermissionError(errno.EACCES, "Permission denied"))
    )


async def test_cancelled_write_fails_the_writer_and_abort_cleans_up(tmp_path: Path) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")
    writer = await handle.add_file("0")
    task = asyncio.create_task(writer.write(b"x" * (64 << 20)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(FailedPrecondition, match="failed"):
        await writer.close()
    await writer.abort()
    assert list((tmp_path / "commerce" / "-80" / "b1").iterdir()) == []


async def test_parallel_writers_in_one_backup(tmp_path: Path) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup(DIR, "b1")

    async def one(i: int) -> None:
        w = await handle.add_file(str(i))
        for _ in range(10):
            await w.write(bytes([i]) * 300_000)
        await w.close()

    await asyncio.gather(*(one(i) for i in range(8)))
    await handle.end()
    for i in range(8):
        assert await _read(handle, str(i)) == bytes([i]) * 3_000_000


def test_registry_has_file_storage() -> None:
    assert "file" in STORAGES
    with pytest.raises(TypeError):
        STORAGES["x"] = STORAGES["file"]  # type: ignore[index]
