"""`make bench` / `bench/run NAME...`: run benchmarks one after another (each with its own default sizes)
and collect their BENCH lines, with how long each took and the load average around it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SKIP = {"__init__", "common", "run"}


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem not in SKIP and not p.stem.startswith("_"))


def main(argv: list[str]) -> int:
    names = available() if not argv or argv == ["all"] else argv
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(
            f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available())}", file=sys.stderr
        )
        return 2
    lines: list[str] = []
    failed = []
    began = time.monotonic()
    for name in names:
        print(f"\n### {name} (load average {os.getloadavg()[0]:.1f})", flush=True)
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        print(proc.stdout, end="", flush=True)
        lines += [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
        lines.append(f"took {name} seconds={time.monotonic() - start:.0f} load1={os.getloadavg()[0]:.1f}")
        if proc.returncode != 0:
            failed.append(name)
    print(f"\n### summary ({(time.monotonic() - began) / 60:.1f} min)")
    for line in lines:
        print(line)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
