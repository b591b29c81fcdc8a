"""s3_upload / s3_download: the agent's builtin backup into, and restore from, an S3-compatible server
(moto's, on 127.0.0.1) against an `aws s3 cp`-style copy of the same files with boto3's transfer manager
(multipart, 10 threads), same bytes (compression off on both sides), same server, alternating rounds.

    python -m bench.s3 [--size-gb 0.2] [--rounds 2]
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from functools import partial
from pathlib import Path

from bench._object_storage import measure_round, run
from bench.common import BenchResult
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
    references = (partial(reference_upload, server, bucket), partial(reference_download, server, bucket))
    return measure_round(sb, work, flags, up, down, references=references, env=dict(os.environ))


def main(argv: list[str] | None = None) -> int:
    os.environ.update(CREDENTIALS)
    references = (
        "boto3 upload_file of each file (multipart, 10 threads)",
        "boto3 download_file of each object",
    )
    return run("s3", argv, lambda work: S3Server(work / "moto.log"), one_round, references=references)


if __name__ == "__main__":
    sys.exit(main())
