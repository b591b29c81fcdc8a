"""Following a backup or restore: its events, and its progress (bytes, rate, ETA, phase) read from
Status while it runs. On a terminal a live bar under the events; otherwise plain progress lines."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from agent.ctl.render import Console, format_event, human_size, print_event
from agent.pb import agentdata_pb2, logutil_pb2

POLL_INTERVAL = 0.5
PLAIN_EVERY = 10.0  # seconds between plain progress lines


def progress_line(op: agentdata_pb2.Operation) -> str:
    done, total = op.bytes_done / 2**20, op.bytes_total / 2**20
    pct = f"{op.bytes_done * 100 // op.bytes_total}% " if op.bytes_total else ""
    eta = f", ETA {op.eta_seconds:.0f}s" if op.eta_seconds > 0 else ""
    return f"progress: {pct}{done:.0f}/{total:.0f} MiB at {op.rate_bytes_per_second / 2**20:.1f} MiB/s{eta} ({op.phase})"


async def _current(stub: Any, timeout: float) -> agentdata_pb2.Operation | None:
    with contextlib.suppress(Exception):  # progress is best effort: the event stream decides the outcome
        status = await stub.Status(agentdata_pb2.StatusRequest(finished_operations=0), timeout=timeout)
        if status.HasField("current_operation"):
            op: agentdata_pb2.Operation = status.current_operation
            return op
    return None


async def follow(stub: Any, events: AsyncIterator[logutil_pb2.Event], *, tty: bool | None = None) -> None:
    """Print `events` until the stream ends (its error propagates), showing progress meanwhile."""
    tty = sys.stdout.isatty() if tty is None else tty
    if not tty:
        await _follow_plain(stub, events)
        return
    console = Console()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        SpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)
        poller = asyncio.create_task(_poll_bar(stub, bar, task))
        try:
            async for event in events:
                console.print(format_event(event), highlight=False, markup=False)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller


class SpeedColumn(ProgressColumn):
    """The transfer rate in binary units, like the byte counts beside it (rich's own is decimal)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{human_size(speed)}/s", style="progress.data.speed")


async def _poll_bar(stub: Any, bar: Progress, task: TaskID) -> None:
    while True:
        op = await _current(stub, POLL_INTERVAL * 4)
        if op is not None:
            bar.update(task, description=op.phase, completed=op.bytes_done, total=op.bytes_total or None)
        await asyncio.sleep(POLL_INTERVAL)


async def _follow_plain(stub: Any, events: AsyncIterator[logutil_pb2.Event]) -> None:
    async def report() -> None:
        while True:
            await asyncio.sleep(PLAIN_EVERY)
            op = await _current(stub, 5.0)
            if op is not None and op.bytes_total:
                print(progress_line(op), flush=True)

    reporter = asyncio.create_task(report())
    try:
        async for event in events:
            print_event(event)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
