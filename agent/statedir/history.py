"""The last operations, kept in the state directory so `tabletctl status` and the metrics that read them
know the agent's history after a restart (`history.jsonl`, one operation a line, newest last)."""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path

import grpc
from pydantic import BaseModel, ValidationError

from agent.errors import AgentError
from agent.operations import Kind, Operation, Result

HISTORY_FILE = "history.jsonl"


class OperationRecord(BaseModel):
    id: str
    kind: Kind
    phase: str
    bytes_done: int
    bytes_total: int
    started: datetime
    ended: datetime | None
    result: Result
    error: str = ""
    error_code: str = ""
    backup_name: str = ""
    engine: str = ""
    incremental: bool = False

    @classmethod
    def of(cls, op: Operation) -> OperationRecord:
        return cls(
            id=op.id,
            kind=op.kind,
            phase=op.phase,
            bytes_done=op.bytes_done,
            bytes_total=op.bytes_total,
            started=op.started,
            ended=op.ended,
            result=op.result,
            error=str(op.error) if op.error is not None else "",
            error_code=op.error.code.name if op.error is not None else "",
            backup_name=op.backup_name,
            engine=op.engine,
            incremental=op.incremental,
        )

    def operation(self) -> Operation:
        op = Operation(
            kind=self.kind,
            id=self.id,
            phase=self.phase,
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            started=self.started,
            ended=self.ended,
            result=self.result,
            backup_name=self.backup_name,
            engine=self.engine,
            incremental=self.incremental,
        )
        if self.error:
            code = grpc.StatusCode.__members__.get(self.error_code, grpc.StatusCode.UNKNOWN)
            op.error = AgentError(self.error, code)
        return op


def read_history(state_dir: Path) -> list[Operation]:
    """The recorded operations, oldest first; lines that do not parse are skipped."""
    try:
        lines = (state_dir / HISTORY_FILE).read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    ops = []
    for line in lines:
        with contextlib.suppress(ValidationError):
            ops.append(OperationRecord.model_validate_json(line).operation())
    return ops


def append_history(state_dir: Path, op: Operation, limit: int) -> None:
    """Add a finished operation, keeping the newest `limit` (a small file, replaced atomically)."""
    path = state_dir / HISTORY_FILE
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        lines = []
    lines = [*lines, OperationRecord.of(op).model_dump_json()][-limit:]
    tmp = path.with_name(f".{HISTORY_FILE}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)
