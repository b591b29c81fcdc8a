"""builtin_backup / builtin_restore / memory: the agent's offline backup and restore against
`tar -cf - <datadir> | zstd -T0 -1 > file` and `zstd -dc file | tar -x`, same data, same filesystem,
alternating rounds; the agent's time is the whole RPC as a client sees it.

    python -m bench.builtin [--size-gb 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import (
    BenchResult,
    DowntimeProbe,
    datadir_megabytes,
    dataset,
    drop_caches,
    peak_rss_mb,
    report,
    start_agent,
    timed,
)
from tests.integration.helpers import backup, restore
from tests.sandbox import Sandbox

ZSTD_LEVEL = 1  # the agent's zstd default


def shell_backup(sb: Sandbox, out: Path) -> None:
    sb.stop()
    try:
        subprocess.run(
            f"tar -cf - -C {sb.datadir} . | zstd -T0 -{ZSTD_LEVEL} -q -o {out} -f",
            shell=True, check=True,
        )  # fmt: skip
    finally:
        sb.start()


def shell_restore(sb: Sandbox, archive: Path) -> None:
    sb.stop()
    try:
        shutil.rmtree(sb.datadir)
        sb.datadir.mkdir()
        subprocess.run(f"zstd -dc {archive} | tar -xf - -C {sb.datadir}", shell=True, check=True)
    finally:
        sb.start()


def memory_at(work: Path, size_gb: float) -> tuple[float, float]:
    """Peak RSS of an agent after one backup and one restore of `size_gb` of data; (MB, GB of data)."""
    work.mkdir(parents=True, exist_ok=True)
    sb = dataset(work, size_gb)
    try:
        agent = start_agent(sb, work / "backups", work / "agent", ["--compression_level", str(ZSTD_LEVEL)])
        try:
            backup(agent, timeout=3600, allow_primary=True)
            restore(agent, timeout=3600)
            assert agent.proc is not None
            return peak_rss_mb(agent.proc.pid), datadir_megabytes(sb) / 1000
        finally:
            agent.stop()
    finally:
        sb.destroy()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-gb", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--small-gb", type=float, default=0.25, help="second data size for the memory check")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-builtin-", dir=Path.cwd() / "var"))
    work.mkdir(parents=True, exist_ok=True)
    small_rss, small_gb = memory_at(work / "small", args.small_gb)
    sb = dataset(work, args.size_gb)
    try:
        mb = datadir_megabytes(sb)
        storage, archive = work / "backups", work / "datadir.tar.zst"
        b = BenchResult("builtin_backup", megabytes=mb, reference=f"tar | zstd -T0 -{ZSTD_LEVEL} > file")
        r = BenchResult("builtin_restore", megabytes=mb, reference="zstd -dc | tar -x")
        cache_note = ""
        downtimes: list[float] = []
        agent = start_agent(sb, storage, work / "agent", ["--compression_level", str(ZSTD_LEVEL)])
        try:
            for _ in range(args.rounds):
                cache_note = drop_caches()
                b.agent_seconds.append(timed(lambda: backup(agent, timeout=3600, allow_primary=True)))
                drop_caches()
                b.ref_seconds.append(timed(lambda: shell_backup(sb, archive)))
                drop_caches()
                with DowntimeProbe(sb) as probe:
                    r.agent_seconds.append(timed(lambda: restore(agent, timeout=3600)))
                downtimes.append(probe.seconds)
                drop_caches()
                r.ref_seconds.append(timed(lambda: shell_restore(sb, archive)))
            assert agent.proc is not None
            rss = peak_rss_mb(agent.proc.pid)
        finally:
            agent.stop()
        report([b, r], [cache_note, f"data set {mb:.0f} MB of InnoDB files, {args.rounds} rounds, medians"],
               f"python -m bench.builtin --size-gb {args.size_gb} --rounds {args.rounds}")  # fmt: skip
        print(
            f"BENCH restore_downtime seconds={statistics.median(downtimes):.2f} "
            f"restore_seconds={statistics.median(r.agent_seconds):.2f} (staged: stop, swap, start)",
            flush=True,
        )
        print(
            f"memory: peak RSS {small_rss:.1f} MB with {small_gb:.2f} GB of data, {rss:.1f} MB with {mb / 1000:.2f} GB "
            f"({'flat' if rss < small_rss * 1.25 + 10 else 'GROWS'} in data size)"
        )
        print(f"BENCH memory peak_rss_mb={max(rss, small_rss):.1f} size_gb={mb / 1000:.2f}", flush=True)
    finally:
        sb.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
