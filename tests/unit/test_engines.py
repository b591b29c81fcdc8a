"""Engines work from their narrow inputs alone: a restore fills the directories it is given from a backup
handle, with no tablet, no mysqld and no protobuf around."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.catalog.manifest import Manifest
from agent.errors import DataLoss
from agent.mysql.datafiles import DataFile, FileBase
from agent.mysql.mycnf import read_mycnf
from agent.operations import Kind, Operation
from agent.pipeline.compression import CodecOptions, get_codec
from agent.pipeline.files import FileToStore, store_files
from agent.storage.file import FileBackupStorage
from engines.base import RestoreContext, RestoreTargets
from engines.binlog import BinlogEngine, binlog_files
from engines.builtin import BuiltinEngine, file_entries


async def make_backup(tmp_path: Path, files: list[DataFile]) -> tuple[FileBackupStorage, Manifest]:
    storage = FileBackupStorage(tmp_path / "backups")
    handle = await storage.start_backup("ks/0", "2026-01-01.000000.zone1-0000000001")
    codec = get_codec("zstd", CodecOptions())
    op = Operation(kind=Kind.BACKUP)
    stored = await store_files(
        handle, [FileToStore(str(i), f.name, f.path, f.size) for i, f in enumerate(files)], codec, op, 2
    )
    await handle.end()
    manifest = Manifest(
        BackupName=handle.name, CompressionEngine="zstd", FileEntries=file_entries(files, stored)
    )
    return storage, manifest


def data_file(root: Path, base: FileBase, name: str, size: int) -> DataFile:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size // 2) + b"x" * (size - size // 2))
    return DataFile(base, name, path, size)


def context(
    tmp_path: Path, storage_handle: object, manifest: Manifest, targets: RestoreTargets
) -> RestoreContext:
    cnf = tmp_path / "my.cnf"
    cnf.write_text(f"[mysqld]\ndatadir={tmp_path / 'live'}\n")
    return RestoreContext(
        mycnf=read_mycnf(cnf),
        targets=targets,
        work_dir=tmp_path / "work",
        codec=get_codec("zstd", CodecOptions()),
        op=Operation(kind=Kind.RESTORE),
        handle=storage_handle,  # type: ignore[arg-type]
        manifest=manifest,
        concurrency=2,
    )


async def test_builtin_restore_fills_the_directories_it_is_given(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = [
        data_file(src, FileBase.DATA, "db/t.ibd", 300_000),
        data_file(src, FileBase.INNODB_DATA, "ibdata1", 100_000),
        data_file(src, FileBase.INNODB_LOG, "ib_logfile0", 50_000),
    ]
    storage, manifest = await make_backup(tmp_path, files)
    (handle,) = await storage.list_backups("ks/0")
    staged = tmp_path / "staged"
    targets = RestoreTargets(staged / "data", staged / "innodb", staged / "logs", staged / "data", None)
    await BuiltinEngine(60).restore(context(tmp_path, handle, manifest, targets))
    assert (staged / "data" / "db" / "t.ibd").read_bytes() == files[0].path.read_bytes()
    assert (staged / "innodb" / "ibdata1").read_bytes() == files[1].path.read_bytes()
    assert (staged / "logs" / "ib_logfile0").read_bytes() == files[2].path.read_bytes()
    assert not (tmp_path / "live").exists(), "nothing outside the targets was touched"


async def test_builtin_restore_names_the_damaged_object(tmp_path: Path) -> None:
    files = [data_file(tmp_path / "src", FileBase.DATA, "db/t.ibd", 200_000)]
    storage, manifest = await make_backup(tmp_path, files)
    obj = tmp_path / "backups" / "ks" / "0" / manifest.backup_name / "0"
    data = bytearray(obj.read_bytes())
    data[100] ^= 1
    obj.write_bytes(bytes(data))
    (handle,) = await storage.list_backups("ks/0")
    targets = RestoreTargets(*(tmp_path / "staged" for _ in range(4)), None)  # type: ignore[arg-type]
    with pytest.raises(DataLoss, match=f"ks/0/{manifest.backup_name}/0 \\(db/t.ibd\\)"):
        await BuiltinEngine(60).restore(context(tmp_path, handle, manifest, targets))


async def test_binlog_restore_puts_only_binlogs_into_the_binlog_directory(tmp_path: Path) -> None:
    files = [data_file(tmp_path / "src", FileBase.BINLOG, f"binlog.00000{i}", 10_000) for i in (1, 2)]
    storage, manifest = await make_backup(tmp_path, files)
    (handle,) = await storage.list_backups("ks/0")
    dest = tmp_path / "binlogs"
    dest.mkdir()
    await BinlogEngine().restore(context(tmp_path, handle, manifest, RestoreTargets.binlogs_into(dest)))
    restored = binlog_files(manifest, dest)
    assert [p.name for p in restored] == ["binlog.000001", "binlog.000002"]
    assert restored[0].read_bytes() == files[0].path.read_bytes()
    bad = manifest.model_copy(
        update={"file_entries": [manifest.file_entries[0].model_copy(update={"base": FileBase.DATA})]}
    )  # type: ignore[index]
    with pytest.raises(DataLoss, match="only binary logs"):
        await BinlogEngine().restore(context(tmp_path, handle, bad, RestoreTargets.binlogs_into(dest)))
