"""Backup storage in a local or NFS-mounted directory: `<root>/<keyspace>/<shard>/<name>/<filename>`.

Durability: an object is written under a temporary name (`.<filename>.tmp-<random>`) and renamed to
its final name once complete, so a name never shows a partial object (a process killed mid-write leaves
only temporaries). Objects are not fsync'd one by one: `make_durable` (the barrier before the MANIFEST)
syncs the whole filesystem once (syncfs(2) through a descriptor opened when the backup started, so
write-back errors since then are reported) and the backup directory; objects written after it (the
MANIFEST) are fsync'd, renamed and their directory fsync'd each. A machine crash before the barrier may
leave objects incomplete under their final names, but never a MANIFEST: such a backup is incomplete and
never restored. New directories are fsync'd into their parents. Directories are created 0o750 and files
0o640 (backups hold table data: never world-readable). Blocking I/O runs in threads, batched in ~1 MiB
writes and 1 MiB reads (a batch of small objects in one step: `put_objects`, `get_objects`); objects pass
through the page cache in a bounded window (`CacheWindow`), written back as they are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from agent.aio.localfiles import CacheWindow, FileChunks
from agent.aio.tasks import in_thread
from agent.errors import FailedPrecondition, NotFound, StorageError
from agent.storage.base import (
    RECORD_PREFIX,
    BackupHandle,
    BackupWriter,
    Buffer,
    HandleState,
    validate_backup_name,
    validate_directory,
    validate_object_name,
    validate_record_name,
)

DIR_MODE = 0o750
FILE_MODE = 0o640
WRITE_BUFFER = 1 << 20
READ_CHUNK = 1 << 20

_HINTS: Mapping[int, str] = MappingProxyType(
    {
        errno.ENOSPC: "free space on the backup storage or remove old backups",
        errno.EDQUOT: "raise the disk quota or remove old backups",
        errno.EROFS: "the backup storage is mounted read-only; remount it read-write",
        errno.EACCES: "give the agent's user write access to the backup storage",
        errno.EPERM: "give the agent's user write access to the backup storage",
    }
)


def storage_error(action: str, path: Path, e: OSError) -> StorageError:
    """`StorageError` naming the path, the errno text and, for common causes, the fix."""
    name = errno.errorcode.get(e.errno or 0, "?")
    hint = _HINTS.get(e.errno or 0)
    message = f"{action} {path}: {e.strerror or e} ({name})"
    return StorageError(f"{message}; {hint}" if hint else message)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # some filesystems cannot sync directories
            raise
    finally:
        os.close(fd)


def _syncfs(fd: int) -> None:
    """Flush the whole filesystem holding `fd` (its write-back errors since `fd` was opened raise);
    `sync()` where the C library has no syncfs."""
    libc = ctypes.CDLL(None, use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    if syncfs(fd) != 0:
        err = ctypes.get_errno()
        if err != errno.ENOSYS:
            raise OSError(err, os.strerror(err))
        os.sync()


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _makedirs(path: Path) -> None:
    """mkdir -p with DIR_MODE, fsync'ing each new directory into its parent."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue
        _fsync_dir(d.parent)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FileBackupStorage:
    """`BackupStorage` over a directory tree."""

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.abspath(root))

    @property
    def root(self) -> Path:
        return self._root

    def describe(self) -> str:
        return f"file:{self._root}"

    async def close(self) -> None:
        """Nothing to release: files are opened per call."""

    def _dir(self, directory: str) -> Path:
        return self._root.joinpath(*validate_directory(directory))

    async def list_backups(self, directory: str) -> list[BackupHandle]:
        path = self._dir(directory)

        def scan() -> list[str]:
            try:
                with os.scandir(path) as it:
                    return sorted(
                        e.name for e in it if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
                    )
            except FileNotFoundError:
                return []
            except OSError as e:
                raise storage_error("cannot list backups in", path, e) from e

        return [
            _FileBackupHandle(self, directory, name, path / name, read_only=True)
            for name in await in_thread(scan)
        ]

    async def list_directories(self) -> list[str]:
        def scan() -> list[str]:
            found: list[str] = []
            try:
                keyspaces = sorted(p for p in self._root.iterdir() if _visible_dir(p))
                for ks in keyspaces:
                    found.extend(f"{ks.name}/{s.name}" for s in sorted(ks.iterdir()) if _visible_dir(s))
            except FileNotFoundError:
                return []
            except OSError as e:
                raise storage_error("cannot list", self._root, e) from e
            return found

        return await in_thread(scan)

    async def start_backup(self, directory: str, name: str) -> BackupHandle:
        path = self._dir(directory) / validate_backup_name(name)

        def create() -> int:
            try:
                _makedirs(path.parent)
                os.mkdir(path, DIR_MODE)
                _fsync_dir(path.parent)
                return _open_dir(path)
            except FileExistsError:
                raise FailedPrecondition(
                    f"backup {directory}/{name} already exists in {self.describe()}: "
                    "backup names are never reused"
                ) from None
            except OSError as e:
                raise storage_error("cannot create backup directory", path, e) from e

        return _FileBackupHandle(self, directory, name, path, read_only=False, dir_fd=await in_thread(create))

    async def remove_backup(self, directory: str, name: str) -> None:
        path = self._dir(directory) / validate_backup_name(name)

        def remove() -> None:
            if not path.is_dir() or path.is_symlink():
                raise NotFound(f"backup {directory}/{name} not found in {self.describe()}")
            try:
                shutil.rmtree(path)
                _fsync_dir(path.parent)
            except OSError as e:
                raise storage_error("cannot remove backup", path, e) from e

        await in_thread(remove)


def _visible_dir(p: Path) -> bool:
    return not p.name.startswith(".") and p.is_dir() and not p.is_symlink()


class _FileBackupHandle(HandleState):
    """A backup directory. Tracks its open writers so `end` can refuse while one is unfinished. A
    read-write handle holds its directory open (`dir_fd`) for the durability barrier."""

    def __init__(
        self,
        storage: FileBackupStorage,
        directory: str,
        name: str,
        path: Path,
        *,
        read_only: bool,
        dir_fd: int = -1,
    ) -> None:
        super().__init__(directory, name, read_only=read_only)
        self._storage = storage
        self._path = path
        self._open: dict[str, _FileWriter] = {}
        self._used: set[str] = set()
        self._dir_fd = dir_fd
        self._sync_each = False  # after the barrier: every object is made durable when it is closed
        self._unsynced = False  # objects completed since the last barrier

    def __repr__(self) -> str:
        return f"<backup {self._directory}/{self._name} in {self._storage.describe()}>"

    async def add_file(self, filename: str, size_hint: int = -1) -> BackupWriter:
        self._require_writable("add a file to")
        final = self._path / validate_object_name(filename)
        if filename in self._used:
            raise FailedPrecondition(f"{filename} was already added to backup {self._directory}/{self._name}")
        tmp = self._path / f".{filename}.tmp-{secrets.token_hex(6)}"

        def create() -> int:
            if final.exists():
                raise FailedPrecondition(f"{final} already exists: backup objects are never overwritten")
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
                return os.open(tmp, flags, FILE_MODE)
            except OSError as e:
                raise storage_error("cannot create", tmp, e) from e

        self._used.add(filename)
        try:
            fd = await in_thread(create)
        except BaseException:
            self._used.discard(filename)
            raise
        writer = _FileWriter(self, filename, final, tmp, fd, sync=self._sync_each)
        self._open[filename] = writer
        return writer

    def _writer_done(self, filename: str, *, kept: bool, synced: bool = True) -> None:
        self._open.pop(filename, None)
        if not kept:
            self._used.discard(filename)
        elif not synced:
            self._unsynced = True

    async def put_objects(self, objects: Sequence[tuple[str, Buffer]]) -> None:
        """Several small objects in one thread step, each under a temporary name until complete."""
        self._require_writable("add files to")
        names = [validate_object_name(name) for name, _ in objects]
        again = [n for n in names if n in self._used]
        if again or len(set(names)) != len(names):
            raise FailedPrecondition(
                f"{', '.join(again) or 'an object'} was already added to backup {self._directory}/{self._name}"
            )
        self._used.update(names)
        sync = self._sync_each
        done = 0

        def write() -> None:
            nonlocal done
            for name, data in objects:
                _write_object(self._dir_fd, self._path, name, data, sync=sync)
                done += 1
            if sync:
                _fsync_dir(self._path)

        try:
            await in_thread(write)
        finally:
            self._used.difference_update(names[done:])
            if done and not sync:
                self._unsynced = True

    async def object_sizes(self) -> dict[str, int]:
        def scan() -> dict[str, int]:
            try:
                with os.scandir(self._path) as it:
                    return {
                        e.name: e.stat(follow_symlinks=False).st_size
                        for e in it
                        if not e.name.startswith((".", RECORD_PREFIX)) and e.is_file(follow_symlinks=False)
                    }
            except FileNotFoundError:
                return {}
            except OSError as e:
                raise storage_error("cannot list", self._path, e) from e

        return await in_thread(scan)

    def read_file(self, filename: str) -> AsyncIterator[bytes]:
        path = self._path / validate_object_name(filename)

        def error(action: str, e: OSError) -> Exception:
            if isinstance(e, FileNotFoundError):
                where = f"backup {self._directory}/{self._name} ({self._storage.describe()})"
                return NotFound(f"{filename} not found in {where}")
            return storage_error(action, path, e)

        # A FileChunks: the pipeline reads it into its own reused buffers.
        return FileChunks(path, READ_CHUNK, error, follow_symlinks=False)

    async def get_objects(self, filenames: Sequence[str]) -> list[bytes]:
        paths = [self._path / validate_object_name(name) for name in filenames]

        def read_all() -> list[bytes]:
            out = []
            for name, path in zip(filenames, paths, strict=True):
                try:
                    with open(path, "rb", buffering=0, opener=_no_follow) as f:
                        out.append(f.readall())
                except FileNotFoundError:
                    where = f"backup {self._directory}/{self._name} ({self._storage.describe()})"
                    raise NotFound(f"{name} not found in {where}") from None
                except OSError as e:
                    raise storage_error("cannot read", path, e) from e
            return out

        return await in_thread(read_all)

    async def file_size(self, filename: str) -> int | None:
        path = self._path / validate_object_name(filename)

        def size() -> int | None:
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return None
            except OSError as e:
                raise storage_error("cannot stat", path, e) from e

        return await in_thread(size)

    async def put_record(self, filename: str, data: bytes) -> None:
        final = self._path / validate_record_name(filename, data)
        tmp = self._path / f".{filename}.tmp-{secrets.token_hex(6)}"

        def write() -> None:
            if not self._path.is_dir() or self._path.is_symlink():
                raise NotFound(
                    f"backup {self._directory}/{self._name} not found in {self._storage.describe()}"
                )
            try:
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE
                )
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, final)
                _fsync_dir(self._path)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise storage_error("cannot write", final, e) from e

        await in_thread(write)

    async def make_durable(self) -> None:
        self._require_writable("make durable")
        unsynced, self._unsynced = self._unsynced, False
        try:
            await in_thread(self._barrier, unsynced)
        except BaseException:
            self._unsynced = self._unsynced or unsynced
            raise
        self._sync_each = True

    def _barrier(self, unsynced: bool) -> None:
        try:
            if unsynced:
                _syncfs(self._dir_fd)
            _fsync_dir(self._path)
        except OSError as e:
            raise storage_error("cannot sync the filesystem holding", self._path, e) from e

    async def end(self) -> None:
        self._require_writable("end")
        if self._open:
            names = ", ".join(sorted(self._open))
            raise FailedPrecondition(
                f"cannot end backup {self._directory}/{self._name}: files still being written: {names}"
            )
        await self.make_durable()

        def sync() -> None:
            try:
                _fsync_dir(self._path.parent)
            except OSError as e:
                raise storage_error("cannot sync backup directory", self._path, e) from e

        await in_thread(sync)
        self._state = "ended"
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._dir_fd)
            self._dir_fd = -1

    async def abort(self) -> None:
        if self._read_only:
            raise FailedPrecondition(f"cannot abort backup {self._directory}/{self._name}: read-only handle")
        if self._state == "aborted":
            return
        if self._state == "ended":
            raise FailedPrecondition(
                f"cannot abort backup {self._directory}/{self._name}: it already ended; remove it instead"
            )
        self._state = "aborted"
        self._close_dir()
        for writer in list(self._open.values()):
            await writer.abort()

        def remove() -> None:
            try:
                shutil.rmtree(self._path, ignore_errors=False)
                _fsync_dir(self._path.parent)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise storage_error("cannot remove aborted backup", self._path, e) from e

        await in_thread(remove)


def _write_object(dir_fd: int, directory: Path, name: str, data: Buffer, *, sync: bool) -> None:
    """A whole small object in the directory open as `dir_fd`, created under its name (never over an
    existing one), written, (fsync'd,) and removed again if that fails. One name operation per object:
    a temporary name and a rename take two, an unnamed file (O_TMPFILE) a journaled orphan-list update,
    and every one of them serializes on a lock, which for thousands of tables is most of a backup. Until
    `put_objects` returns, an object may be seen partly written: only in a backup with no MANIFEST yet."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(name, flags, FILE_MODE, dir_fd=dir_fd)
    except FileExistsError:
        raise FailedPrecondition(
            f"{directory / name} already exists: backup objects are never overwritten"
        ) from None
    except OSError as e:
        raise storage_error("cannot create", directory / name, e) from e
    try:
        try:
            _write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        if isinstance(e, OSError):
            raise storage_error("cannot write", directory / name, e) from e
        raise


class _FileWriter:
    """Buffers small writes into ~1 MiB thread hops; `close` is rename, preceded by fsync and followed by
    a directory fsync when `sync` (after the handle's barrier)."""

    def __init__(
        self, handle: _FileBackupHandle, filename: str, final: Path, tmp: Path, fd: int, *, sync: bool
    ) -> None:
        self._handle = handle
        self._sync = sync
        self._filename = filename
        self._final = final
        self._tmp = tmp
        self._fd = fd
        self._buf = bytearray()
        self._cache = CacheWindow()
        self._state = "open"  # open -> closed | failed | aborted
        self._lock = asyncio.Lock()

    def _require_open(self, action: str) -> None:
        if self._state != "open":
            raise FailedPrecondition(f"cannot {action} {self._final}: the writer is {self._state}")

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        async with self._lock:
            self._require_open("write to")
            if not self._buf and len(data) >= WRITE_BUFFER:
                await self._io(self._write, data)
                return
            self._buf += data
            if len(self._buf) >= WRITE_BUFFER:
                buf, self._buf = self._buf, bytearray()
                await self._io(self._write, buf)

    async def close(self) -> None:
        async with self._lock:
            if self._state == "closed":
                return
            self._require_open("close")
            buf, self._buf = self._buf, bytearray()
            await self._io(self._commit, buf)
            self._state = "closed"
            self._handle._writer_done(self._filename, kept=True, synced=self._sync)

    async def abort(self) -> None:
        async with self._lock:
            if self._state in ("closed", "aborted"):
                return
            self._state = "aborted"
            self._buf = bytearray()
            await in_thread(self._discard)
            self._handle._writer_done(self._filename, kept=False)

    async def _io(
        self, fn: Callable[[bytes | bytearray | memoryview], None], data: bytes | bytearray | memoryview
    ) -> None:
        try:
            await in_thread(fn, data)
        except BaseException:
            self._state = "failed"
            raise

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            _write_all(self._fd, data)
        except OSError as e:
            raise storage_error("cannot write", self._tmp, e) from e
        self._cache.advance(self._fd, len(data))

    def _commit(self, rest: bytes | bytearray | memoryview) -> None:
        try:
            _write_all(self._fd, rest)
            if self._sync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.rename(self._tmp, self._final)
            if self._sync:
                _fsync_dir(self._final.parent)
        except OSError as e:
            raise storage_error("cannot complete", self._final, e) from e

    def _discard(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)
