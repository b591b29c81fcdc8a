"""The streaming pipeline every engine uses: source -> compress -> hash -> storage (the way back is
`agent.restore_pipeline`; threads and buffers are `agent.workers`, hashes `agent.digests`).

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
        await aclose_quietly(source)
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
    sha, crc = Digest("sha256"), Digest("crc32")
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
    crc, digest, file_sha = Digest("crc32"), Digest("sha256"), hashlib.sha256()
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
    sha, crc = Digest("sha256"), Digest("crc32")
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
        await aclose_quietly(source)
    return [r for r in results if r is not None]


# --- restore direction ------------------------------------------------------------------------
