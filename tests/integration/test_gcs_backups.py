"""Backups and restores through the real agent into a local Google Cloud Storage (gcp-storage-emulator on
127.0.0.1), also through a proxy that injects faults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from tests.conftest import SandboxFactory
from tests.faulty_proxy import FaultyProxy
from tests.gcsserver import GcsServer
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, restore, rpc_error
from tests.integration.test_s3_backups import XTRA, count, incompressible
from tests.sandbox import Sandbox

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


def test_builtin_backup_and_restore_through_gcs_with_faults(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    proxied: Bucket,
) -> None:
    primary.write_rows(120)
    replica.wait_for_gtid(incompressible(primary, 24))  # a data file of several 16 MiB chunks
    flags = proxied.flags()
    backup(agent_factory(replica, extra=flags))
    assert proxied.proxy is not None
    assert proxied.proxy.injected["503"] >= 2 and proxied.proxy.injected["drop"] >= 1, proxied.proxy.injected
    (m,) = proxied.manifests()
    assert m["BackupMethod"] == "builtin" and m["Keyspace"] == "ks"
    assert all(k.startswith(f"prod/ks/0/{m['BackupName']}/") for k in proxied.objects())
    fresh = sandbox_factory()
    fresh.make_replica_of(primary, start=False)
    restore(agent_factory(fresh, alias="zone1-0000000103", extra=flags))
    assert count(fresh) == 120 and count(fresh, "r") == 24000


def test_xtrabackup_incrementals_and_pitr_through_gcs(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    bucket: Bucket,
) -> None:
    flags = [*bucket.flags(), *XTRA]
    agent = agent_factory(replica, extra=flags)
    replica.wait_for_gtid(primary.write_rows(30))
    backup(agent)
    middle = primary.write_rows(12)
    replica.wait_for_gtid(middle)
    backup(agent, incremental_from_pos="auto")
    end = primary.write_rows(8)
    replica.wait_for_gtid(end)
    backup(agent, incremental_from_pos="auto")
    manifests = bucket.manifests()
    assert manifests[0]["BackupMethod"] == "xtrabackup"
    assert [bool(m["Incremental"]) for m in manifests] == [False, True, True]
    fresh = sandbox_factory()
    fresh.make_replica_of(primary, start=False)
    other = agent_factory(fresh, alias="zone1-0000000104", extra=flags)
    restore(other, restore_to_pos=middle)
    assert count(fresh) == 42
    restore(other, restore_to_pos=end)
    assert count(fresh) == 50


def test_persistent_gcs_failure_fails_the_backup_cleanly(
    primary: Sandbox,
    replica: Sandbox,
    agent_factory: AgentFactory,
    proxied: Bucket,
) -> None:
    replica.wait_for_gtid(incompressible(primary, 12))
    assert proxied.proxy is not None
    agent = agent_factory(replica, extra=proxied.flags())
    proxied.proxy.mode = "down"  # after the start: its storage check would refuse a storage that is down
    err = rpc_error(backup, agent)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert "HTTP 500" in (err.details() or "") and "upload_id" not in (err.details() or "")
    assert proxied.objects() == []
    replica.wait_replicating()  # mysqld and replication are back
