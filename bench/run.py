"""`make bench` / `bench/run NAME...`: run benchmarks one after another and collect their BENCH lines."""

from __future__ import annotations

import subprocess
import sys
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
    for name in names:
        print(f"\n### {name}", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        print(proc.stdout, end="", flush=True)
        lines += [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
        if proc.returncode != 0:
            failed.append(name)
    print("\n### summary")
    for line in lines:
        print(line)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
