"""incremental_many_binlogs: an incremental backup (`incremental_from_pos=auto`) over about a thousand small
binary logs, the agent's whole RPC against `tar | zstd -T0 -1` of the same binlog files + `sync`. The ratio
is reference time / agent time.

    python -m bench.incremental_many_binlogs [--binlogs 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import start_agent, timed
from bench.small_files import phase_seconds, run_sql
from tests.integration.helpers import backup
from tests.sandbox import Sandbox

ZSTD_LEVEL = 1


def newest_manifest(storage: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(sorted(storage.rglob("MANIFEST"))[-1].read_text())
    return data


def reference(binlog_dir: Path, names: list[str], out: Path) -> None:
    listing = out.with_suffix(".list")
    listing.write_text("".join(f"{n}\n" for n in names))
    subprocess.run(
        f"tar -cf - -C {binlog_dir} -T {listing} | zstd -T0 -{ZSTD_LEVEL} -q -o {out} -f && sync",
        shell=True,
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--binlogs", type=int, default=1000)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-binlogs-", dir=Path.cwd() / "var"))
    work.mkdir(parents=True, exist_ok=True)
    sb = Sandbox(work / "sandbox", extra_options=["innodb_flush_log_at_trx_commit=0"])
    sb.init()
    sb.start()
    storage = work / "backups"
    agent = start_agent(sb, storage, work / "agent", ["--compression_level", str(ZSTD_LEVEL)])
    try:
        sb.sql("CREATE DATABASE bench")
        sb.sql("CREATE TABLE bench.t (id INT PRIMARY KEY, v VARCHAR(255)) ENGINE=InnoDB")
        backup(agent, timeout=600, allow_primary=True)
        script = ["USE bench;"]
        for i in range(args.binlogs):
            script += [f"INSERT INTO t VALUES ({i}, REPEAT(MD5({i}), {1 + i % 7}));", "FLUSH BINARY LOGS;"]
        run_sql(sb, ["\n".join(script)])
        seconds = timed(lambda: backup(agent, timeout=600, allow_primary=True, incremental_from_pos="auto"))
        manifest = newest_manifest(storage)
        entries = manifest["FileEntries"]
        assert manifest["Incremental"] is True and isinstance(entries, list)
        names = [str(e["Name"]) for e in entries]
        ref = timed(lambda: reference(sb.binlog.parent, names, work / "binlogs.tar.zst"))
        megabytes = sum((sb.binlog.parent / n).stat().st_size for n in names) / 1e6
        print(
            f"{len(names)} binlogs, {megabytes:.1f} MB: agent {seconds:.2f}s, tar | zstd -T0 -{ZSTD_LEVEL} + sync "
            f"{ref:.2f}s (load average {os.getloadavg()[0]:.2f})"
        )
        print(f"agent phases: {phase_seconds(agent.log_path)}")
        print(f"reproduce: python -m bench.incremental_many_binlogs --binlogs {args.binlogs}")
        print(
            f"BENCH incremental_many_binlogs files={len(names)} seconds={seconds:.2f} ratio={ref / seconds:.3f}",
            flush=True,
        )
    finally:
        agent.stop()
        sb.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
