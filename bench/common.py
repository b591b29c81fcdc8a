"""Shared benchmark plumbing: a MariaDB sandbox with generated InnoDB data, the agent as a process,
timing, medians, the machine's own limits measured in the same run, and the BENCH output lines plus a
JSON record under bench/results/."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.pipeline.compression import DEFAULT_ZSTD_LEVEL
from tests.agent_process import AgentProcess
from tests.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ROW_BYTES = 250  # about what one generated row costs in the .ibd file
SAMPLE_BYTES = 256 * 2**20  # what the machine limits are measured on: about 1 s of work each
PAGE = 16384
RESTORING = ("restore", "download", "replay")  # names whose agent side decompresses and writes


@dataclass
class BenchResult:
    name: str
    agent_seconds: list[float] = field(default_factory=list)
    ref_seconds: list[float] = field(default_factory=list)
    megabytes: float = 0.0
    reference: str = ""
    extra: dict[str, float] = field(default_factory=dict)
    restores: bool | None = None  # decompresses rather than compresses; None: from the name

    @property
    def restoring(self) -> bool:
        return self.restores if self.restores is not None else any(w in self.name for w in RESTORING)

    @property
    def agent_mbps(self) -> float:
        return self.megabytes / statistics.median(self.agent_seconds)

    @property
    def ref_mbps(self) -> float:
        return self.megabytes / statistics.median(self.ref_seconds)

    def line(self, limits: MachineLimits | None = None) -> str:
        text = (
            f"BENCH {self.name} ratio={self.agent_mbps / self.ref_mbps:.3f} "
            f"agent_mbps={self.agent_mbps:.1f} ref_mbps={self.ref_mbps:.1f}"
        )
        if limits is None:
            return text
        return (
            f"{text} agent_limit={self.agent_mbps / limits.mbps(self.restoring):.3f} load1={limits.load1:.1f}"
        )


@dataclass(frozen=True)
class MachineLimits:
    """What no backup or restore can beat on this machine, measured in the same run as the benchmark:
    the disk's write throughput, and zstd's (at the agent's level, every core) on a sample of the data.
    A backup is bound by the tighter of the disk and compression, a restore by the disk and
    decompression; `agent_limit` is the agent's throughput as a fraction of that bound."""

    disk_write_mbps: float
    zstd_mbps: float
    unzstd_mbps: float
    zstd_level: int
    load1: float  # the 1-minute load average when measured: other work shares the cores

    def mbps(self, restoring: bool) -> float:
        return min(self.disk_write_mbps, self.unzstd_mbps if restoring else self.zstd_mbps)

    def describe(self) -> str:
        return (
            f"machine limits this run: disk write {self.disk_write_mbps:.0f} MB/s (dd bs=4M oflag=direct), "
            f"zstd -T0 -{self.zstd_level} {self.zstd_mbps:.0f} MB/s, zstd -d {self.unzstd_mbps:.0f} MB/s on "
            f"{os.cpu_count()} cores, load average {self.load1:.1f}; agent_limit = agent MB/s over the tighter "
            "of disk and (de)compression"
        )

    @classmethod
    def measure(
        cls, directory: Path, sample: Sequence[Path] = (), level: int = DEFAULT_ZSTD_LEVEL
    ) -> MachineLimits:
        """Measure in `directory` (on the filesystem the benchmark writes to), on the first
        SAMPLE_BYTES of `sample` (InnoDB-like pages of the benchmarks' rows when empty). Each figure is
        the best of three tries: others' work only ever slows a try down. A few seconds."""
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as shm:
            plain, packed = Path(shm) / "sample", Path(shm) / "sample.zst"
            _write_sample(plain, sample)
            mb = plain.stat().st_size / 1e6
            target = directory / f".limits-{os.getpid()}"
            try:
                write = _best(f"dd if={plain} of={target} bs=4M oflag=direct status=none")
            finally:
                target.unlink(missing_ok=True)
            compress = _best(f"zstd -q -T0 -{level} -c {plain} > {packed}")
            decompress = _best(f"zstd -q -dc {packed} > /dev/null")
        return cls(mb / write, mb / compress, mb / decompress, level, os.getloadavg()[0])


def _best(command: str, tries: int = 3) -> float:
    return min(timed(lambda: subprocess.run(command, shell=True, check=True)) for _ in range(tries))


def _write_sample(out: Path, files: Sequence[Path]) -> None:
    """SAMPLE_BYTES of `files` in order, or of generated InnoDB-like pages (rows as `dataset` makes them,
    15/16 full) when there are none."""
    with out.open("wb") as f:
        left = SAMPLE_BYTES
        for path in files:
            with path.open("rb") as src:
                while left > 0 and (chunk := src.read(min(left, 4 * 2**20))):
                    f.write(chunk)
                    left -= len(chunk)
        if left == SAMPLE_BYTES:
            # 8 MiB of distinct pages, repeated: zstd -1's 512 KiB window never sees the repetition
            pages = bytearray()
            seq = 0
            while len(pages) < 8 * 2**20:
                page = bytearray()
                while len(page) < PAGE * 15 // 16:
                    seq += 1
                    md5 = hashlib.md5(str(seq).encode()).hexdigest()
                    tail = hashlib.md5(str(seq * 7).encode()).hexdigest()
                    page += seq.to_bytes(8, "big") + (seq % 1000).to_bytes(4, "big")
                    page += f"{md5}{'x' * (40 + seq % 100)}{tail}".encode()
                pages += page[:PAGE].ljust(PAGE, b"\0")
            for _ in range(SAMPLE_BYTES // len(pages)):
                f.write(pages)


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


def report(
    results: list[BenchResult], notes: list[str], command: str, limits: MachineLimits | None = None
) -> None:
    """Print the table, the notes, the command and one BENCH line per result (with `agent_limit`), and
    keep a JSON record. Without `limits`, the machine's are measured now on generated data."""
    limits = limits or MachineLimits.measure(REPO / "var")
    print(f"\n{'benchmark':<20} {'agent MB/s':>11} {'ref MB/s':>10} {'ratio':>7}  reference")
    for r in results:
        print(
            f"{r.name:<20} {r.agent_mbps:>11.1f} {r.ref_mbps:>10.1f} {r.agent_mbps / r.ref_mbps:>7.3f}  {r.reference}"
        )
    for note in [*notes, limits.describe()]:
        print(f"note: {note}")
    print(f"reproduce: {command}")
    for r in results:
        print(r.line(limits), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    record = {"machine": machine(), "command": command, "notes": notes, "limits": asdict(limits),
              "results": [asdict(r) | {"agent_mbps": r.agent_mbps, "ref_mbps": r.ref_mbps,
                                       "agent_limit": r.agent_mbps / limits.mbps(r.restoring)} for r in results]}  # fmt: skip
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
