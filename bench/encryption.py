"""encrypted_backup / encrypted_restore / rate_limit: what encryption costs, and whether the rate limits hold.

- encrypted_backup, encrypted_restore: the same builtin backup (zstd -3) and restore by an agent with
  `--backup_encryption_key_file` and by one without, alternating rounds, medians; ratio = encrypted MB/s
  over plain MB/s (target >= 0.9).
- rate_limit: a builtin and an xtrabackup backup with `--backup_max_rate`; the observed rate is the slope
  of the bytes the agent read (`/proc/<pid>/io` rchar: the data files, or the tool's stream) between 5 %
  and 95 % of them, sampled every 100 ms.

    python -m bench.encryption [--size-gb 0.5] [--rounds 3] [--rate-mb 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import BenchResult, datadir_megabytes, dataset, drop_caches, report, start_agent, timed
from tests.agent_process import AgentProcess
from tests.integration.helpers import backup, restore

ZSTD = ["--compression_level", "3"]
XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]


def rchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def observed_rate(agent: AgentProcess) -> float:
    """Run one backup while sampling the agent's bytes read; the steady rate in bytes/s."""
    assert agent.proc is not None
    pid = agent.proc.pid
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), rchar(pid)))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        backup(agent, timeout=3600, allow_primary=True)
    finally:
        done.set()
        sampler.join()
    base = samples[0][1]
    total = samples[-1][1] - base
    low = next(s for s in samples if s[1] - base >= 0.05 * total)
    high = next(s for s in samples if s[1] - base >= 0.95 * total)
    return (high[1] - low[1]) / (high[0] - low[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-gb", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate-mb", type=float, default=40.0, help="--backup_max_rate for rate_limit, in MB/s")
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-encryption-", dir=Path.cwd() / "var"))
    key = work / "backup.key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    sb = dataset(work, args.size_gb)
    lines = []
    try:
        mb = datadir_megabytes(sb)
        b = BenchResult("encrypted_backup", megabytes=mb, reference="the same agent without a key")
        r = BenchResult("encrypted_restore", megabytes=mb, reference="the same agent without a key")
        plain = start_agent(sb, work / "plain-backups", work / "plain", ZSTD)
        encrypted = start_agent(
            sb, work / "enc-backups", work / "enc", [*ZSTD, "--backup_encryption_key_file", str(key)]
        )
        cache_note = ""
        try:
            for _ in range(args.rounds):
                cache_note = drop_caches()
                b.agent_seconds.append(timed(lambda: backup(encrypted, timeout=3600, allow_primary=True)))
                drop_caches()
                b.ref_seconds.append(timed(lambda: backup(plain, timeout=3600, allow_primary=True)))
                drop_caches()
                r.agent_seconds.append(timed(lambda: restore(encrypted, timeout=3600)))
                drop_caches()
                r.ref_seconds.append(timed(lambda: restore(plain, timeout=3600)))
        finally:
            plain.stop()
            encrypted.stop()
        target = args.rate_mb * 1e6
        for engine, extra in (("builtin", []), ("xtrabackup", XTRA)):
            agent = start_agent(sb, work / f"rate-{engine}", work / f"rate-{engine}-agent",
                                [*ZSTD, *extra, "--backup_max_rate", str(int(target))])  # fmt: skip
            try:
                drop_caches()
                rate = observed_rate(agent)
            finally:
                agent.stop()
            lines.append(
                f"BENCH rate_limit target_mbps={target / 1e6:.1f} observed_mbps={rate / 1e6:.1f} engine={engine}"
            )
        report(
            [b, r],
            [
                cache_note,
                f"data set {mb:.0f} MB of InnoDB files, {args.rounds} rounds, medians; zstd -3 on both sides",
            ],
            f"python -m bench.encryption --size-gb {args.size_gb} --rounds {args.rounds} --rate-mb {args.rate_mb}",
        )
        for line in lines:
            print(line, flush=True)
    finally:
        sb.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
