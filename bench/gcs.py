"""gcs_upload / gcs_download: the agent's builtin backup into, and restore from, a local Google Cloud
Storage (gcp-storage-emulator on 127.0.0.1) against the asyncio GCS SDK (gcloud-aio-storage) copying the
same files with its own uploads and downloads (4 files at a time, the agent's default concurrency), same
bytes (compression off on both sides), same emulator, alternating rounds.

    python -m bench.gcs [--size-gb 0.5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.common import BenchResult, datadir_megabytes, dataset, drop_caches, report, timed
from tests.agent_process import AgentProcess
from tests.gcsserver import GcsServer
from tests.integration.helpers import backup, restore
from tests.sandbox import Sandbox

PARALLEL = 4


async def _bounded(jobs: list[Callable[[], Awaitable[object]]]) -> None:
    slots = asyncio.Semaphore(PARALLEL)

    async def run(job: Callable[[], Awaitable[object]]) -> None:
        async with slots:
            await job()

    await asyncio.gather(*(run(job) for job in jobs))


async def _upload(endpoint: str, bucket: str, files: dict[str, Path]) -> None:
    from gcloud.aio.storage import Storage

    async with Storage(api_root=endpoint) as sdk:

        def job(name: str, path: Path) -> Callable[[], Awaitable[object]]:
            # empty files as resumable uploads: the emulator fails on an empty simple upload
            resumable = path.stat().st_size == 0
            return lambda: sdk.upload_from_filename(
                bucket, name, str(path), timeout=3600, force_resumable_upload=resumable
            )

        await _bounded([job(n, p) for n, p in files.items()])


async def _download(endpoint: str, bucket: str, target: Path) -> None:
    from gcloud.aio.storage import Storage

    async with Storage(api_root=endpoint) as sdk:
        listing = await sdk.list_objects(bucket, params={"prefix": "ref/"})
        names = [str(item["name"]) for item in listing.get("items", [])]

        def job(name: str) -> Callable[[], Awaitable[object]]:
            dest = target / name.removeprefix("ref/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            return lambda: sdk.download_to_filename(bucket, name, str(dest), timeout=3600)

        await _bounded([job(n) for n in names])


def reference_upload(server: GcsServer, bucket: str, sb: Sandbox) -> None:
    sb.stop()
    try:
        files = {f"ref/{p.relative_to(sb.datadir)}": p for p in sorted(sb.datadir.rglob("*")) if p.is_file()}
        asyncio.run(_upload(server.endpoint, bucket, files))
    finally:
        sb.start()


def reference_download(server: GcsServer, bucket: str, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    asyncio.run(_download(server.endpoint, bucket, target))


def one_round(server: GcsServer, sb: Sandbox, work: Path, up: BenchResult, down: BenchResult) -> str:
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    server.create_bucket(bucket)
    flags = [
        "--backup_storage_implementation", "gcs", "--gcs_backup_storage_bucket", bucket,
        "--gcs_backup_storage_endpoint", server.endpoint, "--compression-engine-name", "none",
    ]  # fmt: skip
    agent = AgentProcess(sb.cnf, work / "unused", work / "agent", extra=flags)
    agent.start(timeout=60)
    try:
        note = drop_caches()
        up.agent_seconds.append(timed(lambda: backup(agent, timeout=3600, allow_primary=True)))
        drop_caches()
        up.ref_seconds.append(timed(lambda: reference_upload(server, bucket, sb)))
        drop_caches()
        down.agent_seconds.append(timed(lambda: restore(agent, timeout=3600)))
        drop_caches()
        down.ref_seconds.append(timed(lambda: reference_download(server, bucket, work / "download")))
    finally:
        agent.stop()
    return note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-gb", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    (Path.cwd() / "var").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-gcs-", dir=Path.cwd() / "var"))
    server = GcsServer(work)
    sb = dataset(work, args.size_gb)
    try:
        mb = datadir_megabytes(sb)
        sdk = f"gcloud-aio-storage, {PARALLEL} files at a time"
        up = BenchResult("gcs_upload", megabytes=mb, reference=f"{sdk}: upload_from_filename of each file")
        down = BenchResult(
            "gcs_download", megabytes=mb, reference=f"{sdk}: download_to_filename of each object"
        )
        note = ""
        for _ in range(args.rounds):
            note = one_round(server, sb, work, up, down)
        report(
            [up, down],
            [note, f"data set {mb:.0f} MB of InnoDB files, compression off on both sides, {args.rounds} rounds, medians",
             "gcp-storage-emulator serves one request at a time and rewrites a resumable upload at every chunk, so "
             "both sides are bounded by it; the SDK sends each file as one request (whole file in memory), the "
             "agent streams 16 MiB chunks",
             "the agent's figures are whole RPCs (backup: mysqld stopped and restarted; restore: datadir replaced, "
             "mysqld restarted); the reference only copies files"],
            f"python -m bench.gcs --size-gb {args.size_gb} --rounds {args.rounds}",
        )  # fmt: skip
    finally:
        sb.destroy()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
