"""The xtrabackup engine: online full backups by `xtrabackup --backup --stream` (or MariaDB's mariabackup).

Backup: the tool's stdout goes through compression and hashing straight into storage (never a local
file), in one object or split round-robin into N stripes, each with its own compressor; its stderr
becomes operation events as it comes. The position is the `GTID of the last change` it reports, and
only its `completed OK!` line makes a run count. A replica is backed up with `--slave-info
--safe-slave-backup`; since a dying tool leaves the SQL thread stopped, the agent starts it again
afterwards (and, should the agent itself die, at its next start, from the crash record).

Restore: see `engines.xtrabackup_restore`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent import AGENT_VERSION
from agent.aio.localfiles import FileChunks
from agent.aio.pipes import grow_pipe, stop_first_on_cancel
from agent.aio.procs import ExecError, ProcessError, format_argv, spawn
from agent.aio.tasks import complete, in_thread
from agent.catalog.manifest import AgentInfo, Manifest, ObjectRecord, StoredObject
from agent.config import AgentConfig
from agent.errors import AgentError, FailedPrecondition, InvalidArgument
from agent.mysql import replication
from agent.mysql.datafiles import find_files_to_backup
from agent.mysql.gtid import Flavor, parse_position
from agent.pipeline.compression import Codec
from agent.pipeline.digests import StoredFile
from agent.pipeline.progress import FileProgress
from agent.pipeline.store import CHUNK_SIZE, store, store_striped
from agent.pipeline.workers import CODEC_NICENESS
from agent.statedir.crash_records import OfflineRecord, clear_offline_record, write_offline_record
from engines.base import BackupContext, BackupOutcome, RestoreContext
from engines.xtrabackup_layout import Layout, layout_of, object_records
from engines.xtrabackup_restore import restore_backup
from engines.xtrabackup_tool import (
    Settings,
    ToolOutput,
    backup_argv,
    child_env,
    find_tool,
    find_tools,
    fresh_dir,
    line_logger,
    password_for,
    settings_from,
    write_option_file,
)

WORK_PREFIX = "xtrabackup-"  # <state_dir>/xtrabackup-<operation>: --target-dir and the password file


@dataclass(frozen=True)
class _BackupRun:
    settings: Settings
    tool: str
    layout: Layout
    codec: Codec
    work: Path
    estimate: int  # bytes expected in the stream, for progress
    replica: bool


class XtrabackupEngine:
    name = "xtrabackup"

    def __init__(self, config: AgentConfig) -> None:
        self.config = config

    async def backup(self, ctx: BackupContext) -> BackupOutcome:
        op, config, codec = ctx.op, self.config, ctx.codec
        settings = settings_from(config)
        info = await ctx.mysqld.server_info()
        status = await replication.replication_status(ctx.client, info.flavor)
        snap = await replication.snapshot(ctx.client, info.flavor)
        files = await in_thread(find_files_to_backup, ctx.mycnf, (ctx.state_dir,))
        run = _BackupRun(
            settings=settings,
            tool=find_tool(config.xtrabackup_binary, config.xtrabackup_root_path, "backup"),
            layout=Layout(
                file_name=f"backup.{settings.stream_mode}{codec.extension}",
                stream_mode=settings.stream_mode,
                stripes=settings.stripes,
                block_size=settings.stripe_block_size,
            ),
            codec=codec,
            work=ctx.state_dir / f"{WORK_PREFIX}{op.id}",
            estimate=sum(f.size for f in files),
            replica=status.configured,
        )
        # The record lets the next agent start put replication back if this one dies mid-backup.
        await in_thread(write_offline_record, ctx.state_dir, _crash_record(ctx, snap))
        try:
            output, stored = await self._stream(ctx, run)
        finally:
            await complete(_put_replication_back(ctx, info.flavor, snap))
            await complete(in_thread(shutil.rmtree, run.work, True))
        position = _position(output, info.flavor)
        op.info(f"xtrabackup reported binlog {output.binlog_file}:{output.binlog_pos}, position {position}")
        objects = [
            StoredObject(
                Name=n, Size=s.size, StoredSize=s.stored_size, Crc32=s.crc32_hex, Sha256=s.sha256_hex
            )
            for n, s in zip(run.layout.object_names, stored, strict=True)
        ]
        return BackupOutcome(
            position=position,
            purged_position=str(await replication.purged_position(ctx.client, info.flavor)),
            server_uuid=info.server_uuid,
            mysql_version=info.vitess_version,
            manifest_fields={
                "UpgradeSafe": True,  # as Vitess writes it for xtrabackup
                "FileName": run.layout.file_name,
                "ExtraCommandLineParams": config.xtrabackup_backup_flags,
                "StreamMode": str(run.layout.stream_mode),
                "NumStripes": run.layout.stripes,
                "StripeBlockSize": run.layout.block_size,
                "TabletAgent": AgentInfo(Version=AGENT_VERSION, Objects=objects),
            },
        )

    async def _stream(self, ctx: BackupContext, run: _BackupRun) -> tuple[ToolOutput, list[StoredFile]]:
        op, layout = ctx.op, run.layout
        await in_thread(_prepare_work_dir, run.work)
        defaults_file = ctx.mycnf.path
        password = password_for(run.settings.user, ctx.client.credentials, os.environ)
        if password is not None:
            defaults_file = run.work / "xtrabackup.cnf"
            await in_thread(write_option_file, defaults_file, ctx.mycnf.path, password)
        argv = backup_argv(
            run.tool,
            defaults_file,
            run.work / "target",
            run.settings,
            socket=ctx.mycnf.socket,
            replica=run.replica,
            max_rate=ctx.limits.disk.rate if ctx.limits is not None else 0,
        )
        op.set_phase("streaming xtrabackup")
        op.info(
            f"running {format_argv(argv)} into {', '.join(layout.object_names)}"
            + (" (a replica: its SQL thread stops while xtrabackup copies)" if run.replica else "")
        )
        output = ToolOutput()
        progress = FileProgress(op, "streaming", layout.file_name, run.estimate)
        op.add_total(run.estimate)
        read_end, write_end = os.pipe()
        source = FileChunks.from_pipe(read_end, CHUNK_SIZE, f"the output of {run.tool}")
        try:
            grow_pipe(write_end)
            async with spawn(
                argv,
                stdout=write_end,
                env=child_env(os.environ),
                on_stderr_line=line_logger(op, output, "xtrabackup"),
                niceness=CODEC_NICENESS,  # like the compression threads: mysqld comes first
                io_class=ctx.limits.io_class if ctx.limits is not None else "",
            ) as proc:
                os.close(write_end)  # the child holds it now: its exit is our end of stream
                write_end = -1
                stored = await stop_first_on_cancel(
                    proc, _store_stream(ctx, source, layout, run.codec, progress)
                )
        except ExecError as e:
            raise FailedPrecondition(f"unable to start backup: {e}") from None
        except ProcessError as e:
            raise output.failure(e) from None
        finally:
            source.close()
            if write_end >= 0:
                os.close(write_end)
        output.check_completed(proc.argv, proc.stderr_tail)
        return output, stored

    def stored_objects(self, manifest: Manifest) -> list[ObjectRecord]:
        records = object_records(manifest, layout_of(manifest))
        return [
            ObjectRecord(name, name)
            if r is None
            else ObjectRecord(name, name, r.size, r.stored_size, r.crc32, r.sha256)
            for name, r in records.items()
        ]

    def needed_tools(self, manifest: Manifest) -> list[str]:
        tools = find_tools(self.config, layout_of(manifest).stream_mode)
        return [tools.xtrabackup, tools.xbstream]

    async def restore(self, ctx: RestoreContext) -> None:
        await restore_backup(ctx, self.config)


def _prepare_work_dir(work: Path) -> None:
    """A fresh work directory; earlier ones were left by a crash (and may hold a password file)."""
    for stale in work.parent.glob(f"{WORK_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    fresh_dir(work, "target")


def _crash_record(ctx: BackupContext, snap: replication.ReplicationSnapshot) -> OfflineRecord:
    return OfflineRecord(
        operation_id=ctx.op.id,
        backup_directory=ctx.handle.directory,
        backup_name=ctx.handle.name,
        io_running=snap.io_running,
        sql_running=snap.sql_running,
        read_only=snap.read_only.read_only,
        super_read_only=snap.read_only.super_read_only,
    )


def _position(output: ToolOutput, flavor: Flavor) -> str:
    if output.gtids is None:
        raise AgentError(
            'couldn\'t find replication position in xtrabackup stderr output (no "GTID of the last change" '
            "line): enable log_bin (and GTIDs) on this server so backups have a position"
        )
    try:
        return str(parse_position(output.gtids, default_flavor=flavor))
    except InvalidArgument as e:
        raise AgentError(f"xtrabackup reported a position this agent cannot read: {e}") from None


async def _store_stream(
    ctx: BackupContext, source: FileChunks, layout: Layout, codec: Codec, progress: FileProgress
) -> list[StoredFile]:
    names = layout.object_names
    writers = [await ctx.handle.add_file(name) for name in names]
    sealers = [ctx.cipher.sealer(name) for name in names] if ctx.cipher is not None else None
    if layout.stripes == 0:
        sealer = sealers[0] if sealers is not None else None
        return [
            await store(source, writers[0], codec, on_progress=progress, sealer=sealer, limits=ctx.limits)
        ]
    return await store_striped(
        source,
        writers,
        codec,
        block_size=layout.block_size,
        on_progress=progress,
        sealers=sealers,
        limits=ctx.limits,
    )


async def _put_replication_back(
    ctx: BackupContext, flavor: Flavor, snap: replication.ReplicationSnapshot
) -> None:
    """Start the replication threads that ran before the backup and are stopped now; never raises."""
    op = ctx.op
    try:
        status = await replication.replication_status(ctx.client, flavor)
        io = snap.io_running and not status.io_started
        sql = snap.sql_running and not status.sql_running
        if io or sql:
            threads = " and ".join(name for name, stopped in (("IO", io), ("SQL", sql)) if stopped)
            op.warning(
                f"the replica's {threads} thread was left stopped (xtrabackup's --safe-slave-backup does not "
                "restart it when the tool dies): starting it again"
            )
            await replication.start_replication(ctx.client, flavor, io=io, sql=sql)
        await in_thread(clear_offline_record, ctx.state_dir)
    except AgentError as e:
        op.warning(
            f"could not check replication after xtrabackup: {e}; the agent repairs it at its next start"
        )
