"""gcs_upload / gcs_download: the agent's builtin backup into, and restore from, a local Google Cloud
Storage (gcp-storage-emulator on 127.0.0.1) against the asyncio GCS SDK (gcloud-aio-storage) copying the
same files with its own uploads and downloads (4 files at a time, the agent's default concurrency), same
bytes (compression off on both sides), same emulator, alternating rounds.

    python -m bench.gcs [--size-gb 0.2] [--rounds 2]
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from bench._object_storage import measure_round, run
from bench.common import BenchResult
from tests.gcsserver import GcsServer
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
    references = (partial(reference_upload, server, bucket), partial(reference_download, server, bucket))
    return measure_round(sb, work, flags, up, down, references=references)


def main(argv: list[str] | None = None) -> int:
    sdk = f"gcloud-aio-storage, {PARALLEL} files at a time"
    references = (f"{sdk}: upload_from_filename of each file", f"{sdk}: download_to_filename of each object")
    notes = [
        "gcp-storage-emulator serves one request at a time and rewrites a resumable upload at every chunk, so "
        "both sides are bounded by it; the SDK sends each file as one request (whole file in memory), the "
        "agent streams 16 MiB chunks"
    ]
    return run("gcs", argv, GcsServer, one_round, references=references, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
