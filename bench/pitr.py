"""pitr_replay / pitr_replay_plain: replaying an incremental backup's binlogs in a point-in-time restore.

- pitr_replay: the agent's replication applier (parallel workers fed by a throw-away binlog server)
  against `mariadb-binlog --start-position=P --stop-position=Q <binlogs> | mariadb` run by hand;
- pitr_replay_plain: the agent's pipe applier against the same shell pipe;

same binlogs, same target, rounds alternating. The agent's figure is the replay phase as the client sees
it in the RestoreFromBackup event stream (from the "replaying binlogs" phase to "replayed binlogs up
to"); the full restore before it is the same for all and not counted (the binlog server is bootstrapped
during it). The whole RPC's time is printed too. Throughput is binlog megabytes per second.

The target runs with the server's default durability (`innodb_flush_log_at_trx_commit=1`): every commit
of a single session waits for the disk, while the parallel workers commit in groups. `--relaxed` uses
the test sandboxes' `innodb_flush_log_at_trx_commit=2` instead, where the replay is bound by CPU alone.

    python -m bench.pitr [--transactions 10000] [--rounds 2] [--relaxed]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.pb import tabletmanagerdata_pb2
from bench.common import BenchResult, MachineLimits, report, start_agent, timed
from tests.agent_process import AgentProcess
from tests.integration.helpers import backup, manifest
from tests.sandbox import Sandbox

TABLES = 4
CHECKSUM = "CHECKSUM TABLE " + ", ".join(f"bench.w{t}" for t in range(TABLES))


def workload(sb: Sandbox, transactions: int) -> None:
    """Small independent transactions over several tables from one session: inserts, and updates of
    earlier rows."""
    with sb.session("bench") as cur:
        for i in range(transactions):
            table = f"w{i % TABLES}"
            if i % 5 == 4:
                cur.execute(
                    f"UPDATE {table} SET a = a + 1, pad = REPEAT('u', 60) WHERE id % 97 = {i % 97} LIMIT 20"
                )
            else:
                cur.execute(
                    f"INSERT INTO {table} (a, pad) SELECT seq, CONCAT(MD5(seq), REPEAT('x', 80)) FROM seq_1_to_20"
                )


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and of the children it has reaped."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def own_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def restore_to(agent: AgentProcess, target: Sandbox, position: str) -> tuple[float, float, float]:
    """(seconds of the replay phase, seconds of the whole RPC, CPU seconds of the replay: mysqld's and
    the agent's with its children, the binlog server or the pipe), as the client receives the events."""
    assert agent.proc is not None
    started = ended = cpu = 0.0
    t0 = time.perf_counter()
    with agent.channel() as ch:
        req = tabletmanagerdata_pb2.RestoreFromBackupRequest(restore_to_pos=position)
        for r in agent.stub(ch).RestoreFromBackup(req, timeout=3600):
            text = r.event.value
            if "replaying binlogs (" in text and not started:
                started = time.perf_counter()
                cpu = -cpu_seconds(target.pid()) - cpu_seconds(agent.proc.pid)
            if text.startswith("replayed binlogs up to"):
                ended = time.perf_counter()
                cpu += cpu_seconds(target.pid()) + cpu_seconds(agent.proc.pid)
    return ended - started, time.perf_counter() - t0, cpu


def agent_restore(
    target: Sandbox, storage: Path, work: Path, applier: str, position: str
) -> tuple[float, float, float]:
    agent = AgentProcess(
        target.cnf, storage, work / f"agent-{applier}", extra=[f"--binlog_applier={applier}"]
    )
    agent.start(timeout=60)
    try:
        return restore_to(agent, target, position)
    finally:
        agent.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    # the ratio grows with the binlogs (fixed costs); at 10000 (29 MB) it is far from 1, so 2 rounds (README)
    p.add_argument("--transactions", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--relaxed", action="store_true", help="target with innodb_flush_log_at_trx_commit=2")
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-pitr-", dir=Path.cwd() / "var"))
    durability = "innodb_flush_log_at_trx_commit=" + ("2" if args.relaxed else "1")
    source = Sandbox(work / "source", server_id=1)
    target = Sandbox(
        work / "target", server_id=2, extra_options=["read_only=1", "skip-slave-start", durability]
    )
    try:
        for sb in (source, target):
            sb.init()
            sb.start()
        source.sql("CREATE DATABASE bench")
        for t in range(TABLES):
            source.sql(
                f"CREATE TABLE bench.w{t} (id BIGINT AUTO_INCREMENT PRIMARY KEY, a INT, pad VARCHAR(255))"
            )
        storage = work / "backups"
        agent = start_agent(source, storage, work / "agent-source")
        try:
            backup(agent, allow_primary=True)
            workload(source, args.transactions)
            backup(agent, allow_primary=True, incremental_from_pos="auto")
        finally:
            agent.stop()
        full, incremental = sorted((storage / "ks" / "0").iterdir())
        full_pos, end_pos = str(manifest(full)["Position"]), str(manifest(incremental)["Position"])
        entries: list[dict[str, object]] = manifest(incremental)["FileEntries"]  # type: ignore[assignment]
        files = [source.root / str(fe["Name"]) for fe in entries]
        mb = sum(f.stat().st_size for f in files) / 1e6
        limits = MachineLimits.measure(work, files)
        shell = (
            f"mariadb-binlog --no-defaults --start-position={full_pos.removeprefix('MariaDB/')} "
            f"--stop-position={end_pos.removeprefix('MariaDB/')} {' '.join(str(f) for f in files)} "
            f"| mariadb --defaults-file={target.cnf}"
        )
        fast = BenchResult("pitr_replay", megabytes=mb, reference="mariadb-binlog | mariadb", restores=True)
        plain = BenchResult(
            "pitr_replay_plain", megabytes=mb, reference="mariadb-binlog | mariadb", restores=True
        )
        whole: dict[str, list[float]] = {"replication": [], "pipe": []}
        cpu: dict[str, list[float]] = {"replication": [], "pipe": [], "shell": []}
        checks = set()
        for _ in range(args.rounds):
            for applier, result in (("replication", fast), ("pipe", plain)):
                replay, rpc, used = agent_restore(target, storage, work, applier, end_pos)
                assert replay > 0, f"the {applier} applier did not replay binlogs"
                result.agent_seconds.append(replay)
                whole[applier].append(rpc)
                cpu[applier].append(used)
                checks.add(tuple(target.sql(CHECKSUM)))
            agent_restore(target, storage, work, "pipe", full_pos)  # back to the full backup
            before = cpu_seconds(target.pid()) + own_children_cpu()
            seconds = timed(lambda: subprocess.run(shell, shell=True, check=True))
            cpu["shell"].append(cpu_seconds(target.pid()) + own_children_cpu() - before)
            fast.ref_seconds.append(seconds)
            plain.ref_seconds.append(seconds)
            checks.add(tuple(target.sql(CHECKSUM)))
        assert len(checks) == 1, f"the appliers disagree: {checks}"
        report(
            [fast, plain],
            [
                f"{args.transactions} transactions, {mb:.0f} MB of row binlogs, {args.rounds} rounds, medians; "
                f"target with {durability}",
                "whole restore RPC (full backup, then the replay): replication applier "
                f"{statistics.median(whole['replication']):.1f} s, pipe applier {statistics.median(whole['pipe']):.1f} s",
                "CPU seconds of a replay (mysqld and the applier's processes): "
                + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in cpu.items()),
                "every replay ended with identical table checksums",
            ],
            f"python -m bench.pitr --transactions {args.transactions} --rounds {args.rounds}"
            + (" --relaxed" if args.relaxed else ""),
            limits,
        )
    finally:
        for sb in (source, target):
            sb.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
