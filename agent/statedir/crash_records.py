"""Durable records that let the next agent start repair what a crashed one left behind.

`offline.json`: written before an offline backup stops replication and mysqld, removed once both are back.
The restore's own record is `statedir.restore_journal`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

OFFLINE_FILE = "offline.json"


class OfflineRecord(BaseModel):
    """What to put back: replication running, read_only/super_read_only, and which backup was partial."""

    model_config = ConfigDict(frozen=True)

    operation_id: str
    backup_directory: str
    backup_name: str
    io_running: bool
    sql_running: bool
    read_only: bool
    super_read_only: bool | None
    started: datetime = Field(default_factory=lambda: datetime.now(UTC))


def write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_offline_record(state_dir: Path, record: OfflineRecord) -> None:
    write_durably(state_dir / OFFLINE_FILE, record.model_dump_json(indent=2).encode())


def read_offline_record(state_dir: Path) -> OfflineRecord | None:
    path = state_dir / OFFLINE_FILE
    try:
        return OfflineRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None


def clear_offline_record(state_dir: Path) -> None:
    (state_dir / OFFLINE_FILE).unlink(missing_ok=True)
