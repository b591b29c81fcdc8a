"""The newest complete full and incremental backups of the tablet's shard, kept ready for Status.

Listing a storage can take seconds (an object store with many backups); Status must answer in
milliseconds. The summary is refreshed in the background: at start-up, after every operation and every
removal, and every `REFRESH_INTERVAL` (other tablets of the shard back up into the same place).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime

import structlog

from agent.catalog.listing import BackupEntry, ManifestCache, list_backup_entries
from agent.catalog.manifest import parse_time
from agent.catalog.verification import Verification, read_verification
from agent.errors import AgentError
from agent.storage.base import BackupStorage

REFRESH_INTERVAL = 300.0
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Newest:
    full: BackupEntry | None
    incremental: BackupEntry | None
    listed_at: float  # time.time() of the listing; 0: never listed
    error: str = ""  # why the last listing failed
    full_verification: Verification | None = None  # the newest full backup's last verification

    @property
    def recovery_point(self) -> datetime | None:
        """The time of the newest transaction a restore can reach: the newest incremental's last
        transaction (`IncrementalDetails.LastTimestamp`) or the newest full backup's BackupTime, whichever
        is later; None without a complete backup."""
        times = []
        if self.full is not None and self.full.manifest is not None and self.full.manifest.backup_datetime:
            times.append(self.full.manifest.backup_datetime)
        m = self.incremental.manifest if self.incremental is not None else None
        if m is not None and m.incremental_details is not None and m.incremental_details.last_timestamp:
            with contextlib.suppress(ValueError):
                times.append(parse_time(m.incremental_details.last_timestamp))
        return max(times) if times else None


def newest_complete(entries: list[BackupEntry]) -> Newest:
    full = incremental = None
    for e in entries:
        if not e.complete or e.manifest is None:
            continue
        if e.manifest.incremental:
            incremental = e
        else:
            full = e
    return Newest(full, incremental, time.time())


class BackupSummary:
    """Holds the latest `Newest`; `refresh()` schedules a listing (coalesced), `run()` refreshes
    periodically until cancelled."""

    def __init__(self, storage: BackupStorage, directory: str) -> None:
        self._storage = storage
        self._directory = directory
        self.newest = Newest(None, None, 0.0)
        self.manifests = ManifestCache()  # shared by every listing of this storage (see list_backup_entries)
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def refresh(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True  # a removal or a backup landed while listing: list once more after
            return
        self._task = asyncio.create_task(self._refresh())

    async def wait(self) -> None:
        """Wait for a scheduled refresh (tests, and the first Status after start-up)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _refresh(self) -> None:
        while True:
            self._again = False
            try:
                entries = await list_backup_entries(self._storage, self._directory, cache=self.manifests)
            except (AgentError, OSError) as e:
                log.warning("listing backups for Status failed", error=str(e))
                self.newest = Newest(self.newest.full, self.newest.incremental, self.newest.listed_at, str(e))
            else:
                newest = newest_complete(entries)
                if newest.full is not None:
                    try:
                        verification = await read_verification(newest.full.handle)
                    except (AgentError, OSError) as e:
                        log.warning("reading the newest backup's verification failed", error=str(e))
                    else:
                        newest = dataclasses.replace(newest, full_verification=verification)
                self.newest = newest
            if not self._again:
                return

    async def run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                self.refresh()
                await asyncio.sleep(REFRESH_INTERVAL)
