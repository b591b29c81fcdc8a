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
    """Run coroutines as sibling tasks of a TaskGroup: the first failure cancels the rest, which are
    awaited. The first error propagates as itself (not as an ExceptionGroup), so callers catch what
    they expect; errors of other tasks failing at the same time are attached to it as notes."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except BaseExceptionGroup as eg:
        first, *others = _leaves(eg)
        for other in others:
            first.add_note(f"also failed meanwhile: {type(other).__name__}: {other}")
        raise first from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


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
