"""Operations owned by the daemon: one backup or restore at a time, with progress, result and an event log.

An operation runs as its own task, so it survives the client that started it disconnecting. RPC streams
are watchers: each gets the backlog from the start of the operation, then live events, until it ends.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc

from agent.errors import AgentError, Cancelled, FailedPrecondition, NotFound, NothingToBackup
from agent.log import get_logger

EVENT_LOG_LIMIT = 20_000
PROGRESS_EVERY = 10.0  # seconds between progress summaries of a running operation
HISTORY_LIMIT = 100
BACKGROUND_WAIT = 60.0  # seconds a request waits for an operation the agent started itself

log = get_logger("agent.operations")


class Level(enum.IntEnum):
    """Mirrors logutil.Level."""

    INFO = 0
    WARNING = 1
    ERROR = 2
    CONSOLE = 3


class Kind(enum.StrEnum):
    BACKUP = "backup"
    RESTORE = "restore"
    VERIFY = "verify"


class Result(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NOTHING_TO_DO = "nothing_to_do"


@dataclass(frozen=True)
class PhaseTiming:
    """How long one phase of an operation took and how many bytes it moved (like Vitess's backup stats)."""

    phase: str
    seconds: float
    bytes: int


@dataclass(frozen=True)
class Event:
    time: datetime
    level: Level
    message: str  # readable on its own (Vitess's clients show only this)
    file: str = ""
    line: int = 0
    fields: Mapping[str, object] = field(default_factory=dict)  # phase, file, bytes, rate, ...


@dataclass
class Operation:
    """A running or finished operation. Mutated only by its own task and the runner."""

    kind: Kind
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    phase: str = "starting"
    bytes_done: int = 0
    bytes_total: int = 0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended: datetime | None = None
    result: Result = Result.RUNNING
    error: AgentError | None = None
    backup_name: str = ""
    engine: str = ""
    incremental: bool = False
    dry_run: bool = False  # a restore that only checks: not counted as a restore in the metrics
    background: bool = False  # started by the agent itself (binlog archiving): requests wait for it
    timings: list[PhaseTiming] = field(default_factory=list)  # the phases so far, with their durations
    _events: deque[Event] = field(default_factory=lambda: deque(maxlen=EVENT_LOG_LIMIT), repr=False)
    _dropped: int = 0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _rate_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=32), repr=False)
    _phase_key: str = field(default="", repr=False)
    _phase_started: float = field(default=0.0, repr=False)
    _phase_bytes: int = field(default=0, repr=False)

    # --- reporting, used by engines and orchestration ---

    def emit(self, level: Level, message: str, **fields: object) -> None:
        if len(self._events) == self._events.maxlen:
            self._dropped += 1
        self._events.append(Event(datetime.now(UTC), level, message, fields=fields))
        severity = 20 if level is Level.INFO else 30 if level is Level.WARNING else 40
        log.log(severity, message, op=self.id, **fields)
        self._notify()

    def info(self, message: str, **fields: object) -> None:
        self.emit(Level.INFO, message, **fields)

    def warning(self, message: str, **fields: object) -> None:
        self.emit(Level.WARNING, message, **fields)

    def debug(self, message: str, **fields: object) -> None:
        """Detail (a file copied, a tool's stderr line): the agent's log at debug level, not an event."""
        log.debug(message, op=self.id, **fields)

    def set_phase(self, phase: str, detail: str = "") -> None:
        """Enter a phase (a fixed name: it labels metrics) with an optional detail for the text."""
        self._close_phase()
        self.phase = phase if not detail else f"{phase} ({detail})"
        self._phase_key, self._phase_started, self._phase_bytes = phase, time.monotonic(), self.bytes_done
        self.info(f"phase: {self.phase}", phase=phase)

    def _close_phase(self) -> None:
        if self._phase_key:
            self.timings.append(
                PhaseTiming(
                    self._phase_key,
                    time.monotonic() - self._phase_started,
                    self.bytes_done - self._phase_bytes,
                )
            )
            self._phase_key = ""

    def progress_summary(self) -> None:
        """One line of where the operation stands: bytes, rate, ETA."""
        if self.bytes_total <= 0:
            return
        pct = min(100.0, 100.0 * self.bytes_done / self.bytes_total)
        rate = self.rate
        eta = f", ETA {self.eta:.0f}s" if rate > 0 else ""
        self.info(
            f"{self.phase}: {_mib(self.bytes_done)} of {_mib(self.bytes_total)} ({pct:.0f}%), "
            f"{_mib(int(rate))}/s{eta}",
            phase=self.phase,
            bytes=self.bytes_done,
            total=self.bytes_total,
            rate=round(rate),
        )

    def add_total(self, n: int) -> None:
        self.bytes_total += n

    def add_done(self, n: int) -> None:
        self.bytes_done += n
        now = time.monotonic()
        if not self._rate_samples or now - self._rate_samples[-1][0] >= 0.25:
            self._rate_samples.append((now, self.bytes_done))

    # --- state ---

    @property
    def done(self) -> bool:
        return self.result is not Result.RUNNING

    @property
    def rate(self) -> float:
        """Bytes per second over the last few seconds."""
        if len(self._rate_samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._rate_samples[0], self._rate_samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def eta(self) -> float:
        rate = self.rate
        left = self.bytes_total - self.bytes_done
        return left / rate if rate > 0 and left > 0 else 0.0

    @property
    def duration(self) -> float:
        end = self.ended or datetime.now(UTC)
        return (end - self.started).total_seconds()

    def _notify(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def _finish(self, result: Result, error: AgentError | None) -> None:
        self._close_phase()
        self.result, self.error, self.ended = result, error, datetime.now(UTC)
        if error is not None:
            self.emit(Level.ERROR if result is Result.FAILED else Level.WARNING, str(error))
        self.emit(Level.INFO, f"{self.kind} {result} after {self.duration:.1f}s")

    async def wait(self) -> None:
        """Until the operation has ended (its result and error are then set)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def watch(self) -> AsyncIterator[Event]:
        """Every event from the start (as far as the bounded log holds), then live ones, until the end."""
        seen = 0
        while True:
            wakeup = self._wakeup
            start = max(seen, self._dropped)
            batch = list(itertools.islice(self._events, start - self._dropped, None))
            for event in batch:
                yield event
            seen = start + len(batch)
            if seen < self._dropped + len(self._events):
                continue  # more arrived while the watcher was reading
            if self.done:
                return
            await wakeup.wait()


Work = Callable[[Operation], Awaitable[None]]


class OperationRunner:
    """Runs at most one operation at a time for this tablet and remembers the last finished ones."""

    def __init__(self, tablet_alias: str, history: int = HISTORY_LIMIT) -> None:
        self._alias = tablet_alias
        self._current: Operation | None = None
        self._finished: deque[Operation] = deque(maxlen=history)
        self._start_hooks: list[Callable[[Operation], None]] = []
        self._finish_hooks: list[Callable[[Operation], None]] = []

    @property
    def current(self) -> Operation | None:
        op = self._current
        return op if op is not None and not op.done else None

    def remember(self, ops: list[Operation]) -> None:
        """Operations of earlier runs of the agent (oldest first), as the start of the history."""
        for op in ops:
            self._finished.append(op)

    @property
    def finished(self) -> list[Operation]:
        """Newest first."""
        return list(reversed(self._finished))

    def on_start(self, hook: Callable[[Operation], None]) -> None:
        """Call `hook` as an operation starts, before its work runs. Hooks must not block: they run on the
        caller's path (the RPC that starts the operation)."""
        self._start_hooks.append(hook)

    def on_finish(self, hook: Callable[[Operation], None]) -> None:
        """Call `hook` when an operation has ended, whatever its result."""
        self._finish_hooks.append(hook)

    async def wait_for_background(self, timeout: float = BACKGROUND_WAIT) -> None:
        """Let an operation the agent started itself (a short binlog shipment) end before a request's."""
        running = self.current
        if running is not None and running.background and running._task is not None:
            await asyncio.wait({running._task}, timeout=timeout)

    def start(
        self,
        kind: Kind,
        work: Work,
        *,
        engine: str = "",
        incremental: bool = False,
        background: bool = False,
        dry_run: bool = False,
    ) -> Operation:
        running = self.current
        if running is not None:
            raise FailedPrecondition(
                f"a {running.kind} is already running on tablet: {self._alias} (operation {running.id}; "
                "wait for it or cancel it with `tabletctl cancel`)"
            )
        op = Operation(
            kind=kind, engine=engine, incremental=incremental, background=background, dry_run=dry_run
        )
        self._current = op
        for hook in self._start_hooks:
            try:
                hook(op)
            except Exception:
                log.exception("operation start hook failed", op=op.id)
        op._task = asyncio.create_task(self._run(op, work), name=f"{kind}-{op.id}")
        return op

    async def _run(self, op: Operation, work: Work) -> None:
        ticker = asyncio.create_task(_tick(op))
        try:
            await work(op)
        except NothingToBackup as e:
            op._finish(Result.NOTHING_TO_DO, e)
        except asyncio.CancelledError:
            op._finish(Result.CANCELLED, Cancelled(f"{op.kind} {op.id} was cancelled"))
        except AgentError as e:
            for note in getattr(e, "__notes__", ()):
                op.warning(note)
            op._finish(Result.FAILED, e)
        except Exception as e:
            log.exception("operation crashed", op=op.id)
            op._finish(Result.FAILED, AgentError(f"internal error: {type(e).__name__}: {e}"))
        else:
            op._finish(Result.SUCCEEDED, None)
        finally:
            ticker.cancel()
            self._finished.append(op)
            for hook in self._finish_hooks:
                try:
                    hook(op)
                except Exception:
                    log.exception("operation finish hook failed", op=op.id)

    def get(self, op_id: str) -> Operation:
        if not op_id:
            if self._current is None:
                raise NotFound("no operation has run on this tablet yet")
            return self._current
        if self._current is not None and self._current.id == op_id:
            return self._current
        for op in self._finished:
            if op.id == op_id:
                return op
        raise NotFound(f"no operation with id {op_id!r}; `tabletctl status` lists recent operations")

    def request_cancel(self, op_id: str = "", reason: str = "cancel requested") -> Operation:
        """Cancel an operation without waiting for its cleanup (it runs in the operation's own task)."""
        op = self.get(op_id)
        if op.done:
            raise FailedPrecondition(f"operation {op.id} already ended: {op.result}")
        op.warning(reason)
        if op._task is not None:
            op._task.cancel()
        return op

    async def cancel(self, op_id: str = "") -> Operation:
        """Cancel an operation and wait until its cleanup (mysqld restart, replication) is done."""
        op = self.request_cancel(op_id)
        if op._task is not None:
            await asyncio.wait({op._task})
        return op

    async def shutdown(self, timeout: float) -> None:
        """Cancel the running operation (it restores mysqld as on failure) and wait up to `timeout`."""
        op = self.current
        if op is None or op._task is None:
            return
        op.warning("agent is stopping: cancelling the operation")
        op._task.cancel()
        await asyncio.wait({op._task}, timeout=timeout)


async def _tick(op: Operation) -> None:
    """A progress summary every PROGRESS_EVERY seconds while the operation runs."""
    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        op.progress_summary()


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def error_status(op: Operation) -> tuple[grpc.StatusCode, str] | None:
    """The RPC status an operation's stream ends with (None for success)."""
    if op.result is Result.SUCCEEDED:
        return None
    err = op.error or AgentError(f"{op.kind} ended: {op.result}")
    return err.code, str(err)
