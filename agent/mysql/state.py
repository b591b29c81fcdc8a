"""What mysqld says about itself for Status: its state and health, gathered with short timeouts."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from agent.errors import AgentError, Unavailable
from agent.mysql import replication
from agent.mysql.client import MysqlClient
from agent.mysql.mysqld import Mysqld

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


async def mysqld_state(client: MysqlClient, mysqld: Mysqld) -> MysqldState:
    """Ask mysqld for its state; a stopped or unreachable mysqld is reported, never raised."""
    try:
        return await asyncio.wait_for(_query_state(client, mysqld), STATUS_QUERY_TIMEOUT)
    except (AgentError, OSError, TimeoutError) as e:
        return MysqldState(
            running=False, error=str(e) or type(e).__name__, problems=("mysqld is not reachable",)
        )


async def _query_state(client: MysqlClient, mysqld: Mysqld) -> MysqldState:
    try:
        # one connection for everything: Status answers in milliseconds even on a busy server
        async with client.connection() as session:
            info = await mysqld.server_info(session)
            flavor = info.flavor
            ro = await replication.read_only_state(session)
            repl = await replication.replication_status(session, flavor)
            executed = await replication.executed_position(session, flavor)
            purged = await replication.purged_position(session, flavor)
    except Unavailable as e:
        return MysqldState(running=False, error=str(e), problems=("mysqld is not running",))
    problems: list[str] = []
    if repl.configured and not repl.sql_running:
        problems.append("replication SQL thread stopped")
    if repl.configured and not repl.io_running:
        problems.append("replication IO thread stopped")
    return MysqldState(
        running=True,
        flavor=str(flavor),
        version=info.version,
        read_only=ro.read_only,
        super_read_only=bool(ro.super_read_only),
        replication=repl,
        gtid_executed=str(executed),
        gtid_purged=str(purged),
        problems=tuple(problems),
    )


class MysqldStateCache:
    """The last mysqld state, so Status answers in milliseconds even when a busy server answers in
    tens: a state under FRESH seconds old is served as is; callers that find it older share one
    refresh. `invalidate()` after anything that changes mysqld (an operation ending)."""

    def __init__(self, client: MysqlClient, mysqld: Mysqld) -> None:
        self._client, self._mysqld = client, mysqld
        self._state: MysqldState | None = None
        self._at = 0.0
        self._refresh: asyncio.Task[MysqldState] | None = None

    def invalidate(self) -> None:
        self._state = None

    async def get(self) -> MysqldState:
        if self._state is not None and time.monotonic() - self._at < FRESH:
            return self._state
        return await asyncio.shield(self._start())

    def _start(self) -> asyncio.Task[MysqldState]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._fetch())
        return self._refresh

    async def _fetch(self) -> MysqldState:
        started = time.monotonic()  # the state is as old as the question, not the answer
        state = await mysqld_state(self._client, self._mysqld)
        self._state, self._at = state, started
        return state
