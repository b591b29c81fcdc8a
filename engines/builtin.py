"""The builtin engine: an offline copy of the stopped mysqld's files, each compressed and hashed.

Backup: record replication and read-only state, stop replication, capture the position, shut mysqld down
cleanly, copy every file in parallel, then start mysqld and put replication back whatever happened.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.aio.localfiles import fsync_path
from agent.aio.tasks import for_each, in_thread
from agent.catalog.manifest import FileBase, FileEntry, Manifest
from agent.mysql import replication
from agent.mysql.datafiles import DataFile, base_directories, find_files_to_backup, restore_path
from agent.mysql.mysqld import ServerFlavor
from agent.operations import Operation
from agent.pipeline.compression import Codec
from agent.pipeline.load import restore
from agent.pipeline.progress import FileProgress
from agent.pipeline.store import file_chunks, store
from agent.pipeline.workers import Workers
from agent.statedir.crash_records import OfflineRecord, clear_offline_record, write_offline_record
from agent.tablet import Tablet
from engines.base import BackupContext, BackupOutcome, RestoreContext
from engines.codecs import codec_for_config, codec_for_manifest, manifest_compression_fields


def flavor_prefix(flavor: ServerFlavor) -> str:
    return "MariaDB/" if flavor is ServerFlavor.MARIADB else "MySQL56/"


async def restart_mysqld(tablet: Tablet, snap: replication.ReplicationSnapshot, op: Operation) -> None:
    """Start mysqld and put replication/read-only back as recorded. Runs to the end even if cancelled."""
    task = asyncio.ensure_future(_restart(tablet, snap, op))
    while True:
        try:
            await asyncio.shield(task)
            return
        except asyncio.CancelledError:
            if task.done():
                raise
            op.warning("still restarting mysqld: cancellation waits for it")


async def _restart(tablet: Tablet, snap: replication.ReplicationSnapshot, op: Operation) -> None:
    if not await tablet.mysqld.is_running():
        op.set_phase("starting mysqld")
        await tablet.mysqld.start(tablet.config.mysqld_start_timeout)
    info = await tablet.mysqld.server_info()
    await replication.restore_snapshot(tablet.client, info.flavor, snap)
    clear_offline_record(tablet.state_dir)
    op.info("mysqld is running and replication is as before the backup")


class BuiltinEngine:
    name = "builtin"

    async def backup(self, ctx: BackupContext) -> BackupOutcome:
        tablet, op, params = ctx.tablet, ctx.op, ctx.params
        info = await tablet.mysqld.server_info()
        snap = await replication.snapshot(tablet.client, info.flavor)
        record = OfflineRecord(
            operation_id=op.id,
            backup_directory=ctx.handle.directory,
            backup_name=ctx.handle.name,
            io_running=snap.io_running,
            sql_running=snap.sql_running,
            read_only=snap.read_only.read_only,
            super_read_only=snap.read_only.super_read_only,
        )
        await in_thread(write_offline_record, tablet.state_dir, record)
        try:
            op.set_phase("stopping replication")
            await replication.stop_replication(tablet.client, info.flavor)
            prefix = flavor_prefix(info.flavor)
            position = prefix + await replication.executed_gtids(tablet.client, info.flavor)
            purged = prefix + await replication.purged_gtids(tablet.client, info.flavor)
            op.info(f"replication stopped at position {position}")
            op.set_phase("shutting down mysqld")
            if params.upgrade_safe:
                op.info("upgrade_safe: slow shutdown (innodb_fast_shutdown=0)")
            await tablet.mysqld.shutdown(params.mysql_shutdown_timeout, slow=params.upgrade_safe)
            files = await in_thread(find_files_to_backup, tablet.mycnf, (tablet.state_dir,))
            op.set_phase("copying files")
            entries = await copy_files(ctx, files)
        finally:
            await restart_mysqld(tablet, snap, op)
        codec_fields = manifest_compression_fields(tablet.config)
        return BackupOutcome(
            position=position,
            purged_position=purged,
            server_uuid=info.server_uuid,
            mysql_version=info.version,
            manifest_fields={"FileEntries": entries, **codec_fields},
        )

    def stored_objects(self, manifest: Manifest) -> list[str]:
        return [str(i) for i in range(len(manifest.file_entries or []))]

    async def restore(self, ctx: RestoreContext) -> None:
        await restore_files(ctx, base_directories(ctx.tablet.mycnf))


def _make_parent(dest: Path) -> None:
    dest.parent.mkdir(mode=0o750, parents=True, exist_ok=True)


async def _fsync(_: int, path: Path) -> None:
    await in_thread(fsync_path, path)


async def copy_files(ctx: BackupContext, files: list[DataFile]) -> list[FileEntry]:
    """Store each file as object `"<i>"` (compressed, hashed), `concurrency` at a time; the FileEntries."""
    op = ctx.op
    total = sum(f.size for f in files)
    op.add_total(total)
    op.info(f"copying {len(files)} files ({total / 2**20:.1f} MiB) with concurrency {ctx.params.concurrency}")
    entries: list[FileEntry | None] = [None] * len(files)
    codec = codec_for_config(ctx.tablet.config)
    # One set of compression threads for all files: the CPUs stay busy to the end of the
    # biggest file, and memory does not grow with the concurrency.
    async with Workers() as workers:

        async def copy(i: int, f: DataFile) -> None:
            entries[i] = await _copy_one(ctx, codec, workers, i, f)

        await for_each(files, copy, ctx.params.concurrency)
    return [e for e in entries if e is not None]


async def _copy_one(ctx: BackupContext, codec: Codec, workers: Workers, index: int, f: DataFile) -> FileEntry:
    writer = await ctx.handle.add_file(str(index), f.size)
    progress = FileProgress(ctx.op, "backing up", f.name, f.size)
    try:
        stored = await store(file_chunks(f.path), writer, codec, on_progress=progress, workers=workers)
    except BaseException:
        await writer.abort()
        raise
    return FileEntry(
        Base=f.base,
        Name=f.name,
        Hash=stored.crc32_hex,
        Sha256=stored.sha256_hex,
        Size=stored.size,
        StoredSize=stored.stored_size,
    )


async def restore_files(ctx: RestoreContext, dirs: dict[FileBase, Path]) -> list[Path]:
    """Put every FileEntry of the backup back under its base directory in `dirs`, check its hashes,
    fsync it; the restored paths in FileEntries order."""
    manifest = ctx.manifest
    entries = manifest.file_entries or []
    targets = [restore_path(dirs, fe.base, fe.parent_path, fe.name) for fe in entries]
    codec = codec_for_manifest(manifest, ctx.tablet.config)
    sizes = await asyncio.gather(*(ctx.handle.file_size(str(i)) for i in range(len(entries))))
    ctx.op.add_total(sum(fe.size or s or 0 for fe, s in zip(entries, sizes, strict=True)))
    ctx.op.info(f"restoring {len(entries)} files with concurrency {ctx.concurrency}")
    order = sorted(range(len(entries)), key=lambda i: sizes[i] or 0, reverse=True)

    async def restore_one(_: int, i: int) -> None:
        fe, dest = entries[i], targets[i]
        await in_thread(_make_parent, dest)
        progress = FileProgress(ctx.op, "restoring", fe.name, fe.size or sizes[i] or 0)
        await restore(
            ctx.handle.read_file(str(i)),
            codec,
            dest,
            expected_crc32_hex=fe.hash or None,
            expected_sha256_hex=fe.sha256,
            name=fe.name,
            on_progress=progress,
            sync=False,
            workers=workers,
        )

    async with Workers() as workers:  # buffers shared by the files
        await for_each(order, restore_one, ctx.concurrency)
    # fsync'd together at the end rather than one by one: the journal commits of many small
    # files are shared, and big files were written back while being restored.
    ctx.op.info(f"syncing {len(targets)} restored files to disk")
    directories = sorted({d for t in targets for d in (t.parent, t.parent.parent)})
    await for_each([*targets, *directories], _fsync, ctx.concurrency)
    return targets
