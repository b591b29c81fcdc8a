"""Backups and restores through the real agent into a real S3-compatible server (moto's, on 127.0.0.1),
also through a proxy that injects faults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.faulty_proxy import FaultyProxy
from tests.integration import helpers
from tests.integration.helpers import Tablets
from tests.s3server import CREDENTIALS, S3Server

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Bucket:
    server: S3Server
    name: str
    proxy: FaultyProxy | None = None  # when set, the agent talks to the server through it

    def flags(self) -> list[str]:
        endpoint = self.proxy.endpoint if self.proxy else self.server.endpoint
        return [
            "--backup_storage_implementation", "s3", "--s3_backup_storage_bucket", self.name,
            "--s3_backup_storage_root", "prod", "--s3_backup_aws_endpoint", endpoint, "--s3_backup_force_path_style",
        ]  # fmt: skip

    def manifests(self) -> list[dict[str, object]]:
        client = self.server.client()
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=self.name).get("Contents", []))
        return [
            json.loads(client.get_object(Bucket=self.name, Key=k)["Body"].read())
            for k in keys
            if k.endswith("/MANIFEST")
        ]

    def uploads(self) -> list[object]:
        return list(self.server.client().list_multipart_uploads(Bucket=self.name).get("Uploads", []))


@pytest.fixture
def bucket(s3_server: S3Server, s3_bucket: str) -> Bucket:
    return Bucket(s3_server, s3_bucket)


@pytest.fixture
def proxied(bucket: Bucket) -> Iterator[Bucket]:
    p = FaultyProxy(bucket.server.endpoint)
    yield Bucket(bucket.server, bucket.name, p)
    p.stop()


def test_builtin_backup_and_restore_through_s3(tablets: Tablets, bucket: Bucket) -> None:
    helpers.builtin_round_trip(tablets, bucket, flags=bucket.flags(), env=CREDENTIALS)


def test_xtrabackup_incrementals_and_pitr_through_s3(tablets: Tablets, bucket: Bucket) -> None:
    helpers.incrementals_and_pitr(tablets, bucket, env=CREDENTIALS)


def test_transient_s3_faults_are_retried(tablets: Tablets, proxied: Bucket) -> None:
    helpers.round_trip_through_faults(tablets, proxied, megabytes=24, env=CREDENTIALS)
    assert proxied.uploads() == []


def test_persistent_s3_failure_fails_the_backup_cleanly(tablets: Tablets, proxied: Bucket) -> None:
    err, _ = helpers.backup_while_store_is_down(tablets, proxied, megabytes=12, env=CREDENTIALS)
    assert "InternalError (HTTP 500)" in (err.details() or "") and "abort" not in (err.details() or "")
    assert proxied.uploads() == []
    assert proxied.server.client().list_objects_v2(Bucket=proxied.name).get("KeyCount") == 0
