"""What the object-storage benchmarks (bench.s3, bench.gcs, bench.azblob) share: one round of the agent's
backup and restore against a reference copy of the same files, and the command line, data set, rounds
and report around the rounds. A helper, not a benchmark (bench/run skips modules named `_*`)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from bench.common import BenchResult, datadir_megabytes, dataset, drop_caches, report, timed
from tests.agent_process import AgentProcess
from tests.integration.helpers import backup, restore
from tests.sandbox import Sandbox


class Server(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


def measure_round(
    sb: Sandbox,
    work: Path,
    flags: list[str],
    up: BenchResult,
    down: BenchResult,
    *,
    references: tuple[Callable[[Sandbox], object], Callable[[Path], object]],
    env: dict[str, str] | None = None,
) -> str:
    """Start an agent on `sb` with `flags`, time its backup, the reference upload (`references[0](sb)`),
    its restore and the reference download (`references[1]` into a folder of `work`), caches dropped
    before each; stop it. The note of dropping the caches."""
    upload, download = references
    agent = AgentProcess(sb.cnf, work / "unused", work / "agent", extra=flags, env=env)
    agent.start(timeout=60)
    try:
        note = drop_caches()
        up.agent_seconds.append(timed(lambda: backup(agent, timeout=3600, allow_primary=True)))
        drop_caches()
        up.ref_seconds.append(timed(lambda: upload(sb)))
        drop_caches()
        down.agent_seconds.append(timed(lambda: restore(agent, timeout=3600)))
        drop_caches()
        down.ref_seconds.append(timed(lambda: download(work / "download")))
    finally:
        agent.stop()
    return note


def run(
    name: str,
    argv: list[str] | None,
    start_server: Callable[[Path], S],
    one_round: Callable[[S, Sandbox, Path, BenchResult, BenchResult], str],
    *,
    references: tuple[str, str],
    notes: Sequence[str] = (),
) -> int:
    """`python -m bench.<name>`: a data set, a server from `start_server(work)`, `--rounds` rounds of
    `one_round`, then the `<name>_upload` / `<name>_download` results (`references` describe the
    reference side of each) with `notes`."""
    p = argparse.ArgumentParser()
    p.add_argument("--size-gb", type=float, default=0.2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=Path.cwd() / "var"))
    server = start_server(work)
    sb = dataset(work, args.size_gb)
    try:
        mb = datadir_megabytes(sb)
        up = BenchResult(f"{name}_upload", megabytes=mb, reference=references[0])
        down = BenchResult(f"{name}_download", megabytes=mb, reference=references[1])
        note = ""
        for _ in range(args.rounds):
            note = one_round(server, sb, work, up, down)
        report(
            [up, down],
            [note, f"data set {mb:.0f} MB of InnoDB files, compression off on both sides, {args.rounds} rounds, medians",
             *notes,
             "the agent's figures are whole RPCs (backup: mysqld stopped and restarted; restore: datadir replaced, "
             "mysqld restarted); the reference only copies files"],
            f"python -m bench.{name} --size-gb {args.size_gb} --rounds {args.rounds}",
        )  # fmt: skip
    finally:
        sb.destroy()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0
