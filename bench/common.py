"""Shared benchmark plumbing: a MariaDB sandbox with generated InnoDB data, the agent as a process,
timing, medians, and the BENCH output lines plus a JSON record under bench/results/."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.agent_process import AgentProcess
from tests.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ROW_BYTES = 250  # about what one generated row costs in the .ibd file


@dataclass
class BenchResult:
    name: str
    agent_seconds: list[float] = field(default_factory=list)
    ref_seconds: list[float] = field(default_factory=list)
    megabytes: float = 0.0
    reference: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def agent_mbps(self) -> float:
        return self.megabytes / statistics.median(self.agent_seconds)

    @property
    def ref_mbps(self) -> float:
        return self.megabytes / statistics.median(self.ref_seconds)

    def line(self) -> str:
        return (
            f"BENCH {self.name} ratio={self.agent_mbps / self.ref_mbps:.3f} "
            f"agent_mbps={self.agent_mbps:.1f} ref_mbps={self.ref_mbps:.1f}"
        )


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def drop_caches() -> str:
    """Drop the page cache when the kernel lets us; say what was done."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "page cache dropped before every run (both sides)"
    except OSError:
        return "page cache could not be dropped here: every run starts warm (both sides)"


def dataset(workdir: Path, size_gb: float) -> Sandbox:
    """A sandbox holding about `size_gb` GB of InnoDB data, generated server-side with SEQUENCE."""
    sb = Sandbox(workdir / "data-sandbox", extra_options=["innodb_buffer_pool_size=256M", "read_only=1"])
    sb.init()
    sb.start()
    rows = int(size_gb * 1e9 / ROW_BYTES)
    sb.sql("CREATE DATABASE IF NOT EXISTS bench")
    per_insert = min(rows, 2_000_000)
    for t in range(max(1, -(-rows // per_insert))):  # several tables so per-file parallelism matters
        table = f"bench.t{t % 8}"
        sb.sql(
            f"CREATE TABLE IF NOT EXISTS {table} (id BIGINT PRIMARY KEY, a INT, pad VARCHAR(255)) ENGINE=InnoDB"
        )
        sb.sql(
            f"INSERT INTO {table} SELECT seq + {t * per_insert}, seq % 1000, "
            f"CONCAT(MD5(seq), REPEAT('x', 40 + seq % 100), MD5(seq * 7)) FROM bench.seq_1_to_{per_insert}"
        )
    return sb


def datadir_megabytes(sb: Sandbox) -> float:
    total = sum(p.stat().st_size for p in sb.datadir.rglob("*") if p.is_file())
    return total / 1e6


def start_agent(sb: Sandbox, storage: Path, workdir: Path, extra: list[str] | None = None) -> AgentProcess:
    if storage.exists():
        shutil.rmtree(storage)
    storage.mkdir(parents=True)
    return AgentProcess(sb.cnf, storage, workdir, extra=extra or []).start(timeout=60)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def report(results: list[BenchResult], notes: list[str], command: str) -> None:
    print(f"\n{'benchmark':<20} {'agent MB/s':>11} {'ref MB/s':>10} {'ratio':>7}  reference")
    for r in results:
        print(
            f"{r.name:<20} {r.agent_mbps:>11.1f} {r.ref_mbps:>10.1f} {r.agent_mbps / r.ref_mbps:>7.3f}  {r.reference}"
        )
    for note in notes:
        print(f"note: {note}")
    print(f"reproduce: {command}")
    for r in results:
        print(r.line(), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    record = {"machine": machine(), "command": command, "notes": notes,
              "results": [asdict(r) | {"agent_mbps": r.agent_mbps, "ref_mbps": r.ref_mbps} for r in results]}  # fmt: skip
    (RESULTS / f"{results[0].name if len(results) == 1 else 'bench'}-{stamp}.json").write_text(
        json.dumps(record, indent=2)
    )


class DowntimeProbe:
    """Seconds a sandbox's mysqld does not answer while the block runs (polled every 50 ms): the
    downtime a restore causes, as a client of the tablet sees it."""

    def __init__(self, sb: Sandbox, interval: float = 0.05) -> None:
        self._sb = sb
        self._interval = interval
        self._stop = threading.Event()
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DowntimeProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        down_since: float | None = None
        while not self._stop.is_set():
            t = time.monotonic()
            if self._sb.is_answering():
                if down_since is not None:
                    self.seconds += t - down_since
                    down_since = None
            elif down_since is None:
                down_since = t
            self._stop.wait(self._interval)
        if down_since is not None:
            self.seconds += time.monotonic() - down_since
