"""Tasks and blocking calls without losing work to cancellation: `in_thread` (a blocking call in a
thread), `complete` (cleanup that must finish), `run_concurrently` and `for_each` (sibling tasks whose
first failure cancels the rest)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in the default executor.

    If the caller is cancelled, the cancellation propagates only after the call has returned, so
    cleanup code never closes a file descriptor or reuses a buffer the thread is still using.
    """
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, functools.partial(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        fut.add_done_callback(_consume_result)
        await asyncio.wait([fut])
        raise


async def complete(aw: Awaitable[T]) -> T:
    """Await `aw` to the end even if the caller is cancelled meanwhile (cleanup that must finish);
    the cancellation is re-raised afterwards."""
    fut = asyncio.ensure_future(aw)
    cancelled = False
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            if fut.done() and fut.cancelled():
                raise
            cancelled = True
    if cancelled:
        fut.add_done_callback(_consume_result)
        raise asyncio.CancelledError
    return fut.result()


def _consume_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def run_concurrently(*coros: Coroutine[Any, Any, object]) -> None:
    """Run coroutines as tasks; on the first failure cancel the rest, wait for them, raise that error.

    Unlike TaskGroup the original exception propagates as itself, not wrapped in an ExceptionGroup.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks)
        raise
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
    errors = [e for t in tasks if not t.cancelled() and (e := t.exception()) is not None]  # retrieves all
    first = [e for t in tasks if t in done and not t.cancelled() and (e := t.exception()) is not None]
    if first or errors:
        raise (first or errors)[0]
    if any(t.cancelled() for t in tasks):
        raise asyncio.CancelledError


async def for_each(
    items: Sequence[T], fn: Callable[[int, T], Coroutine[Any, Any, object]], concurrency: int
) -> None:
    """Call `fn(index, item)` for every item, at most `concurrency` at a time, in the given order;
    the first failure cancels the rest and propagates as itself."""
    queue = iter(list(enumerate(items)))

    async def worker() -> None:
        for i, item in queue:
            await fn(i, item)

    await run_concurrently(*(worker() for _ in range(max(1, min(concurrency, len(items))))))
