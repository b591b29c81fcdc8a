"""s3_upload / s3_download: the agent's builtin backup into, and restore from, an S3-compatible server
(moto's, on 127.0.0.1) against an `aws s3 cp`-style copy of the same files with boto3's transfer manager
(multipart, 10 threads), same bytes (compression off on both sides), same server, alternating rounds.

    python -m bench.s3 [--size-gb 0.5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from bench.common import BenchResult, datadir_megabytes, dataset, drop_caches, report, timed
from tests.agent_process import AgentProcess
from tests.integration.helpers import backup, restore
from tests.s3server import CREDENTIALS, S3Server
from tests.sandbox import Sandbox


def reference_upload(server: S3Server, bucket: str, sb: Sandbox) -> None:
    client = server.client()
    sb.stop()
    try:
        for path in sorted(p for p in sb.datadir.rglob("*") if p.is_file()):
            client.upload_file(str(path), bucket, f"ref/{path.relative_to(sb.datadir)}")
    finally:
        sb.start()


def reference_download(server: S3Server, bucket: str, target: Path) -> None:
    client = server.client()
    shutil.rmtree(target, ignore_errors=True)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="ref/"):
        for obj in page.get("Contents", []):
            dest = target / obj["Key"].removeprefix("ref/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(dest))


def one_round(server: S3Server, sb: Sandbox, work: Path, up: BenchResult, down: BenchResult) -> str:
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=bucket)
    flags = [
        "--backup_storage_implementation", "s3", "--s3_backup_storage_bucket", bucket,
        "--s3_backup_aws_endpoint", server.endpoint, "--s3_backup_force_path_style",
        "--compression-engine-name", "none",
    ]  # fmt: skip
    agent = AgentProcess(sb.cnf, work / "unused", work / "agent", extra=flags, env=dict(os.environ))
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
    work = Path(tempfile.mkdtemp(prefix="bench-s3-", dir=Path.cwd() / "var"))
    os.environ.update(CREDENTIALS)
    server = S3Server(work / "moto.log")
    sb = dataset(work, args.size_gb)
    try:
        mb = datadir_megabytes(sb)
        up = BenchResult(
            "s3_upload", megabytes=mb, reference="boto3 upload_file of each file (multipart, 10 threads)"
        )
        down = BenchResult("s3_download", megabytes=mb, reference="boto3 download_file of each object")
        note = ""
        for _ in range(args.rounds):
            note = one_round(server, sb, work, up, down)
        report(
            [up, down],
            [note, f"data set {mb:.0f} MB of InnoDB files, compression off on both sides, {args.rounds} rounds, medians",
             "the agent's figures are whole RPCs (backup: mysqld stopped and restarted; restore: datadir replaced, "
             "mysqld restarted); the reference only copies files"],
            f"python -m bench.s3 --size-gb {args.size_gb} --rounds {args.rounds}",
        )  # fmt: skip
    finally:
        sb.destroy()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
