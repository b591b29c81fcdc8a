"""The parameters of a backup and of a restore, as the operations get them (validated by the daemon)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent.config import EngineName


@dataclass(frozen=True)
class InitSQL:
    queries: tuple[str, ...]
    tablet_types: tuple[str, ...]
    timeout: float
    fail_on_error: bool


@dataclass(frozen=True)
class BackupParams:
    concurrency: int
    allow_primary: bool
    incremental_from_pos: str  # "" (full), "auto", or a position (flavor prefix optional)
    upgrade_safe: bool
    engine: EngineName
    mysql_shutdown_timeout: float
    init_sql: InitSQL | None
    max_disk_rate: int | None = None  # bytes/s: lowers --backup_max_rate for this backup
    max_storage_rate: int | None = None  # bytes/s: lowers --storage_max_rate for this backup

    @property
    def incremental(self) -> bool:
        return bool(self.incremental_from_pos)


@dataclass(frozen=True)
class RestoreParams:
    backup_time: datetime | None
    restore_to_pos: str
    restore_to_timestamp: datetime | None
    dry_run: bool
    allowed_engines: tuple[str, ...]
    in_place: bool = False  # restore into the live directories (after a verification pass)
    over_existing_data: bool = False  # allow a writable, source-less mysqld holding user schemas

    @property
    def point_in_time(self) -> bool:
        return bool(self.restore_to_pos) or self.restore_to_timestamp is not None
