"""Backups and restores through the real agent into a real S3-compatible server (moto's, on 127.0.0.1),
also through a proxy that injects faults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from tests.conftest import SandboxFactory
from tests.faulty_proxy import FaultyProxy
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, restore, rpc_error
from tests.s3server import CREDENTIALS, S3Server
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration
XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]


def s3_flags(bucket: str, endpoint: str) -> list[str]:
    return [
        "--backup_storage_implementation", "s3", "--s3_backup_storage_bucket", bucket,
        "--s3_backup_storage_root", "prod", "--s3_backup_aws_endpoint", endpoint, "--s3_backup_force_path_style",
    ]  # fmt: skip


def manifests(bucket: Bucket) -> list[dict[str, object]]:
    client = bucket.server.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket.name).get("Contents", []))
    return [
        json.loads(client.get_object(Bucket=bucket.name, Key=k)["Body"].read())
        for k in keys
        if k.endswith("/MANIFEST")
    ]


def uploads(bucket: Bucket) -> list[object]:
    return list(bucket.server.client().list_multipart_uploads(Bucket=bucket.name).get("Uploads", []))


def count(sb: Sandbox, table: str = "t") -> int:
    return int(sb.value(f"SELECT COUNT(*) FROM test.{table}"))


@dataclass(frozen=True)
class Bucket:
    server: S3Server
    name: str
    proxy: FaultyProxy | None = None  # when set, the agent talks to the server through it

    def flags(self) -> list[str]:
        return s3_flags(self.name, self.proxy.endpoint if self.proxy else self.server.endpoint)


@pytest.fixture
def bucket(s3_server: S3Server, s3_bucket: str) -> Bucket:
    return Bucket(s3_server, s3_bucket)


@pytest.fixture
def proxied(bucket: Bucket) -> Iterator[Bucket]:
    p = FaultyProxy(bucket.server.endpoint)
    yield Bucket(bucket.server, bucket.name, p)
    p.stop()


def incompressible(sb: Sandbox, megabytes: int) -> str:
    """A table of random bytes, so objects are big enough for multipart uploads."""
    sb.sql("CREATE DATABASE IF NOT EXISTS test")
    sb.sql("CREATE TABLE IF NOT EXISTS test.r (id INT AUTO_INCREMENT PRIMARY KEY, b VARBINARY(1024))")
    sb.sql(f"INSERT INTO test.r (b) SELECT RANDOM_BYTES(1000) FROM test.seq_1_to_{megabytes * 1000}")
    return sb.gtid_binlog_pos()


def test_builtin_backup_and_restore_through_s3(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    bucket: Bucket,
) -> None:
    replica.wait_for_gtid(primary.write_rows(120))
    flags = bucket.flags()
    backup(agent_factory(replica, extra=flags, env=CREDENTIALS))
    (m,) = manifests(bucket)
    assert m["BackupMethod"] == "builtin" and m["Keyspace"] == "ks"
    fresh = sandbox_factory()
    fresh.make_replica_of(primary, start=False)
    restore(agent_factory(fresh, alias="zone1-0000000103", extra=flags, env=CREDENTIALS))
    assert count(fresh) == 120


def test_xtrabackup_incrementals_and_pitr_through_s3(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    bucket: Bucket,
) -> None:
    flags = [*bucket.flags(), *XTRA]
    agent = agent_factory(replica, extra=flags, env=CREDENTIALS)
    replica.wait_for_gtid(primary.write_rows(30))
    backup(agent)
    middle = primary.write_rows(12)
    replica.wait_for_gtid(middle)
    backup(agent, incremental_from_pos="auto")
    end = primary.write_rows(8)
    replica.wait_for_gtid(end)
    backup(agent, incremental_from_pos="auto")
    assert [bool(m["Incremental"]) for m in manifests(bucket)] == [False, True, True]
    fresh = sandbox_factory()
    fresh.make_replica_of(primary, start=False)
    other = agent_factory(fresh, alias="zone1-0000000104", extra=flags, env=CREDENTIALS)
    restore(other, restore_to_pos=middle)
    assert count(fresh) == 42
    restore(other, restore_to_pos=end)
    assert count(fresh) == 50


def test_transient_s3_faults_are_retried(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    proxied: Bucket,
) -> None:
    replica.wait_for_gtid(incompressible(primary, 24))
    flags = proxied.flags()
    backup(agent_factory(replica, extra=flags, env=CREDENTIALS))
    assert proxied.proxy is not None
    assert proxied.proxy.injected["503"] >= 2 and proxied.proxy.injected["drop"] >= 1, proxied.proxy.injected
    assert len(manifests(proxied)) == 1 and uploads(proxied) == []
    fresh = sandbox_factory()
    fresh.make_replica_of(primary, start=False)
    restore(agent_factory(fresh, alias="zone1-0000000105", extra=flags, env=CREDENTIALS))
    assert count(fresh, "r") == 24000


def test_persistent_s3_failure_fails_the_backup_cleanly(
    primary: Sandbox,
    replica: Sandbox,
    agent_factory: AgentFactory,
    proxied: Bucket,
) -> None:
    replica.wait_for_gtid(incompressible(primary, 12))
    assert proxied.proxy is not None
    agent = agent_factory(replica, extra=proxied.flags(), env=CREDENTIALS)
    proxied.proxy.mode = "down"  # after the start: its storage check would refuse a storage that is down
    err = rpc_error(backup, agent)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert "InternalError (HTTP 500)" in (err.details() or "") and "abort" not in (err.details() or "")
    assert manifests(proxied) == [] and uploads(proxied) == []
    assert proxied.server.client().list_objects_v2(Bucket=proxied.name).get("KeyCount") == 0
    replica.wait_replicating()  # mysqld and replication are back
