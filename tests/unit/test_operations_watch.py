import asyncio

from agent.operations import Kind, OperationRunner


async def test_a_slow_watcher_gets_every_event_in_order() -> None:
    runner = OperationRunner("zone1-0000000102")

    async def work(op) -> None:  # type: ignore[no-untyped-def]
        for i in range(1000):
            op.info(f"event {i}")
            if i % 7 == 0:
                await asyncio.sleep(0)

    op = runner.start(Kind.BACKUP, work)
    seen = []
    async for event in op.watch():
        seen.append(event.message)
        await asyncio.sleep(0)  # the watcher is slower than the producer
    numbered = [m for m in seen if m.startswith("event ")]
    assert numbered == [f"event {i}" for i in range(1000)]
    assert seen[-1].startswith("backup succeeded")
