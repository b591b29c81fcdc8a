"""I/O rate limits (`--backup_max_rate`, `--storage_max_rate`): token buckets shared by every thread and
task of an operation, whose ceilings change on SIGHUP while operations run.

A bucket charges bytes as they move (`take` from a thread, `await pace` on the event loop): every caller
reserves its bytes under a lock and waits until the bucket has earned them, so callers in any number of
threads together move at most `rate` bytes/s (plus a burst of `BURST` seconds after an idle spell). A
request may lower an operation's limits, never raise them past the configured ceilings.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from dataclasses import dataclass

from agent.pipeline.workers import CODEC_NICENESS

BURST = 0.05  # seconds of tokens a bucket keeps while idle


class TokenBucket:
    """`rate` bytes per second (0: unlimited). Thread-safe."""

    def __init__(self, rate: float = 0) -> None:
        self._lock = threading.Lock()
        self._rate = 0.0
        self._tokens = 0.0
        self._last = time.monotonic()
        self.set_rate(rate)

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the rate; callers already waiting keep their reservation, the next ones get the new rate."""
        with self._lock:
            now = time.monotonic()
            if self._rate > 0:
                self._tokens = min(self._rate * BURST, self._tokens + (now - self._last) * self._rate)
            else:
                self._tokens = 0.0
            self._last = now
            self._rate = max(0.0, float(rate))
            if self._rate > 0:
                self._tokens = min(self._tokens, self._rate * BURST)

    def reserve(self, n: int) -> float:
        """Charge `n` bytes; the seconds to wait before moving them."""
        with self._lock:
            rate = self._rate
            if rate <= 0:
                return 0.0
            now = time.monotonic()
            self._tokens = min(rate * BURST, self._tokens + (now - self._last) * rate) - n
            self._last = now
            return -self._tokens / rate if self._tokens < 0 else 0.0

    def take(self, n: int) -> None:
        """Charge `n` bytes, sleeping in the calling thread as long as needed."""
        delay = self.reserve(n)
        if delay > 0:
            time.sleep(delay)

    async def pace(self, n: int) -> None:
        """Charge `n` bytes, waiting on the event loop as long as needed."""
        delay = self.reserve(n)
        if delay > 0:
            await asyncio.sleep(delay)


def _lowest(ceiling: float, requested: float | None) -> float:
    """The effective rate: the request's when it is lower than the ceiling (0 means none)."""
    if requested is None or requested <= 0:
        return ceiling
    return min(ceiling, requested) if ceiling > 0 else requested


@dataclass(eq=False)  # by identity: kept in a WeakSet
class IoLimits:
    """One operation's limits: `disk` for the bytes a backup reads from the tablet's disks, `storage` for
    the bytes written to or read from storage, `io_class` for its child processes (`agent.aio.procs`).
    What a request asked for is kept for reloads."""

    disk: TokenBucket
    storage: TokenBucket
    requested_disk: float | None = None
    requested_storage: float | None = None
    io_class: str = ""
    niceness: int = CODEC_NICENESS  # of a backup's tool and codec threads (--backup_niceness)


class RateLimits:
    """The configured ceilings, and the buckets of the operations running under them."""

    def __init__(
        self, disk: float = 0, storage: float = 0, io_class: str = "", niceness: int = CODEC_NICENESS
    ) -> None:
        self.disk = float(disk)
        self.storage = float(storage)
        self.io_class = io_class
        self.niceness = niceness
        self._active: weakref.WeakSet[IoLimits] = weakref.WeakSet()
        self.shared = self.for_operation()  # for operations a request cannot limit (restores, verifies)

    def for_operation(self, disk: float | None = None, storage: float | None = None) -> IoLimits:
        """Buckets for one operation, at the ceilings or the request's lower rates."""
        limits = IoLimits(
            TokenBucket(_lowest(self.disk, disk)),
            TokenBucket(_lowest(self.storage, storage)),
            disk,
            storage,
            self.io_class,
            self.niceness,
        )
        self._active.add(limits)
        return limits

    def reload(
        self, disk: float, storage: float, io_class: str | None = None, niceness: int | None = None
    ) -> None:
        """New ceilings (SIGHUP): they apply at once, to running operations too (an I/O class and a
        niceness to the children and threads started from now on)."""
        self.disk, self.storage = float(disk), float(storage)
        if io_class is not None:
            self.io_class = io_class
        if niceness is not None:
            self.niceness = niceness
        for limits in list(self._active):
            if io_class is not None:
                limits.io_class = io_class
            if niceness is not None:
                limits.niceness = niceness
            limits.disk.set_rate(_lowest(self.disk, limits.requested_disk))
            limits.storage.set_rate(_lowest(self.storage, limits.requested_storage))


def format_rate(rate: float) -> str:
    return "unlimited" if rate <= 0 else f"{rate / 2**20:.1f} MiB/s"
