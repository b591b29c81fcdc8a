"""compression_levels: the agent's codecs (zstd levels 1 and 3, lz4, pgzip) on two kinds of InnoDB data —
the synthetic bench set and sysbench-style rows with text — through the agent's own store pipeline on all
cores: MB/s of original data and the stored size. The default compression is chosen from this table.

    python -m bench.compression_levels [--size-gb 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from agent.pipeline.compression import Buffer, CodecOptions, get_codec
from agent.pipeline.store import file_chunks, store
from agent.pipeline.workers import Workers
from bench.common import dataset
from tests.sandbox import Sandbox

CODECS = (("zstd", 1), ("zstd", 3), ("lz4", 0), ("pgzip", 1))


class Counter:
    def __init__(self) -> None:
        self.count = 0

    async def write(self, data: Buffer) -> None:
        self.count += len(data)

    async def close(self) -> None:
        pass

    async def abort(self) -> None:
        pass


def sysbench_like(workdir: Path, size_gb: float) -> Sandbox:
    """sysbench's oltp table shape: an int key, an int, a 120-char `c` of digit groups, a 60-char `pad`."""
    sb = Sandbox(workdir / "sysbench-sandbox", extra_options=["innodb_buffer_pool_size=256M"])
    sb.init()
    sb.start()
    rows = int(size_gb * 1e9 / 230)
    sb.sql("CREATE DATABASE IF NOT EXISTS sbtest")
    for t in range(4):
        sb.sql(
            f"CREATE TABLE sbtest.sbtest{t} (id INT PRIMARY KEY, k INT, c CHAR(120), pad CHAR(60), KEY k (k))"
        )
        sb.sql(
            f"INSERT INTO sbtest.sbtest{t} SELECT seq, FLOOR(RAND() * {rows}), "
            "CONCAT_WS('-', LPAD(FLOOR(RAND()*1e11), 11, '0'), LPAD(FLOOR(RAND()*1e11), 11, '0'), "
            "LPAD(FLOOR(RAND()*1e11), 11, '0'), LPAD(FLOOR(RAND()*1e11), 11, '0'), "
            "LPAD(FLOOR(RAND()*1e11), 11, '0'), LPAD(FLOOR(RAND()*1e11), 11, '0'), "
            "LPAD(FLOOR(RAND()*1e11), 11, '0'), LPAD(FLOOR(RAND()*1e11), 11, '0'), "
            "LPAD(FLOOR(RAND()*1e11), 11, '0'), LPAD(FLOOR(RAND()*1e11), 11, '0')), "
            "CONCAT_WS('-', LPAD(FLOOR(RAND()*1e11), 11, '0'), LPAD(FLOOR(RAND()*1e11), 11, '0'), "
            "LPAD(FLOOR(RAND()*1e11), 11, '0'), LPAD(FLOOR(RAND()*1e11), 11, '0'), "
            f"LPAD(FLOOR(RAND()*1e11), 11, '0')) FROM sbtest.seq_1_to_{rows // 4}"
        )
    return sb


async def measure(files: list[Path], name: str, level: int) -> tuple[float, int, int]:
    """(seconds, original bytes, stored bytes) for storing `files` with one codec."""
    codec = get_codec(name, CodecOptions(level=level))
    original = stored = 0
    start = time.perf_counter()
    async with Workers() as workers:
        for path in files:
            out = Counter()
            info = await store(file_chunks(path), out, codec, workers=workers)
            original, stored = original + info.size, stored + info.stored_size
    return time.perf_counter() - start, original, stored


def table(title: str, sb: Sandbox) -> list[str]:
    sb.stop()
    files = sorted(p for p in sb.datadir.rglob("*.ibd") if p.stat().st_size > 1 << 20)
    rows = [f"{title}: {sum(p.stat().st_size for p in files) / 1e6:.0f} MB in {len(files)} .ibd files"]
    for name, level in CODECS:
        asyncio.run(measure(files[:1], name, level))  # warm the page cache once
        seconds, original, stored = asyncio.run(measure(files, name, level))
        rows.append(
            f"BENCH compression data={title} codec={name}-{level} mbps={original / 1e6 / seconds:.0f} "
            f"ratio={original / max(1, stored):.2f}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-gb", type=float, default=0.3)
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-compression-", dir=Path.cwd() / "var"))
    lines: list[str] = []
    try:
        for title, make in (("synthetic", dataset), ("sysbench", sysbench_like)):
            sb = make(work, args.size_gb)
            try:
                lines += table(title, sb)
            finally:
                sb.destroy()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    print(f"reproduce: python -m bench.compression_levels --size-gb {args.size_gb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
