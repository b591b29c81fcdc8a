"""The builtin engine: an offline copy of the stopped mysqld's files, each compressed and hashed.

Backup: record replication and read-only state, stop replication, capture the position, shut mysqld down
cleanly, copy every file in parallel, then start mysqld and put replication back whatever happened (to
the end, even when the backup is cancelled meanwhile).
Restore: every FileEntry into its base directory among the targets, verified.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.aio.tasks import complete, in_thread
from agent.catalog.manifest import FileEntry, Manifest, ObjectRecord
from agent.mysql import replication
from agent.mysql.datafiles import DataFile, find_files_to_backup, restore_path
from agent.pipeline.digests import StoredFile
from agent.pipeline.files import FileToRestore, FileToStore, restore_files, store_files
from agent.statedir.crash_records import OfflineRecord, clear_offline_record, write_offline_record
from engines.base import BackupContext, BackupOutcome, RestoreContext, stored_path


class BuiltinEngine:
    name = "builtin"

    def __init__(self, mysqld_start_timeout: float) -> None:
        self.start_timeout = mysqld_start_timeout

    async def backup(self, ctx: BackupContext) -> BackupOutcome:
        op, params = ctx.op, ctx.params
        info = await ctx.mysqld.server_info()
        snap = await replication.snapshot(ctx.client, info.flavor)
        record = OfflineRecord(
            operation_id=op.id,
            backup_directory=ctx.handle.directory,
            backup_name=ctx.handle.name,
            io_running=snap.io_running,
            sql_running=snap.sql_running,
            read_only=snap.read_only.read_only,
            super_read_only=snap.read_only.super_read_only,
        )
        await in_thread(write_offline_record, ctx.state_dir, record)
        try:
            op.set_phase("stopping replication")
            await replication.stop_replication(ctx.client, info.flavor)
            position = await replication.executed_position(ctx.client, info.flavor)
            purged = await replication.purged_position(ctx.client, info.flavor)
            op.info(f"replication stopped at position {position}")
            op.set_phase("shutting down mysqld")
            if params.upgrade_safe:
                op.info("upgrade_safe: slow shutdown (innodb_fast_shutdown=0)")
            await ctx.mysqld.shutdown(params.mysql_shutdown_timeout, slow=params.upgrade_safe)
            files = await in_thread(find_files_to_backup, ctx.mycnf, (ctx.state_dir,))
            op.set_phase("copying files")
            stored = await store_files(
                ctx.handle,
                [FileToStore(str(i), f.name, f.path, f.size) for i, f in enumerate(files)],
                ctx.codec,
                op,
                params.concurrency,
                cipher=ctx.cipher,
                limits=ctx.limits,
            )
        finally:
            await complete(self._restart(ctx, snap))
        return BackupOutcome(
            position=str(position),
            purged_position=str(purged),
            server_uuid=info.server_uuid,
            mysql_version=info.vitess_version,
            manifest_fields={"FileEntries": file_entries(files, stored)},
        )

    async def _restart(self, ctx: BackupContext, snap: replication.ReplicationSnapshot) -> None:
        """Start mysqld and put replication/read-only back as recorded."""
        if not await ctx.mysqld.is_running():
            ctx.op.set_phase("starting mysqld")
            await ctx.mysqld.start(self.start_timeout)
        info = await ctx.mysqld.server_info()
        await replication.restore_snapshot(ctx.client, info.flavor, snap)
        await in_thread(clear_offline_record, ctx.state_dir)
        ctx.op.info("mysqld is running and replication is as before the backup")

    def stored_objects(self, manifest: Manifest) -> list[ObjectRecord]:
        return entry_records(manifest)

    def needed_tools(self, manifest: Manifest) -> list[str]:
        return []

    async def restore(self, ctx: RestoreContext) -> None:
        await restore_entries(ctx)


def entry_records(manifest: Manifest) -> list[ObjectRecord]:
    """FileEntry `i` is object `"<i>"`."""
    return [
        ObjectRecord(str(i), fe.name, fe.size, fe.stored_size, fe.hash or None, fe.sha256)
        for i, fe in enumerate(manifest.file_entries or [])
    ]


def file_entries(files: Sequence[DataFile], stored: Sequence[StoredFile]) -> list[FileEntry]:
    return [
        FileEntry(
            Base=f.base,
            Name=f.name,
            Hash=s.crc32_hex,
            Sha256=s.sha256_hex,
            Size=s.size,
            StoredSize=s.stored_size,
        )
        for f, s in zip(files, stored, strict=True)
    ]


async def restore_entries(ctx: RestoreContext) -> None:
    """Put every FileEntry of the backup back under its base directory among the targets."""
    dirs = ctx.targets.by_base()
    objects = [
        FileToRestore(
            object_name=str(i),
            name=fe.name,
            where=stored_path(ctx.handle, str(i), fe.name),
            path=restore_path(dirs, fe.base, fe.parent_path, fe.name),
            size=fe.size,
            crc32_hex=fe.hash or None,
            sha256_hex=fe.sha256,
        )
        for i, fe in enumerate(ctx.manifest.file_entries or [])
    ]
    await restore_files(
        ctx.handle, objects, ctx.codec, ctx.op, ctx.concurrency, cipher=ctx.cipher, limits=ctx.limits
    )
