"""The binlog engine: incremental backups made of the server's closed binary logs.

Backup: resolve the starting position (`auto`: the newest complete backup's), rotate so the active file is
never copied, read each closed file's preceding GTID set from its leading events, choose the files with
`select_binlogs`, and store them like the builtin engine stores data files (Base `BinLog`). The MANIFEST
says `BackupMethod: builtin` and `Incremental: true`, as Vitess writes it. Restore puts the files into a
directory for a point-in-time restore to replay.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agent.aio.tasks import in_thread
from agent.binlogs.selection import select_binlogs
from agent.catalog.listing import list_backup_entries
from agent.catalog.manifest import FileBase, IncrementalDetails, Manifest, format_time
from agent.errors import DataLoss, FailedPrecondition
from agent.mysql import replication
from agent.mysql.binlog_headers import (
    BinlogHeader,
    parse_binlog_gtid_pos,
    previous_gtids_from_binlog_events,
    read_binlog_header,
)
from agent.mysql.datafiles import DataFile
from agent.mysql.gtid import Flavor, GTIDSet, Position, parse_gtid_set, parse_position
from agent.mysql.mysqld import ServerFlavor
from agent.tablet import Tablet
from engines.base import BackupContext, BackupOutcome, RestoreContext
from engines.builtin import copy_files, restore_files
from engines.codecs import manifest_compression_fields

MANIFEST_METHOD = "builtin"


def gtid_flavor(flavor: ServerFlavor) -> Flavor:
    return Flavor.MARIADB if flavor is ServerFlavor.MARIADB else Flavor.MYSQL56


class BinlogEngine:
    name = "binlog"

    async def backup(self, ctx: BackupContext) -> BackupOutcome:
        tablet, op = ctx.tablet, ctx.op
        if tablet.mycnf.log_bin is None:
            raise FailedPrecondition(
                f"incremental backups copy binary logs, but {tablet.mycnf.path} does not enable them: "
                "set log_bin (and log_bin_index) in its [mysqld] group and restart mysqld"
            )
        info = await tablet.mysqld.server_info()
        flavor = gtid_flavor(info.flavor)
        requested, from_backup = await self._from_position(ctx, flavor)
        op.info(
            f"incremental backup from position {requested}"
            + (f" (backup {from_backup})" if from_backup else "")
        )
        op.set_phase("rotating binary logs")
        await replication.flush_binary_logs(tablet.client)
        logs = await replication.binary_logs(tablet.client)
        if not logs:
            raise FailedPrecondition(
                "SHOW BINARY LOGS lists no file: is binary logging enabled on this mysqld?"
            )
        active = logs[-1][0]
        executed = await _preceding_gtids(tablet, flavor, active)
        purged = parse_gtid_set(flavor, await replication.purged_gtids(tablet.client, info.flavor))
        op.set_phase("reading binary log headers")
        binlog_dir = tablet.mycnf.log_bin.parent
        headers = await in_thread(_read_headers, binlog_dir, [name for name, _ in logs[:-1]])
        selection = select_binlogs(headers, purged, requested, executed)
        chosen = [h for h in headers if h.name in set(selection.files)]
        op.info(
            f"copying {len(chosen)} binary log(s) {chosen[0].name}..{chosen[-1].name}: "
            f"{selection.from_position} to {selection.to_position}"
        )
        first, last = await in_thread(_with_timestamps, chosen[0], chosen[-1])
        op.set_phase("copying binary logs")
        files = [DataFile(FileBase.BINLOG, h.name, h.path, h.size) for h in chosen]
        entries = await copy_files(ctx, files)
        return BackupOutcome(
            position=str(selection.to_position),
            purged_position=str(Position(flavor, purged)),
            server_uuid=info.server_uuid,
            mysql_version=info.version,
            manifest_fields={
                "BackupMethod": MANIFEST_METHOD,
                "Incremental": True,
                "FromPosition": str(selection.from_position),
                "FromBackup": from_backup,
                "IncrementalDetails": _details(first, last),
                "FileEntries": entries,
                **manifest_compression_fields(tablet.config),
            },
        )

    async def _from_position(self, ctx: BackupContext, flavor: Flavor) -> tuple[Position, str]:
        """The requested position, and the backup it comes from when `auto`."""
        text = ctx.params.incremental_from_pos
        if text != "auto":
            return parse_position(text, default_flavor=flavor), ""
        entries = await list_backup_entries(ctx.tablet.storage, ctx.tablet.backup_directory)
        for entry in reversed(entries):
            m = entry.manifest
            if entry.complete and m is not None and m.position:
                position = parse_position(m.position, default_flavor=flavor)
                if position.flavor is flavor:
                    return position, m.backup_name
        raise FailedPrecondition(
            f"incremental_from_pos=auto: no complete backup in {ctx.tablet.backup_directory} to continue from; "
            "take a full backup first"
        )

    def stored_objects(self, manifest: Manifest) -> list[str]:
        return [str(i) for i in range(len(manifest.file_entries or []))]

    async def restore(self, ctx: RestoreContext) -> None:
        raise FailedPrecondition(
            f"backup {ctx.manifest.backup_name} is incremental: it is applied on top of a full backup by a "
            "point-in-time restore (restore_to_pos or restore_to_timestamp)"
        )

    async def restore_binlogs(self, ctx: RestoreContext, dest: Path) -> list[Path]:
        """Put the backup's binlog files into `dest`; their paths, oldest first."""
        for fe in ctx.manifest.file_entries or []:
            if fe.base != FileBase.BINLOG:
                raise DataLoss(
                    f"incremental backup {ctx.manifest.backup_name} holds a {fe.base} file entry {fe.name!r}: "
                    "only binary logs belong in an incremental backup"
                )
        return await restore_files(ctx, {FileBase.BINLOG: dest})


async def _preceding_gtids(tablet: Tablet, flavor: Flavor, binlog: str) -> GTIDSet:
    """The GTID set that precedes `binlog` (the active file after the rotation), asked of the server."""
    if flavor is Flavor.MARIADB:
        row = await tablet.client.query_one("SELECT BINLOG_GTID_POS(%s, 4) AS pos", (binlog,))
        return parse_binlog_gtid_pos(row["pos"] if row else None)
    return previous_gtids_from_binlog_events(
        await tablet.client.query("SHOW BINLOG EVENTS IN %s LIMIT 3", (binlog,))
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
