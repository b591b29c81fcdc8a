"""Raw pipes between the agent and a child, read or written by threads instead of the event loop (the
bulk data of xtrabackup and mbstream moves this way)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
PIPE_SIZE = 1 << 20  # kernel pipe buffer asked for (F_SETPIPE_SZ), fewer wake-ups per MiB


class Stoppable(Protocol):
    async def shutdown(self) -> None:
        """Stop the child and reap it."""


async def stop_first_on_cancel(proc: Stoppable, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`, which moves a child's output or input through a pipe in threads; if cancelled,
    stop the child first, so a thread blocked on the pipe returns instead of waiting for the child."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await proc.shutdown()
        task.cancel()
        await asyncio.wait([task])
        raise


def write_all(fd: int, data: bytes | bytearray | memoryview) -> bool:
    """Write everything to a pipe (blocking: call it in a thread); False if the reader went away."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        return False
    return True


def grow_pipe(fd: int) -> None:
    """Ask for a PIPE_SIZE pipe buffer (fewer wake-ups per megabyte); best effort."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def grow_transport_pipe(transport: asyncio.BaseTransport | None) -> None:
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    if pipe is None:
        return
    with contextlib.suppress(ValueError):
        grow_pipe(pipe.fileno())
