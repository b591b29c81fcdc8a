"""The S3 backend against a real S3-compatible server (moto's, on 127.0.0.1): the storage contract,
multipart uploads, aborts that leave nothing behind, ranged resume."""

from __future__ import annotations

import hashlib
import os

import pytest

from agent.errors import FailedPrecondition, NotFound
from agent.storage.s3 import S3BackupStorage, S3Settings
from tests.s3server import S3Server

pytestmark = pytest.mark.integration
MIB = 1 << 20


@pytest.fixture
async def storage(s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    s = S3BackupStorage(
        S3Settings(bucket=s3_bucket, root="fleet/a", endpoint=s3_server.endpoint, force_path_style=True)
    )
    yield s
    await s.close()


async def _read_all(handle, name: str) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([c async for c in handle.read_file(name)])


async def test_write_list_read_remove(storage: S3BackupStorage, s3_server: S3Server, s3_bucket: str) -> None:
    h = await storage.start_backup("ks/0", "2026-11-24.010000.zone1-0000000102")
    big = os.urandom(12 * MIB + 123)  # 3 parts of 5 MiB (min part) with the hint
    w = await h.add_file("0", len(big))
    for i in range(0, len(big), MIB):
        await w.write(big[i : i + MIB])
    await w.close()
    small = await h.add_file("MANIFEST")
    await small.write(b"{}")
    await small.close()
    await h.end()
    with pytest.raises(FailedPrecondition, match="already exists"):
        await storage.start_backup("ks/0", "2026-11-24.010000.zone1-0000000102")
    (listed,) = await storage.list_backups("ks/0")
    assert listed.read_only and listed.name == "2026-11-24.010000.zone1-0000000102"
    assert hashlib.sha256(await _read_all(listed, "0")).digest() == hashlib.sha256(big).digest()
    assert await listed.file_size("0") == len(big) and await listed.file_size("nope") is None
    with pytest.raises(NotFound):
        await _read_all(listed, "nope")
    assert await storage.list_directories() == ["ks/0"]
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert all(k.startswith("fleet/a/ks/0/2026-11-24.010000.zone1-0000000102/") for k in keys)
    await storage.remove_backup("ks/0", listed.name)
    assert await storage.list_backups("ks/0") == []
    with pytest.raises(NotFound):
        await storage.remove_backup("ks/0", listed.name)


async def test_unknown_size_streams_and_abort_leaves_nothing(
    storage: S3BackupStorage, s3_server: S3Server, s3_bucket: str
) -> None:
    h = await storage.start_backup("ks/0", "2026-11-24.020000.zone1-0000000102")
    w = await h.add_file("0")  # no size hint: 16 MiB parts
    data = os.urandom(MIB)
    for _ in range(40):
        await w.write(data)
    await w.close()
    w2 = await h.add_file("1")
    for _ in range(20):
        await w2.write(data)  # one part uploaded, a second buffered
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert len(uploads) == 1
    await h.abort()
    assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert s3_server.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
