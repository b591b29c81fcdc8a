"""The streaming pipeline every engine uses: source -> compress -> hash -> storage, and back.

Data moves in chunks through bounded queues, so a stream of any size runs in the same memory.
Reading, compressing, hashing and writing overlap in threads (zstandard, zlib, lz4 and hashlib
release the GIL) or in an external command, so the event loop stays responsive. A framed codec's
stream (zstd, pgzip) is cut into independent frames compressed several at a time by `Workers`,
shared by the streams of one operation so that CPU threads and frames in flight stay bounded
whatever the number of streams. Hashes: `crc32_hex` is Vitess's `Hash` (CRC-32 IEEE of the stored
bytes as 8 lowercase hex digits); `sha256_hex` is ours, of the original bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import mmap
import os
import threading
import zlib
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from agent.compression import (
    PIECE,
    Buffer,
    Codec,
    CorruptData,
    Decompressor,
    ExternalCodec,
    FramedCodec,
    InProcessCodec,
)
from agent.errors import DataLoss
from agent.localfiles import FileChunks, LocalFile
from agent.procs import PIPE, ProcessError, complete, in_thread, run_concurrently, spawn

if TYPE_CHECKING:
    from agent.storage.base import BackupWriter

_log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK_SIZE = PIECE
QUEUE_DEPTH = 2
BUFFER_UNIT = 1 << 20  # pooled buffers come in multiples of this
RESTORE_BATCH = 2 << 20  # restored files: decoded, hashed and written this much per thread step
Sink = Path | Callable[[bytes], Awaitable[None]]
LineCallback = Callable[[str], None]


@dataclass(frozen=True)
class StoredFile:
    """One object's sizes and hashes: `size`/`sha256_hex` of the original bytes, `stored_size`/
    `crc32_hex` of the bytes as stored."""

    size: int
    stored_size: int
    crc32_hex: str
    sha256_hex: str


def file_chunks(path: Path, chunk_size: int = CHUNK_SIZE) -> FileChunks:
    """A local file's bytes, read in threads. `store` reads it into its own reused buffers."""
    return FileChunks(path, chunk_size)


async def stream_chunks(reader: asyncio.StreamReader, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """A stream's bytes in chunks of `chunk_size` (the last one shorter)."""
    while True:
        try:
            yield await reader.readexactly(chunk_size)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                yield e.partial
            return


async def _aclose(it: object) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


async def _coalesce(source: AsyncIterable[Buffer], chunk_size: int) -> AsyncGenerator[Buffer, None]:
    """Pass large pieces through, gather small ones into about `chunk_size`."""
    buf = bytearray()
    async for piece in source:
        if not buf and len(piece) >= chunk_size // 2:
            yield piece
            continue
        buf += piece
        if len(buf) >= chunk_size:
            yield buf
            buf = bytearray()
    if buf:
        yield buf


class _Digest:
    """A running sha256 or CRC-32, fed in order by a background thread so hashing overlaps other work."""

    def __init__(self, kind: Literal["sha256", "crc32"]) -> None:
        self._sha = hashlib.sha256() if kind == "sha256" else None
        self._crc = 0
        self._pending: asyncio.Future[None] | None = None

    def _update(self, data: Buffer) -> None:
        if self._sha is not None:
            self._sha.update(data)
        else:
            self._crc = zlib.crc32(data, self._crc)

    async def _wait(self) -> None:
        if self._pending is not None:
            # Shielded: a cancelled caller must not orphan a thread still using the data (see close).
            await asyncio.shield(self._pending)

    async def feed(self, data: Buffer) -> None:
        await self._wait()
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._update, data)

    async def hexdigest(self) -> str:
        """sha256: 64 hex digits. CRC-32: 8 hex digits, as Go's hex.EncodeToString of the big-endian uint32."""
        await self._wait()
        return self._sha.hexdigest() if self._sha is not None else f"{self._crc:08x}"

    async def close(self) -> None:
        """Wait for the running update, if any (its error was already reported or is moot)."""
        if self._pending is not None:
            await complete(asyncio.wait([self._pending]))
            if not self._pending.cancelled():
                self._pending.exception()


CODEC_NICENESS = 10


class Workers:
    """CPU threads and memory shared by the streams of one operation.

    Frames of framed codecs are compressed by `threads` threads; at most `2 * threads + 2` frames
    are in flight (read, not yet stored) across all streams, so memory does not grow with their
    number. Buffers are pooled: reading or decoding into fresh memory costs a page fault per
    4 KiB, and buffers allocated by many threads spread over as many malloc arenas.
    Use it as `async with Workers() as w:` and pass it to `store`/`store_striped`/`restore`.
    """

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads if threads > 0 else os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._slots = asyncio.Semaphore(2 * self.threads + 2)
        self._buffers: dict[int, deque[mmap.mmap]] = {}  # free buffers by size (deques: thread-safe)

    async def __aenter__(self) -> Workers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads once their current frames are done; queued frames are dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._buffers.clear()

    async def acquire(self) -> None:
        await self._slots.acquire()

    def release(self) -> None:
        self._slots.release()

    def buffer(self, n: int) -> mmap.mmap:
        """A buffer of at least `n` bytes (a multiple of BUFFER_UNIT). Any thread. Anonymous maps,
        not malloc: their memory goes back to the system when the workers are closed."""
        size = max(1, -(-n // BUFFER_UNIT)) * BUFFER_UNIT
        try:
            return self._buffers[size].pop()
        except (KeyError, IndexError):
            return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def recycle(self, buf: mmap.mmap) -> None:
        """Give back a buffer from `buffer` once nothing uses it any more. Any thread."""
        self._buffers.setdefault(len(buf), deque()).append(buf)

    def submit(self, fn: Callable[[Buffer], T], data: Buffer) -> asyncio.Future[T]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.threads, thread_name_prefix="codec", initializer=_lower_priority
            )
        return asyncio.wrap_future(self._pool.submit(fn, data))


def _lower_priority() -> None:
    """Compression threads yield the CPU to mysqld and to the agent's event loop (Status, cancel)
    whenever those want it: a backup must not starve the database it copies."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CODEC_NICENESS)


async def _frames(source: AsyncIterable[Buffer], size: int) -> AsyncGenerator[Buffer, None]:
    """`source` cut into pieces of exactly `size` bytes (the last one shorter): big pieces are sliced
    without copying, small ones gathered."""
    buf = bytearray()
    async for piece in source:
        view = memoryview(piece)
        if buf:
            take = min(size - len(buf), len(view))
            buf += view[:take]
            view = view[take:]
            if len(buf) < size:
                continue
            yield buf
            buf = bytearray()
        while len(view) >= size:
            yield view[:size]
            view = view[size:]
        buf += view
    if buf:
        yield buf


def _mismatch(name: str, got: str, expected: str) -> DataLoss:
    return DataLoss(f"hash mismatch for {name}, got {got} expected {expected}")


# --- backup direction -------------------------------------------------------------------------


async def store(
    source: AsyncIterable[Buffer],
    writer: BackupWriter,
    codec: Codec,
    *,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
    on_stderr_line: LineCallback | None = None,
    workers: Workers | None = None,
) -> StoredFile:
    """Compress and hash `source` into `writer`.

    On success the writer is closed (durable); on any error or cancellation it is aborted.
    `on_progress` gets the number of original bytes just handled (a delta). A framed codec's frames
    are compressed by `workers` (shared with other streams), or by threads of this call's own.
    """
    try:
        if isinstance(codec, ExternalCodec):
            result = await _store_external(
                source,
                writer,
                codec,
                chunk_size=chunk_size,
                on_progress=on_progress,
                on_stderr_line=on_stderr_line,
            )
        elif isinstance(codec, FramedCodec):
            if workers is None:
                async with Workers(codec.threads) as own:
                    result = await _store_frames(source, writer, codec, own, on_progress)
            else:
                result = await _store_frames(source, writer, codec, workers, on_progress)
        else:
            result = await _store_in_process(source, writer, codec, chunk_size, on_progress)
        await writer.close()
    except BaseException:
        await _abort(writer)
        raise
    finally:
        await _aclose(source)
    return result


async def _abort(writer: BackupWriter) -> None:
    try:
        await complete(writer.abort())
    except Exception as e:  # keep the original error
        _log.warning("aborting a backup writer failed: %s", e)


async def _store_in_process(
    source: AsyncIterable[Buffer],
    writer: BackupWriter,
    codec: InProcessCodec,
    chunk_size: int,
    on_progress: Callable[[int], None] | None,
) -> StoredFile:
    compressor = codec.new_compressor()
    sha, crc = _Digest("sha256"), _Digest("crc32")
    chunks: asyncio.Queue[Buffer | None] = asyncio.Queue(QUEUE_DEPTH)
    outputs: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue(QUEUE_DEPTH)
    size = stored = 0

    async def read() -> None:
        pieces = _coalesce(source, chunk_size)
        try:
            async for chunk in pieces:
                await chunks.put(chunk)
        finally:
            await pieces.aclose()
        await chunks.put(None)

    async def compress() -> None:
        nonlocal size
        while (chunk := await chunks.get()) is not None:
            await sha.feed(chunk)
            out = await in_thread(compressor.compress, chunk)
            size += len(chunk)
            await outputs.put((out, len(chunk)))
        await outputs.put((await in_thread(compressor.flush), 0))
        await outputs.put(None)

    async def write() -> None:
        nonlocal stored
        while (item := await outputs.get()) is not None:
            out, n = item
            if out:
                await crc.feed(out)
                await writer.write(out)
                stored += len(out)
            if n and on_progress is not None:
                on_progress(n)

    try:
        await run_concurrently(read(), compress(), write())
        return StoredFile(size, stored, await crc.hexdigest(), await sha.hexdigest())
    finally:
        compressor.close()
        await sha.close()
        await crc.close()


async def _store_frames(
    source: AsyncIterable[Buffer],
    writer: BackupWriter,
    codec: FramedCodec,
    workers: Workers,
    on_progress: Callable[[int], None] | None,
) -> StoredFile:
    """Frames hashed in order, compressed up to `codec.threads` at a time, stored in order."""
    crc, digest, file_sha = _Digest("crc32"), _Digest("sha256"), hashlib.sha256()
    compressing: asyncio.Queue[tuple[asyncio.Future[bytes], int, mmap.mmap | None] | None]
    compressing = asyncio.Queue(max(1, codec.threads))
    size = stored = held = 0  # held: this stream's slots in `workers`, given back whatever happens

    async def slot() -> None:
        nonlocal held
        await workers.acquire()
        held += 1

    async def put(frame: Buffer, buf: mmap.mmap | None) -> None:
        nonlocal size
        size += len(frame)
        await compressing.put((workers.submit(codec.compress_frame, frame), len(frame), buf))

    async def submit_file(src: FileChunks) -> None:
        nonlocal held
        await in_thread(src.open)
        try:
            while True:
                await slot()
                buf = workers.buffer(codec.frame_size)
                n = await in_thread(src.read_into, memoryview(buf)[: codec.frame_size], file_sha.update)
                if n == 0 and size > 0:
                    workers.recycle(buf)
                    workers.release()
                    held -= 1
                    return
                await put(memoryview(buf)[:n], buf)
                if n == 0:
                    return  # an empty file is one empty frame
        finally:
            src.close()

    async def submit_other() -> None:
        frames = _frames(source, codec.frame_size)
        try:
            async for frame in frames:
                # A slot per complete frame, not per frame being gathered: stripes fed by one
                # splitter must never wait for slots held by others waiting for data.
                await slot()
                await digest.feed(frame)
                await put(frame, None)
        finally:
            await frames.aclose()
        if size == 0:  # an empty stream is one empty frame
            await slot()
            await put(b"", None)

    async def submit() -> None:
        await (submit_file(source) if isinstance(source, FileChunks) else submit_other())
        await compressing.put(None)

    async def write() -> None:
        nonlocal stored, held
        while (item := await compressing.get()) is not None:
            job, n, buf = item
            out = await job
            if buf is not None:
                workers.recycle(buf)
            await crc.feed(out)
            await writer.write(out)
            stored += len(out)
            workers.release()
            held -= 1
            if n and on_progress is not None:
                on_progress(n)

    try:
        await run_concurrently(submit(), write())
        sha = file_sha.hexdigest() if isinstance(source, FileChunks) else await digest.hexdigest()
        return StoredFile(size, stored, await crc.hexdigest(), sha)
    finally:
        for _ in range(held):
            workers.release()
        while not compressing.empty():
            if (item := compressing.get_nowait()) is not None:
                item[0].cancel()  # a buffer still being compressed is dropped, never recycled
        await digest.close()
        await crc.close()


async def _store_external(
    source: AsyncIterable[Buffer],
    writer: BackupWriter,
    codec: ExternalCodec,
    *,
    chunk_size: int,
    on_progress: Callable[[int], None] | None,
    on_stderr_line: LineCallback | None,
) -> StoredFile:
    sha, crc = _Digest("sha256"), _Digest("crc32")
    size = stored = 0
    try:
        async with spawn(codec.compress_argv, stdin=PIPE, stdout=PIPE, on_stderr_line=on_stderr_line) as proc:

            async def feed() -> None:
                nonlocal size
                async for chunk in source:
                    await sha.feed(chunk)
                    await proc.write(chunk)
                    size += len(chunk)
                    if on_progress is not None:
                        on_progress(len(chunk))
                await proc.close_stdin()

            async def drain() -> None:
                nonlocal stored
                async for out in stream_chunks(proc.stdout, chunk_size):
                    await crc.feed(out)
                    await writer.write(out)
                    stored += len(out)

            await run_concurrently(feed(), drain())
        return StoredFile(size, stored, await crc.hexdigest(), await sha.hexdigest())
    finally:
        await sha.close()
        await crc.close()


async def store_striped(
    source: AsyncIterable[Buffer],
    writers: Sequence[BackupWriter],
    codec: Codec,
    *,
    block_size: int,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
    on_stderr_line: LineCallback | None = None,
    workers: Workers | None = None,
) -> list[StoredFile]:
    """Split `source` round-robin in blocks of `block_size` into the writers (xtrabackup stripes),
    each compressed and stored in parallel by its own `store` (sharing `workers`, or threads of
    this call's own). One StoredFile per stripe."""
    n = len(writers)
    if n == 0 or block_size <= 0:
        raise ValueError("store_striped needs writers and a positive block size")
    stripe_chunk = max(block_size, chunk_size // n)
    depth = 2 * (stripe_chunk // block_size + 1)
    queues: list[asyncio.Queue[Buffer | None]] = [asyncio.Queue(depth) for _ in writers]
    results: list[StoredFile | None] = [None] * n

    async def split() -> None:
        stripe = filled = 0
        async for chunk in source:
            view = memoryview(chunk)
            while view:
                take = min(block_size - filled, len(view))
                await queues[stripe].put(view[:take])
                view = view[take:]
                filled += take
                if filled == block_size:
                    stripe, filled = (stripe + 1) % n, 0
        for q in queues:
            await q.put(None)

    async def pieces(q: asyncio.Queue[Buffer | None]) -> AsyncIterator[Buffer]:
        while (piece := await q.get()) is not None:
            yield piece

    async def one(k: int, shared: Workers) -> None:
        results[k] = await store(
            pieces(queues[k]),
            writers[k],
            codec,
            chunk_size=stripe_chunk,
            on_progress=on_progress,
            on_stderr_line=on_stderr_line,
            workers=shared,
        )

    try:
        async with Workers(codec.threads if isinstance(codec, FramedCodec) else 0) as own:
            await run_concurrently(split(), *(one(k, workers or own) for k in range(n)))
    finally:
        await _aclose(source)
    return [r for r in results if r is not None]


# --- restore direction ------------------------------------------------------------------------


class _End:
    pass


class _Decoding:
    """Stored chunks to original bytes with an in-process decompressor. `feed` and `pull` run in
    threads; the CRC-32 of the stored bytes is taken in the same step as their decompression."""

    def __init__(self, decompressor: Decompressor, limit: int) -> None:
        self.decompressor = decompressor
        self._limit = limit
        self._pieces: Iterator[Buffer] = iter(())
        self.crc = self.stored = 0
        self.failure: CorruptData | None = None

    def count(self, chunk: Buffer) -> None:
        self.crc = zlib.crc32(chunk, self.crc)
        self.stored += len(chunk)

    def feed(self, chunk: Buffer, counted: bool) -> tuple[list[Buffer], bool]:
        if not counted:
            self.count(chunk)
        if self.failure is not None:
            return [], False  # keep reading: a CRC mismatch explains the corruption best
        self._pieces = self.decompressor.decompress(chunk)
        return self.pull()

    def pull(self) -> tuple[list[Buffer], bool]:
        """Output pieces of about `limit` bytes together; False once this chunk's are exhausted."""
        out: list[Buffer] = []
        n = 0
        try:
            for piece in self._pieces:
                out.append(piece)
                n += len(piece)
                if n >= self._limit:
                    return out, True
        except CorruptData as e:
            self.failure = e
        return out, False

    async def run(
        self,
        chunks: AsyncIterable[Buffer],
        emit: Callable[[list[Buffer]], Awaitable[None]],
        workers: Workers | None = None,
    ) -> None:
        """Decode `chunks` (read one ahead), handing the pieces to `emit` in order. A local file is
        read into buffers of `workers`, its CRC-32 taken in the reading thread."""
        stored: asyncio.Queue[tuple[Buffer, mmap.mmap | None] | None] = asyncio.Queue(1)

        async def read_file(src: FileChunks, pool: Workers) -> None:
            await in_thread(src.open)
            try:
                while True:
                    buf = pool.buffer(src.chunk_size)
                    n = await in_thread(src.read_into, memoryview(buf)[: src.chunk_size], self.count)
                    if not n:
                        pool.recycle(buf)
                        return
                    await stored.put((memoryview(buf)[:n], buf))
            finally:
                src.close()

        async def read() -> None:
            if isinstance(chunks, FileChunks) and workers is not None:
                await read_file(chunks, workers)
            else:
                async for chunk in chunks:
                    await stored.put((chunk, None))
            await stored.put(None)

        async def decode() -> None:
            while (item := await stored.get()) is not None:
                chunk, buf = item
                pieces, more = await in_thread(self.feed, chunk, buf is not None)
                while True:
                    if pieces:
                        await emit(pieces)
                    if not more:
                        break
                    pieces, more = await in_thread(self.pull)
                if buf is not None and workers is not None:
                    workers.recycle(buf)  # decompressors keep no reference to a chunk they are done with

        await run_concurrently(read(), decode())

    def check(self, name: str, codec: str, expected_crc32_hex: str | None) -> str:
        """At the end: the CRC-32 as hex if it and the stream are sound, else DataLoss."""
        got = f"{self.crc:08x}"
        if expected_crc32_hex is not None and got != expected_crc32_hex:
            raise _mismatch(name, got, expected_crc32_hex)
        try:
            if self.failure is not None:
                raise self.failure
            self.decompressor.finish()
        except CorruptData as e:
            raise DataLoss(f"cannot decompress {name} ({codec}): {e}") from None
        return got


class DecodedStream:
    """The original bytes of one stored object: decompressed and verified in a background task.

    Iterate it to the end: the CRC-32 of the stored bytes, the completeness of the compressed
    stream and the sha256 of the output are checked when it ends, raising DataLoss
    (`hash mismatch for <name>, got <x> expected <y>`). `stats` is set once it ended cleanly.
    Always `aclose()` it (or exhaust it).
    """

    def __init__(
        self,
        chunks: AsyncIterable[Buffer],
        codec: Codec,
        *,
        expected_crc32_hex: str | None,
        expected_sha256_hex: str | None = None,
        name: str,
        chunk_size: int = CHUNK_SIZE,
        on_stderr_line: LineCallback | None = None,
    ) -> None:
        self._chunks = chunks
        self._codec = codec
        self._crc_expected = (expected_crc32_hex or "").lower() or None
        self._sha_expected = (expected_sha256_hex or "").lower() or None
        self._name = name
        self._chunk_size = chunk_size
        self._on_line = on_stderr_line
        self._out: asyncio.Queue[bytes | _End | Exception] = asyncio.Queue(1)
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self._sha, self._crc = _Digest("sha256"), _Digest("crc32")
        self._size = self._stored = 0
        self._crc_hex = ""
        self.stats: StoredFile | None = None

    def __aiter__(self) -> DecodedStream:
        return self

    async def __anext__(self) -> bytes:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        item = await self._out.get()
        if isinstance(item, bytes):
            return item
        self._finished = True
        if isinstance(item, Exception):
            raise item
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._finished = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
        elif self._task is None:
            await _aclose(self._chunks)
        await self._sha.close()
        await self._crc.close()

    async def _emit(self, data: bytes) -> None:
        await self._sha.feed(data)
        self._size += len(data)
        await self._out.put(data)

    async def _run(self) -> None:
        try:
            if isinstance(self._codec, ExternalCodec):
                await self._run_external(self._codec)
            else:
                await self._run_in_process(self._codec)
            sha = await self._sha.hexdigest()
            if self._sha_expected is not None and sha != self._sha_expected:
                raise _mismatch(self._name, sha, self._sha_expected)
            self.stats = StoredFile(self._size, self._stored, self._crc_hex, sha)
            await self._out.put(_End())
        except Exception as e:
            await self._out.put(e)
        finally:
            await _aclose(self._chunks)

    def _check_crc(self, got: str) -> None:
        self._crc_hex = got
        if self._crc_expected is not None and got != self._crc_expected:
            raise _mismatch(self._name, got, self._crc_expected)

    async def _run_in_process(self, codec: InProcessCodec) -> None:
        decoding = _Decoding(codec.new_decompressor(), self._chunk_size)

        async def emit(pieces: list[Buffer]) -> None:
            for piece in pieces:
                await self._emit(piece if isinstance(piece, bytes) else bytes(piece))

        await decoding.run(self._chunks, emit)
        self._stored = decoding.stored
        self._crc_hex = decoding.check(self._name, codec.name, self._crc_expected)

    async def _run_external(self, codec: ExternalCodec) -> None:
        argv = codec.decompress_argv
        async with spawn(argv, stdin=PIPE, stdout=PIPE, on_stderr_line=self._on_line) as proc:

            async def feed() -> None:
                failure: ProcessError | None = None
                async for chunk in self._chunks:
                    self._stored += len(chunk)
                    await self._crc.feed(chunk)
                    if failure is None:
                        try:
                            await proc.write(chunk)
                        except ProcessError as e:
                            failure = e  # keep reading: a CRC mismatch explains the failure best
                self._check_crc(await self._crc.hexdigest())
                if failure is not None:
                    raise failure
                await proc.close_stdin()

            async def drain() -> None:
                async for data in stream_chunks(proc.stdout, self._chunk_size):
                    await self._emit(data)

            await run_concurrently(feed(), drain())


async def restore(
    chunks: AsyncIterable[Buffer],
    codec: Codec,
    dest: Sink,
    *,
    expected_crc32_hex: str | None,
    expected_sha256_hex: str | None = None,
    name: str,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
    on_stderr_line: LineCallback | None = None,
    sync: bool = True,
    workers: Workers | None = None,
) -> StoredFile:
    """Decompress stored `chunks` into `dest`, verifying the stored CRC-32 and the original sha256
    (either may be None when the MANIFEST has none). DataLoss on any mismatch or corruption.

    `dest` is a local file (created 0o640 with its parents, removed on failure; fsync'd unless
    `sync` is False: then the caller syncs it, e.g. many files at once) or an async callable such
    as a subprocess's stdin writer. `workers` lends its buffers (shared with other streams).
    """
    if isinstance(dest, Path) and not isinstance(codec, ExternalCodec):
        async with Workers(1) as own:  # its buffers, if none are lent
            return await _restore_file(
                chunks,
                codec,
                LocalFile(dest),
                workers or own,
                expected_crc32_hex=(expected_crc32_hex or "").lower() or None,
                expected_sha256_hex=(expected_sha256_hex or "").lower() or None,
                name=name,
                limit=min(chunk_size, RESTORE_BATCH),
                on_progress=on_progress,
                sync=sync,
            )
    local = LocalFile(dest) if isinstance(dest, Path) else None
    if local is not None:
        await in_thread(local.open)
    stream = DecodedStream(
        chunks,
        codec,
        expected_crc32_hex=expected_crc32_hex,
        expected_sha256_hex=expected_sha256_hex,
        name=name,
        chunk_size=chunk_size,
        on_stderr_line=on_stderr_line,
    )
    try:
        async for chunk in stream:
            if local is not None:
                await in_thread(local.write, chunk)
            elif not isinstance(dest, Path):
                await dest(chunk)
            if on_progress is not None:
                on_progress(len(chunk))
        await stream.aclose()
        if local is not None:
            await in_thread(local.finish, sync)
    except BaseException:
        await stream.aclose()
        if local is not None:
            await complete(in_thread(local.discard))
        raise
    assert stream.stats is not None
    return stream.stats


async def _restore_file(
    chunks: AsyncIterable[Buffer],
    codec: InProcessCodec,
    local: LocalFile,
    workers: Workers,
    *,
    expected_crc32_hex: str | None,
    expected_sha256_hex: str | None,
    name: str,
    limit: int,
    on_progress: Callable[[int], None] | None,
    sync: bool,
) -> StoredFile:
    """`restore` into a local file: whole frames are decoded into pooled buffers, and each batch is
    hashed and written in one thread step (while in cache) as the next one is decoded."""
    outputs: set[int] = set()  # the buffers handed to the decompressor, to give back after writing

    def output(n: int) -> memoryview:
        buf = workers.buffer(n)
        outputs.add(id(buf))
        return memoryview(buf)

    decoding = _Decoding(codec.new_decompressor(output=output), limit)
    sha = hashlib.sha256()
    size = 0
    writing: asyncio.Future[None] | None = None

    def write(pieces: list[Buffer]) -> None:
        for piece in pieces:
            sha.update(piece)
            local.write(piece)
            if (
                isinstance(piece, memoryview)
                and isinstance(piece.obj, mmap.mmap)
                and id(piece.obj) in outputs
            ):
                outputs.discard(id(piece.obj))
                workers.recycle(piece.obj)

    async def emit(pieces: list[Buffer]) -> None:
        nonlocal writing, size
        if writing is not None:
            await asyncio.shield(writing)
        writing = asyncio.get_running_loop().run_in_executor(None, write, pieces)
        n = sum(len(p) for p in pieces)
        size += n
        if on_progress is not None:
            on_progress(n)

    await in_thread(local.open)
    try:
        await decoding.run(chunks, emit, workers)
        if writing is not None:
            await asyncio.shield(writing)
        crc_hex = decoding.check(name, codec.name, expected_crc32_hex)
        sha_hex = sha.hexdigest()
        if expected_sha256_hex is not None and sha_hex != expected_sha256_hex:
            raise _mismatch(name, sha_hex, expected_sha256_hex)
        await in_thread(local.finish, sync)
    except BaseException:
        if writing is not None:  # its thread must be done with the file before it is removed
            await complete(asyncio.wait([writing]))
            if not writing.cancelled():
                writing.exception()
        await complete(in_thread(local.discard))
        raise
    finally:
        await _aclose(chunks)
    return StoredFile(size, decoding.stored, crc_hex, sha_hex)


class _BlockReader:
    def __init__(self, source: AsyncIterable[bytes]) -> None:
        self._it = aiter(source)
        self._buf = memoryview(b"")
        self._eof = False

    async def read(self, n: int) -> bytes:
        """Exactly n bytes, fewer only at the end."""
        parts: list[memoryview] = []
        while n and not self._eof:
            if not self._buf:
                try:
                    self._buf = memoryview(await anext(self._it))
                except StopAsyncIteration:
                    self._eof = True
                    break
            part = self._buf[:n]
            self._buf = self._buf[len(part) :]
            parts.append(part)
            n -= len(part)
        return b"".join(parts)


async def unstripe(
    streams: Sequence[AsyncIterable[bytes]], block_size: int, *, chunk_size: int = CHUNK_SIZE
) -> AsyncIterator[bytes]:
    """Reassemble stripes written by `store_striped` (each already decompressed, e.g. DecodedStreams):
    `block_size` bytes from each stream in turn. DataLoss if their lengths do not fit together."""
    readers = [_BlockReader(s) for s in streams]
    out = bytearray()
    try:
        while True:
            for r in readers:
                block = await r.read(block_size)
                out += block
                if len(block) < block_size:
                    for other in readers:
                        if await other.read(1):
                            raise DataLoss(
                                f"the {len(readers)} stripes have inconsistent lengths: "
                                "one ended while another has more data"
                            )
                    if out:
                        yield bytes(out)
                    return
                if len(out) >= chunk_size:
                    yield bytes(out)
                    out = bytearray()
    finally:
        for s in streams:
            await _aclose(s)
