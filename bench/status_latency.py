"""status_latency: Status RPC latency (p50/p99, as a client sees it) while an xtrabackup backup runs at
full speed on the same tablet, and while the agent is idle for comparison.

    python -m bench.status_latency [--size-gb 0.5] [--rounds 2]
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

from agent.pb import agentdata_pb2
from bench.common import RESULTS, dataset, machine, start_agent
from tests.agent_process import AgentProcess
from tests.integration.helpers import backup


def sample(agent: AgentProcess, during: threading.Thread | None, seconds: float = 3.0) -> list[float]:
    """Milliseconds per Status call, back to back, while `during` runs (or for `seconds`)."""
    latencies = []
    with agent.channel() as ch:
        stub = agent.stub(ch)
        end = time.monotonic() + seconds
        while during.is_alive() if during is not None else time.monotonic() < end:
            t0 = time.perf_counter()
            s = stub.Status(agentdata_pb2.StatusRequest(), timeout=10)
            if during is None or s.HasField("current_operation"):
                latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-gb", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-status-", dir=Path.cwd() / "var"))
    sb = dataset(work, args.size_gb)
    try:
        agent = start_agent(
            sb,
            work / "backups",
            work / "agent",
            ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"],
        )
        try:
            idle = sample(agent, None)
            busy: list[float] = []
            for _ in range(args.rounds):
                runner = threading.Thread(target=lambda: backup(agent, timeout=3600, allow_primary=True))
                runner.start()
                busy += sample(agent, runner)
                runner.join()
        finally:
            agent.stop()
    finally:
        sb.destroy()
        shutil.rmtree(work, ignore_errors=True)

    def q(values: list[float], n: int) -> float:
        return statistics.quantiles(values, n=100)[n - 1]

    p50, p99 = q(busy, 50), q(busy, 99)
    print(f"Status while idle:        n={len(idle)} p50={q(idle, 50):.2f} ms p99={q(idle, 99):.2f} ms")
    print(
        f"Status during the backup: n={len(busy)} p50={p50:.2f} ms p99={p99:.2f} ms ({args.rounds} xtrabackup backups)"
    )
    command = f"python -m bench.status_latency --size-gb {args.size_gb} --rounds {args.rounds}"
    print(f"reproduce: {command}")
    print(f"BENCH status_latency p50_ms={p50:.2f} p99_ms={p99:.2f}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "command": command, "busy_ms": {"p50": p50, "p99": p99, "n": len(busy)},
              "idle_ms": {"p50": q(idle, 50), "p99": q(idle, 99), "n": len(idle)}}  # fmt: skip
    (RESULTS / f"status_latency-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps(record, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
