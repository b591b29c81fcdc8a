"""pitr_replay: replaying an incremental backup's binlogs in a point-in-time restore, with the agent's
replication applier (parallel workers fed by a throw-away binlog server) against its pipe applier and
against `mariadb-binlog --start-position=P | mariadb` run by hand on the same binlogs, same target.

The agent's figure is the replay phase as the client sees it in the RestoreFromBackup event stream (from
the "replaying binlogs" phase to "replayed binlogs up to"); the full restore before it is the same for
all and not counted. Throughput is binlog megabytes per second.

    python -m bench.pitr [--transactions 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.pb import tabletmanagerdata_pb2
from bench.common import BenchResult, report, start_agent
from tests.agent_process import AgentProcess
from tests.integration.helpers import backup, manifest
from tests.sandbox import Sandbox

TABLES = 4


def workload(sb: Sandbox, transactions: int) -> None:
    """Small independent transactions over several tables: inserts, and updates of earlier rows."""
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


def timed_replay(agent: AgentProcess, position: str) -> float:
    """Seconds from the replay phase's first event to its last, as the client receives them."""
    started = ended = 0.0
    with agent.channel() as ch:
        req = tabletmanagerdata_pb2.RestoreFromBackupRequest(restore_to_pos=position)
        for r in agent.stub(ch).RestoreFromBackup(req, timeout=3600):
            text = r.event.value
            if "replaying binlogs (" in text and not started:
                started = time.perf_counter()
            if text.startswith("replayed binlogs up to"):
                ended = time.perf_counter()
    assert started and ended, "the restore did not replay binlogs"
    return ended - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--transactions", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-pitr-", dir=Path.cwd() / "var"))
    source = Sandbox(work / "source", server_id=1)
    target = Sandbox(work / "target", server_id=2, extra_options=["read_only=1", "skip-slave-start"])
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
        incremental = sorted(d for d in (storage / "ks" / "0").iterdir())[-1]
        m = manifest(incremental)
        full_pos, end_pos = (
            str(manifest(sorted((storage / "ks" / "0").iterdir())[0])["Position"]),
            str(m["Position"]),
        )
        entries: list[dict[str, object]] = m["FileEntries"]  # type: ignore[assignment]
        files = [source.root / str(fe["Name"]) for fe in entries]
        mb = sum(f.stat().st_size for f in files) / 1e6
        fast = BenchResult("pitr_replay", megabytes=mb, reference="the agent's pipe applier")
        plain = BenchResult("pitr_replay_plain", megabytes=mb, reference="mariadb-binlog | mariadb")
        checks = set()
        for _ in range(args.rounds):
            for applier, result, side in (
                ("replication", fast, "agent"),
                ("pipe", fast, "ref"),
                ("pipe", plain, "agent"),
            ):
                agent = AgentProcess(
                    target.cnf, storage, work / f"agent-{applier}", extra=[f"--binlog_applier={applier}"]
                )
                agent.start(timeout=60)
                try:
                    seconds = timed_replay(agent, end_pos)
                finally:
                    agent.stop()
                (result.agent_seconds if side == "agent" else result.ref_seconds).append(seconds)
                checks.add(tuple(target.sql("CHECKSUM TABLE bench.w0, bench.w1, bench.w2, bench.w3")))
            # the shell pipeline, from the full backup's position on the same target
            agent = AgentProcess(target.cnf, storage, work / "agent-full").start(timeout=60)
            try:
                list(agent.stub(agent.channel()).RestoreFromBackup(
                    tabletmanagerdata_pb2.RestoreFromBackupRequest(restore_to_pos=full_pos), timeout=3600))  # fmt: skip
            finally:
                agent.stop()
            start = full_pos.removeprefix("MariaDB/")
            cmd = (
                f"mariadb-binlog --no-defaults --start-position={start} --stop-position={end_pos.removeprefix('MariaDB/')} "
                + " ".join(str(f) for f in files)
                + f" | mariadb --defaults-file={target.cnf}"
            )
            t0 = time.perf_counter()
            subprocess.run(cmd, shell=True, check=True)
            plain.ref_seconds.append(time.perf_counter() - t0)
            checks.add(tuple(target.sql("CHECKSUM TABLE bench.w0, bench.w1, bench.w2, bench.w3")))
        assert len(checks) == 1, f"the appliers disagree: {checks}"
        report(
            [fast, plain],
            [
                f"{args.transactions} transactions, {mb:.0f} MB of row binlogs, {args.rounds} rounds, medians; "
                "pitr_replay = replication applier / pipe applier, pitr_replay_plain = pipe applier / shell pipe",
                "every replay ended with identical table checksums",
            ],
            f"python -m bench.pitr --transactions {args.transactions} --rounds {args.rounds}",
        )
    finally:
        for sb in (source, target):
            sb.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
