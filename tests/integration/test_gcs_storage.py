"""The GCS backend against gcp-storage-emulator on 127.0.0.1: resumable uploads with and without size
hints, bounded memory, aborts that leave nothing (and cancel the session), ranged resume of broken reads,
retried 503s and dropped connections, clean failure on persistent 500s, credentials from the default chain.

The emulator cannot cancel a resumable session (it answers 501 to the DELETE); the tests check through
a proxy that the backend sends that DELETE, and that no object is ever left."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.errors import FailedPrecondition, NotFound, StorageError
from agent.storage.base import BackupHandle
from agent.storage.gcs import GcsBackupStorage, GcsSettings
from agent.storage.gcs_client import GcsClient
from tests.faulty_proxy import FaultyProxy
from tests.gcsserver import GcsServer
from tests.sandbox import free_port

pytestmark = pytest.mark.integration
KIB = 1 << 10
MIB = 1 << 20
CHUNK = 256 * KIB  # the smallest chunk GCS takes: many chunks from small objects
NAME = "2026-11-24.010000.zone1-0000000102"


def _storage(bucket: str, endpoint: str) -> GcsBackupStorage:
    return GcsBackupStorage(GcsSettings(bucket=bucket, root="fleet/a", endpoint=endpoint, chunk_size=CHUNK))


@pytest.fixture
async def storage(gcs_server: GcsServer, gcs_bucket: str) -> AsyncIterator[GcsBackupStorage]:
    s = _storage(gcs_bucket, gcs_server.endpoint)
    yield s
    await s.close()


@pytest.fixture
def proxy(gcs_server: GcsServer) -> Iterator[FaultyProxy]:
    p = FaultyProxy(gcs_server.endpoint, mode="pass", keep_host=True)
    yield p
    p.stop()


@pytest.fixture
async def proxied(gcs_bucket: str, proxy: FaultyProxy) -> AsyncIterator[GcsBackupStorage]:
    s = _storage(gcs_bucket, proxy.endpoint)
    yield s
    await s.close()


async def _read_all(handle: BackupHandle, name: str) -> bytes:
    return b"".join([c async for c in handle.read_file(name)])


async def _put(handle: BackupHandle, name: str, data: bytes, size_hint: int = -1, step: int = MIB) -> None:
    writer = await handle.add_file(name, size_hint)
    for i in range(0, len(data), step):
        await writer.write(data[i : i + step])
    await writer.close()


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def test_resumable_upload_with_a_size_hint(
    storage: GcsBackupStorage, gcs_server: GcsServer, gcs_bucket: str
) -> None:
    h = await storage.start_backup("ks/0", NAME)
    big = os.urandom(3 * MIB + 123)  # 13 chunks of 256 KiB, the last one short
    await _put(h, "0", big, len(big))
    await _put(h, "MANIFEST", b"{}")
    await h.end()
    with pytest.raises(FailedPrecondition, match="already exists"):
        await storage.start_backup("ks/0", NAME)
    (listed,) = await storage.list_backups("ks/0")
    assert listed.read_only and listed.name == NAME
    assert _sha(await _read_all(listed, "0")) == _sha(big)
    assert await listed.file_size("0") == len(big) and await listed.file_size("nope") is None
    with pytest.raises(NotFound):
        await _read_all(listed, "nope")
    assert await storage.list_directories() == ["ks/0"]
    prefix = f"fleet/a/ks/0/{NAME}/"
    assert gcs_server.object_names(gcs_bucket) == [prefix + "0", prefix + "MANIFEST"]
    assert _sha(gcs_server.read(gcs_bucket, prefix + "0")) == _sha(big)
    await storage.remove_backup("ks/0", NAME)
    assert gcs_server.object_names(gcs_bucket) == []


async def test_unknown_sizes_stream_in_bounded_memory(storage: GcsBackupStorage) -> None:
    h = await storage.start_backup("ks/0", NAME)
    data = os.urandom(16 * MIB)
    sizes = [1, CHUNK - 1, CHUNK, CHUNK + 1, 4 * CHUNK]  # around the chunk boundaries
    for i, size in enumerate(sizes):
        await _put(h, f"edge{i}", data[:size], step=CHUNK // 3)
    tracemalloc.start()
    try:
        await _put(h, "big", data, step=64 * KIB)  # 64 chunks, no hint
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * CHUNK, f"streaming 16 MiB held {peak} bytes at once"
    await h.end()
    (ro,) = await storage.list_backups("ks/0")
    assert _sha(await _read_all(ro, "big")) == _sha(data)
    for i, size in enumerate(sizes):
        assert await _read_all(ro, f"edge{i}") == data[:size]


async def test_abort_cancels_the_session_and_leaves_nothing(
    proxied: GcsBackupStorage, proxy: FaultyProxy, gcs_server: GcsServer, gcs_bucket: str
) -> None:
    h = await proxied.start_backup("ks/0", NAME)
    await _put(h, "0", os.urandom(MIB))
    unfinished = await h.add_file("1")
    await unfinished.write(os.urandom(MIB))  # three chunks sent, one buffered
    assert await h.file_size("1") is None  # an unfinished upload is never visible
    await h.abort()
    session_path = f"/upload/storage/v1/b/{gcs_bucket}/o"
    assert proxy.requests[f"DELETE {session_path}"] == 1  # the emulator answers 501, GCS 499
    assert gcs_server.object_names(gcs_bucket) == []
    assert await proxied.list_backups("ks/0") == []


async def test_a_broken_read_resumes_with_a_range_request(
    proxied: GcsBackupStorage, proxy: FaultyProxy
) -> None:
    h = await proxied.start_backup("ks/0", NAME)
    data = os.urandom(3 * MIB)
    await _put(h, "0", data)
    await h.end()
    proxy.cut_reads = True
    (ro,) = await proxied.list_backups("ks/0")
    assert _sha(await _read_all(ro, "0")) == _sha(data)
    assert proxy.injected["cut"] == 1


async def test_503s_and_dropped_connections_are_retried(
    proxied: GcsBackupStorage, proxy: FaultyProxy, gcs_server: GcsServer, gcs_bucket: str
) -> None:
    proxy.mode = "flaky"
    h = await proxied.start_backup("ks/0", NAME)
    blobs = {str(i): os.urandom(2 * MIB + i * 100 * KIB) for i in range(3)}
    blobs["small"] = b"x" * 1000
    for name, data in blobs.items():
        await _put(h, name, data, step=100 * KIB)
    await h.end()
    assert proxy.injected["503"] >= 3 and proxy.injected["drop"] >= 2, proxy.injected
    assert any(key.endswith("bytes */*") for key in proxy.attempts)  # resumed from the server's offset
    proxy.mode = "pass"
    (ro,) = await proxied.list_backups("ks/0")
    for name, data in blobs.items():
        assert _sha(await _read_all(ro, name)) == _sha(data)
    assert len(gcs_server.object_names(gcs_bucket)) == len(blobs)


async def test_persistent_500s_fail_cleanly(
    proxied: GcsBackupStorage, proxy: FaultyProxy, gcs_server: GcsServer, gcs_bucket: str
) -> None:
    h = await proxied.start_backup("ks/0", NAME)
    await _put(h, "0", b"kept until the abort")
    started = await h.add_file("1")
    await started.write(os.urandom(MIB))  # the session is open, chunks are in
    proxy.mode = "down"
    with pytest.raises(StorageError, match=r"failed at byte \d+ after 6 attempts: HTTP 500") as e:
        await started.write(os.urandom(MIB))
        await started.close()
    assert "upload_id" not in str(e.value)  # the session URI is a capability: never in messages
    with pytest.raises(StorageError):
        await started.close()  # a lost chunk is never papered over by sending the last one
    with pytest.raises(StorageError, match=r"writing .*/2 on gs://.* failed: HTTP 500"):
        await _put(h, "2", b"small: one request")
    await h.abort()
    assert proxy.requests[f"DELETE /upload/storage/v1/b/{gcs_bucket}/o"] == 1  # the session is cancelled
    assert gcs_server.object_names(gcs_bucket) == []


async def test_credentials_come_from_the_default_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    async def token(request: web.Request) -> web.Response:
        seen.append(await request.text())
        return web.json_response({"access_token": "ya29.test-token", "expires_in": 3600})

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    creds = tmp_path / "adc.json"
    creds.write_text(json.dumps({
        "type": "authorized_user", "client_id": "id", "client_secret": "very-secret",
        "refresh_token": "refresh-secret", "token_uri": f"http://127.0.0.1:{port}/token",
    }))  # fmt: skip
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    client = GcsClient(GcsSettings(bucket="b", endpoint="https://storage.example.test"))
    try:
        assert await client._authorization() == {"Authorization": "Bearer ya29.test-token"}
        assert len(seen) == 1 and "refresh-secret" in seen[0]
        emulator = GcsClient(GcsSettings(bucket="b", endpoint="http://127.0.0.1:1"))
        assert await emulator._authorization() == {}  # plain HTTP: an emulator, no token in clear text
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
        missing = GcsClient(GcsSettings(bucket="b", endpoint="https://storage.example.test"))
        with pytest.raises(StorageError, match="GOOGLE_APPLICATION_CREDENTIALS") as e:
            await missing._authorization()
        assert "secret" not in str(e.value)
        await missing.close()
    finally:
        await client.close()
        await runner.cleanup()
        await asyncio.sleep(0)
