"""CPU threads and buffers shared by the streams of one operation (see `Workers`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import mmap
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
A = TypeVar("A")
BUFFER_UNIT = 1 << 20  # pooled buffers come in multiples of this
CODEC_NICENESS = 10  # Workers' default; a backup's follow --backup_niceness (IoLimits.niceness)
# Frames in flight per thread: enough that a short stall of the reader or the writer leaves no
# thread idle (2 MiB frames: 2 threads hold at most 10 x 2 MiB read and 10 compressed).
SLOTS_PER_THREAD = 4


class Workers:
    """CPU threads and memory shared by the streams of one operation.

    Frames of framed codecs are compressed by `threads` threads (at `niceness`); at most
    `SLOTS_PER_THREAD * threads + 2` frames are in flight (read, not yet stored) across all streams,
    so memory does not grow with their number. Buffers are pooled: reading or decoding into fresh
    memory costs a page fault per 4 KiB, and buffers allocated by many threads spread over as many
    malloc arenas.
    Use it as `async with Workers() as w:` and pass it to `store`/`store_striped`/`restore`.
    """

    def __init__(self, threads: int = 0, niceness: int = CODEC_NICENESS) -> None:
        self.threads = threads if threads > 0 else os.cpu_count() or 1
        self.niceness = niceness
        self._pool: ThreadPoolExecutor | None = None
        self._slots = asyncio.Semaphore(SLOTS_PER_THREAD * self.threads + 2)
        self._buffers: dict[int, deque[mmap.mmap]] = {}  # free buffers by size (deques: thread-safe)

    async def __aenter__(self) -> Workers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads once their current frames are done; queued frames are dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._buffers.clear()

    async def acquire(self) -> None:
        await self._slots.acquire()

    def release(self) -> None:
        self._slots.release()

    def buffer(self, n: int) -> mmap.mmap:
        """A buffer of at least `n` bytes (a multiple of BUFFER_UNIT). Any thread. Anonymous maps,
        not malloc: their memory goes back to the system when the workers are closed."""
        size = max(1, -(-n // BUFFER_UNIT)) * BUFFER_UNIT
        try:
            return self._buffers[size].pop()
        except (KeyError, IndexError):
            return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def recycle(self, buf: mmap.mmap) -> None:
        """Give back a buffer from `buffer` once nothing uses it any more. Any thread."""
        self._buffers.setdefault(len(buf), deque()).append(buf)

    def submit(self, fn: Callable[[A], T], data: A) -> asyncio.Future[T]:
        return self.call(functools.partial(fn, data))

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run `fn` in one of the CPU threads (a batch of small files, say)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.threads, thread_name_prefix="codec", initializer=set_niceness, initargs=(self.niceness,)
            )
        return asyncio.wrap_future(self._pool.submit(fn))


def set_niceness(niceness: int) -> None:
    """The calling thread's CPU priority (`--backup_niceness`; 0 leaves it as it is). Above 0 a backup's
    compression threads yield the CPU to the agent's event loop (and, without autogroups or cgroups
    apart, to mysqld) whenever those want it."""
    if niceness:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
