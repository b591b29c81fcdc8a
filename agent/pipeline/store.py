"""The streaming pipeline every engine uses: source -> compress -> [encrypt] -> hash -> storage (the way
back is `pipeline.load`; threads and buffers are `pipeline.workers`, hashes `pipeline.digests`,
encryption `pipeline.encryption`, rate limits `pipeline.ratelimit`).

Data moves in chunks through bounded queues, so a stream of any size runs in the same memory.
Reading, compressing, hashing and writing overlap in threads (zstandard, zlib, lz4 and hashlib
release the GIL) or in an external command, so the event loop stays responsive. A framed codec's
stream (zstd, pgzip) is cut into independent frames compressed several at a time by `Workers`,
shared by the streams of one operation so that CPU threads and frames in flight stay bounded
whatever the number of streams. Hashes: `crc32_hex` is Vitess's `Hash` (CRC-32 IEEE of the stored
bytes as 8 lowercase hex digits: the ciphertext, when encrypted); `sha256_hex` is ours, of the original
bytes. An encrypted object's compressed stream is sealed in order, in a thread, as it leaves the
compressors (`Sealer`); reads from the source are paced by the operation's disk limit, writes to
storage by its storage limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import mmap
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent.aio.localfiles import FileChunks
from agent.aio.procs import PIPE, spawn
from agent.aio.tasks import complete, in_thread, run_concurrently
from agent.pipeline.compression import PIECE, Buffer, Codec, ExternalCodec, FramedCodec, InProcessCodec
from agent.pipeline.digests import Digest, StoredFile
from agent.pipeline.encryption import Sealer
from agent.pipeline.ratelimit import IoLimits, TokenBucket
from agent.pipeline.workers import Workers

if TYPE_CHECKING:
    from agent.storage.base import BackupWriter

_log = logging.getLogger(__name__)
CHUNK_SIZE = PIECE
QUEUE_DEPTH = 2
LineCallback = Callable[[str], None]


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


async def aclose_quietly(it: object) -> None:
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


class _Output:
    """The stored side of one object: sealed when encrypted, CRC-32 of the bytes as stored, paced by the
    storage limit, written."""

    def __init__(self, writer: BackupWriter, sealer: Sealer | None, pace: TokenBucket | None) -> None:
        self._writer = writer
        self._sealer = sealer
        self._pace = pace
        self.crc = Digest("crc32")
        self.stored = 0

    async def put(self, data: Buffer) -> None:
        if self._sealer is not None:
            data = await in_thread(self._sealer.update, data)
        await self._emit(data)

    async def end(self) -> None:
        if self._sealer is not None:
            await self._emit(await in_thread(self._sealer.finish))

    async def _emit(self, data: Buffer) -> None:
        if not data:
            return
        await self.crc.feed(data)
        if self._pace is not None:
            await self._pace.pace(len(data))
        await self._writer.write(data)
        self.stored += len(data)

    async def close(self) -> None:
        await self.crc.close()


async def _paced(source: AsyncIterable[Buffer], bucket: TokenBucket) -> AsyncGenerator[Buffer, None]:
    try:
        async for piece in source:
            await bucket.pace(len(piece))
            yield piece
    finally:
        await aclose_quietly(source)


async def store(
    source: AsyncIterable[Buffer],
    writer: BackupWriter,
    codec: Codec,
    *,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
    on_stderr_line: LineCallback | None = None,
    workers: Workers | None = None,
    sealer: Sealer | None = None,
    limits: IoLimits | None = None,
) -> StoredFile:
    """Compress (and, with a `sealer`, encrypt) and hash `source` into `writer`.

    On success the writer is closed (durable); on any error or cancellation it is aborted.
    `on_progress` gets the number of original bytes just handled (a delta). A framed codec's frames
    are compressed by `workers` (shared with other streams), or by threads of this call's own.
    `limits` paces the reads from `source` (disk) and the writes (storage).
    """
    output = _Output(writer, sealer, limits.storage if limits is not None else None)
    disk = limits.disk if limits is not None else None
    original = source
    if disk is not None and not isinstance(source, FileChunks):
        source = _paced(source, disk)  # a FileChunks is paced where it is read into the workers' buffers
    try:
        if isinstance(codec, ExternalCodec):
            result = await _store_external(
                source,
                output,
                codec,
                chunk_size=chunk_size,
                on_progress=on_progress,
                on_stderr_line=on_stderr_line,
                io_class=limits.io_class if limits is not None else "",
            )
        elif isinstance(codec, FramedCodec):
            if workers is None:
                async with Workers(codec.threads) as own:
                    result = await _store_frames(source, output, codec, own, on_progress, disk=disk)
            else:
                result = await _store_frames(source, output, codec, workers, on_progress, disk=disk)
        else:
            result = await _store_in_process(source, output, codec, chunk_size, on_progress)
        await writer.close()
    except BaseException:
        await _abort(writer)
        raise
    finally:
        await output.close()
        await aclose_quietly(source)
        if source is not original:
            await aclose_quietly(original)
    return result


async def _abort(writer: BackupWriter) -> None:
    try:
        await complete(writer.abort())
    except Exception as e:  # keep the original error
        _log.warning("aborting a backup writer failed: %s", e)


async def _store_in_process(
    source: AsyncIterable[Buffer],
    output: _Output,
    codec: InProcessCodec,
    chunk_size: int,
    on_progress: Callable[[int], None] | None,
) -> StoredFile:
    compressor = codec.new_compressor()
    sha = Digest("sha256")
    chunks: asyncio.Queue[Buffer | None] = asyncio.Queue(QUEUE_DEPTH)
    outputs: asyncio.Queue[tuple[bytes, int] | None] = asyncio.Queue(QUEUE_DEPTH)
    size = 0

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
        while (item := await outputs.get()) is not None:
            out, n = item
            if out:
                await output.put(out)
            if n and on_progress is not None:
                on_progress(n)
        await output.end()

    try:
        await run_concurrently(read(), compress(), write())
        return StoredFile(size, output.stored, await output.crc.hexdigest(), await sha.hexdigest())
    finally:
        compressor.close()
        await sha.close()


async def _store_frames(
    source: AsyncIterable[Buffer],
    output: _Output,
    codec: FramedCodec,
    workers: Workers,
    on_progress: Callable[[int], None] | None,
    *,
    disk: TokenBucket | None,
) -> StoredFile:
    """Frames hashed in order, compressed up to `codec.threads` at a time, stored in order."""
    digest, file_sha = Digest("sha256"), hashlib.sha256()
    compressing: asyncio.Queue[tuple[asyncio.Future[bytes], int, mmap.mmap | None] | None]
    compressing = asyncio.Queue(max(1, codec.threads))
    size = held = 0  # held: this stream's slots in `workers`, given back whatever happens

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
                if disk is not None:
                    await disk.pace(n)
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
        nonlocal held
        while (item := await compressing.get()) is not None:
            job, n, buf = item
            out = await job
            if buf is not None:
                workers.recycle(buf)
            await output.put(out)
            workers.release()
            held -= 1
            if n and on_progress is not None:
                on_progress(n)
        await output.end()

    try:
        await run_concurrently(submit(), write())
        sha = file_sha.hexdigest() if isinstance(source, FileChunks) else await digest.hexdigest()
        return StoredFile(size, output.stored, await output.crc.hexdigest(), sha)
    finally:
        for _ in range(held):
            workers.release()
        while not compressing.empty():
            if (item := compressing.get_nowait()) is not None:
                item[0].cancel()  # a buffer still being compressed is dropped, never recycled
        await digest.close()


async def _store_external(
    source: AsyncIterable[Buffer],
    output: _Output,
    codec: ExternalCodec,
    *,
    chunk_size: int,
    on_progress: Callable[[int], None] | None,
    on_stderr_line: LineCallback | None,
    io_class: str,
) -> StoredFile:
    sha = Digest("sha256")
    size = 0
    try:
        async with spawn(
            codec.compress_argv, stdin=PIPE, stdout=PIPE, on_stderr_line=on_stderr_line, io_class=io_class
        ) as proc:

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
                async for out in stream_chunks(proc.stdout, chunk_size):
                    await output.put(out)
                await output.end()

            await run_concurrently(feed(), drain())
        return StoredFile(size, output.stored, await output.crc.hexdigest(), await sha.hexdigest())
    finally:
        await sha.close()


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
    sealers: Sequence[Sealer] | None = None,
    limits: IoLimits | None = None,
) -> list[StoredFile]:
    """Split `source` round-robin in blocks of `block_size` into the writers (xtrabackup stripes),
    each compressed (and sealed by its own of `sealers`) and stored in parallel by its own `store`
    (sharing `workers`, or threads of this call's own). One StoredFile per stripe. `limits` paces the
    reads from `source` once and the writes of every stripe."""
    n = len(writers)
    if n == 0 or block_size <= 0:
        raise ValueError("store_striped needs writers and a positive block size")
    if sealers is not None and len(sealers) != n:
        raise ValueError("store_striped needs one sealer per writer")
    # the stripes' own reads come from memory: only the split charges the disk limit
    stripe_limits = None if limits is None else dataclasses.replace(limits, disk=TokenBucket())
    stripe_chunk = max(block_size, chunk_size // n)
    depth = 2 * (stripe_chunk // block_size + 1)
    queues: list[asyncio.Queue[Buffer | None]] = [asyncio.Queue(depth) for _ in writers]
    results: list[StoredFile | None] = [None] * n

    async def split() -> None:
        stripe = filled = 0
        async for chunk in source:
            if limits is not None:
                await limits.disk.pace(len(chunk))
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
            sealer=sealers[k] if sealers is not None else None,
            limits=stripe_limits,
        )

    try:
        async with Workers(codec.threads if isinstance(codec, FramedCodec) else 0) as own:
            await run_concurrently(split(), *(one(k, workers or own) for k in range(n)))
    finally:
        await aclose_quietly(source)
    return [r for r in results if r is not None]


# --- restore direction ------------------------------------------------------------------------
