"""The way back: stored objects decrypted (when encrypted), decoded, verified (CRC-32 of the stored bytes,
sha256 of the original, each chunk's authentication tag) and written to local files, a child's stdin, or
re-assembled from stripes. DataLoss on any mismatch. Reads from storage are paced by the storage limit."""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from agent.aio.localfiles import FileChunks, LocalFile
from agent.aio.procs import PIPE, ProcessError, spawn
from agent.aio.tasks import complete, in_thread, run_concurrently
from agent.errors import CorruptData, DataLoss
from agent.pipeline.compression import Buffer, Codec, Decompressor, ExternalCodec, InProcessCodec, ZstdCodec
from agent.pipeline.digests import Digest, StoredFile, hash_mismatch
from agent.pipeline.encryption import AuthenticationFailed, Opener
from agent.pipeline.frame_decoding import FrameDecoding
from agent.pipeline.ratelimit import IoLimits, TokenBucket
from agent.pipeline.store import CHUNK_SIZE, LineCallback, aclose_quietly, stream_chunks
from agent.pipeline.workers import Workers

RESTORE_BATCH = 2 << 20  # restored files: decoded, hashed and written this much per thread step
Sink = Path | Callable[[bytes], Awaitable[None]]
FRAMES_PER_THREAD = 2  # zstd frames in flight per decoding thread (plus two), bounding a stream's memory


class _End:
    pass


class _Decoding:
    """Stored chunks to original bytes with an in-process decompressor, decrypted first by `opener`.
    `feed`, `pull` and `end` run in threads; the CRC-32 of the stored bytes is taken in the same step
    as their decryption and decompression."""

    def __init__(
        self,
        decompressor: Decompressor,
        limit: int,
        opener: Opener | None = None,
        pace: TokenBucket | None = None,
    ) -> None:
        self.decompressor = decompressor
        self._limit = limit
        self._opener = opener
        self._pace = pace
        self._pieces: Iterator[Buffer] = iter(())
        self.crc = self.stored = 0
        self.failure: DataLoss | None = None

    def count(self, chunk: Buffer) -> None:
        self.crc = zlib.crc32(chunk, self.crc)
        self.stored += len(chunk)

    def feed(self, chunk: Buffer, counted: bool) -> tuple[list[Buffer], bool]:
        if not counted:
            self.count(chunk)
        if self.failure is not None:
            return [], False  # keep reading: a CRC mismatch explains the corruption best
        if self._opener is not None:
            try:
                chunk = self._opener.update(chunk)
            except AuthenticationFailed as e:
                self.failure = e
                return [], False
        self._pieces = self.decompressor.decompress(chunk)
        return self.pull()

    def end(self) -> tuple[list[Buffer], bool]:
        """After the last chunk: the final encrypted chunk's output."""
        if self._opener is None or self.failure is not None:
            return [], False
        try:
            chunk = self._opener.finish()
        except AuthenticationFailed as e:
            self.failure = e
            return [], False
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
                    if self._pace is not None:
                        await self._pace.pace(n)
                    await stored.put((memoryview(buf)[:n], buf))
            finally:
                src.close()

        async def read() -> None:
            if isinstance(chunks, FileChunks) and workers is not None:
                await read_file(chunks, workers)
            else:
                async for chunk in chunks:
                    if self._pace is not None:
                        await self._pace.pace(len(chunk))
                    await stored.put((chunk, None))
            await stored.put(None)

        async def drain(pieces: list[Buffer], more: bool) -> None:
            while True:
                if pieces:
                    await emit(pieces)
                if not more:
                    return
                pieces, more = await in_thread(self.pull)

        async def decode() -> None:
            while (item := await stored.get()) is not None:
                chunk, buf = item
                await drain(*await in_thread(self.feed, chunk, buf is not None))
                if buf is not None and workers is not None:
                    workers.recycle(buf)  # decompressors keep no reference to a chunk they are done with
            if self._opener is not None:
                await drain(*await in_thread(self.end))

        await run_concurrently(read(), decode())

    def check(self, name: str, codec: str, expected_crc32_hex: str | None) -> str:
        """At the end: the CRC-32 as hex if it and the stream are sound, else DataLoss."""
        got = f"{self.crc:08x}"
        if expected_crc32_hex is not None and got != expected_crc32_hex:
            raise hash_mismatch(name, got, expected_crc32_hex)
        if isinstance(self.failure, AuthenticationFailed):
            raise self.failure
        try:
            if self.failure is not None:
                raise self.failure
            self.decompressor.finish()
        except CorruptData as e:
            raise DataLoss(f"cannot decompress {name} ({codec}): {e}") from None
        return got


def decode_whole(
    stored: Buffer,
    codec: InProcessCodec,
    write: Callable[[Buffer], object],
    *,
    expected_crc32_hex: str | None,
    expected_sha256_hex: str | None,
    name: str,
    opener: Opener | None = None,
) -> StoredFile:
    """One whole stored object held in memory: decrypted, decoded and handed to `write` piece by piece in
    the caller's thread, with the checks of `restore` (DataLoss naming `name`). The pieces are written
    before the hashes are known: discard them on error."""
    decoding = _Decoding(codec.new_decompressor(), RESTORE_BATCH, opener)
    sha = hashlib.sha256()
    size = 0

    def emit(pieces: list[Buffer], more: bool) -> None:
        nonlocal size
        while True:
            for piece in pieces:
                sha.update(piece)
                write(piece)
                size += len(piece)
            if not more:
                return
            pieces, more = decoding.pull()

    emit(*decoding.feed(stored, False))
    emit(*decoding.end())
    crc_hex = decoding.check(name, codec.name, (expected_crc32_hex or "").lower() or None)
    sha_hex = sha.hexdigest()
    expected_sha = (expected_sha256_hex or "").lower() or None
    if expected_sha is not None and sha_hex != expected_sha:
        raise hash_mismatch(name, sha_hex, expected_sha)
    return StoredFile(size, decoding.stored, crc_hex, sha_hex)


class DecodedStream:
    """The original bytes of one stored object: decrypted (with an `opener`), decompressed and verified in
    a background task. zstd frames are decoded by `workers` (shared by the streams of one restore, else
    threads of its own), up to `window` frames in flight (default: a few per thread).

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
        opener: Opener | None = None,
        limits: IoLimits | None = None,
        workers: Workers | None = None,
        window: int = 0,
    ) -> None:
        self._chunks = chunks
        self._codec = codec
        self._workers = workers
        self._window = window
        self._opener = opener
        self._pace = limits.storage if limits is not None else None
        self._io_class = limits.io_class if limits is not None else ""
        self._crc_expected = (expected_crc32_hex or "").lower() or None
        self._sha_expected = (expected_sha256_hex or "").lower() or None
        self._name = name
        self._chunk_size = chunk_size
        self._on_line = on_stderr_line
        self._out: asyncio.Queue[bytes | _End | Exception] = asyncio.Queue(1)
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self._sha, self._crc = Digest("sha256"), Digest("crc32")
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
            await aclose_quietly(self._chunks)
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
                raise hash_mismatch(self._name, sha, self._sha_expected)
            self.stats = StoredFile(self._size, self._stored, self._crc_hex, sha)
            await self._out.put(_End())
        except Exception as e:
            await self._out.put(e)
        finally:
            await aclose_quietly(self._chunks)

    def _check_crc(self, got: str) -> None:
        self._crc_hex = got
        if self._crc_expected is not None and got != self._crc_expected:
            raise hash_mismatch(self._name, got, self._crc_expected)

    async def _run_in_process(self, codec: InProcessCodec) -> None:
        if isinstance(codec, ZstdCodec):
            await self._run_frames(codec)
            return
        decoding = _Decoding(codec.new_decompressor(), self._chunk_size, self._opener, self._pace)

        async def emit(pieces: list[Buffer]) -> None:
            for piece in pieces:
                await self._emit(piece if isinstance(piece, bytes) else bytes(piece))

        await decoding.run(self._chunks, emit)
        self._stored = decoding.stored
        self._crc_hex = decoding.check(self._name, codec.name, self._crc_expected)

    async def _run_frames(self, codec: ZstdCodec) -> None:
        """zstd: frames decoded on all cores, in order; hashed in order beside them (`_emit`)."""

        async def emit(piece: Buffer) -> None:
            await self._emit(piece if isinstance(piece, bytes) else bytes(piece))

        async def run(workers: Workers) -> FrameDecoding:
            window = self._window or FRAMES_PER_THREAD * workers.threads + 2
            decoding = FrameDecoding(workers, window, self._opener, self._pace, self._chunk_size)
            await decoding.run(self._chunks, emit)
            return decoding

        if self._workers is not None:
            decoding = await run(self._workers)
        else:
            # At the agent's own priority, like the rest of a restore: --backup_niceness is for backups.
            async with Workers(max(1, codec.threads), niceness=0) as own:
                decoding = await run(own)
        self._stored = decoding.stored
        self._crc_hex = decoding.check(self._name, codec.name, self._crc_expected)

    async def _run_external(self, codec: ExternalCodec) -> None:
        argv = codec.decompress_argv
        io_class = self._io_class
        async with spawn(
            argv, stdin=PIPE, stdout=PIPE, on_stderr_line=self._on_line, io_class=io_class
        ) as proc:

            async def feed() -> None:
                failure: ProcessError | AuthenticationFailed | None = None
                opener = self._opener
                async for chunk in self._chunks:
                    if self._pace is not None:
                        await self._pace.pace(len(chunk))
                    self._stored += len(chunk)
                    await self._crc.feed(chunk)
                    if failure is None:
                        try:
                            await proc.write(
                                chunk if opener is None else await in_thread(opener.update, chunk)
                            )
                        except (ProcessError, AuthenticationFailed) as e:
                            failure = e  # keep reading: a CRC mismatch explains the failure best
                self._check_crc(await self._crc.hexdigest())
                if failure is not None:
                    raise failure
                if opener is not None:
                    await proc.write(await in_thread(opener.finish))
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
    opener: Opener | None = None,
    limits: IoLimits | None = None,
) -> StoredFile:
    """Decrypt (with an `opener`) and decompress stored `chunks` into `dest`, verifying the stored CRC-32,
    the original sha256 (either may be None when the MANIFEST has none) and each encrypted chunk. DataLoss
    on any mismatch or corruption. `limits` paces the reads from storage.

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
                opener=opener,
                pace=limits.storage if limits is not None else None,
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
        opener=opener,
        limits=limits,
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
    opener: Opener | None,
    pace: TokenBucket | None,
) -> StoredFile:
    """`restore` into a local file: whole frames are decoded into pooled buffers, and each batch is
    hashed and written in one thread step (while in cache) as the next one is decoded."""
    outputs: set[int] = set()  # the buffers handed to the decompressor, to give back after writing

    def output(n: int) -> memoryview:
        buf = workers.buffer(n)
        outputs.add(id(buf))
        return memoryview(buf)

    decoding = _Decoding(codec.new_decompressor(output=output), limit, opener, pace)
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
            raise hash_mismatch(name, sha_hex, expected_sha256_hex)
        await in_thread(local.finish, sync)
    except BaseException:
        if writing is not None:  # its thread must be done with the file before it is removed
            await complete(asyncio.wait([writing]))
            if not writing.cancelled():
                writing.exception()
        await complete(in_thread(local.discard))
        raise
    finally:
        await aclose_quietly(chunks)
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
            await aclose_quietly(s)
