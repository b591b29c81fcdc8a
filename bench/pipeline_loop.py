"""pipeline_loop: the store pipeline's throughput on compressible data (zstd, in memory, no disk), and how
late the event loop's timers fire meanwhile (a Status call must answer in milliseconds during a backup).

    python -m bench.pipeline_loop [--mib 512]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator

from agent.pipeline.compression import Buffer, CodecOptions, get_codec
from agent.pipeline.store import store

SIXTEEN_LETTERS = bytes.maketrans(bytes(range(256)), bytes(ord("a") + i % 16 for i in range(256)))


class CountingWriter:
    def __init__(self) -> None:
        self.count = 0

    async def write(self, data: Buffer) -> None:
        self.count += len(data)

    async def close(self) -> None:
        pass

    async def abort(self) -> None:
        pass


async def run(mib: int) -> tuple[float, float]:
    """(MB/s, worst timer lateness in ms) for storing `mib` MiB through zstd."""
    blocks = [os.urandom(4 << 20).translate(SIXTEEN_LETTERS) for _ in range(8)]
    lag = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal lag
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.005)
            lag = max(lag, time.monotonic() - t - 0.005)

    async def source() -> AsyncIterator[bytes]:
        for i in range(mib // 4):
            yield blocks[i % 8]

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        await store(source(), CountingWriter(), get_codec("zstd", CodecOptions()))
    finally:
        stop.set()
        await tick
    return mib * 1.048576 / (time.perf_counter() - started), lag * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mib", type=int, default=512)
    args = p.parse_args(argv)
    mbps, lag_ms = asyncio.run(run(args.mib))
    print(f"BENCH pipeline_loop mbps={mbps:.1f} max_timer_lag_ms={lag_ms:.1f} mib={args.mib}")
    print(f"reproduce: python -m bench.pipeline_loop --mib {args.mib}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
