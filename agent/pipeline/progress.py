"""Progress of one file of a multi-file copy: its bytes counted into the operation (whose summary lines
say where it stands), a debug line when the file is done."""

from __future__ import annotations

from agent.operations import Operation


class FileProgress:
    """Counts one file's bytes into the operation; `<verb> <name>` at debug level once it is done."""

    def __init__(self, op: Operation, verb: str, name: str, total: int) -> None:
        self._op, self._verb, self._name, self._total = op, verb, name, total
        self._done = 0

    def __call__(self, n: int) -> None:
        self._done += n
        self._op.add_done(n)
        if self._total > 0 and self._done >= self._total and self._done - n < self._total:
            self._op.debug(f"{self._verb} {self._name}: done", file=self._name, bytes=self._done)
