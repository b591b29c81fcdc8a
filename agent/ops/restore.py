"""Restore orchestration: choose the backup, guard the datadir with a sentinel, let the engine the MANIFEST
names put the files back, start mysqld and set its GTID state."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

from agent.aio.tasks import complete, in_thread
from agent.binlogs.apply import ReplayStep, choose_applier, position_before
from agent.catalog.listing import list_backup_entries, newest_complete_full
from agent.catalog.manifest import Manifest, format_time
from agent.catalog.pitr_path import RestorePath, path_to_position, path_to_time
from agent.config import TabletType
from agent.errors import DataLoss, FailedPrecondition
from agent.mysql import replication
from agent.mysql.datafiles import clear_binlogs, clear_directory, write_binlog_state
from agent.mysql.gtid import MariaDBGTIDSet, Position, empty_gtid_set, parse_position
from agent.mysql.master_info import configure_source, read_master_info
from agent.mysql.mycnf import MyCnf
from agent.operations import Kind, Operation
from agent.ops.codecs import codec_for_restore
from agent.ops.tablet_type import effective_tablet_type
from agent.params import RestoreParams
from agent.statedir.crash_records import clear_restore_sentinel, write_restore_sentinel
from agent.storage.base import BackupHandle
from agent.tablet import Tablet
from engines import engine_for_manifest
from engines.base import RestoreContext, RestoreTargets
from engines.binlog import BinlogEngine, binlog_files

WORK_DIR = ".tablet-agent-restore"  # inside the datadir: on its filesystem, so engines rename, not copy


async def start_restore(tablet: Tablet, params: RestoreParams) -> Operation:
    if await effective_tablet_type(tablet) is TabletType.PRIMARY and not params.dry_run:
        raise FailedPrecondition(
            f"refusing to restore onto tablet {tablet.alias}: it is a PRIMARY (its mysqld has no replication "
            "source and is writable, or --init_tablet_type=PRIMARY). Restore onto a replica, or make this "
            "mysqld read-only / a replica first"
        )

    async def work(op: Operation) -> None:
        await run_restore(tablet, params, op)

    return tablet.runner.start(Kind.RESTORE, work)


async def choose_path(tablet: Tablet, params: RestoreParams, op: Operation) -> RestorePath:
    """The full backup to restore and, for a point in time, the incrementals to replay after it."""
    directory = tablet.backup_directory
    entries = await list_backup_entries(tablet.storage, directory)
    for entry in entries:
        if not entry.complete:
            op.warning(f"skipping incomplete backup {entry.handle.name}: {entry.problem or 'no MANIFEST'}")
    allowed = params.allowed_engines or None
    if params.restore_to_pos:
        return path_to_position(entries, parse_position(params.restore_to_pos), allowed)
    if params.restore_to_timestamp is not None:
        return path_to_time(entries, params.restore_to_timestamp, allowed)
    return RestorePath(newest_complete_full(entries, before=params.backup_time, allowed_engines=allowed), ())


async def run_restore(tablet: Tablet, params: RestoreParams, op: Operation) -> None:
    config = tablet.config
    op.set_phase("choosing backup")
    path = await choose_path(tablet, params, op)
    manifest, handle = path.full.manifest, path.full.handle
    assert manifest is not None
    engine = engine_for_manifest(manifest, config)
    op.backup_name, op.engine = manifest.backup_name, engine.name
    op.info(
        f"restore plan: {engine.name} backup {tablet.backup_directory}/{manifest.backup_name} taken "
        f"{manifest.backup_time} on {manifest.tablet_alias or 'unknown tablet'} at position {manifest.position}"
    )
    if params.point_in_time:
        op.info(f"point-in-time restore path: {path.describe()}")
    for entry in (path.full, *path.incrementals):
        assert entry.manifest is not None
        await check_objects(
            entry.handle,
            entry.manifest,
            engine_for_manifest(entry.manifest, config).stored_objects(entry.manifest),
        )
    if params.dry_run:
        op.info("dry run: the backups' objects are all present; nothing was changed")
        return
    source = await in_thread(read_master_info, tablet.mycnf.datadir / "master.info")
    await in_thread(write_restore_sentinel, tablet.state_dir, manifest.backup_name)
    if await tablet.mysqld.is_running():
        op.set_phase("stopping mysqld")
        await tablet.mysqld.shutdown(config.mysql_shutdown_timeout)
    op.set_phase("clearing data directories")
    await in_thread(_clear_tablet_dirs, tablet)
    op.set_phase("restoring files")
    work_dir = tablet.mycnf.datadir / WORK_DIR
    await in_thread(_fresh_dir, work_dir)
    try:
        await engine.restore(
            RestoreContext(
                mycnf=tablet.mycnf,
                targets=live_targets(tablet.mycnf, tablet.state_dir),
                work_dir=work_dir,
                codec=codec_for_restore(manifest, config),
                op=op,
                handle=handle,
                manifest=manifest,
                concurrency=config.concurrency,
            )
        )
    finally:
        await complete(in_thread(shutil.rmtree, work_dir, True))
    position = parse_position(manifest.position) if manifest.position else None
    if position is not None and isinstance(position.gtids, MariaDBGTIDSet):
        await in_thread(write_binlog_state, tablet.mycnf, position.gtids)
    op.set_phase("starting mysqld")
    await tablet.mysqld.start(config.mysqld_start_timeout)
    info = await tablet.mysqld.server_info()
    if position is not None and not position.is_empty():
        await replication.set_gtid_state(tablet.client, position)
    if params.point_in_time:
        reached = await replay_incrementals(
            tablet,
            op,
            params,
            path,
            position or Position(info.flavor, empty_gtid_set(info.flavor)),
        )
    elif source is not None:
        await configure_source(tablet.client, source)
        op.info(f"replication source {source.host}:{source.port} configured again (not started)")
    # A restored tablet is a replica-to-be: it must not take writes until someone points it somewhere.
    await replication.set_read_only(
        tablet.client, replication.ReadOnlyState(read_only=True, super_read_only=True)
    )
    await in_thread(clear_restore_sentinel, tablet.state_dir)
    tablet.drained = params.point_in_time
    if params.point_in_time:
        tablet.restored_to = (
            f"point in time {reached} (backup {manifest.backup_name} and {len(path.incrementals)} incremental(s)); "
            "replication is not configured"
        )
    else:
        tablet.restored_to = f"backup {manifest.backup_name} at position {manifest.position}"
    op.info(f"restore complete: the tablet holds {tablet.restored_to}")


async def replay_incrementals(
    tablet: Tablet, op: Operation, params: RestoreParams, path: RestorePath, start: Position
) -> Position:
    """Restore the chain's binlogs into a work directory and replay them up to the target; the position
    reached. Replication is left unconfigured: a point-in-time copy must not catch up with its source."""
    workdir = tablet.state_dir / "pitr"
    await in_thread(_fresh_dir, workdir)
    try:
        op.set_phase("restoring binlogs")
        steps = []
        binlogs = BinlogEngine()
        for k, entry in enumerate(path.incrementals):
            m = entry.manifest
            assert m is not None
            dest = workdir / f"binlogs-{k}"
            ctx = RestoreContext(
                mycnf=tablet.mycnf,
                targets=RestoreTargets.binlogs_into(dest),
                work_dir=workdir,
                codec=codec_for_restore(m, tablet.config),
                op=op,
                handle=entry.handle,
                manifest=m,
                concurrency=tablet.config.concurrency,
            )
            await binlogs.restore(ctx)
            files = binlog_files(m, dest)
            steps.append(
                ReplayStep(entry.name, tuple(files), parse_position(m.position, default_flavor=start.flavor))
            )
        if params.restore_to_timestamp is not None:
            files = [f for step in steps for f in step.files]
            target, _ = await in_thread(position_before, files, start, params.restore_to_timestamp)
            op.info(
                f"the last transaction before {format_time(params.restore_to_timestamp)} ends at position {target}"
            )
        else:
            target = parse_position(params.restore_to_pos, default_flavor=start.flavor)
        info = await tablet.mysqld.server_info()
        config = tablet.config
        applier = await choose_applier(
            setting=config.binlog_applier,
            threads=config.binlog_applier_threads,
            client=tablet.client,
            info=info,
            op=op,
            steps=steps,
        )
        op.set_phase(f"replaying binlogs ({applier.name})")
        await applier.apply(tablet.client, op, start, _up_to(steps, target), workdir)
        executed = await replication.executed_position(tablet.client, info.flavor)
        if not executed.contains(target) or not target.contains(executed):
            raise DataLoss(f"the binlog replay ended at position {executed}, not at the target {target}")
        await replication.set_gtid_state(tablet.client, target)
        op.info(f"replayed binlogs up to {target}")
        return target
    finally:
        await in_thread(shutil.rmtree, workdir, True)


def _up_to(steps: list[ReplayStep], target: Position) -> list[ReplayStep]:
    """The steps needed to reach `target`, the last one ending there."""
    kept = []
    for step in steps:
        if target.contains(step.end):
            kept.append(step)
            if step.end.contains(target):
                break
        else:
            kept.append(dataclasses.replace(step, end=target))
            break
    return kept


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)


async def check_objects(handle: BackupHandle, manifest: Manifest, names: list[str]) -> None:
    """Refuse a backup with missing objects before the datadir is touched."""
    sizes = await asyncio.gather(*(handle.file_size(name) for name in names))
    missing = [name for name, size in zip(names, sizes, strict=True) if size is None]
    if missing:
        raise DataLoss(
            f"backup {manifest.backup_name} is missing stored object(s) {', '.join(missing[:10])}: it cannot "
            "be restored; choose another backup (RestoreFromBackup backup_time) or remove it"
        )


def live_targets(cnf: MyCnf, state_dir: Path) -> RestoreTargets:
    """The tablet's own directories, for a restore in place."""
    return RestoreTargets(
        keep=(state_dir,),
        datadir=cnf.datadir,
        innodb_data_home_dir=cnf.innodb_data_home_dir,
        innodb_log_group_home_dir=cnf.innodb_log_group_home_dir,
        innodb_undo_directory=cnf.innodb_undo_directory,
        binlog_dir=cnf.log_bin.parent if cnf.log_bin is not None else None,
    )


def _clear_tablet_dirs(tablet: Tablet) -> None:
    cnf = tablet.mycnf
    keep = (tablet.state_dir,)
    for directory in {cnf.datadir, cnf.innodb_data_home_dir, cnf.innodb_log_group_home_dir}:
        clear_directory(directory, keep)
    clear_binlogs(cnf)
