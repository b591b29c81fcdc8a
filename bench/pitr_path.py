"""Time choosing a point-in-time restore path among 10,000 backups: listing the shard's backups, reading
their MANIFESTs and finding the path, on directory storage and on S3 (moto's server on 127.0.0.1).

The MANIFESTs are synthetic and written straight into the storage: 35 days of a daily full backup and an
incremental every 5 minutes (one MariaDB domain). The warm figure is what a restore pays with the agent's
listing cache warm (`ManifestCache`: the listing itself, then only new MANIFESTs are read), the worst of
a restore to a time an hour ago and to a position in the middle of the history; the cold one reads every
MANIFEST. A restore reads the MANIFESTs of the path it chose again (`ManifestCache.confirm`), so that is
timed too. Prints ``BENCH pitr_path backups=10000 storage=<file|s3> seconds=<warm> cold_seconds=<cold>``.

    python -m bench.pitr_path [--backups 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.catalog.listing import ManifestCache, list_backup_entries
from agent.catalog.manifest import (
    MANIFEST_FILENAME,
    IncrementalDetails,
    Manifest,
    backup_name,
    format_time,
    manifest_to_json,
)
from agent.catalog.pitr_path import path_to_position, path_to_time
from agent.mysql.gtid import parse_position
from agent.storage.base import BackupStorage
from agent.storage.file import FileBackupStorage

DIRECTORY = "ks/0"
PER_DAY = 288  # an incremental every 5 minutes; the first of each day is a full backup
TRANSACTIONS = 20  # per 5 minutes
RUNS = 3


def manifests(count: int, now: datetime) -> list[Manifest]:
    """`count` backups ending an hour before `now`, oldest first."""
    start = now - timedelta(hours=1) - timedelta(minutes=5 * (count - 1))
    out = []
    seq = 1000
    previous = ""
    for i in range(count):
        t = start + timedelta(minutes=5 * i)
        name = backup_name(t, "zone1-0000000102")
        if i % PER_DAY == 0:
            m = Manifest(
                BackupName=name,
                BackupMethod="builtin",
                Position=f"MariaDB/0-1-{seq}",
                BackupTime=format_time(t),
                FinishedTime=format_time(t + timedelta(seconds=90)),
            )
        else:
            first = seq
            seq += TRANSACTIONS
            m = Manifest(
                BackupName=name,
                BackupMethod="builtin",
                Incremental=True,
                FromPosition=f"MariaDB/0-1-{first - 3}",  # the file holding the previous position
                FromBackup=previous,
                Position=f"MariaDB/0-1-{seq}",
                BackupTime=format_time(t),
                FinishedTime=format_time(t + timedelta(seconds=2)),
                IncrementalDetails=IncrementalDetails(
                    FirstTimestamp=format_time(t - timedelta(minutes=5)),
                    LastTimestamp=format_time(t - timedelta(seconds=1)),
                ),
            )
        out.append(m)
        previous = name
    return out


def write_files(root: Path, items: list[Manifest]) -> None:
    for m in items:
        d = root / DIRECTORY / m.backup_name
        d.mkdir(parents=True)
        (d / MANIFEST_FILENAME).write_bytes(manifest_to_json(m))


def write_s3(client: object, bucket: str, items: list[Manifest]) -> None:
    def put(m: Manifest) -> None:
        client.put_object(  # type: ignore[attr-defined]
            Bucket=bucket, Key=f"{DIRECTORY}/{m.backup_name}/{MANIFEST_FILENAME}", Body=manifest_to_json(m)
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, items))


async def choose(
    storage: BackupStorage, cache: ManifestCache, items: list[Manifest], now: datetime
) -> tuple[float, str]:
    """Seconds for the slower of two restores' choices (listing + path + re-reading the path's MANIFESTs),
    and where they went."""
    worst, detail = 0.0, ""
    middle = items[len(items) // 2].position
    for restore in ("time", "position"):
        begin = time.perf_counter()
        entries = await list_backup_entries(storage, DIRECTORY, cache=cache)
        listed = time.perf_counter()
        if restore == "time":
            path = path_to_time(entries, now - timedelta(hours=1, minutes=30))
        else:
            path = path_to_position(entries, parse_position(middle))
        found = time.perf_counter()
        assert await cache.confirm([path.full, *path.incrementals]) is not None  # a restore re-reads them
        end = time.perf_counter()
        if end - begin > worst:
            worst = end - begin
            detail = (
                f"to a {restore}: listing {listed - begin:.3f} s, path {found - listed:.3f} s, re-reading "
                f"{1 + len(path.incrementals)} MANIFESTs {end - found:.3f} s"
            )
        assert len(entries) == len(items) and path.incrementals
    return worst, detail


async def measure(storage: BackupStorage, items: list[Manifest], now: datetime) -> tuple[float, float]:
    cache = ManifestCache()
    begin = time.perf_counter()
    await list_backup_entries(storage, DIRECTORY, cache=cache)
    cold = time.perf_counter() - begin
    warm, detail = min([await choose(storage, cache, items, now) for _ in range(RUNS)])
    print(f"{storage.describe()}: {detail}")
    return warm, cold


async def run_s3(items: list[Manifest], now: datetime, work: Path) -> tuple[float, float]:
    import os

    from agent.storage.s3 import S3BackupStorage, S3Settings
    from tests.s3server import CREDENTIALS, S3Server

    server = S3Server(work / "moto.log")
    try:
        os.environ.update(CREDENTIALS)
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        client = server.client()
        client.create_bucket(Bucket=bucket)
        write_s3(client, bucket, items)
        storage = S3BackupStorage(S3Settings(bucket=bucket, endpoint=server.endpoint, force_path_style=True))
        try:
            return await measure(storage, items, now)
        finally:
            await storage.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backups", type=int, default=10_000)
    args = parser.parse_args()
    now = datetime.now(UTC).replace(microsecond=0)
    items = manifests(args.backups, now)
    results = {}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        write_files(Path(tmp) / "file", items)
        results["file"] = asyncio.run(measure(FileBackupStorage(Path(tmp) / "file"), items, now))
        results["s3"] = asyncio.run(run_s3(items, now, Path(tmp)))
    for storage, (warm, cold) in results.items():
        print(
            f"{storage}: choosing a restore path among {args.backups} backups: {warm:.3f} s with the listing "
            f"cache warm (listing + path + re-reading the path's MANIFESTs), {cold:.2f} s reading every MANIFEST"
        )
    for storage, (warm, cold) in results.items():
        print(
            f"BENCH pitr_path backups={args.backups} storage={storage} seconds={warm:.3f} cold_seconds={cold:.2f}"
        )
    print("reproduce: .venv/bin/python -m bench.pitr_path")
    print(json.dumps({k: {"warm": w, "cold": c} for k, (w, c) in results.items()}))


if __name__ == "__main__":
    main()
