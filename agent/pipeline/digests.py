"""What a stored object is known by: its sizes and hashes (`StoredFile`), computed by running digests
fed in order by a background thread. `crc32_hex` is Vitess's `Hash` (CRC-32 IEEE of the stored bytes as
8 lowercase hex digits); `sha256_hex` is ours, of the original bytes."""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from agent.aio.tasks import complete
from agent.errors import DataLoss
from agent.pipeline.compression import Buffer


@dataclass(frozen=True)
class StoredFile:
    """One object's sizes and hashes: `size`/`sha256_hex` of the original bytes, `stored_size`/
    `crc32_hex` of the bytes as stored."""

    size: int
    stored_size: int
    crc32_hex: str
    sha256_hex: str


class Digest:
    """A running sha256 or CRC-32, fed in order by a background thread so hashing overlaps other work."""

    def __init__(self, kind: Literal["sha256", "crc32"]) -> None:
        self._sha = hashlib.sha256() if kind == "sha256" else None
        self._crc = 0
        self._pending: asyncio.Future[None] | None = None

    def _update(self, data: Buffer) -> None:
        if self._sha is not None:
            self._sha.update(data)
        else:
            self._crc = zlib.crc32(data, self._crc)

    async def _wait(self) -> None:
        if self._pending is not None:
            # Shielded: a cancelled caller must not orphan a thread still using the data (see close).
            await asyncio.shield(self._pending)

    async def feed(self, data: Buffer) -> None:
        await self._wait()
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._update, data)

    async def hexdigest(self) -> str:
        """sha256: 64 hex digits. CRC-32: 8 hex digits, as Go's hex.EncodeToString of the big-endian uint32."""
        await self._wait()
        return self._sha.hexdigest() if self._sha is not None else f"{self._crc:08x}"

    async def close(self) -> None:
        """Wait for the running update, if any (its error was already reported or is moot)."""
        if self._pending is not None:
            await complete(asyncio.wait([self._pending]))
            if not self._pending.cancelled():
                self._pending.exception()


class HashThread:
    """A sha256 fed in order by a thread of its own, without waiting for it: `feed` queues the data and
    returns a future that is done once the thread no longer uses it (then its buffer may be reused).
    Takes the hashing off a thread that must keep reading (a child's pipe). `close` it."""

    def __init__(self, initializer: Callable[[], object] | None = None) -> None:
        self._sha = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sha256", initializer=initializer)

    def feed(self, data: Buffer) -> asyncio.Future[None]:
        return asyncio.wrap_future(self._pool.submit(self._sha.update, data))

    async def hexdigest(self) -> str:
        return await asyncio.wrap_future(self._pool.submit(self._sha.hexdigest))

    def close(self) -> None:
        """Queued data is dropped; data being hashed is finished by the thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def stored_whole(original: Buffer, stored: Buffer) -> StoredFile:
    """The StoredFile of an object encoded in one piece (`stored` from `original`), hashed in the caller's
    thread."""
    return StoredFile(
        len(original), len(stored), f"{zlib.crc32(stored):08x}", hashlib.sha256(original).hexdigest()
    )


def hash_mismatch(name: str, got: str, expected: str) -> DataLoss:
    return DataLoss(f"hash mismatch for {name}, got {got} expected {expected}")


# --- backup direction -------------------------------------------------------------------------
