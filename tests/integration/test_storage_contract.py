"""The storage contract, run unchanged against every backend (a directory, and object stores on their
real local servers): what the orchestrator and the engines rely on, whatever holds the bytes.

A backend joins by adding a fixture to `BACKENDS` that yields a `BackupStorage` on a fresh, empty root.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.errors import AgentError, FailedPrecondition, InvalidArgument, NotFound
from agent.storage.base import BackupHandle, BackupStorage, ListsDirectories
from agent.storage.file import FileBackupStorage
from tests.azuriteserver import ACCOUNT, KEY, AzuriteServer
from tests.gcsserver import GcsServer
from tests.s3server import S3Server

pytestmark = pytest.mark.integration
MIB = 1 << 20
NAME = "2026-11-24.010000.zone1-0000000102"
LATER = "2026-11-24.020000.zone1-0000000102"


async def _file(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[BackupStorage]:
    yield FileBackupStorage(tmp_path / "backups")


async def _s3(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[BackupStorage]:
    from agent.storage.s3 import S3BackupStorage, S3Settings

    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    storage = S3BackupStorage(
        S3Settings(bucket=bucket, root="fleet/a", endpoint=server.endpoint, force_path_style=True)
    )
    yield storage
    await storage.close()


async def _azblob(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[BackupStorage]:
    from agent.storage.azblob import AzblobSettings, AzureBlobBackupStorage
    from agent.storage.azblob_rest import Account

    server: AzuriteServer = request.getfixturevalue("azurite")
    container: str = request.getfixturevalue("azure_container")
    account = Account.from_base64(ACCOUNT, KEY, "Azurite's development key")
    storage = AzureBlobBackupStorage(
        AzblobSettings(account=account, container=container, root="fleet/a", endpoint=server.endpoint)
    )
    yield storage
    await storage.close()


async def _gcs(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[BackupStorage]:
    from agent.storage.gcs import GcsBackupStorage, GcsSettings

    server: GcsServer = request.getfixturevalue("gcs_server")
    bucket: str = request.getfixturevalue("gcs_bucket")
    storage = GcsBackupStorage(GcsSettings(bucket=bucket, root="fleet/a", endpoint=server.endpoint))
    yield storage
    await storage.close()


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], AsyncIterator[BackupStorage]]] = {
    "file": _file,
    "s3": _s3,
    "azblob": _azblob,
    "gcs": _gcs,
}


@pytest.fixture(params=sorted(BACKENDS))
async def storage(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[BackupStorage]:
    backend = BACKENDS[request.param](tmp_path, request)
    yield await anext(backend)
    await backend.aclose()


async def read_all(handle: BackupHandle, name: str) -> bytes:
    return b"".join([bytes(c) async for c in handle.read_file(name)])


async def put(handle: BackupHandle, name: str, data: bytes, size_hint: int = -1) -> None:
    writer = await handle.add_file(name, size_hint)
    for i in range(0, len(data), MIB):
        await writer.write(data[i : i + MIB])
    await writer.close()


async def listed(storage: BackupStorage, name: str) -> BackupHandle:
    (handle,) = [h for h in await storage.list_backups("ks/0") if h.name == name]
    return handle


async def test_round_trip_of_big_and_empty_objects(storage: BackupStorage) -> None:
    h = await storage.start_backup("ks/0", NAME)
    big = os.urandom(12 * MIB + 123)
    await put(h, "0", big, len(big))
    await put(h, "1", b"")
    await put(h, "MANIFEST", b"{}")
    await h.end()
    ro = await listed(storage, NAME)
    assert ro.read_only and ro.directory == "ks/0"
    assert hashlib.sha256(await read_all(ro, "0")).digest() == hashlib.sha256(big).digest()
    assert await read_all(ro, "1") == b""
    assert await ro.file_size("0") == len(big) and await ro.file_size("1") == 0


async def test_an_object_exists_only_once_closed(storage: BackupStorage) -> None:
    h = await storage.start_backup("ks/0", NAME)
    writer = await h.add_file("0")
    await writer.write(b"x" * 1000)
    assert await h.file_size("0") is None
    await writer.close()
    assert await h.file_size("0") == 1000


async def test_names_are_never_reused(storage: BackupStorage) -> None:
    h = await storage.start_backup("ks/0", NAME)
    await put(h, "0", b"data")
    await h.end()
    with pytest.raises(FailedPrecondition, match="already exists"):
        await storage.start_backup("ks/0", NAME)
    h2 = await storage.start_backup("ks/0", LATER)
    await put(h2, "0", b"a")
    with pytest.raises(FailedPrecondition):
        await h2.add_file("0")


async def test_listing_is_oldest_first_and_per_directory(storage: BackupStorage) -> None:
    for name in (LATER, NAME):
        h = await storage.start_backup("ks/0", name)
        await put(h, "MANIFEST", b"{}")
        await h.end()
    other = await storage.start_backup("ks/-80", NAME)
    await put(other, "MANIFEST", b"{}")
    await other.end()
    assert [h.name for h in await storage.list_backups("ks/0")] == [NAME, LATER]
    assert await storage.list_backups("nothing/0") == []
    if isinstance(storage, ListsDirectories):
        assert await storage.list_directories() == ["ks/-80", "ks/0"]


async def test_missing_objects_are_not_found(storage: BackupStorage) -> None:
    h = await storage.start_backup("ks/0", NAME)
    await put(h, "0", b"x")
    await h.end()
    ro = await listed(storage, NAME)
    assert await ro.file_size("nope") is None
    with pytest.raises(NotFound):
        await read_all(ro, "nope")


async def test_abort_leaves_nothing(storage: BackupStorage) -> None:
    h = await storage.start_backup("ks/0", NAME)
    await put(h, "0", os.urandom(6 * MIB))
    unfinished = await h.add_file("1")
    await unfinished.write(os.urandom(6 * MIB))
    await h.abort()
    assert await storage.list_backups("ks/0") == []
    # the name may be used again: nothing of it is left
    h2 = await storage.start_backup("ks/0", NAME)
    await h2.abort()


async def test_a_writer_abort_leaves_no_object(storage: BackupStorage) -> None:
    h = await storage.start_backup("ks/0", NAME)
    writer = await h.add_file("0")
    await writer.write(os.urandom(6 * MIB))
    await writer.abort()
    await writer.abort()  # idempotent
    assert await h.file_size("0") is None
    await put(h, "1", b"ok")
    await h.end()
    assert await (await listed(storage, NAME)).file_size("0") is None


async def test_end_needs_closed_writers_and_makes_the_backup_immutable(storage: BackupStorage) -> None:
    h = await storage.start_backup("ks/0", NAME)
    writer = await h.add_file("0")
    await writer.write(b"x")
    with pytest.raises(FailedPrecondition):
        await h.end()
    await writer.close()
    await h.end()
    with pytest.raises(FailedPrecondition):
        await h.add_file("2")
    ro = await listed(storage, NAME)
    with pytest.raises(FailedPrecondition, match="read-only"):
        await ro.add_file("3")


async def test_remove_backup(storage: BackupStorage) -> None:
    h = await storage.start_backup("ks/0", NAME)
    await put(h, "0", b"x")
    await put(h, "MANIFEST", b"{}")
    await h.end()
    await storage.remove_backup("ks/0", NAME)
    assert await storage.list_backups("ks/0") == []
    with pytest.raises(NotFound):
        await storage.remove_backup("ks/0", NAME)


async def test_records_sit_beside_a_finished_backup_and_can_be_replaced(storage: BackupStorage) -> None:
    h = await storage.start_backup("ks/0", NAME)
    await put(h, "MANIFEST", b"{}")
    await h.end()
    ro = await listed(storage, NAME)
    await ro.put_record("tablet-agent-verify.json", b'{"ok": false}')
    await ro.put_record("tablet-agent-verify.json", b'{"ok": true}')
    assert await read_all(await listed(storage, NAME), "tablet-agent-verify.json") == b'{"ok": true}'
    with pytest.raises(InvalidArgument):
        await ro.put_record("MANIFEST", b"{}")
    with pytest.raises(InvalidArgument):
        await ro.put_record("0", b"x")
    await storage.remove_backup("ks/0", NAME)
    with pytest.raises(NotFound):
        await ro.put_record("tablet-agent-verify.json", b"{}")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x\x00y", "tab\tname"])
async def test_unsafe_names_are_refused(storage: BackupStorage, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        await storage.start_backup("ks/0", bad or "..")
    h = await storage.start_backup("ks/0", NAME)
    with pytest.raises(InvalidArgument):
        await h.add_file(bad)
    if "/" not in bad:
        with pytest.raises(InvalidArgument):
            await storage.start_backup(f"ks/{bad or '..'}", NAME)


async def test_parallel_writers_in_one_backup(storage: BackupStorage) -> None:
    h = await storage.start_backup("ks/0", NAME)
    blobs = {str(i): os.urandom(MIB + i) for i in range(6)}
    await asyncio.gather(*(put(h, name, data) for name, data in blobs.items()))
    await h.end()
    ro = await listed(storage, NAME)
    for name, data in blobs.items():
        assert await read_all(ro, name) == data


async def test_errors_are_agent_errors(storage: BackupStorage) -> None:
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: storage.remove_backup("ks/0", NAME),
        lambda: storage.start_backup("ks/0", "no/slash"),
    ]
    for call in calls:
        with pytest.raises(AgentError):
            await call()
