"""archive_rpo: how old the oldest not-yet-archived transaction gets while continuous binlog archiving runs
under a steady writer (the recovery point objective a restore can meet), sampled twice a second.

    python -m bench.archive_rpo [--interval 5] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import start_agent
from tests.integration.helpers import backup, complete_backups
from tests.sandbox import Sandbox


def archived_seq(storage: Path) -> int:
    """The sequence number the shard's newest complete backup reaches (domain 0, one server)."""
    done = complete_backups(storage)
    if not done:
        return 0
    position = json.loads((done[-1] / "MANIFEST").read_text())["Position"]
    seqs = [int(g.rsplit("-", 1)[1]) for g in position.split("/", 1)[1].split(",") if g]
    return max(seqs, default=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--interval", type=float, default=5.0, help="--binlog_archive_interval")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the writer runs")
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-archive-", dir=Path.cwd() / "var"))
    sb = Sandbox(work / "primary")
    sb.init()
    sb.start()
    try:
        sb.write_rows(10)
        agent = start_agent(
            sb,
            work / "backups",
            work / "agent",
            ["--init_tablet_type", "PRIMARY", "--binlog_archive_interval", str(args.interval)],
        )
        try:
            backup(agent, allow_primary=True)
            written: dict[int, float] = {}  # GTID sequence -> when it was committed
            stop = threading.Event()

            def write() -> None:
                while not stop.is_set():
                    pos = sb.write_rows(5, table="w")
                    written[int(pos.rsplit("-", 1)[1])] = time.time()
                    time.sleep(0.1)

            t = threading.Thread(target=write)
            t.start()
            samples: list[float] = []
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                time.sleep(0.5)
                done = archived_seq(work / "backups")
                pending = [at for seq, at in list(written.items()) if seq > done]
                samples.append(time.time() - min(pending) if pending else 0.0)
            stop.set()
            t.join()
        finally:
            agent.stop()
        samples = samples[int(len(samples) * 0.2) :]  # after the first shipments settle
        p50 = statistics.median(samples)
        p99 = sorted(samples)[max(0, int(len(samples) * 0.99) - 1)]
        print(f"BENCH archive_rpo p50_s={p50:.1f} p99_s={p99:.1f} interval_s={args.interval:g}")
        print(
            f"reproduce: python -m bench.archive_rpo --interval {args.interval:g} --seconds {args.seconds:g}"
        )
    finally:
        sb.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
