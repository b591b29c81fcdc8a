"""The orchestrator writes the MANIFEST only after the storage made every object durable, and a backup
that fails before that leaves no MANIFEST."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.catalog.listing import ManifestCache
from agent.config import build_config
from agent.errors import StorageError
from agent.operations import Kind, Operation
from agent.ops.backup import run_backup
from agent.params import BackupParams
from agent.pipeline.compression import Buffer
from agent.pipeline.ratelimit import RateLimits
from engines.base import BackupContext, BackupOutcome


class Writer:
    def __init__(self, calls: list[str], name: str) -> None:
        self._calls, self._name = calls, name
        self.size = 0

    async def write(self, data: Buffer) -> None:
        self.size += len(data)

    async def close(self) -> None:
        self._calls.append(f"close {self._name}")

    async def abort(self) -> None:
        self._calls.append(f"abort {self._name}")


class FakeHandle:
    """Records the calls that matter to durability, in order."""

    def __init__(self, calls: list[str], fail_barrier: bool) -> None:
        self.calls = calls
        self.fail_barrier = fail_barrier
        self.sizes: dict[str, int] = {}
        self.directory, self.name, self.read_only = "ks/0", "b1", False

    async def add_file(self, filename: str, size_hint: int = -1) -> Writer:
        self.calls.append(f"add {filename}")
        writer = Writer(self.calls, filename)
        self.sizes[filename] = 0
        original = writer.close

        async def close() -> None:
            self.sizes[filename] = writer.size
            await original()

        writer.close = close  # type: ignore[method-assign]
        return writer

    def read_file(self, filename: str) -> AsyncIterator[bytes]:
        raise AssertionError("not read")

    async def file_size(self, filename: str) -> int | None:
        return self.sizes.get(filename)

    async def put_record(self, filename: str, data: bytes) -> None:
        self.calls.append(f"record {filename}")

    async def make_durable(self) -> None:
        self.calls.append("make_durable")
        if self.fail_barrier:
            raise StorageError("cannot sync the filesystem holding /b: Input/output error (EIO)")

    async def end(self) -> None:
        self.calls.append("end")

    async def abort(self) -> None:
        self.calls.append("abort")


class OneObjectEngine:
    name = "builtin"

    async def backup(self, ctx: BackupContext) -> BackupOutcome:
        writer = await ctx.handle.add_file("0")
        await writer.write(b"data")
        await writer.close()
        return BackupOutcome("MariaDB/0-1-5", "", "uuid", "Ver 11.4.0", {"FileEntries": []})


def tablet(tmp_path: Path, handle: FakeHandle) -> Any:
    config = build_config(
        {
            "tablet_alias": "zone1-0000000102",
            "init_keyspace": "ks",
            "init_shard": "0",
            "mycnf_file": str(tmp_path / "my.cnf"),
            "file_backup_storage_root": str(tmp_path / "backups"),
            "verify_after_backup": "off",
        },
        environ={},
    )

    async def start_backup(directory: str, name: str) -> FakeHandle:
        return handle

    storage = SimpleNamespace(start_backup=start_backup, describe=lambda: "fake:")
    return SimpleNamespace(
        config=config,
        alias=config.tablet_alias,
        backup_directory="ks/0",
        storage=storage,
        mycnf=None,
        mysqld=None,
        client=None,
        state_dir=tmp_path,
        limits=RateLimits(),
        summary=SimpleNamespace(manifests=ManifestCache()),
    )


PARAMS = BackupParams(
    concurrency=2,
    allow_primary=True,
    incremental_from_pos="",
    upgrade_safe=False,
    engine="builtin",
    mysql_shutdown_timeout=10,
    init_sql=None,
)


async def test_manifest_is_written_after_the_barrier_and_before_end(tmp_path: Path) -> None:
    calls: list[str] = []
    handle = FakeHandle(calls, fail_barrier=False)
    t = tablet(tmp_path, handle)
    await run_backup(t, PARAMS, OneObjectEngine(), Operation(kind=Kind.BACKUP))
    assert calls == ["add 0", "close 0", "make_durable", "add MANIFEST", "close MANIFEST", "end"]
    assert len(t.summary.manifests) == 1  # known as written: the next listing does not read it back


async def test_a_failed_barrier_aborts_the_backup_without_a_manifest(tmp_path: Path) -> None:
    calls: list[str] = []
    handle = FakeHandle(calls, fail_barrier=True)
    t = tablet(tmp_path, handle)
    with pytest.raises(StorageError, match="EIO"):
        await run_backup(t, PARAMS, OneObjectEngine(), Operation(kind=Kind.BACKUP))
    assert calls == ["add 0", "close 0", "make_durable", "abort"]
    assert len(t.summary.manifests) == 0
