"""Local files as the pipeline reads and writes them: big, sequential, once.

- `FileChunks` reads a file in chunks: as an async iterator of bytes, or straight into reused
  buffers (`read_into`), which saves a page fault per 4 KiB compared with fresh buffers.
- `LocalFile` is a file being restored: written, fsync'd (or left to a batch `fsync_path`), removed
  on failure.
- `sync_filesystem` makes whatever was written to a filesystem durable in one call (syncfs), for
  files that other programs wrote (xbstream, xtrabackup).
- Both keep only a window of the file in the page cache (`CacheWindow`): a backup or restore of
  any size neither evicts the host's page cache nor leaves gigabytes dirty for one final fsync.

The methods that do I/O block: call them in threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import grpc

from agent.aio.tasks import in_thread
from agent.errors import AgentError

Buffer = bytes | bytearray | memoryview
ErrorFactory = Callable[[str, OSError], Exception]
FILE_MODE = 0o640
CACHE_STEP = 16 << 20


def local_error(action: str, path: Path, e: OSError) -> AgentError:
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if e.errno in (errno.ENOSPC, errno.EDQUOT) else None
    return AgentError(f"{action} {path}: {e.strerror or e} ({errno.errorcode.get(e.errno or 0, '?')})", code)


class CacheWindow:
    """Every CACHE_STEP bytes of sequential I/O, POSIX_FADV_DONTNEED on the last two steps: clean
    pages (read, or already written back) leave the page cache, dirty ones start writeback now
    (the kernel would wait for 10% of RAM to be dirty) and leave at the next step."""

    def __init__(self) -> None:
        self._done = self._mark = self._behind = 0

    def advance(self, fd: int, n: int) -> None:
        self._done += n
        if self._done - self._mark >= CACHE_STEP:
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, self._behind, self._done - self._behind, os.POSIX_FADV_DONTNEED)
            self._behind, self._mark = self._mark, self._done


class FileChunks:
    """A local file's bytes in chunks of `chunk_size`, read in threads. `error(action, e)` builds
    the exception an OSError becomes (default: `local_error`)."""

    def __init__(
        self,
        path: Path,
        chunk_size: int,
        error: ErrorFactory | None = None,
        *,
        follow_symlinks: bool = True,
    ) -> None:
        self.path = path
        self.chunk_size = chunk_size
        self._error = error or (lambda action, e: local_error(action, path, e))
        self._follow = follow_symlinks
        self._fd = -1
        self._cache = CacheWindow()
        self._iter: AsyncGenerator[bytes, None] | None = None
        self.is_pipe = False

    @classmethod
    def from_pipe(cls, fd: int, chunk_size: int, name: str) -> FileChunks:
        """The read end of a pipe (a child's output), owned from now on: read in threads into the
        pipeline's buffers like a file, not through the event loop."""
        chunks = cls(Path(name), chunk_size)
        chunks._fd = fd
        chunks.is_pipe = True
        return chunks

    def open(self) -> None:
        if self._fd >= 0:
            return
        flags = os.O_RDONLY | os.O_CLOEXEC | (0 if self._follow else os.O_NOFOLLOW)
        try:
            self._fd = os.open(self.path, flags)
        except OSError as e:
            raise self._error("cannot open", e) from e
        with contextlib.suppress(OSError):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def read(self) -> bytes:
        try:
            data = os.read(self._fd, self.chunk_size)
        except OSError as e:
            raise self._error("cannot read", e) from e
        self._cache.advance(self._fd, len(data))
        return data

    def read_into(self, buf: bytearray | memoryview, digest: Callable[[Buffer], object] | None = None) -> int:
        """Fill `buf` (less only at the end of the file) and feed what was read to `digest` while it
        is in the CPU cache; the byte count."""
        view, n = memoryview(buf), 0
        try:
            while n < len(buf) and (k := os.readv(self._fd, [view[n:]])):
                n += k
        except OSError as e:
            raise self._error("cannot read", e) from e
        if digest is not None:
            digest(view[:n])
        self._cache.advance(self._fd, n)
        return n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __aiter__(self) -> FileChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._iter is None:
            self._iter = self._chunks()
        return await anext(self._iter)

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        await in_thread(self.open)
        try:
            while data := await in_thread(self.read):
                yield data
        finally:
            self.close()

    async def aclose(self) -> None:
        if self._iter is not None:
            await self._iter.aclose()
        self.close()


class LocalFile:
    """A file being restored: created 0o640 with its parents, written sequentially, fsync'd by
    `finish(sync=True)` or later by `fsync_path`, removed by `discard`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._cache = CacheWindow()

    def open(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(self.path, flags, FILE_MODE)
        except OSError as e:
            raise local_error("cannot create", self.path, e) from e

    def write(self, data: Buffer) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            raise local_error("cannot write", self.path, e) from e
        self._cache.advance(self._fd, len(data))

    def finish(self, sync: bool) -> None:
        try:
            if sync:
                os.fsync(self._fd)
        except OSError as e:
            raise local_error("cannot sync", self.path, e) from e
        os.close(self._fd)
        self._fd = -1

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            self.path.unlink()


def write_durably(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content, never a mix: a
    synced temporary file renamed over it, then the directory synced."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or directory by name (its data, or its entries)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise local_error("cannot sync", path, e) from e


def sync_filesystem(path: Path) -> None:
    """Make every file written to the filesystem that holds `path` durable: syncfs(2), which writes back
    the whole filesystem at once (also what other programs left dirty on it); where the C library has no
    syncfs, fsync of every file and directory under `path`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    except OSError as e:
        raise local_error("cannot sync", path, e) from e
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is not None:
            if syncfs(fd) == 0:
                return
            err = ctypes.get_errno()
            if err != errno.ENOSYS:
                raise local_error("cannot sync", path, OSError(err, os.strerror(err)))
    finally:
        os.close(fd)
    fsync_tree(path)


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under `path` (directories after their entries)."""
    for dirpath, _, filenames in os.walk(path, topdown=False):
        for name in filenames:
            file = Path(dirpath, name)
            if not file.is_symlink():
                fsync_path(file)
        fsync_path(Path(dirpath))
