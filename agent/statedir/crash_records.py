"""Durable records that let the next agent start repair what a crashed one left behind.

`offline.json`: written before an offline backup stops replication and mysqld, removed once both are back.
The restore's own record is `statedir.restore_journal`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.aio.localfiles import write_durably

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
