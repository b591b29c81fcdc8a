"""The engine contract. An engine copies a tablet into a backup handle and back; the orchestrator decides
when a backup ends or is aborted, chooses the codec, writes the MANIFEST and keeps the tablet's state as
it found it.

Engines get narrow inputs, never the whole tablet: the option file (paths of the tablet's directories,
the defaults file for tools), a mysqld handle, a MySQL client, the state directory for work files and
crash records, the codec (and the cipher and rate limits, when set), the operation and the backup handle; a restore gets the directories to fill,
which are staging directories unless the restore runs in place. So an engine can be tested against a
fake mysqld.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.catalog.manifest import Manifest, ObjectRecord
from agent.mysql.client import MysqlClient, MysqlSession
from agent.mysql.datafiles import FileBase
from agent.mysql.gtid import Position
from agent.mysql.mycnf import MyCnf
from agent.mysql.mysqld import ServerInfo
from agent.operations import Operation
from agent.params import BackupParams
from agent.pipeline.compression import Codec
from agent.pipeline.encryption import BackupCipher
from agent.pipeline.ratelimit import IoLimits
from agent.storage.base import BackupHandle


class MysqldControl(Protocol):
    """The tablet's mysqld as engines drive it (`agent.mysql.mysqld.Mysqld`, or a fake in tests)."""

    async def is_running(self) -> bool: ...

    async def start(self, timeout: float) -> None: ...

    async def shutdown(self, timeout: float, slow: bool = False) -> None: ...

    async def server_info(self, session: MysqlSession | None = None) -> ServerInfo: ...


@dataclass(frozen=True)
class IncrementalSource:
    """Where an incremental backup starts: a position, and the backup it came from (`FromBackup`)."""

    position: Position
    from_backup: str = ""


@dataclass(frozen=True)
class BackupContext:
    mycnf: MyCnf
    mysqld: MysqldControl
    client: MysqlClient
    state_dir: Path  # work files (never inside the datadir) and the crash record
    params: BackupParams
    codec: Codec  # chosen by the orchestrator, which records it in the MANIFEST
    op: Operation
    handle: BackupHandle
    incremental_from: IncrementalSource | None = None
    cipher: BackupCipher | None = (
        None  # every object encrypted with it (chosen, recorded by the orchestrator)
    )
    limits: IoLimits | None = None  # the operation's rate limits and its children's I/O class


@dataclass(frozen=True)
class BackupOutcome:
    """What the engine learnt while copying; merged into the MANIFEST by the orchestrator."""

    position: str
    purged_position: str
    server_uuid: str
    mysql_version: str
    manifest_fields: dict[str, Any]


@dataclass(frozen=True)
class RestoreTargets:
    """The directories a restore fills: the tablet's own (in place) or staging directories standing in
    for them. Each maps one of the tablet's directories; several may be the same directory."""

    datadir: Path
    innodb_data_home_dir: Path
    innodb_log_group_home_dir: Path
    innodb_undo_directory: Path
    binlog_dir: Path | None
    keep: tuple[Path, ...] = ()  # inside the targets but not the restore's (the agent's state directory)

    @classmethod
    def binlogs_into(cls, directory: Path) -> RestoreTargets:
        """Targets for an incremental backup's binlogs alone."""
        return cls(directory, directory, directory, directory, directory)

    def by_base(self) -> Mapping[FileBase, Path]:
        dirs = {
            FileBase.DATA: self.datadir,
            FileBase.INNODB_DATA: self.innodb_data_home_dir,
            FileBase.INNODB_LOG: self.innodb_log_group_home_dir,
        }
        if self.binlog_dir is not None:
            dirs[FileBase.BINLOG] = self.binlog_dir
        return dirs


@dataclass(frozen=True)
class RestoreContext:
    mycnf: MyCnf  # the tablet's option file: server settings tools need (InnoDB page and log sizes)
    targets: RestoreTargets
    work_dir: Path  # scratch space on the datadir's filesystem, removed by the caller
    codec: Codec
    op: Operation
    handle: BackupHandle
    manifest: Manifest
    concurrency: int
    cipher: BackupCipher | None = None  # the objects are encrypted: the key the MANIFEST names
    limits: IoLimits | None = None


def stored_path(handle: BackupHandle, name: str, label: str = "") -> str:
    """How messages name a stored object: `ks/0/<backup>/17 (t/big.ibd)`."""
    path = f"{handle.directory}/{handle.name}/{name}"
    return f"{path} ({label})" if label and label != name else path


class Engine(Protocol):
    name: str

    async def backup(self, ctx: BackupContext) -> BackupOutcome:
        """Copy the tablet into `ctx.handle`. Must not write MANIFEST; must leave mysqld as it found it."""
        ...

    def stored_objects(self, manifest: Manifest) -> list[ObjectRecord]:
        """The objects a restore of this backup reads, with what the MANIFEST records of each; all are
        checked before anything is touched. DataLoss when the MANIFEST describes no usable layout."""
        ...

    def needed_tools(self, manifest: Manifest) -> list[str]:
        """The programs a restore of this backup runs, resolved now: FailedPrecondition naming the fix
        when one is missing. Checked before anything is touched."""
        ...

    async def restore(self, ctx: RestoreContext) -> None:
        """Fill `ctx.targets` with the backup's files, verified and ready for mysqld to start on (an
        xtrabackup backup prepared). Never touches the tablet's live directories unless they are the
        targets. Whatever it leaves behind on failure is the caller's to remove."""
        ...
