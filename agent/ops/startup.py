"""Start-up: repair what a crashed agent left behind, then make sure mysqld answers."""

from __future__ import annotations

from agent.aio.tasks import in_thread
from agent.catalog.listing import read_manifest
from agent.errors import AgentError, ConfigError, NotFound
from agent.log import get_logger
from agent.mysql import replication
from agent.mysql.replication import ReadOnlyState, ReplicationSnapshot
from agent.ops.restore.recovery import recover
from agent.statedir.crash_records import clear_offline_record, read_offline_record
from agent.tablet import Tablet

log = get_logger("agent.ops.startup")


async def repair_offline_backup(tablet: Tablet) -> bool:
    """A backup was interrupted by a crash: start mysqld, put replication and read-only state
    back as recorded, and remove the partial backup. Returns True when there was something to repair."""
    record = await in_thread(read_offline_record, tablet.state_dir)
    if record is None:
        return False
    log.warning("repairing an interrupted backup", operation=record.operation_id, backup=record.backup_name)
    if not await tablet.mysqld.is_running():
        await tablet.mysqld.start(tablet.config.mysqld_start_timeout)
    info = await tablet.mysqld.server_info()
    snap = ReplicationSnapshot(
        io_running=record.io_running,
        sql_running=record.sql_running,
        read_only=ReadOnlyState(read_only=record.read_only, super_read_only=record.super_read_only),
    )
    await replication.restore_snapshot(tablet.client, info.flavor, snap)
    await _remove_if_incomplete(tablet, record.backup_directory, record.backup_name)
    await in_thread(clear_offline_record, tablet.state_dir)
    log.info("repaired: mysqld running, replication as before the backup")
    return True


async def _remove_if_incomplete(tablet: Tablet, directory: str, name: str) -> None:
    for handle in await tablet.storage.list_backups(directory):
        if handle.name != name:
            continue
        try:
            await read_manifest(handle)
            return  # complete after all: keep it
        except (NotFound, AgentError):
            await tablet.storage.remove_backup(directory, name)
            log.info("removed the partial backup", backup=f"{directory}/{name}")


async def prepare_tablet(tablet: Tablet) -> None:
    """Repair what a crashed agent left (an offline backup, a restore), then see whether mysqld answers.
    A mysqld that does not answer yet is not an error: the agent serves (a restore onto a host whose
    mysqld cannot start must stay possible) and Status reports it until it answers."""
    await recover(tablet)
    if tablet.unfinished_restore:
        log.error("restore unfinished", problem=tablet.unfinished_restore)
    try:
        await repair_offline_backup(tablet)
    except AgentError as e:
        log.error("cannot repair the interrupted backup yet", error=str(e))
    try:
        info = await tablet.mysqld.server_info()
    except AgentError as e:
        creds = tablet.credentials
        where = creds.socket or f"{creds.host}:{creds.port}"
        if await tablet.client.ping():  # it answers but refuses us: waiting will not fix that
            raise ConfigError(
                f"mysqld at {where} refuses the agent's account {creds.user!r}: {e}; fix the password or "
                "grants (the [client] group of --mycnf_file / --db_credentials_file, TABLET_AGENT_DB_PASSWORD)"
            ) from None
        log.warning(
            f"mysqld does not answer at {where} as {creds.user!r} yet: serving anyway; start mysqld "
            f"(e.g. `mariadbd --defaults-file={tablet.mycnf.path}`) or fix the [client] group of "
            "--mycnf_file / --db_credentials_file",
            error=str(e),
        )
        return
    log.info("mysqld reachable", flavor=str(info.flavor), version=info.version)
