"""The tablet's type and the checks it decides, as Vitess does: the type comes from `--init_tablet_type`
(REPLICA by default), never from mysqld's writability (a new, empty, writable mysqld is Vitess's usual
restore target). It reads BACKUP/RESTORE while such an operation runs (or a restore is unfinished) and
DRAINED after a point-in-time restore.

A restore is refused on a PRIMARY, on a server that replicas are connected to, and on a writable server
without a replication source that holds user schemas (very likely a primary started with the default
type) unless asked explicitly; an unfinished restore may always be redone.
"""

from __future__ import annotations

from agent.config import TabletType
from agent.errors import AgentError, FailedPrecondition
from agent.mysql import replication
from agent.mysql.datafiles import SYSTEM_SCHEMAS
from agent.params import RestoreParams
from agent.tablet import Tablet
from agent.topo.tablets import type_during

SYSTEM = tuple(sorted(SYSTEM_SCHEMAS))
MAX_NAMED = 5


def current_type(tablet: Tablet) -> str:
    """The type to report (Status, topology): Vitess's type names. BACKUP only while a backup takes the
    tablet out of serving (builtin), as vttablet does."""
    running = tablet.runner.current
    if tablet.unfinished_restore:
        return "RESTORE"
    if running is not None and (during := type_during(running)) is not None:
        return during
    return resting_type(tablet)


def resting_type(tablet: Tablet) -> str:
    """The type outside operations: DRAINED after a point-in-time restore, else the configured one."""
    return "DRAINED" if tablet.drained else str(tablet.config.init_tablet_type)


def check_backup_allowed(tablet: Tablet, allow_primary: bool) -> None:
    if tablet.config.init_tablet_type is TabletType.PRIMARY and not allow_primary:
        raise FailedPrecondition(
            f"type PRIMARY cannot take backup (tablet {tablet.alias} is a PRIMARY by --init_tablet_type). "
            "If you really need to do this, rerun the backup with allow_primary (`tabletctl backup "
            "--allow-primary`, vtctldclient `Backup --allow-primary`)"
        )


async def check_restore_allowed(tablet: Tablet, params: RestoreParams) -> None:
    """FailedPrecondition naming the fix when a restore must not replace this tablet's data."""
    if tablet.unfinished_restore:
        return  # the data is not to be trusted anyway: a new restore is the way out
    if tablet.config.init_tablet_type is TabletType.PRIMARY:
        raise FailedPrecondition(
            f"refusing to restore onto tablet {tablet.alias}: its type is PRIMARY (--init_tablet_type). "
            "Restore onto a replica, or start this agent with --init_tablet_type=REPLICA if it is not the primary"
        )
    try:
        info = await tablet.mysqld.server_info()
        async with tablet.client.connection() as session:
            replicas = await session.query("SHOW SLAVE HOSTS")
            status = await replication.replication_status(session, info.flavor)
            ro = await replication.read_only_state(session)
            schemas = [
                str(r["name"])
                for r in await session.query(
                    "SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA "
                    f"WHERE SCHEMA_NAME NOT IN ({', '.join(['%s'] * len(SYSTEM))}) ORDER BY SCHEMA_NAME",
                    SYSTEM,
                )
            ]
    except AgentError:
        return  # mysqld down: nothing it serves can be lost by replacing its files
    if replicas:
        hosts = ", ".join(f"{r.get('Host') or '?'}:{r.get('Port')}" for r in replicas[:MAX_NAMED])
        raise FailedPrecondition(
            f"refusing to restore onto tablet {tablet.alias}: replicas are connected to it ({hosts}), so it "
            "serves as a replication source; point them at another source first"
        )
    over_existing = params.over_existing_data or tablet.config.restore_over_existing_data
    if not status.configured and not ro.read_only and schemas and not over_existing:
        named = ", ".join(schemas[:MAX_NAMED]) + (" ..." if len(schemas) > MAX_NAMED else "")
        raise FailedPrecondition(
            f"refusing to restore onto tablet {tablet.alias}: its mysqld is writable, has no replication source "
            f"and holds user schemas ({named}): it looks like a primary started with the default type. If its "
            "data may be replaced, pass restore_over_existing_data (`tabletctl restore "
            "--restore-over-existing-data`) or start the agent with --restore_over_existing_data"
        )
