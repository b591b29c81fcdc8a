"""The operation history survives a restart of the agent: the last operations, in order, with their errors."""

from __future__ import annotations

from pathlib import Path

import grpc

from agent.errors import DataLoss
from agent.operations import Kind, Operation, Result
from agent.statedir.history import append_history, read_history


def test_history_round_trips_and_keeps_the_newest(tmp_path: Path) -> None:
    for i in range(7):
        op = Operation(kind=Kind.BACKUP, engine="builtin", backup_name=f"b{i}")
        op._finish(
            Result.FAILED if i == 6 else Result.SUCCEEDED, DataLoss("hash mismatch") if i == 6 else None
        )
        append_history(tmp_path, op, limit=5)
    ops = read_history(tmp_path)
    assert [o.backup_name for o in ops] == ["b2", "b3", "b4", "b5", "b6"]
    last = ops[-1]
    assert last.result is Result.FAILED and last.error is not None
    assert str(last.error) == "hash mismatch" and last.error.code is grpc.StatusCode.DATA_LOSS
    assert last.ended is not None and last.done


def test_a_damaged_history_line_is_skipped(tmp_path: Path) -> None:
    op = Operation(kind=Kind.RESTORE)
    op._finish(Result.SUCCEEDED, None)
    append_history(tmp_path, op, limit=5)
    with (tmp_path / "history.jsonl").open("a") as f:
        f.write("{not json\n")
    assert [o.id for o in read_history(tmp_path)] == [op.id]
