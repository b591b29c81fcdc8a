"""The restore journal: each step of a restore, written durably before it is taken, with what the tablet
was before anything changed (read-only state, replication threads, type), so an agent that starts
after a crash finishes or rolls back the restore from it and never leaves a writable tablet.

A staged restore goes STAGING -> SWAP_ASIDE -> SWAP_IN -> SWAPPED -> STARTED -> COMMITTED; before
COMMITTED any failure (or a crash) rolls back: ROLLBACK_OUT -> ROLLBACK_BACK -> ROLLED_BACK. An
in-place restore goes IN_PLACE, and after a crash its datadir is not to be trusted.

Failure injection for the fault tests: with `TABLET_AGENT_PAUSE_AFTER_RESTORE_STEP=<step>` in its
environment the agent stops for an hour right after durably recording that step, so a test can kill it
exactly there.
"""

from __future__ import annotations

import enum
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.aio.localfiles import write_durably

JOURNAL_FILE = "restore.json"
PAUSE_ENV = "TABLET_AGENT_PAUSE_AFTER_RESTORE_STEP"


class Step(enum.StrEnum):
    STAGING = "staging"  # filling staging directories; the tablet is untouched and serving
    SWAP_ASIDE = "swap_aside"  # mysqld stopped; moving the live entries aside
    SWAP_IN = "swap_in"  # moving the staged entries in
    SWAPPED = "swapped"  # the restored data is in place; mysqld not started yet
    STARTED = "started"  # mysqld runs on the restored data (read-only)
    COMMITTED = "committed"  # the restore succeeded; the previous data may be dropped
    ROLLBACK_OUT = "rollback_out"  # moving the restored entries out again
    ROLLBACK_BACK = "rollback_back"  # moving the previous entries back
    ROLLED_BACK = "rolled_back"  # the previous data is back; mysqld and its state to restore
    IN_PLACE = "in_place"  # the live directories are being cleared and refilled


class CapturedState(BaseModel):
    """What the tablet was before the restore changed anything."""

    model_config = ConfigDict(frozen=True)

    mysqld_running: bool
    read_only: bool
    super_read_only: bool | None
    io_running: bool
    sql_running: bool
    source: str  # "host:port" of the replication source, "" when none (for messages)
    tablet_type: str


class SwapTargetRecord(BaseModel):
    """One directory whose entries are swapped: `stems` None means every entry but `keep`."""

    model_config = ConfigDict(frozen=True)

    live: Path
    staged: Path
    previous: Path
    stems: tuple[str, ...] | None
    keep: tuple[str, ...]


class RestoreJournal(BaseModel):
    model_config = ConfigDict(frozen=True)

    operation_id: str
    backup: str  # `<keyspace>/<shard>/<name>`, for messages
    step: Step
    captured: CapturedState
    targets: tuple[SwapTargetRecord, ...] = ()
    work_dir: Path | None = None  # scratch space of the restore, removed when it is settled
    keep_previous: bool = False
    error: str = ""  # why a rollback started
    updated: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def staged(self) -> bool:
        return self.step is not Step.IN_PLACE


def write_journal(state_dir: Path, journal: RestoreJournal) -> None:
    write_durably(state_dir / JOURNAL_FILE, journal.model_dump_json(indent=2).encode())
    if os.environ.get(PAUSE_ENV) == journal.step.value:
        time.sleep(3600)  # failure injection: see the module docstring


def read_journal(state_dir: Path) -> RestoreJournal | None:
    try:
        return RestoreJournal.model_validate_json((state_dir / JOURNAL_FILE).read_bytes())
    except FileNotFoundError:
        return None


def clear_journal(state_dir: Path) -> None:
    (state_dir / JOURNAL_FILE).unlink(missing_ok=True)
