"""Restore orchestration. A restore never costs the tablet its data:

1. choose the backup (or the point-in-time path), skipping backups whose verification failed;
2. preflight, before anything is touched: engines, codecs, tools, every stored object with its size, and
   room beside the live data (`ops.preflight`); a dry run stops here, after reading every object back;
3. staged (the default): the engine fills staging directories beside the live ones while mysqld serves,
   verifying every byte (and preparing, for xtrabackup); the incrementals' binlogs are restored too;
4. only then: stop mysqld, swap the staged directories in (`ops.swap`), start mysqld read-only, check it
   answers at the MANIFEST's position, replay binlogs for a point in time, configure the replication
   source again, commit, and drop the previous data.

Each step is journaled first (`statedir.restore_journal`) with the tablet's state before the restore; any
failure before the swap leaves the tablet untouched, any failure after it rolls back
(`ops.restore_recovery`), as does the next start after a crash. In place (asked for, or when staging does
not fit and the caller accepts it) means a full verification pass, then clear and restore as before.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from agent.aio.tasks import complete, in_thread, run_concurrently
from agent.binlogs.apply import ReplayStep
from agent.catalog.listing import BackupEntry, list_backup_entries, newest_complete_full
from agent.catalog.pitr_path import RestorePath, path_to_position, path_to_time
from agent.catalog.verification import read_verification
from agent.errors import AgentError, DataLoss, FailedPrecondition
from agent.mysql import replication
from agent.mysql.datafiles import clear_binlogs, clear_directory, write_binlog_state
from agent.mysql.gtid import MariaDBGTIDSet, Position, parse_position
from agent.mysql.master_info import ReplicationSource, configure_source, read_master_info
from agent.mysql.mycnf import MyCnf
from agent.operations import Kind, Operation
from agent.ops.restore import pitr, swap
from agent.ops.restore.preflight import PlannedBackup, check_objects, check_space, plan_backups, space_needs
from agent.ops.restore.recovery import advance, capture_state, finish, roll_back
from agent.ops.tablet_type import check_restore_allowed, current_type
from agent.ops.verify import verify_objects
from agent.params import RestoreParams
from agent.statedir.restore_journal import RestoreJournal, Step, clear_journal, read_journal, write_journal
from agent.tablet import Tablet
from engines.base import RestoreTargets

REPLICATION_FILES = ("master.info", "relay-log.info", "multi-master.info")
SAVED_REPLICATION = "replication-source"  # in the state dir: what an in-place restore cleared


async def start_restore(tablet: Tablet, params: RestoreParams) -> Operation:
    if not params.dry_run:
        await check_restore_allowed(tablet, params)
    await tablet.runner.wait_for_background()

    async def work(op: Operation) -> None:
        await run_restore(tablet, params, op)

    return tablet.runner.start(Kind.RESTORE, work, dry_run=params.dry_run)


async def choose_path(tablet: Tablet, params: RestoreParams, op: Operation) -> RestorePath:
    """The full backup to restore and, for a point in time, the incrementals to replay after it. Full
    backups whose last verification failed are passed over, with a warning."""
    directory = tablet.backup_directory
    entries = await list_backup_entries(tablet.storage, directory, cache=tablet.summary.manifests)
    for entry in entries:
        if not entry.complete:
            op.warning(f"skipping incomplete backup {entry.handle.name}: {entry.problem or 'no MANIFEST'}")
    allowed = params.allowed_engines or None
    while True:
        if params.restore_to_pos:
            path = path_to_position(entries, parse_position(params.restore_to_pos), allowed)
        elif params.restore_to_timestamp is not None:
            path = path_to_time(entries, params.restore_to_timestamp, allowed)
        else:
            path = RestorePath(
                newest_complete_full(entries, before=params.backup_time, allowed_engines=allowed), ()
            )
        confirmed = await tablet.summary.manifests.confirm([path.full, *path.incrementals])
        if confirmed is None:
            entries = await list_backup_entries(tablet.storage, directory, cache=tablet.summary.manifests)
            continue  # a chosen MANIFEST changed in storage: choose again from what is stored now
        path = RestorePath(confirmed[0], tuple(confirmed[1:]))  # with their file entries
        verification = await read_verification(path.full.handle)
        if verification is None or verification.ok:
            return path
        op.warning(
            f"skipping backup {path.full.name}: its verification ({verification.depth}, "
            f"{verification.verified_at:%Y-%m-%d %H:%M:%S}Z) failed: {'; '.join(verification.problems[:3])}"
        )
        entries = [e for e in entries if e.name != path.full.name]


async def run_restore(tablet: Tablet, params: RestoreParams, op: Operation) -> None:
    config = tablet.config
    op.set_phase("choosing backup")
    path = await choose_path(tablet, params, op)
    op.set_phase("preflight")
    try:
        plans = await plan_backups(config, path)
    except DataLoss as e:
        raise await _with_alternative(tablet, path.full, e, params) from None
    full = plans[0]
    op.backup_name, op.engine = full.entry.name, full.engine.name
    m = full.manifest
    op.info(
        f"restore plan: {full.engine.name} backup {full.where} taken {m.backup_time} on "
        f"{m.tablet_alias or 'unknown tablet'} at position {m.position}"
    )
    if params.point_in_time:
        op.info(f"point-in-time restore path: {path.describe()}")
    in_place = params.in_place or config.restore_in_place
    staging = None if in_place else await in_thread(swap.plan, tablet.mycnf, tablet.state_dir, op.id)
    if staging is not None:
        check_space(await in_thread(space_needs, plans, staging.restore_targets, staging.work_dir.parent))
    if params.dry_run or in_place:
        await _verify_all(tablet, plans, op)
    if params.dry_run:
        where = "in place" if in_place else "staged beside the live data (room checked)"
        op.info(
            f"dry run: the restore would run {where}; every object of {len(plans)} backup(s) was read back and "
            "verified; nothing was changed"
        )
        return
    try:
        if staging is None:
            await _restore_in_place(tablet, params, plans, op)
        else:
            await _restore_staged(tablet, params, plans, staging, op)
    except DataLoss as e:
        raise await _with_alternative(tablet, full.entry, e, params) from None


async def _verify_all(tablet: Tablet, plans: list[PlannedBackup], op: Operation) -> None:
    op.set_phase("verifying every stored object")
    problems = []
    for plan in plans:
        found, _ = await verify_objects(plan, op, tablet.config.restore_concurrency)
        problems += found
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise DataLoss(f"the backup is damaged: {'; '.join(problems[:10])}{more}")


async def _with_alternative(
    tablet: Tablet, failed: BackupEntry, error: DataLoss, params: RestoreParams
) -> DataLoss:
    """The error, naming the newest older full backup whose objects are all there (if any)."""
    if params.point_in_time:
        return error
    entries = await list_backup_entries(tablet.storage, tablet.backup_directory)
    older = [e for e in entries if e.name < failed.name]
    while older:
        try:
            candidate = newest_complete_full(older, allowed_engines=params.allowed_engines or None)
        except AgentError:
            break
        verification = await read_verification(candidate.handle)
        try:
            if verification is None or verification.ok:
                plans = await plan_backups(tablet.config, RestorePath(candidate, ()))
                await check_objects(plans[0])
                m = plans[0].manifest
                return DataLoss(
                    f"{error}. The newest older usable backup is {candidate.directory}/{candidate.name} "
                    f"(taken {m.backup_time}): restore it with backup_time={m.backup_time} "
                    f"(`tabletctl restore --backup_timestamp {candidate.name}`)"
                )
        except AgentError:
            pass
        older = [e for e in older if e.name < candidate.name]
    return DataLoss(f"{error}. No older complete backup is usable")


# --- staged -----------------------------------------------------------------------------------------


async def _restore_staged(
    tablet: Tablet, params: RestoreParams, plans: list[PlannedBackup], staging: swap.Staging, op: Operation
) -> None:
    run = _Run(tablet, params, op, plans[0], plans[1:], await _replication_source(tablet), staging.work_dir)
    journal = RestoreJournal(
        operation_id=op.id,
        backup=run.full.where,
        step=Step.STAGING,
        captured=await capture_state(tablet, current_type(tablet)),
        targets=staging.targets,
        work_dir=staging.work_dir,
        keep_previous=tablet.config.keep_previous_datadir,
    )
    await in_thread(write_journal, tablet.state_dir, journal)
    run.start = _start_position(run.full)
    try:
        await in_thread(swap.create, staging)
        op.set_phase("restoring into staging directories")
        await run.restore_full(staging.restore_targets)
        await in_thread(_write_gtid_state, tablet.mycnf, staging.restore_targets, run.start)
        await run.prepare_point_in_time()
    except BaseException:
        await complete(_discard_staging(tablet, journal, staging))
        raise
    try:
        journal = await _swap_and_start(tablet, journal, op)
        await _settle(run)
        journal = await advance(tablet, journal, Step.COMMITTED)
    except BaseException as error:
        op.warning(f"the restore failed after the swap ({type(error).__name__}: {error}): rolling back")
        await complete(_roll_back_after(tablet, journal, error, op))
        raise
    op.set_phase("dropping the previous data")
    await complete(finish(tablet, journal))
    await complete(in_thread(swap.discard, (), staging.work_dir))
    if journal.keep_previous:
        kept = ", ".join(str(t.previous) for t in journal.targets)
        op.info(f"the previous data is kept in {kept}: `tabletctl discard-previous` removes it")
    _report(run)


async def _discard_staging(tablet: Tablet, journal: RestoreJournal, staging: swap.Staging) -> None:
    await in_thread(swap.discard, journal.targets, staging.work_dir)
    await in_thread(clear_journal, tablet.state_dir)


async def _swap_and_start(tablet: Tablet, journal: RestoreJournal, op: Operation) -> RestoreJournal:
    config = tablet.config
    journal = await advance(tablet, journal, Step.SWAP_ASIDE)
    if await tablet.mysqld.is_running():
        op.set_phase("stopping mysqld")
        await tablet.mysqld.shutdown(config.mysql_shutdown_timeout)
    op.set_phase("swapping the restored data in")
    await in_thread(swap.move_aside, journal.targets)
    journal = await advance(tablet, journal, Step.SWAP_IN)
    await in_thread(swap.move_in, journal.targets)
    journal = await advance(tablet, journal, Step.SWAPPED)
    op.set_phase("starting mysqld")
    await tablet.mysqld.start(config.mysqld_start_timeout, read_only=True)
    return await advance(tablet, journal, Step.STARTED)


async def _roll_back_after(
    tablet: Tablet, journal: RestoreJournal, error: BaseException, op: Operation
) -> None:
    op.set_phase("rolling back")
    latest = await in_thread(_journal_now, tablet, journal)
    try:
        await roll_back(tablet, latest.model_copy(update={"error": str(error)}))
    except AgentError as e:
        tablet.unfinished_restore = (
            f"a restore of {journal.backup} failed ({error}) and could not be rolled back: {e}; the agent "
            "retries at its next start, or restore again"
        )
        op.warning(tablet.unfinished_restore)
        return
    op.info(
        "rolled back: the tablet holds its previous data, with its replication and read-only state as before"
    )


def _journal_now(tablet: Tablet, fallback: RestoreJournal) -> RestoreJournal:
    return read_journal(tablet.state_dir) or fallback


# --- in place ----------------------------------------------------------------------------------------


async def _restore_in_place(
    tablet: Tablet, params: RestoreParams, plans: list[PlannedBackup], op: Operation
) -> None:
    """Verified already: clear the live directories and restore into them. A failure now leaves a cleared
    datadir; the error says so and the journal keeps the tablet marked until a restore succeeds."""
    config, cnf = tablet.config, tablet.mycnf
    work_dir = cnf.datadir / f"{swap.PREFIX}work-{op.id}"
    run = _Run(tablet, params, op, plans[0], plans[1:], await _replication_source(tablet), work_dir)
    await in_thread(_save_replication_files, cnf, tablet.state_dir)
    captured = await capture_state(tablet, current_type(tablet))
    journal = RestoreJournal(operation_id=op.id, backup=run.full.where, step=Step.IN_PLACE, captured=captured)
    await in_thread(write_journal, tablet.state_dir, journal)
    run.start = _start_position(run.full)
    try:
        if await tablet.mysqld.is_running():
            op.set_phase("stopping mysqld")
            await tablet.mysqld.shutdown(config.mysql_shutdown_timeout)
        op.set_phase("clearing data directories")
        await in_thread(_clear_tablet_dirs, cnf, tablet.state_dir)
        await in_thread(lambda: work_dir.mkdir(mode=0o750))
        op.set_phase("restoring files")
        targets = live_targets(cnf, tablet.state_dir)
        await run.restore_full(targets)
        await in_thread(_write_gtid_state, cnf, targets, run.start)
        await run.prepare_point_in_time()
        op.set_phase("starting mysqld")
        await tablet.mysqld.start(config.mysqld_start_timeout, read_only=True)
        await _settle(run)
    except BaseException as error:
        tablet.unfinished_restore = (
            f"an in-place restore of {run.full.where} failed ({error}): the data directory was cleared and may "
            "hold a partial restore; restore again"
        )
        raise AgentError(
            f"{error}. The restore ran in place: the data directory was cleared and holds a partial restore; "
            f"restore again (backup {run.full.where}, or another backup)",
            error.code if isinstance(error, AgentError) else None,
        ) from error
    finally:
        await complete(in_thread(shutil.rmtree, work_dir, True))
    await in_thread(clear_journal, tablet.state_dir)
    await in_thread(_drop_saved_replication_files, tablet.state_dir)
    _report(run)


def live_targets(cnf: MyCnf, state_dir: Path) -> RestoreTargets:
    """The tablet's own directories, for a restore in place."""
    return RestoreTargets(
        datadir=cnf.datadir,
        innodb_data_home_dir=cnf.innodb_data_home_dir,
        innodb_log_group_home_dir=cnf.innodb_log_group_home_dir,
        innodb_undo_directory=cnf.innodb_undo_directory,
        binlog_dir=cnf.log_bin.parent if cnf.log_bin is not None else None,
        keep=(state_dir,),
    )


def _clear_tablet_dirs(cnf: MyCnf, state_dir: Path) -> None:
    for directory in {cnf.datadir, cnf.innodb_data_home_dir, cnf.innodb_log_group_home_dir}:
        clear_directory(directory, (state_dir,))
    clear_binlogs(cnf)


def _save_replication_files(cnf: MyCnf, state_dir: Path) -> None:
    """Keep the replication source's files before an in-place restore clears them, so a later restore
    still finds the source if this one is interrupted."""
    saved = state_dir / SAVED_REPLICATION
    present = [name for name in REPLICATION_FILES if (cnf.datadir / name).is_file()]
    if not present:
        return
    saved.mkdir(mode=0o700, exist_ok=True)
    for name in present:
        shutil.copy2(cnf.datadir / name, saved / name)
        (saved / name).chmod(0o600)


def _drop_saved_replication_files(state_dir: Path) -> None:
    shutil.rmtree(state_dir / SAVED_REPLICATION, ignore_errors=True)


async def discard_previous(tablet: Tablet) -> list[str]:
    """Remove the data committed restores kept (`--keep_previous_datadir`); the directories removed."""
    if tablet.runner.current is not None and tablet.runner.current.kind is Kind.RESTORE:
        raise FailedPrecondition("a restore is running: its previous data may still be needed; wait for it")
    if await in_thread(read_journal, tablet.state_dir) is not None:
        raise FailedPrecondition(
            "a restore is not settled yet (its journal is in the state directory): its previous data is "
            "needed to roll it back; restart the agent or restore again first"
        )
    found = await in_thread(swap.find_previous, tablet.mycnf)
    for path in found:
        await in_thread(shutil.rmtree, path)
    return [str(p) for p in found]


# --- shared ------------------------------------------------------------------------------------------


async def _replication_source(tablet: Tablet) -> ReplicationSource | None:
    """The source the tablet replicates from: its datadir's master.info, else the copy an interrupted
    in-place restore saved."""
    for path in (tablet.mycnf.datadir / "master.info", tablet.state_dir / SAVED_REPLICATION / "master.info"):
        source = await in_thread(read_master_info, path)
        if source is not None:
            return source
    return None


def _start_position(full: PlannedBackup) -> Position | None:
    return parse_position(full.manifest.position) if full.manifest.position else None


def _write_gtid_state(cnf: MyCnf, targets: RestoreTargets, position: Position | None) -> None:
    """MariaDB reads its binlog GTID state from `<log_bin>.state` when it starts without binlogs."""
    gtids = position.gtids if position is not None else None
    if isinstance(gtids, MariaDBGTIDSet) and cnf.log_bin is not None and targets.binlog_dir is not None:
        write_binlog_state(targets.binlog_dir, cnf.log_bin.name, gtids)


@dataclass
class _Run:
    """One restore's inputs and what it learns on the way."""

    tablet: Tablet
    params: RestoreParams
    op: Operation
    full: PlannedBackup
    incrementals: list[PlannedBackup]
    source: ReplicationSource | None
    work_dir: Path
    start: Position | None = None
    target: Position | None = None
    steps: list[ReplayStep] = field(default_factory=list)

    async def restore_full(self, targets: RestoreTargets) -> None:
        """The full backup into `targets`; for a point in time, the replication applier's binlog server
        is bootstrapped meanwhile (it mostly waits on the disk, and the replay no longer waits for it)."""
        restore = self.full.engine.restore(self.full.context(self.tablet, targets, self.work_dir, self.op))
        if not self.params.point_in_time:
            await restore
            return
        await run_concurrently(restore, pitr.bootstrap_applier(self.tablet, self.work_dir / "pitr", self.op))

    async def prepare_point_in_time(self) -> None:
        """Restore the incrementals' binlogs and resolve the target (before the tablet is touched)."""
        if not self.params.point_in_time:
            self.target = self.start
            return
        if self.start is None:
            raise FailedPrecondition(
                f"backup {self.full.where} records no position: binlogs cannot be replayed onto it"
            )
        pitr_dir = self.work_dir / "pitr"
        self.steps = await pitr.restore_binlogs(self.tablet, self.incrementals, pitr_dir, self.start, self.op)
        self.target = await pitr.target_position(self.params, self.steps, self.start, self.op)


async def _settle(run: _Run) -> None:
    """mysqld runs read-only on the restored data: check it is at the backup's position, replay binlogs
    for a point in time, configure the replication source again, and leave it read-only."""
    tablet, op, start = run.tablet, run.op, run.start
    info = await tablet.mysqld.server_info()
    op.set_phase("checking the restored server")
    if start is not None and not start.is_empty():
        await replication.set_gtid_state(tablet.client, start)
        reached = await replication.executed_position(tablet.client, info.flavor)
        if not (reached.contains(start) and start.contains(reached)):
            raise DataLoss(
                f"the restored server reports position {reached}, not the backup's {start}: refusing to keep it"
            )
    if run.params.point_in_time:
        assert start is not None and run.target is not None
        await pitr.replay(tablet, run.steps, start, run.target, workdir=run.work_dir / "pitr", op=op)
    elif run.source is not None:
        await configure_source(tablet.client, run.source)
        op.info(f"replication source {run.source.host}:{run.source.port} configured again (not started)")
    # A restored tablet is a replica-to-be: it must not take writes until someone points it somewhere.
    await replication.set_read_only(
        tablet.client, replication.ReadOnlyState(read_only=True, super_read_only=True)
    )


def _report(run: _Run) -> None:
    tablet = run.tablet
    tablet.unfinished_restore = ""
    tablet.drained = run.params.point_in_time
    if run.params.point_in_time:
        tablet.restored_to = (
            f"point in time {run.target} (backup {run.full.entry.name} and {len(run.incrementals)} "
            "incremental(s)); replication is not configured"
        )
    else:
        tablet.restored_to = f"backup {run.full.entry.name} at position {run.full.manifest.position}"
    run.op.info(f"restore complete: the tablet holds {tablet.restored_to}; it is read-only")
