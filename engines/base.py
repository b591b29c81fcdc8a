"""The engine contract. An engine copies a tablet into a backup handle and back; the orchestrator decides
when a backup ends or is aborted, writes the MANIFEST and keeps the tablet's state as it found it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from agent.catalog.manifest import Manifest
from agent.operations import Operation
from agent.params import BackupParams
from agent.storage.base import BackupHandle
from agent.tablet import Tablet


@dataclass(frozen=True)
class BackupContext:
    tablet: Tablet
    params: BackupParams
    op: Operation
    handle: BackupHandle


@dataclass(frozen=True)
class BackupOutcome:
    """What the engine learnt while copying; merged into the MANIFEST by the orchestrator."""

    position: str
    purged_position: str
    server_uuid: str
    mysql_version: str
    manifest_fields: dict[str, Any]


@dataclass(frozen=True)
class RestoreContext:
    tablet: Tablet
    op: Operation
    handle: BackupHandle
    manifest: Manifest
    concurrency: int


class Engine(Protocol):
    name: str

    async def backup(self, ctx: BackupContext) -> BackupOutcome:
        """Copy the tablet into `ctx.handle`. Must not write MANIFEST; must leave mysqld as it found it."""
        ...

    def stored_objects(self, manifest: Manifest) -> list[str]:
        """The object names a restore of this backup reads; all are checked before anything is touched."""
        ...

    async def restore(self, ctx: RestoreContext) -> None:
        """Make the (stopped) tablet's data directories hold the backup. mysqld is started by the caller."""
        ...
