"""Token buckets: one rate shared by threads and tasks, ceilings that requests lower but never raise,
reloads that reach running operations; and the pipeline paced by them."""

import asyncio
import os
import threading
import time
from pathlib import Path

from agent.aio.procs import io_priority
from agent.pipeline.compression import CodecOptions, get_codec
from agent.pipeline.ratelimit import RateLimits, TokenBucket
from agent.pipeline.store import file_chunks, store
from tests.unit.test_pipeline import NullWriter

RATE = 4 << 20  # bytes/s


def _within(observed: float, target: float, tolerance: float = 0.10) -> bool:
    return abs(observed - target) <= tolerance * target


def test_bucket_shared_by_threads_holds_the_rate() -> None:
    bucket = TokenBucket(RATE)
    moved = [0] * 4
    deadline = time.monotonic() + 1.5

    def worker(k: int) -> None:
        while time.monotonic() < deadline:
            bucket.take(64 << 10)
            moved[k] += 64 << 10

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    observed = sum(moved) / (time.monotonic() - start)
    assert _within(observed, RATE), observed / RATE
    assert all(m > 0 for m in moved)


async def test_bucket_shared_by_threads_and_tasks() -> None:
    bucket = TokenBucket(RATE)
    moved = [0, 0]
    deadline = time.monotonic() + 1.5

    def thread_side() -> None:
        while time.monotonic() < deadline:
            bucket.take(256 << 10)
            moved[0] += 256 << 10

    async def task_side() -> None:
        while time.monotonic() < deadline:
            await bucket.pace(1 << 20)
            moved[1] += 1 << 20

    start = time.monotonic()
    await asyncio.gather(asyncio.to_thread(thread_side), task_side(), task_side())
    observed = sum(moved) / (time.monotonic() - start)
    assert _within(observed, RATE), observed / RATE


def test_unlimited_and_rate_changes() -> None:
    bucket = TokenBucket(0)
    start = time.monotonic()
    for _ in range(1000):
        bucket.take(1 << 30)
    assert time.monotonic() - start < 0.5
    bucket.set_rate(RATE)
    start = time.monotonic()
    for _ in range(8):
        bucket.take(RATE // 8)
    assert _within(time.monotonic() - start, 1.0)
    bucket.set_rate(2 * RATE)
    start = time.monotonic()
    for _ in range(8):
        bucket.take(RATE // 4)
    assert _within(time.monotonic() - start, 1.0, 0.15)  # one reservation may still be at the old rate


def test_requests_lower_never_raise_and_reloads_reach_running_operations() -> None:
    limits = RateLimits(disk=100, storage=0, io_class="idle")
    op = limits.for_operation(disk=50, storage=30)
    assert (op.disk.rate, op.storage.rate, op.io_class) == (50, 30, "idle")
    higher = limits.for_operation(disk=1000)
    assert higher.disk.rate == 100 and higher.storage.rate == 0
    limits.reload(disk=40, storage=10, io_class="best-effort:7")
    assert (op.disk.rate, op.storage.rate, op.io_class) == (40, 10, "best-effort:7")
    assert (higher.disk.rate, limits.shared.disk.rate, limits.shared.storage.rate) == (40, 40, 10)
    limits.reload(disk=0, storage=0)
    assert (op.disk.rate, op.storage.rate, higher.disk.rate) == (50, 30, 1000)  # the requests now


def test_io_class_specs() -> None:
    assert io_priority("idle") == 3 << 13
    assert io_priority("best-effort:7") == 2 << 13 | 7
    assert io_priority("none") is None
    for bad in ("lazy", "best-effort:9", "idle:x"):
        try:
            io_priority(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


async def test_store_is_paced_on_reads_and_writes(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(os.urandom(6 << 20))  # incompressible: stored ~ read
    codec = get_codec("zstd", CodecOptions(threads=2))
    for disk, storage in ((RATE, 0), (0, RATE)):
        limits = RateLimits(disk, storage).for_operation()
        start = time.monotonic()
        stats = await store(file_chunks(src), NullWriter(), codec, limits=limits)
        observed = stats.size / (time.monotonic() - start)
        assert _within(observed, RATE, 0.15), (disk, storage, observed / RATE)
