"""xtrabackup_backup / xtrabackup_restore: the agent's online xtrabackup engine (zstd -1, directory storage)
against the same work done by hand, same data, same filesystem, alternating rounds, page cache dropped:

- backup: `mariabackup --backup --stream=xbstream | zstd -T0 -1 > file; sync` (the agent's backup ends
  with its objects durable too);
- restore: what the agent's RPC does, by hand: stop mysqld, clear the datadir, `zstd -dc | mbstream -x`,
  `mariabackup --prepare`, `--move-back`, `sync`, start mysqld.

Both sides run at the same CPU and I/O priority (the agent with `--backup_niceness 0 --backup_io_class
none`). The load average of the machine is printed with the figures: on a shared machine only ratios
measured in the same run mean anything.

    python -m bench.xtrabackup [--size-gb 0.5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import (
    BenchResult,
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


def shell_backup(sb: Sandbox, out: Path, tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    subprocess.run(
        f"mariabackup --defaults-file={sb.cnf} --backup --stream=xbstream --target-dir={tmp} --user=root "
        f"2>/dev/null | zstd -T0 -{ZSTD_LEVEL} -q -f -o {out} && sync",
        shell=True, check=True,
    )  # fmt: skip


def shell_restore(sb: Sandbox, archive: Path, extract: Path) -> None:
    """The agent's restore by hand, into the sandbox's own datadir."""
    sb.stop()
    shutil.rmtree(sb.datadir)
    sb.datadir.mkdir()
    shutil.rmtree(extract, ignore_errors=True)
    extract.mkdir()
    subprocess.run(f"zstd -dc {archive} | mbstream -x -C {extract} -p 2", shell=True, check=True)
    for step in ("--prepare", "--move-back"):
        subprocess.run(
            ["mariabackup", f"--defaults-file={sb.cnf}", step, f"--target-dir={extract}"],
            check=True, capture_output=True,
        )  # fmt: skip
    subprocess.run(["sync"], check=True)
    sb.start()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-gb", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-xtrabackup-", dir=Path.cwd() / "var"))
    sb = dataset(work, args.size_gb)
    try:
        mb = datadir_megabytes(sb)
        archive = work / "backup.xbstream.zst"
        b = BenchResult(
            "xtrabackup_backup", megabytes=mb, reference=f"mariabackup --stream | zstd -T0 -{ZSTD_LEVEL}"
        )
        r = BenchResult(
            "xtrabackup_restore",
            megabytes=mb,
            reference="stop, rm, zstd -dc | mbstream -x, --prepare, --move-back, sync, start",
        )
        extra = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root",
                 "--compression_level", str(ZSTD_LEVEL), "--backup_niceness", "0",
                 "--backup_io_class", "none"]  # fmt: skip
        agent = start_agent(sb, work / "backups", work / "agent", extra)
        cache_note = ""
        loads = []
        try:
            for _ in range(args.rounds):
                loads.append(load_average())
                cache_note = drop_caches()
                b.agent_seconds.append(timed(lambda: backup(agent, timeout=3600, allow_primary=True)))
                drop_caches()
                b.ref_seconds.append(timed(lambda: shell_backup(sb, archive, work / "xtmp")))
                drop_caches()
                r.agent_seconds.append(timed(lambda: restore(agent, timeout=3600)))
                drop_caches()
                r.ref_seconds.append(timed(lambda: shell_restore(sb, archive, work / "restored")))
            loads.append(load_average())
            assert agent.proc is not None
            rss = peak_rss_mb(agent.proc.pid)
        finally:
            agent.stop()
        rounds = ", ".join(
            f"{a:.2f}/{ref:.2f}" for a, ref in zip(b.agent_seconds, b.ref_seconds, strict=True)
        )
        rounds_r = ", ".join(
            f"{a:.2f}/{ref:.2f}" for a, ref in zip(r.agent_seconds, r.ref_seconds, strict=True)
        )
        notes = [cache_note, f"data set {mb:.0f} MB of InnoDB files, {args.rounds} rounds, medians",
                 f"seconds agent/reference per round: backup {rounds}; restore {rounds_r}",
                 f"load average (1, 5, 15 min) before each round and at the end: {'; '.join(loads)}",
                 "both sides end with the data durable and mysqld serving; same CPU and I/O priority"]  # fmt: skip
        report([b, r], notes, f"python -m bench.xtrabackup --size-gb {args.size_gb} --rounds {args.rounds}")
        print(f"BENCH memory_xtrabackup peak_rss_mb={rss:.1f} size_gb={mb / 1000:.2f}", flush=True)
    finally:
        sb.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
