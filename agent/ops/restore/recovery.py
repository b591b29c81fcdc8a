"""Putting a tablet back after a restore failed or its agent was killed: a staged restore is rolled back
(or, once committed, finished) from its journal, and mysqld, its read-only state and its replication
threads are made exactly what they were. mysqld is started read-only and without replication until the
journal is settled, so no step of this leaves a writable tablet that was not writable before."""

from __future__ import annotations

from agent.aio.tasks import in_thread
from agent.errors import AgentError
from agent.log import get_logger
from agent.mysql import replication
from agent.mysql.replication import ReadOnlyState
from agent.ops.restore import swap
from agent.statedir.restore_journal import (
    CapturedState,
    RestoreJournal,
    Step,
    clear_journal,
    read_journal,
    write_journal,
)
from agent.tablet import Tablet

log = get_logger("agent.ops.restore.recovery")

# Steps at which the live directories may hold restored data that must go out again.
RESTORED_DATA_LIVE = (Step.SWAP_IN, Step.SWAPPED, Step.STARTED, Step.ROLLBACK_OUT)


async def capture_state(tablet: Tablet, tablet_type: str) -> CapturedState:
    """What the tablet is before the restore touches it. A mysqld that does not answer is recorded as
    down and read-only (it is then left stopped-or-read-only, never made writable)."""
    try:
        info = await tablet.mysqld.server_info()
        async with tablet.client.connection() as session:
            ro = await replication.read_only_state(session)
            status = await replication.replication_status(session, info.flavor)
    except AgentError:
        return CapturedState(
            mysqld_running=False,
            read_only=True,
            super_read_only=None,
            io_running=False,
            sql_running=False,
            source="",
            tablet_type=tablet_type,
        )
    return CapturedState(
        mysqld_running=True,
        read_only=ro.read_only,
        super_read_only=ro.super_read_only,
        io_running=status.configured and status.io_started,
        sql_running=status.configured and status.sql_running,
        source=f"{status.source_host}:{status.source_port}" if status.configured else "",
        tablet_type=tablet_type,
    )


async def advance(tablet: Tablet, journal: RestoreJournal, step: Step, error: str = "") -> RestoreJournal:
    """Record `step` durably before taking it."""
    journal = journal.model_copy(update={"step": step, "error": error or journal.error})
    await in_thread(write_journal, tablet.state_dir, journal)
    return journal


async def roll_back(tablet: Tablet, journal: RestoreJournal) -> None:
    """Undo a staged restore from wherever it stopped; a committed one is finished instead."""
    if journal.step is Step.COMMITTED:
        await finish(tablet, journal)
        return
    if journal.step is Step.STAGING:
        await in_thread(swap.discard, journal.targets, journal.work_dir)
        await _put_back_state(tablet, journal.captured)
        await in_thread(clear_journal, tablet.state_dir)
        return
    if journal.step in RESTORED_DATA_LIVE:
        if await tablet.mysqld.is_running():
            await tablet.mysqld.shutdown(tablet.config.mysql_shutdown_timeout)
        journal = await advance(tablet, journal, Step.ROLLBACK_OUT)
        await in_thread(swap.move_out, journal.targets)
    if journal.step is not Step.ROLLED_BACK:
        if await tablet.mysqld.is_running() and journal.step is not Step.SWAP_ASIDE:
            await tablet.mysqld.shutdown(tablet.config.mysql_shutdown_timeout)
        journal = await advance(tablet, journal, Step.ROLLBACK_BACK)
        await in_thread(swap.move_back, journal.targets)
        journal = await advance(tablet, journal, Step.ROLLED_BACK)
    await in_thread(swap.discard, journal.targets, journal.work_dir)
    await _put_back_state(tablet, journal.captured)
    await in_thread(clear_journal, tablet.state_dir)


async def finish(tablet: Tablet, journal: RestoreJournal) -> None:
    """A committed restore: drop the previous data (unless kept) and the journal."""
    if not journal.keep_previous:
        await in_thread(swap.drop_previous, journal.targets)
    await in_thread(swap.discard, (), journal.work_dir)
    await in_thread(clear_journal, tablet.state_dir)


async def _put_back_state(tablet: Tablet, captured: CapturedState) -> None:
    """mysqld running (read-only first) with the read-only state and replication threads it had; left
    down when it was down."""
    if not captured.mysqld_running:
        if await tablet.mysqld.is_running():
            await tablet.mysqld.shutdown(tablet.config.mysql_shutdown_timeout)
        return
    await tablet.mysqld.start(tablet.config.mysqld_start_timeout, read_only=True)
    info = await tablet.mysqld.server_info()
    await replication.set_read_only(
        tablet.client, ReadOnlyState(read_only=captured.read_only, super_read_only=captured.super_read_only)
    )
    if captured.io_running or captured.sql_running:
        status = await replication.replication_status(tablet.client, info.flavor)
        await replication.start_replication(
            tablet.client,
            info.flavor,
            io=captured.io_running and not status.io_started,
            sql=captured.sql_running and not status.sql_running,
        )


async def recover(tablet: Tablet) -> None:
    """At start-up: settle a restore a crash interrupted. An interrupted in-place restore leaves a
    datadir that is not to be trusted: mysqld is left as it is and Status says so until a new restore."""
    journal = await in_thread(read_journal, tablet.state_dir)
    if journal is None:
        return
    if not journal.staged:
        tablet.unfinished_restore = (
            f"an in-place restore of {journal.backup} was interrupted: the data directory was cleared and may "
            "hold a partial restore; restore again (RestoreFromBackup)"
        )
        log.error("unfinished in-place restore", backup=journal.backup, step=str(journal.step))
        if await tablet.mysqld.is_running():
            await tablet.mysqld.start(tablet.config.mysqld_start_timeout, read_only=True)
        return
    log.warning("settling an interrupted restore", backup=journal.backup, step=str(journal.step))
    try:
        await roll_back(tablet, journal)
    except AgentError as e:
        tablet.unfinished_restore = (
            f"a restore of {journal.backup} was interrupted at step {journal.step} and could not be rolled "
            f"back: {e}; fix the cause and restart the agent, or restore again"
        )
        log.error("cannot settle the interrupted restore", error=str(e))
        return
    what = "finished" if journal.step is Step.COMMITTED else "rolled back: the tablet holds its previous data"
    log.info(f"the interrupted restore of {journal.backup} was {what}")
