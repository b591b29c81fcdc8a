"""Reading a local file in chunks off the event loop (one thread hop per chunk)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from agent.procs import in_thread

ErrorFactory = Callable[[str, OSError], Exception]


async def read_chunks(
    path: Path, chunk_size: int, error: ErrorFactory, *, follow_symlinks: bool = True
) -> AsyncIterator[bytes]:
    """The file's bytes in chunks of up to `chunk_size`; `error(action, e)` builds what an OSError raises."""

    def open_() -> int:
        flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
        try:
            fd = os.open(path, flags)
        except OSError as e:
            raise error("cannot open", e) from e
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return fd

    def read(fd: int) -> bytes:
        try:
            return os.read(fd, chunk_size)
        except OSError as e:
            raise error("cannot read", e) from e

    fd = await in_thread(open_)
    try:
        while data := await in_thread(read, fd):
            yield data
    finally:
        os.close(fd)
