"""Restore orchestration: choose the backup, guard the datadir with a sentinel, let the engine the MANIFEST
names put the files back, start mysqld and set its GTID state."""

from __future__ import annotations

import asyncio

from agent.catalog import BackupEntry, list_backup_entries, newest_complete_full
from agent.config import TabletType
from agent.crash_state import clear_restore_sentinel, write_restore_sentinel
from agent.errors import DataLoss, FailedPrecondition, Unimplemented
from agent.manifest import Manifest
from agent.mysql import replication
from agent.mysql.gtid import parse_position
from agent.mysql.master_info import configure_source, read_master_info
from agent.operations import Kind, Operation
from agent.procs import in_thread
from agent.requests import RestoreParams
from agent.storage.base import BackupHandle
from agent.tablet import Tablet
from agent.tablet_type import effective_tablet_type
from engines import engine_for_manifest
from engines.base import RestoreContext
from engines.datafiles import clear_binlogs, clear_directory


async def start_restore(tablet: Tablet, params: RestoreParams) -> Operation:
    if await effective_tablet_type(tablet) is TabletType.PRIMARY and not params.dry_run:
        raise FailedPrecondition(
            f"refusing to restore onto tablet {tablet.alias}: it is a PRIMARY (its mysqld has no replication "
            "source and is writable, or --init_tablet_type=PRIMARY). Restore onto a replica, or make this "
            "mysqld read-only / a replica first"
        )
    if params.point_in_time:
        raise Unimplemented("point-in-time restore is not available yet")

    async def work(op: Operation) -> None:
        await run_restore(tablet, params, op)

    return tablet.runner.start(Kind.RESTORE, work)


async def choose_backup(tablet: Tablet, params: RestoreParams, op: Operation) -> BackupEntry:
    directory = tablet.backup_directory
    entries = await list_backup_entries(tablet.storage, directory)
    for entry in entries:
        if not entry.complete:
            op.warning(f"skipping incomplete backup {entry.handle.name}: {entry.problem or 'no MANIFEST'}")
    chosen = newest_complete_full(
        entries, before=params.backup_time, allowed_engines=params.allowed_engines or None
    )
    return chosen


async def run_restore(tablet: Tablet, params: RestoreParams, op: Operation) -> None:
    config = tablet.config
    op.set_phase("choosing backup")
    chosen = await choose_backup(tablet, params, op)
    manifest, handle = chosen.manifest, chosen.handle
    assert manifest is not None
    engine = engine_for_manifest(manifest)
    op.backup_name, op.engine = manifest.backup_name, engine.name
    op.info(
        f"restore plan: {engine.name} backup {tablet.backup_directory}/{manifest.backup_name} taken "
        f"{manifest.backup_time} on {manifest.tablet_alias or 'unknown tablet'} at position {manifest.position}"
    )
    await check_objects(handle, manifest, engine.stored_objects(manifest))
    if params.dry_run:
        op.info("dry run: the backup's objects are all present; nothing was changed")
        return
    source = await in_thread(read_master_info, tablet.mycnf.datadir / "master.info")
    await in_thread(write_restore_sentinel, tablet.state_dir, manifest.backup_name)
    if await tablet.mysqld.is_running():
        op.set_phase("stopping mysqld")
        await tablet.mysqld.shutdown(config.mysql_shutdown_timeout)
    op.set_phase("clearing data directories")
    await in_thread(_clear_tablet_dirs, tablet)
    op.set_phase("restoring files")
    await engine.restore(
        RestoreContext(tablet=tablet, op=op, handle=handle, manifest=manifest, concurrency=config.concurrency)
    )
    op.set_phase("starting mysqld")
    await tablet.mysqld.start(config.mysqld_start_timeout)
    info = await tablet.mysqld.server_info()
    position = parse_position(manifest.position) if manifest.position else None
    if position is not None and not position.is_empty():
        await replication.set_gtid_state(tablet.client, info.flavor, str(position.gtids))
    if source is not None:
        await configure_source(tablet.client, source)
        op.info(f"replication source {source.host}:{source.port} configured again (not started)")
    # A restored tablet is a replica-to-be: it must not take writes until someone points it somewhere.
    await replication.set_read_only(
        tablet.client, replication.ReadOnlyState(read_only=True, super_read_only=True)
    )
    await in_thread(clear_restore_sentinel, tablet.state_dir)
    tablet.restored_to = f"backup {manifest.backup_name} at position {manifest.position}"
    op.info(
        f"restore complete: the tablet holds backup {manifest.backup_name} at position {manifest.position}"
    )


async def check_objects(handle: BackupHandle, manifest: Manifest, names: list[str]) -> None:
    """Refuse a backup with missing objects before the datadir is touched."""
    sizes = await asyncio.gather(*(handle.file_size(name) for name in names))
    missing = [name for name, size in zip(names, sizes, strict=True) if size is None]
    if missing:
        raise DataLoss(
            f"backup {manifest.backup_name} is missing stored object(s) {', '.join(missing[:10])}: it cannot "
            "be restored; choose another backup (RestoreFromBackup backup_time) or remove it"
        )


def _clear_tablet_dirs(tablet: Tablet) -> None:
    cnf = tablet.mycnf
    keep = (tablet.state_dir,)
    for directory in {cnf.datadir, cnf.innodb_data_home_dir, cnf.innodb_log_group_home_dir}:
        clear_directory(directory, keep)
    clear_binlogs(cnf)
