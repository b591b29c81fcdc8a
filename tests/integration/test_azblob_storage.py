"""The Azure Blob backend against a real blob service (Azurite, on 127.0.0.1): staged blocks with and
without size hints, nothing visible before the commit, aborts that leave no blob, ranged resume on reads,
and faults injected by a proxy (503s and dropped connections retried, persistent 500s failing cleanly)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator

import pytest

from agent.errors import FailedPrecondition, NotFound, PermissionDenied, StorageError
from agent.storage.azblob import MIB, AzblobSettings, AzureBlobBackupStorage
from agent.storage.azblob_rest import Account
from agent.storage.base import BackupHandle
from tests.azuriteserver import ACCOUNT, KEY, AzuriteServer
from tests.faulty_proxy import FaultyProxy

pytestmark = pytest.mark.integration
NAME = "2026-11-24.010000.zone1-0000000102"
BLOCK = 4 * MIB


def settings(container: str, endpoint: str, key: str = KEY, **kw: object) -> AzblobSettings:
    account = Account.from_base64(ACCOUNT, key, "test")
    return AzblobSettings(
        account=account, container=container, root="fleet/a", endpoint=endpoint, buffer_size=BLOCK, **kw
    )  # type: ignore[arg-type]


@pytest.fixture
async def storage(azurite: AzuriteServer, azure_container: str) -> AsyncIterator[AzureBlobBackupStorage]:
    s = AzureBlobBackupStorage(settings(azure_container, azurite.endpoint, parallelism=2))
    yield s
    await s.close()


@pytest.fixture
def proxy(azurite: AzuriteServer) -> Iterator[FaultyProxy]:
    p = FaultyProxy(azurite.endpoint.rsplit("/", 1)[0])
    yield p
    p.stop()


async def read_all(handle: BackupHandle, name: str) -> bytes:
    return b"".join([bytes(c) async for c in handle.read_file(name)])


async def write(handle: BackupHandle, name: str, data: bytes, size_hint: int = -1) -> None:
    w = await handle.add_file(name, size_hint)
    for i in range(0, len(data), MIB):
        await w.write(data[i : i + MIB])
    await w.close()


def block_sizes(azurite: AzuriteServer, container: str, blob: str) -> list[int]:
    client = azurite.service().get_blob_client(container, blob)
    committed, uncommitted = client.get_block_list("all")
    assert uncommitted == []
    return [b.size for b in committed]


async def test_block_uploads_with_and_without_size_hints(
    storage: AzureBlobBackupStorage, azurite: AzuriteServer, azure_container: str
) -> None:
    h = await storage.start_backup("ks/0", NAME)
    hinted = os.urandom(3 * BLOCK + 123)
    await write(h, "0", hinted, len(hinted))
    unknown = os.urandom(2 * BLOCK + 5)
    await write(h, "1", unknown)
    await write(h, "MANIFEST", b"{}")
    await h.end()
    prefix = f"fleet/a/ks/0/{NAME}/"
    assert block_sizes(azurite, azure_container, prefix + "0") == [BLOCK, BLOCK, BLOCK, 123]
    assert block_sizes(azurite, azure_container, prefix + "1") == [BLOCK, BLOCK, 5]
    assert block_sizes(azurite, azure_container, prefix + "MANIFEST") == []  # one Put Blob
    assert azurite.blob_names(azure_container) == [prefix + n for n in ("0", "1", "MANIFEST")]
    (ro,) = await storage.list_backups("ks/0")
    assert hashlib.sha256(await read_all(ro, "0")).digest() == hashlib.sha256(hinted).digest()
    assert await read_all(ro, "1") == unknown
    assert await storage.list_directories() == ["ks/0"]


async def test_nothing_is_visible_before_the_commit(
    storage: AzureBlobBackupStorage, azurite: AzuriteServer, azure_container: str
) -> None:
    h = await storage.start_backup("ks/0", NAME)
    w = await h.add_file("0")
    for _ in range(3 * BLOCK // MIB):
        await w.write(os.urandom(MIB))  # three blocks staged (or in flight), none committed
    blob = f"fleet/a/ks/0/{NAME}/0"
    assert azurite.blob_names(azure_container) == []
    assert await h.file_size("0") is None and await storage.list_backups("ks/0") == []
    await w.close()
    assert azurite.blob_names(azure_container) == [blob]
    assert await h.file_size("0") == 3 * BLOCK


async def test_an_aborted_writer_and_backup_leave_no_blob(
    storage: AzureBlobBackupStorage, azurite: AzuriteServer, azure_container: str
) -> None:
    h = await storage.start_backup("ks/0", NAME)
    await write(h, "0", os.urandom(BLOCK + 1))
    w = await h.add_file("1")
    for _ in range(2 * BLOCK // MIB + 1):
        await w.write(os.urandom(MIB))
    await w.abort()
    # blocks it staged stay uncommitted, never visible, until the service discards them
    assert azurite.blob_names(azure_container) == [f"fleet/a/ks/0/{NAME}/0"]
    assert await h.file_size("1") is None
    await h.abort()
    assert azurite.blob_names(azure_container) == []
    with pytest.raises(FailedPrecondition):
        await h.add_file("2")


async def test_reads_resume_with_a_range_when_the_connection_breaks(
    azurite: AzuriteServer, azure_container: str
) -> None:
    cutter = FaultyProxy(azurite.endpoint.rsplit("/", 1)[0], "pass", cut_reads=True)
    direct = AzureBlobBackupStorage(settings(azure_container, azurite.endpoint))
    proxied = AzureBlobBackupStorage(settings(azure_container, f"{cutter.endpoint}/{ACCOUNT}"))
    try:
        h = await direct.start_backup("ks/0", NAME)
        data = os.urandom(3 * MIB + 17)
        await write(h, "0", data, len(data))
        await h.end()
        (ro,) = await proxied.list_backups("ks/0")
        assert await read_all(ro, "0") == data
        assert cutter.ranges == [f"bytes={len(data) // 2}-"]
        assert await ro.file_size("0") == len(data)
    finally:
        await direct.close()
        await proxied.close()
        cutter.stop()


async def test_throttling_and_dropped_connections_are_retried(
    azurite: AzuriteServer, azure_container: str, proxy: FaultyProxy
) -> None:
    s = AzureBlobBackupStorage(settings(azure_container, f"{proxy.endpoint}/{ACCOUNT}"))
    try:
        h = await s.start_backup("ks/0", NAME)
        blobs = {str(i): os.urandom(BLOCK + i * MIB) for i in range(5)}
        for name, data in blobs.items():
            await write(h, name, data, len(data) if int(name) % 2 else -1)
        await write(h, "MANIFEST", b"{}")
        await h.end()
        assert proxy.injected["503"] >= 2 and proxy.injected["drop"] >= 1, proxy.injected
        (ro,) = await s.list_backups("ks/0")
        for name, data in blobs.items():
            assert await read_all(ro, name) == data
    finally:
        await s.close()


async def test_a_persistent_failure_fails_cleanly_and_leaves_no_blob(
    azurite: AzuriteServer, azure_container: str, proxy: FaultyProxy
) -> None:
    proxy.mode = "down"
    s = AzureBlobBackupStorage(settings(azure_container, f"{proxy.endpoint}/{ACCOUNT}"))
    try:
        h = await s.start_backup("ks/0", NAME)
        w = await h.add_file("0")
        with pytest.raises(StorageError, match=r"InternalError \(HTTP 500\)"):
            for _ in range(3 * BLOCK // MIB):
                await w.write(os.urandom(MIB))
            await w.close()
        assert w.aborted  # type: ignore[attr-defined]
        small = await h.add_file("1")
        await small.write(b"x" * 100)
        with pytest.raises(StorageError, match="after 5 attempts"):
            await small.close()
        await h.abort()
        assert azurite.blob_names(azure_container) == []
    finally:
        await s.close()


async def test_a_wrong_key_or_container_says_what_to_fix(
    azurite: AzuriteServer, azure_container: str
) -> None:
    wrong_key = "A" * 86 + "=="
    s = AzureBlobBackupStorage(settings(azure_container, azurite.endpoint, key=wrong_key))
    try:
        with pytest.raises(PermissionDenied, match="--azblob_backup_account_name") as refused:
            await s.list_backups("ks/0")
        assert wrong_key not in str(refused.value) and KEY not in str(refused.value)
        assert KEY not in repr(s.settings)
    finally:
        await s.close()
    missing = AzureBlobBackupStorage(settings("no-such-container", azurite.endpoint))
    try:
        with pytest.raises(FailedPrecondition, match="does not exist"):
            await missing.start_backup("ks/0", NAME)
    finally:
        await missing.close()


async def test_missing_blobs_and_backups_are_not_found(storage: AzureBlobBackupStorage) -> None:
    with pytest.raises(NotFound):
        await storage.remove_backup("ks/0", NAME)
    h = await storage.start_backup("ks/0", NAME)
    await write(h, "0", b"x")
    with pytest.raises(NotFound, match="nope in backup"):
        await read_all(h, "nope")
    await h.abort()
    with pytest.raises(NotFound):
        await h.put_record("tablet-agent-verify.json", b"{}")
