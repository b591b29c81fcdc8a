"""The binlog engine: incremental backups made of the server's closed binary logs.

Backup: from the position the orchestrator resolved (`auto` and backup names included), rotate so the
active file is never copied, read each closed file's preceding GTID set from its leading events, choose the files with
`select_binlogs`, and store them like the builtin engine stores data files (Base `BinLog`). The MANIFEST
says `BackupMethod: builtin` and `Incremental: true`, as Vitess writes it. Restore puts the files into a
directory for a point-in-time restore to replay.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.aio.tasks import in_thread
from agent.binlogs.selection import select_binlogs
from agent.catalog.manifest import IncrementalDetails, Manifest, ObjectRecord, format_time
from agent.errors import DataLoss, FailedPrecondition
from agent.mysql import replication
from agent.mysql.binlog_headers import (
    BinlogHeader,
    parse_binlog_gtid_pos,
    previous_gtids_from_binlog_events,
    read_binlog_header,
)
from agent.mysql.client import SqlRunner
from agent.mysql.datafiles import DataFile, FileBase, restore_path
from agent.mysql.gtid import Flavor, GTIDSet
from agent.pipeline.files import FileToStore, store_files
from engines.base import BackupContext, BackupOutcome, RestoreContext
from engines.builtin import entry_records, file_entries, restore_entries

MANIFEST_METHOD = "builtin"


class BinlogEngine:
    name = "binlog"

    async def backup(self, ctx: BackupContext) -> BackupOutcome:
        op = ctx.op
        if ctx.mycnf.log_bin is None:
            raise FailedPrecondition(
                f"incremental backups copy binary logs, but {ctx.mycnf.path} does not enable them: "
                "set log_bin (and log_bin_index) in its [mysqld] group and restart mysqld"
            )
        if ctx.incremental_from is None:
            raise FailedPrecondition("an incremental backup needs the position it starts from")
        info = await ctx.mysqld.server_info()
        requested, from_backup = ctx.incremental_from.position, ctx.incremental_from.from_backup
        op.info(
            f"incremental backup from position {requested}"
            + (f" (backup {from_backup})" if from_backup else "")
        )
        op.set_phase("rotating binary logs")
        await replication.flush_binary_logs(ctx.client)
        logs = await replication.binary_logs(ctx.client)
        if not logs:
            raise FailedPrecondition(
                "SHOW BINARY LOGS lists no file: is binary logging enabled on this mysqld?"
            )
        active = logs[-1][0]
        executed = await _preceding_gtids(ctx.client, info.flavor, active)
        purged = await replication.purged_position(ctx.client, info.flavor)
        op.set_phase("reading binary log headers")
        binlog_dir = ctx.mycnf.log_bin.parent
        headers = await in_thread(_read_headers, binlog_dir, [name for name, _ in logs[:-1]])
        selection = select_binlogs(headers, purged.gtids, requested, executed)
        chosen = [h for h in headers if h.name in set(selection.files)]
        op.info(
            f"copying {len(chosen)} binary log(s) {chosen[0].name}..{chosen[-1].name}: "
            f"{selection.from_position} to {selection.to_position}"
        )
        first, last = await in_thread(_with_timestamps, chosen[0], chosen[-1])
        op.set_phase("copying binary logs")
        files = [DataFile(FileBase.BINLOG, h.name, h.path, h.size) for h in chosen]
        stored = await store_files(
            ctx.handle,
            [FileToStore(str(i), f.name, f.path, f.size) for i, f in enumerate(files)],
            ctx.codec,
            op,
            ctx.params.concurrency,
            cipher=ctx.cipher,
            limits=ctx.limits,
        )
        return BackupOutcome(
            position=str(selection.to_position),
            purged_position=str(purged),
            server_uuid=info.server_uuid,
            mysql_version=info.vitess_version,
            manifest_fields={
                "BackupMethod": MANIFEST_METHOD,
                "Incremental": True,
                "FromPosition": str(selection.from_position),
                "FromBackup": from_backup,
                "IncrementalDetails": _details(first, last),
                "FileEntries": file_entries(files, stored),
            },
        )

    def stored_objects(self, manifest: Manifest) -> list[ObjectRecord]:
        return entry_records(manifest)

    def needed_tools(self, manifest: Manifest) -> list[str]:
        return []

    async def restore(self, ctx: RestoreContext) -> None:
        """Put the backup's binlog files into the targets' binlog directory (where a point-in-time restore
        replays them from: `binlog_files`)."""
        if ctx.targets.binlog_dir is None:
            raise FailedPrecondition(
                f"backup {ctx.manifest.backup_name} is incremental: it is restored into a binlog directory "
                "by a point-in-time restore (restore_to_pos or restore_to_timestamp)"
            )
        for fe in ctx.manifest.file_entries or []:
            if fe.base != FileBase.BINLOG:
                raise DataLoss(
                    f"incremental backup {ctx.manifest.backup_name} holds a {fe.base} file entry {fe.name!r}: "
                    "only binary logs belong in an incremental backup"
                )
        await restore_entries(ctx)


def binlog_files(manifest: Manifest, directory: Path) -> list[Path]:
    """Where `BinlogEngine.restore` put an incremental backup's binlogs, oldest first."""
    dirs = {FileBase.BINLOG: directory}
    return [restore_path(dirs, fe.base, fe.parent_path, fe.name) for fe in manifest.file_entries or []]


async def _preceding_gtids(client: SqlRunner, flavor: Flavor, binlog: str) -> GTIDSet:
    """The GTID set that precedes `binlog` (the active file after the rotation), asked of the server."""
    if flavor is Flavor.MARIADB:
        row = await client.query_one("SELECT BINLOG_GTID_POS(%s, 4) AS pos", (binlog,))
        return parse_binlog_gtid_pos(row["pos"] if row else None)
    return previous_gtids_from_binlog_events(
        await client.query("SHOW BINLOG EVENTS IN %s LIMIT 3", (binlog,))
    )


def _read_headers(directory: Path, names: list[str]) -> list[BinlogHeader]:
    return [read_binlog_header(directory / name, walk=False) for name in names]


def _with_timestamps(first: BinlogHeader, last: BinlogHeader) -> tuple[BinlogHeader, BinlogHeader]:
    return read_binlog_header(first.path), read_binlog_header(last.path)


def _details(first: BinlogHeader, last: BinlogHeader) -> IncrementalDetails:
    def ts(value: int | None) -> str:
        return format_time(datetime.fromtimestamp(value, UTC)) if value else ""

    return IncrementalDetails(
        FirstTimestamp=ts(first.first_timestamp),
        FirstTimestampBinlog=first.name if first.first_timestamp else "",
        LastTimestamp=ts(last.last_timestamp),
        LastTimestampBinlog=last.name if last.last_timestamp else "",
    )
