"""xtrabackup_backup / xtrabackup_restore: the agent's online xtrabackup engine (zstd -3, directory storage)
against `mariabackup --backup --stream=xbstream | zstd -T0 -1 > file` and `zstd -dc | mbstream -x` +
`mariabackup --prepare`, same data, same filesystem, alternating rounds.

    python -m bench.xtrabackup [--size-gb 2] [--rounds 3]
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
        f"2>/dev/null | zstd -T0 -{ZSTD_LEVEL} -q -f -o {out}",
        shell=True, check=True,
    )  # fmt: skip


def shell_restore(archive: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    subprocess.run(f"zstd -dc {archive} | mbstream -x -C {target} -p 2", shell=True, check=True)
    subprocess.run(["mariabackup", "--prepare", f"--target-dir={target}"], check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-gb", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
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
        r = BenchResult("xtrabackup_restore", megabytes=mb, reference="zstd -dc | mbstream -x + --prepare")
        extra = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root",
                 "--compression_level", str(ZSTD_LEVEL)]  # fmt: skip
        agent = start_agent(sb, work / "backups", work / "agent", extra)
        cache_note = ""
        try:
            for _ in range(args.rounds):
                cache_note = drop_caches()
                b.agent_seconds.append(timed(lambda: backup(agent, timeout=3600, allow_primary=True)))
                drop_caches()
                b.ref_seconds.append(timed(lambda: shell_backup(sb, archive, work / "xtmp")))
                drop_caches()
                r.agent_seconds.append(timed(lambda: restore(agent, timeout=3600)))
                drop_caches()
                r.ref_seconds.append(timed(lambda: shell_restore(archive, work / "restored")))
            assert agent.proc is not None
            rss = peak_rss_mb(agent.proc.pid)
        finally:
            agent.stop()
        notes = [cache_note, f"data set {mb:.0f} MB of InnoDB files, {args.rounds} rounds, medians",
                 "the agent's restore also stops mysqld, clears the datadir, moves the files back and starts "
                 "mysqld; the reference only extracts and prepares"]  # fmt: skip
        report([b, r], notes, f"python -m bench.xtrabackup --size-gb {args.size_gb} --rounds {args.rounds}")
        print(f"BENCH memory_xtrabackup peak_rss_mb={rss:.1f} size_gb={mb / 1000:.2f}", flush=True)
    finally:
        sb.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
