"""Progress of a multi-file copy as operation events, at a bounded rate."""

from __future__ import annotations

import time

from agent.operations import Operation

MIN_INTERVAL = 2.0  # seconds between progress events for one file
STEP = 10  # percent


class FileProgress:
    """Counts one file's bytes into the operation and emits `<verb> "name": N%` every STEP percent,
    at most once per MIN_INTERVAL (and always at 100%)."""

    def __init__(self, op: Operation, verb: str, name: str, total: int) -> None:
        self._op, self._verb, self._name, self._total = op, verb, name, total
        self._done = 0
        self._last_pct = -STEP
        self._last_time = 0.0

    def __call__(self, n: int) -> None:
        self._done += n
        self._op.add_done(n)
        if self._total <= 0:
            return
        pct = min(100, self._done * 100 // self._total)
        now = time.monotonic()
        if pct >= self._last_pct + STEP and (pct == 100 or now - self._last_time >= MIN_INTERVAL):
            self._last_pct, self._last_time = pct - pct % STEP, now
            self._op.info(f'{self._verb} "{self._name}": {pct}%')
