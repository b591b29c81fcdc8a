"""A read-write backup handle that remembers every object written through it and its size, so the
orchestrator can check that storage really holds them all before it seals the backup with a MANIFEST."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from agent.storage.base import BackupHandle, BackupWriter, Buffer, object_sizes, put_objects


class _CountingWriter:
    def __init__(self, inner: BackupWriter, on_close: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_close = on_close
        self._count = 0

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.write(data)
        self._count += len(data)

    async def close(self) -> None:
        await self._inner.close()
        self._on_close(self._count)

    async def abort(self) -> None:
        await self._inner.abort()


class RecordingHandle:
    """Delegates to `inner`; `written` maps each closed object to the bytes written into it."""

    def __init__(self, inner: BackupHandle) -> None:
        self._inner = inner
        self.written: dict[str, int] = {}

    @property
    def directory(self) -> str:
        return self._inner.directory

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def read_only(self) -> bool:
        return self._inner.read_only

    async def add_file(self, filename: str, size_hint: int = -1) -> BackupWriter:
        writer = await self._inner.add_file(filename, size_hint)

        def closed(n: int) -> None:
            self.written[filename] = n

        return _CountingWriter(writer, closed)

    def read_file(self, filename: str) -> AsyncIterator[bytes]:
        return self._inner.read_file(filename)

    async def file_size(self, filename: str) -> int | None:
        return await self._inner.file_size(filename)

    async def put_record(self, filename: str, data: bytes) -> None:
        await self._inner.put_record(filename, data)

    async def put_objects(self, objects: Sequence[tuple[str, Buffer]]) -> None:
        await put_objects(self._inner, objects)
        for name, data in objects:
            self.written[name] = len(data)

    async def make_durable(self) -> None:
        await self._inner.make_durable()

    async def end(self) -> None:
        await self._inner.end()

    async def abort(self) -> None:
        await self._inner.abort()

    async def unsealable(self) -> list[str]:
        """Every written object that storage no longer holds with the size written, described."""
        names = sorted(self.written)
        sizes = await object_sizes(self._inner, names)
        problems = []
        for name, size in zip(names, sizes, strict=True):
            if size is None:
                problems.append(f"{name} is missing")
            elif size != self.written[name]:
                problems.append(f"{name} has {size} bytes where {self.written[name]} were written")
        return problems
