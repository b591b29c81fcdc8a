"""small_files_backup / memory_small_files: the agent's builtin backup of many small InnoDB tables (two
files each, the per-file cost is what is measured) against `tar -cf - -C datadir . | zstd -T0 -1` + `sync`,
both stopping and starting mysqld; the agent's time is the whole RPC as a client sees it. The ratio is
reference time / agent time (1.0: as fast as tar | zstd).

    python -m bench.small_files [--tables 10000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from bench.common import datadir_megabytes, drop_caches, peak_rss_mb, start_agent, timed
from tests.integration.helpers import backup, restore
from tests.sandbox import Sandbox, find_program

ZSTD_LEVEL = 1  # the agent's zstd default


def run_sql(sb: Sandbox, scripts: list[str]) -> None:
    """Each script in its own client session, all at once (no round trip per statement from Python)."""
    program = find_program("mariadb")
    assert program is not None, "the mariadb client is not installed"
    procs = [subprocess.Popen([program, f"--defaults-file={sb.cnf}"], stdin=subprocess.PIPE) for _ in scripts]
    for proc, script in zip(procs, scripts, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(script.encode())
        proc.stdin.close()
    failed = [proc.wait() for proc in procs]
    assert not any(failed), f"a mariadb session failed: {failed}"


def many_tables(work: Path, tables: int, sessions: int = 4) -> Sandbox:
    """A sandbox with `tables` small InnoDB tables (two rows each) in schema `bench`, created by several
    sessions at once; nothing is synced to disk while they are made (a throw-away server)."""
    sb = Sandbox(
        work / "sandbox",
        extra_options=[
            "innodb_file_per_table=1",
            "innodb_flush_log_at_trx_commit=0",
            "innodb_flush_method=nosync",
            "innodb_doublewrite=0",
            "table_open_cache=400",
            "read_only=1",  # a replica-like tablet: restores may replace its data
        ],
    )
    sb.init()
    sb.start()
    sb.sql("CREATE DATABASE bench")
    scripts = []
    for k in range(sessions):
        statements = ["USE bench;", "SET SESSION sql_log_bin=0;"]
        for i in range(k, tables, sessions):
            statements.append(f"CREATE TABLE t{i} (id INT PRIMARY KEY, v VARCHAR(64)) ENGINE=InnoDB;")
            statements.append(f"INSERT INTO t{i} VALUES ({i}, MD5({i})), ({i + 1}, REPEAT('x', {i % 60}));")
        scripts.append("\n".join(statements))
    run_sql(sb, scripts)
    return sb


def reference_backup(sb: Sandbox, out: Path) -> None:
    sb.stop()
    try:
        subprocess.run(
            f"tar -cf - -C {sb.datadir} . | zstd -T0 -{ZSTD_LEVEL} -q -o {out} -f && sync",
            shell=True,
            check=True,
        )
    finally:
        sb.start()


def phase_seconds(log: Path) -> str:
    """How long each phase of the agent's last operation took, from its JSON log lines."""
    phases: list[tuple[str, datetime]] = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        event = str(record.get("event", ""))
        if not (event.startswith("phase: ") or " succeeded after " in event):
            continue
        if phases and " succeeded after " in phases[-1][0]:
            phases = []  # a new operation
        phases.append((event.removeprefix("phase: "), datetime.fromisoformat(record["timestamp"])))
    spans = [f"{a}={(t1 - t0).total_seconds():.2f}s" for (a, t0), (_, t1) in itertools.pairwise(phases)]
    return ", ".join(spans)


def reference_restore(sb: Sandbox, archive: Path) -> None:
    sb.stop()
    try:
        shutil.rmtree(sb.datadir)
        sb.datadir.mkdir()
        subprocess.run(f"zstd -dc {archive} | tar -xf - -C {sb.datadir} && sync", shell=True, check=True)
    finally:
        sb.start()


def stored_files(storage: Path) -> int:
    manifests = sorted(storage.rglob("MANIFEST"))
    return len(json.loads(manifests[-1].read_text())["FileEntries"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tables", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--restore", action="store_true", help="also time a restore against zstd -dc | tar -x")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-small-files-", dir=Path.cwd() / "var"))
    work.mkdir(parents=True, exist_ok=True)
    sb = many_tables(work, args.tables)
    try:
        mb = datadir_megabytes(sb)
        storage, archive = work / "backups", work / "datadir.tar.zst"
        cache_note = ""
        agent_s: list[float] = []
        ref_s: list[float] = []
        restores: list[tuple[float, float]] = []
        agent = start_agent(sb, storage, work / "agent", ["--compression_level", str(ZSTD_LEVEL)])
        try:
            for _ in range(args.rounds):
                cache_note = drop_caches()  # both start with nothing dirty and nothing cached
                agent_s.append(timed(lambda: backup(agent, timeout=1800, allow_primary=True)))
                drop_caches()
                ref_s.append(timed(lambda: reference_backup(sb, archive)))
            phases = phase_seconds(agent.log_path)
            assert agent.proc is not None
            rss = peak_rss_mb(agent.proc.pid)
            if args.restore:
                drop_caches()
                agent_restore = timed(lambda: restore(agent, timeout=1800))
                drop_caches()
                restores.append((agent_restore, timed(lambda: reference_restore(sb, archive))))
                rss_restore = peak_rss_mb(agent.proc.pid)
        finally:
            agent.stop()
        files = stored_files(storage)
        agent_t, ref_t = statistics.median(agent_s), statistics.median(ref_s)
        print(
            f"{args.tables} tables, {files} files, {mb:.0f} MB: agent {agent_t:.2f}s, "
            f"tar | zstd -T0 -{ZSTD_LEVEL} + sync {ref_t:.2f}s (medians of {args.rounds}; "
            f"load average {os.getloadavg()[0]:.2f})"
        )
        print(f"agent phases (last round): {phases}")
        print(f"note: {cache_note}")
        print(f"reproduce: python -m bench.small_files --tables {args.tables} --rounds {args.rounds}")
        print(f"BENCH small_files_backup files={files} ratio={ref_t / agent_t:.3f}", flush=True)
        print(f"BENCH memory_small_files peak_rss_mb={rss:.1f} tables={args.tables}", flush=True)
        if restores:
            agent_r, ref_r = restores[0]
            print(
                f"restore: agent {agent_r:.2f}s (staged: stop, swap, start), zstd -dc | tar -x + sync {ref_r:.2f}s; "
                f"peak RSS after it {rss_restore:.1f} MB; agent phases: {phase_seconds(agent.log_path)}"
            )
            print(f"BENCH small_files_restore files={files} ratio={ref_r / agent_r:.3f}", flush=True)
    finally:
        sb.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
