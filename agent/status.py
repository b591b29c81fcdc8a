"""What the tablet reports about itself: mysqld state and health, gathered with short timeouts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agent.errors import AgentError
from agent.mysql import replication
from agent.mysql.mysqld import ServerFlavor
from agent.tablet import Tablet

STATUS_QUERY_TIMEOUT = 2.0


@dataclass(frozen=True)
class MysqldState:
    running: bool
    flavor: str = ""
    version: str = ""
    read_only: bool = False
    super_read_only: bool = False
    replication: replication.ReplicationStatus | None = None
    gtid_executed: str = ""
    gtid_purged: str = ""
    error: str = ""
    problems: tuple[str, ...] = field(default=())


async def mysqld_state(tablet: Tablet) -> MysqldState:
    """Ask mysqld for its state; a stopped or unreachable mysqld is reported, never raised."""
    try:
        return await asyncio.wait_for(_query_state(tablet), STATUS_QUERY_TIMEOUT)
    except (AgentError, OSError, TimeoutError) as e:
        return MysqldState(
            running=False, error=str(e) or type(e).__name__, problems=("mysqld is not reachable",)
        )


async def _query_state(tablet: Tablet) -> MysqldState:
    if not await tablet.mysqld.is_running():
        return MysqldState(running=False, error="mysqld is not running", problems=("mysqld is not running",))
    info = await tablet.mysqld.server_info()
    flavor = info.flavor
    ro = await replication.read_only_state(tablet.client)
    repl = await replication.replication_status(tablet.client, flavor)
    executed = await replication.executed_gtids(tablet.client, flavor)
    purged = await replication.purged_gtids(tablet.client, flavor)
    problems: list[str] = []
    if repl.configured and not repl.sql_running:
        problems.append("replication SQL thread stopped")
    if repl.configured and not repl.io_running:
        problems.append("replication IO thread stopped")
    prefix = "MariaDB/" if flavor is ServerFlavor.MARIADB else "MySQL56/"
    return MysqldState(
        running=True,
        flavor=str(flavor),
        version=info.version,
        read_only=ro.read_only,
        super_read_only=bool(ro.super_read_only),
        replication=repl,
        gtid_executed=prefix + executed,
        gtid_purged=prefix + purged,
        problems=tuple(problems),
    )
