"""Continuous binlog archiving (`--binlog_archive_interval`): every closed binary log is shipped within a
second or so of its rotation, and the active one is rotated (by the shipment) once it has held
unarchived transactions for the interval, so no transaction waits much longer than that. Each shipment is an ordinary incremental backup
chaining onto the shard's newest backup (`incremental_from_pos=auto`), so point-in-time restore and
Vitess's tooling see nothing new.

One archiver per shard: with a topology, a role in etcd held under a lease decides; a PRIMARY takes it at
once, a replica (with log_slave_updates) only when it has been free for a while, so it takes over when the
primary's agent is gone. After a failover the new archiver continues from the shard's newest archived
position: GTID sets make the chain continue across servers. Binlogs purged before they were shipped
leave a gap that is reported (Status, metrics) until a new full backup starts a new chain.
"""

from __future__ import annotations

import asyncio
import time

from agent.binlogs.pending import pending_binlogs
from agent.config import EngineName, TabletType
from agent.errors import AgentError
from agent.log import get_logger
from agent.mysql import replication
from agent.mysql.gtid import Position, parse_position
from agent.operations import Result
from agent.ops.backup import start_backup
from agent.params import BackupParams
from agent.tablet import Tablet
from agent.topo.roles import ShardRole

log = get_logger("agent.ops.archive")
REPLICA_PATIENCE = 3  # rounds a replica lets the role stay free before it takes it (the primary goes first)
ROLE = "binlog_archiver"
RETRY_AFTER = 10.0  # seconds between attempts after a failed shipment


class Archiver:
    def __init__(self, tablet: Tablet, role: ShardRole | None) -> None:
        self.tablet = tablet
        self.role = role
        self.interval = tablet.config.binlog_archive_interval
        self._free_rounds = 0
        self._pending_since: float | None = None  # when unarchived transactions were first seen
        self._retry_at = 0.0  # after a failed shipment: not before

    async def run(self) -> None:
        """Until cancelled: check every half interval whether anything waits to be shipped."""
        state = self.tablet.archive
        try:
            while True:
                state.active = await self._may_archive()
                if state.active:
                    try:
                        await self.ship_once()
                    except AgentError as e:
                        state.problem = f"binlog archiving failed: {e}"
                        log.warning("binlog archiving failed", error=str(e))
                await asyncio.sleep(min(1.0, max(0.2, self.interval / 4)))
        finally:
            if self.role is not None:
                await asyncio.shield(self.role.give_up())

    async def _may_archive(self) -> bool:
        if self.role is None:
            return True
        if self.role.held:
            return await self.role.try_take()
        primary = self.tablet.config.init_tablet_type is TabletType.PRIMARY
        if not primary and self._free_rounds < REPLICA_PATIENCE:
            self._free_rounds = self._free_rounds + 1 if await self._role_is_free() else 0
            return False
        taken = await self.role.try_take()
        if taken:
            log.info("this agent archives the shard's binlogs now")
        self._free_rounds = 0
        return taken

    async def _role_is_free(self) -> bool:
        assert self.role is not None
        if await self.role.try_take():  # nobody had it: hold it for this round only if it stays free
            await self.role.give_up()
            return True
        return False

    async def ship_once(self) -> None:
        """Ship the binlogs holding transactions no backup of the shard covers yet (if the tablet is idle)."""
        tablet, state = self.tablet, self.tablet.archive
        if tablet.runner.current is not None:
            return
        info = await tablet.mysqld.server_info()
        executed = await replication.executed_position(tablet.client, info.flavor)
        if self._covered(executed):
            state.problem = state.gap = ""  # everything is archived (a new full backup closes a gap)
            self._pending_since = None
            return
        now = time.monotonic()
        if now < self._retry_at:
            return
        self._pending_since = self._pending_since or now
        rotated = await pending_binlogs(tablet.client, tablet.mycnf, tablet.summary.newest)
        if not rotated and now - self._pending_since < self.interval:
            return  # the active binlog's transactions are younger than the interval: not yet
        tablet.summary.refresh()  # another tablet of the shard may have backed up meanwhile
        await tablet.summary.wait()
        newest = tablet.summary.newest
        if newest.full is None and newest.incremental is None:
            state.problem = f"binlog archiving waits for a full backup in {tablet.backup_directory} to chain onto: take one"
            return
        if self._covered(executed):
            state.problem = state.gap = ""
            return
        params = BackupParams(
            concurrency=tablet.config.concurrency,
            allow_primary=True,  # archiving only reads binlogs: no stop, no lock
            incremental_from_pos="auto",
            upgrade_safe=False,
            engine=EngineName.BUILTIN,
            mysql_shutdown_timeout=tablet.config.mysql_shutdown_timeout,
            init_sql=None,
        )
        op = await start_backup(tablet, params, background=True)
        await op.wait()
        if op.result in (Result.SUCCEEDED, Result.NOTHING_TO_DO):
            state.last_shipped = time.time() if op.result is Result.SUCCEEDED else state.last_shipped
            state.gap = state.problem = ""
            self._pending_since = None
            return
        self._retry_at = time.monotonic() + max(self.interval, RETRY_AFTER)
        reason = str(op.error) if op.error is not None else str(op.result)
        if "purged" in reason:
            state.gap = (
                f"binlogs were purged before they were archived ({reason}); point-in-time restores cannot cross "
                "this gap: take a full backup to start a new chain"
            )
        state.problem = f"binlog archiving failed: {reason}"

    def _covered(self, executed: Position) -> bool:
        """Whether the shard's newest backups (as last listed) hold every transaction of `executed`."""
        newest = self.tablet.summary.newest
        for entry in (newest.full, newest.incremental):
            m = entry.manifest if entry is not None else None
            if m is not None and m.position:
                position = parse_position(m.position)
                if position.flavor is executed.flavor and position.contains(executed):
                    return True
        return False
