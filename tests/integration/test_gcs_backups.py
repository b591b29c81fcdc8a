"""Backups and restores through the real agent into a local Google Cloud Storage (gcp-storage-emulator on
127.0.0.1), also through a proxy that injects faults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.faulty_proxy import FaultyProxy
from tests.gcsserver import GcsServer
from tests.integration import helpers
from tests.integration.helpers import Tablets

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Bucket:
    server: GcsServer
    name: str
    proxy: FaultyProxy | None = None  # when set, the agent talks to the emulator through it

    def flags(self) -> list[str]:
        endpoint = self.proxy.endpoint if self.proxy else self.server.endpoint
        return [
            "--backup_storage_implementation", "gcs", "--gcs_backup_storage_bucket", self.name,
            "--gcs_backup_storage_root", "prod", "--gcs_backup_storage_endpoint", endpoint,
        ]  # fmt: skip

    def objects(self) -> list[str]:
        return self.server.object_names(self.name)

    def manifests(self) -> list[dict[str, object]]:
        return [json.loads(self.server.read(self.name, k)) for k in self.objects() if k.endswith("/MANIFEST")]


@pytest.fixture
def bucket(gcs_server: GcsServer, gcs_bucket: str) -> Bucket:
    return Bucket(gcs_server, gcs_bucket)


@pytest.fixture
def proxied(bucket: Bucket) -> Iterator[Bucket]:
    p = FaultyProxy(bucket.server.endpoint, keep_host=True)
    yield Bucket(bucket.server, bucket.name, p)
    p.stop()


def test_builtin_backup_and_restore_through_gcs_with_faults(tablets: Tablets, proxied: Bucket) -> None:
    tablets.primary.write_rows(120)
    # 24 MB: a data file of several 16 MiB chunks
    m, fresh = helpers.round_trip_through_faults(tablets, proxied, megabytes=24)
    assert m["BackupMethod"] == "builtin" and m["Keyspace"] == "ks"
    assert all(k.startswith(f"prod/ks/0/{m['BackupName']}/") for k in proxied.objects())
    assert helpers.count(fresh) == 120


def test_xtrabackup_incrementals_and_pitr_through_gcs(tablets: Tablets, bucket: Bucket) -> None:
    helpers.incrementals_and_pitr(tablets, bucket)


def test_persistent_gcs_failure_fails_the_backup_cleanly(tablets: Tablets, proxied: Bucket) -> None:
    err, _ = helpers.backup_while_store_is_down(tablets, proxied, megabytes=12)
    assert "HTTP 500" in (err.details() or "") and "upload_id" not in (err.details() or "")
    assert proxied.objects() == []
