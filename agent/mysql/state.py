"""What the tablet reports about itself: mysqld state and health, gathered with short timeouts."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.errors import AgentError, Unavailable
from agent.mysql import replication
from agent.mysql.mysqld import ServerFlavor

if TYPE_CHECKING:
    from agent.tablet import Tablet

STATUS_QUERY_TIMEOUT = 2.0
FRESH = 1.0  # seconds a mysqld state is served as is


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
    try:
        # one connection for everything: Status answers in milliseconds even on a busy server
        async with tablet.client.connection() as session:
            info = await tablet.mysqld.server_info(session)
            flavor = info.flavor
            ro = await replication.read_only_state(session)
            repl = await replication.replication_status(session, flavor)
            executed = await replication.executed_gtids(session, flavor)
            purged = await replication.purged_gtids(session, flavor)
    except Unavailable as e:
        return MysqldState(running=False, error=str(e), problems=("mysqld is not running",))
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


class MysqldStateCache:
    """The last mysqld state, so Status answers in milliseconds even when a busy server answers in
    tens: a state under FRESH seconds old is served as is; callers that find it older share one
    refresh. `invalidate()` after anything that changes mysqld (an operation ending)."""

    def __init__(self) -> None:
        self._state: MysqldState | None = None
        self._at = 0.0
        self._refresh: asyncio.Task[MysqldState] | None = None

    def invalidate(self) -> None:
        self._state = None

    async def get(self, tablet: Tablet) -> MysqldState:
        if self._state is not None and time.monotonic() - self._at < FRESH:
            return self._state
        return await asyncio.shield(self._start(tablet))

    def _start(self, tablet: Tablet) -> asyncio.Task[MysqldState]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._fetch(tablet))
        return self._refresh

    async def _fetch(self, tablet: Tablet) -> MysqldState:
        state = await mysqld_state(tablet)
        self._state, self._at = state, time.monotonic()
        return state
