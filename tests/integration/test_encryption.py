"""Encrypted backups end to end: real sandboxes, the agent as a process, every byte in storage searched.

A marker row is backed up with encryption on (builtin, an incremental, xtrabackup with stripes): the
marker is in the tablet's files (checked, so the search means something) and in no stored object; the
restores give identical table checksums. Wrong or missing keys fail before mysqld is touched, naming the
key id; tampered objects and MANIFESTs fail naming what was tampered with, the tablet untouched; key
rotation keeps old backups restorable while the old key is configured.
"""

from __future__ import annotations

import json
import os
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import pytest

from agent.pb import vttime_pb2
from agent.pipeline.encryption import HEADER_SIZE, TAG_SIZE, MasterKey
from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, complete_backups, manifest, restore, rpc_error
from tests.s3server import CREDENTIALS, S3Server
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration

XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]
CHUNK = 1 << 20


def new_key(directory: Path, name: str) -> tuple[Path, str]:
    path = directory / f"{name}.key"
    path.write_text(os.urandom(32).hex() + "\n")
    path.chmod(0o600)
    return path, MasterKey.from_file(path, "test").key_id


def add_marker_rows(sandbox: Sandbox, marker: str, count: int = 20) -> str:
    with sandbox.session() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS test")
        cur.execute(
            "CREATE TABLE IF NOT EXISTS test.secret (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200))"
        )
        for i in range(count):
            cur.execute("INSERT INTO test.secret (v) VALUES (%s)", (f"{marker} {i}",))
    return sandbox.gtid_binlog_pos()


def checksums(sandbox: Sandbox) -> list[tuple[object, ...]]:
    return sandbox.sql("CHECKSUM TABLE test.secret, test.t")


def files_holding(root: Path, needle: bytes) -> list[Path]:
    """Every regular file under `root` whose bytes contain `needle`."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            found.append(path)
    return found


def pb_time(backup_dir: Path) -> vttime_pb2.Time:
    t = datetime.fromisoformat(str(manifest(backup_dir)["BackupTime"]).replace("Z", "+00:00"))
    return vttime_pb2.Time(seconds=int(t.timestamp()))


def test_builtin_and_incremental_never_store_the_marker_and_restore_identically(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root: Path,
) -> None:
    tmp_path = storage_root.parent
    marker = f"crypt-marker-{uuid.uuid4().hex}"
    key, key_id = new_key(tmp_path, "a")
    primary.write_rows(50)
    replica.wait_for_gtid(add_marker_rows(primary, marker))
    # no compression: the strongest case (the objects would hold the marker as is)
    flags = ["--backup_encryption_key_file", str(key), "--compression-engine-name", "none"]
    agent = agent_factory(replica, extra=[*flags, "--verify_after_backup", "light"])
    events = backup(agent)
    assert any(f"under key id {key_id}" in e for e in events)
    assert any("verified (light)" in e and "all good" in e for e in events), events
    assert files_holding(replica.datadir, marker.encode()), "the marker is in the tablet's files"
    later = f"{marker}-later"
    pos = add_marker_rows(primary, later)
    replica.wait_for_gtid(pos)
    backup(agent, incremental_from_pos="auto")
    assert files_holding(replica.root, later.encode()), "and in its binlogs"
    full, incremental = complete_backups(storage_root)
    for done in (full, incremental):
        encryption = manifest(done)["TabletAgent"]["Encryption"]  # type: ignore[index]
        assert encryption["KeyId"] == key_id and encryption["Cipher"] == "AES-256-GCM"  # type: ignore[index]
        assert len(encryption["ManifestHMAC"]) == 64  # type: ignore[index]
    assert files_holding(storage_root, marker.encode()) == []
    assert files_holding(storage_root, b"crypt-marker") == []
    # every object starts with the header and its CRC is of the stored (encrypted) bytes
    for fe, i in zip(manifest(full)["FileEntries"], range(10**6), strict=False):  # type: ignore[call-overload]
        data = (full / str(i)).read_bytes()
        assert data.startswith(b"TAGCM") and fe["StoredSize"] == len(data)
        assert len(data) == HEADER_SIZE + fe["Size"] + max(1, -(-fe["Size"] // CHUNK)) * TAG_SIZE

    expected = checksums(replica)
    fresh = sandbox_factory()
    target = agent_factory(fresh, alias="zone1-0000000103", extra=["--backup_encryption_key_file", str(key)])
    restore(target, restore_to_pos=f"MariaDB/{pos}")
    assert checksums(fresh) == expected
    assert fresh.value("SELECT COUNT(*) FROM test.secret WHERE v LIKE %s", (f"{later}%",)) == 20


def test_xtrabackup_stripes_never_store_the_marker_and_restore_identically(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root: Path,
) -> None:
    tmp_path = storage_root.parent
    marker = f"crypt-marker-{uuid.uuid4().hex}"
    key, key_id = new_key(tmp_path, "a")
    primary.write_rows(50)
    replica.wait_for_gtid(add_marker_rows(primary, marker))
    replica.sql("FLUSH TABLES test.secret FOR EXPORT")  # the pages on disk, so the stream holds them as is
    replica.sql("UNLOCK TABLES")
    assert files_holding(replica.datadir / "test", marker.encode())
    flags = [*XTRA, "--xtrabackup_stripes", "2", "--compression-engine-name", "none"]
    agent = agent_factory(replica, extra=[*flags, "--backup_encryption_key_file", str(key)])
    backup(agent)
    (done,) = complete_backups(storage_root)
    m = manifest(done)
    assert m["NumStripes"] == 2 and m["TabletAgent"]["Encryption"]["KeyId"] == key_id  # type: ignore[index]
    assert files_holding(storage_root, marker.encode()) == []
    expected = checksums(replica)
    fresh = sandbox_factory()
    target = agent_factory(
        fresh, alias="zone1-0000000103", extra=[*flags, "--backup_decryption_key_files", str(key)]
    )
    restore(target)
    assert checksums(fresh) == expected


def _untouched(sandbox: Sandbox, pid: int | None, rows: int) -> None:
    assert sandbox.is_answering(), "mysqld was not stopped"
    assert sandbox.pid() == pid, "mysqld was not restarted"
    assert sandbox.value("SELECT COUNT(*) FROM keep.t") == rows


def test_wrong_or_missing_key_fails_in_the_preflight_naming_the_key(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    tmp_path: Path,
) -> None:
    key_a, id_a = new_key(tmp_path, "a")
    key_b, id_b = new_key(tmp_path, "b")
    replica.wait_for_gtid(primary.write_rows(20))
    backup(agent_factory(replica, extra=["--backup_encryption_key_file", str(key_a)]))
    fresh = sandbox_factory()
    fresh.write_rows(7, table="t", database="keep")
    fresh.sql("SET GLOBAL read_only=1")
    pid = fresh.pid()
    for i, extra in enumerate([[], ["--backup_encryption_key_file", str(key_b)]]):
        target = agent_factory(fresh, alias="zone1-0000000103", extra=extra)
        err = rpc_error(restore, target)
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION, err.details()
        details = err.details() or ""
        assert id_a in details and "--backup_decryption_key_files" in details, details
        assert (id_b in details) == (i == 1)
        _untouched(fresh, pid, 7)
        target.stop()


def test_tampered_objects_and_manifest_fail_naming_them_and_touch_nothing(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root: Path,
) -> None:
    tmp_path = storage_root.parent
    key, _ = new_key(tmp_path, "a")
    flags = ["--backup_encryption_key_file", str(key), "--compression-engine-name", "none"]
    replica.wait_for_gtid(primary.write_rows(20))
    backup(agent_factory(replica, extra=flags))
    (done,) = complete_backups(storage_root)
    entries = manifest(done)["FileEntries"]
    big = max(range(len(entries)), key=lambda i: entries[i]["Size"])  # type: ignore[index,arg-type,return-value]
    obj = done / str(big)
    original = obj.read_bytes()
    assert len(original) > HEADER_SIZE + 3 * (CHUNK + TAG_SIZE), "several chunks"
    fresh = sandbox_factory()
    fresh.write_rows(7, table="t", database="keep")
    fresh.sql("SET GLOBAL read_only=1")
    pid = fresh.pid()
    target = agent_factory(fresh, alias="zone1-0000000103", extra=flags)

    n = CHUNK + TAG_SIZE
    flipped = bytearray(original)
    flipped[HEADER_SIZE + n + 100] ^= 1
    first, second = HEADER_SIZE, HEADER_SIZE + n
    swapped = bytearray(original)
    swapped[first : first + n], swapped[second : second + n] = (
        original[second : second + n],
        original[first : first + n],
    )
    last = (len(original) - HEADER_SIZE - 1) // n * n + HEADER_SIZE
    for case, data in [("flipped", flipped), ("swapped", swapped), ("truncated", original[:last])]:
        obj.write_bytes(bytes(data))
        err = rpc_error(restore, target)
        assert err.code() is grpc.StatusCode.DATA_LOSS, (case, err.details())
        assert f"ks/0/{done.name}/{big}" in (err.details() or ""), (case, err.details())
        _untouched(fresh, pid, 7)
    obj.write_bytes(original)

    # the MANIFEST edited to match the tampered object (its CRC and size) fails its own authentication
    obj.write_bytes(original[:last])
    m = json.loads((done / "MANIFEST").read_text())

    m["FileEntries"][big]["Hash"] = f"{zlib.crc32(original[:last]):08x}"
    m["FileEntries"][big]["StoredSize"] = last
    (done / "MANIFEST").write_text(json.dumps(m, indent=2))
    err = rpc_error(restore, target)
    assert err.code() is grpc.StatusCode.DATA_LOSS, err.details()
    assert f"MANIFEST of backup ks/0/{done.name} fails its authentication" in (err.details() or "")
    _untouched(fresh, pid, 7)


def test_key_rotation_keeps_old_backups_restorable_while_the_old_key_is_configured(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root: Path,
) -> None:
    tmp_path = storage_root.parent
    key_a, id_a = new_key(tmp_path, "a")
    key_b, _ = new_key(tmp_path, "b")
    replica.wait_for_gtid(primary.write_rows(20))
    agent = agent_factory(replica, extra=["--backup_encryption_key_file", str(key_a)])
    backup(agent)
    counts = [replica.value("SELECT COUNT(*) FROM test.t")]
    agent.stop()
    replica.wait_for_gtid(primary.write_rows(15))
    backup(agent_factory(replica, extra=["--backup_encryption_key_file", str(key_b)]))
    counts.append(replica.value("SELECT COUNT(*) FROM test.t"))
    backup_a, backup_b = complete_backups(storage_root)
    assert counts == [20, 35]

    fresh = sandbox_factory()
    both = ["--backup_encryption_key_file", str(key_b), "--backup_decryption_key_files", str(key_a)]
    target = agent_factory(fresh, alias="zone1-0000000103", extra=both)
    for done, rows in [(backup_a, 20), (backup_b, 35)]:
        restore(target, backup_time=pb_time(done))
        assert fresh.value("SELECT COUNT(*) FROM test.t") == rows, done.name
    target.stop()

    only_b = agent_factory(
        fresh, alias="zone1-0000000103", extra=["--backup_encryption_key_file", str(key_b)]
    )
    pid = fresh.pid()
    err = rpc_error(restore, only_b, backup_time=pb_time(backup_a))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION and id_a in (err.details() or ""), err.details()
    assert fresh.is_answering() and fresh.pid() == pid
    assert fresh.value("SELECT COUNT(*) FROM test.t") == 35


@dataclass(frozen=True)
class S3Target:
    server: S3Server
    bucket: str
    keys: Path

    def flags(self) -> list[str]:
        return [
            "--backup_storage_implementation", "s3", "--s3_backup_storage_bucket", self.bucket,
            "--s3_backup_aws_endpoint", self.server.endpoint, "--s3_backup_force_path_style",
        ]  # fmt: skip

    def objects(self) -> dict[str, bytes]:
        client = self.server.client()
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=self.bucket).get("Contents", [])]
        return {k: client.get_object(Bucket=self.bucket, Key=k)["Body"].read() for k in keys}


@pytest.fixture
def s3_target(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> S3Target:
    return S3Target(s3_server, s3_bucket, tmp_path)


def test_encrypted_backup_through_s3_holds_no_marker_and_restores(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    s3_target: S3Target,
) -> None:
    """Encryption sits above the storage layer: the same sealed objects go to S3 (rate-limited here too)."""
    marker = f"crypt-marker-{uuid.uuid4().hex}"
    key, key_id = new_key(s3_target.keys, "a")
    primary.write_rows(30)
    replica.wait_for_gtid(add_marker_rows(primary, marker))
    flags = [
        *s3_target.flags(),
        "--backup_encryption_key_file",
        str(key),
        "--compression-engine-name",
        "none",
    ]
    backup(agent_factory(replica, extra=[*flags, "--storage_max_rate", "200M"], env=CREDENTIALS))
    stored = s3_target.objects()
    (text,) = [v for k, v in stored.items() if k.endswith("/MANIFEST")]
    assert json.loads(text)["TabletAgent"]["Encryption"]["KeyId"] == key_id
    assert len(stored) > 5 and not [k for k, v in stored.items() if marker.encode() in v]
    expected = checksums(replica)
    fresh = sandbox_factory()
    restore(agent_factory(fresh, alias="zone1-0000000103", extra=flags, env=CREDENTIALS))
    assert checksums(fresh) == expected
