"""The streaming pipeline every engine uses: source -> compress -> hash -> storage, and back.

Data moves in chunks (4 MiB by default) through bounded queues, so a stream of any size runs in the
same memory. Reading, compressing, hashing and writing overlap; compression and both hashes run in
threads (zstandard, zlib, lz4 and hashlib release the GIL) or in an external command, so the event
loop stays responsive. Hashes: `crc32_hex` is Vitess's `Hash` (CRC-32 IEEE of the stored bytes as 8
lowercase hex digits); `sha256_hex` is ours, of the original bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import zlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import grpc

from agent.compression import PIECE, Buffer, Codec, CorruptData, ExternalCodec, InProcessCodec
from agent.errors import AgentError, DataLoss
from agent.fileio import read_chunks
from agent.procs import PIPE, ProcessError, complete, in_thread, run_concurrently, spawn

if TYPE_CHECKING:
    from agent.storage.base import BackupWriter

_log = logging.getLogger(__name__)
CHUNK_SIZE = PIECE
QUEUE_DEPTH = 2
FILE_MODE = 0o640
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


def local_error(action: str, path: Path, e: OSError) -> AgentError:
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if e.errno in (errno.ENOSPC, errno.EDQUOT) else None
    return AgentError(f"{action} {path}: {e.strerror or e} ({errno.errorcode.get(e.errno or 0, '?')})", code)


async def file_chunks(path: Path, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """A local file's bytes, read in threads."""
    async for data in read_chunks(path, chunk_size, lambda action, e: local_error(action, path, e)):
        yield data


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
        self._pending: asyncio.Task[None] | None = None

    def _update(self, data: Buffer) -> None:
        if self._sha is not None:
            self._sha.update(data)
        else:
            self._crc = zlib.crc32(data, self._crc)

    async def feed(self, data: Buffer) -> None:
        if self._pending is not None:
            await self._pending
        self._pending = asyncio.ensure_future(in_thread(self._update, data))

    async def hexdigest(self) -> str:
        """sha256: 64 hex digits. CRC-32: 8 hex digits, as Go's hex.EncodeToString of the big-endian uint32."""
        if self._pending is not None:
            await self._pending
        return self._sha.hexdigest() if self._sha is not None else f"{self._crc:08x}"

    async def close(self) -> None:
        if self._pending is None:
            return
        if not self._pending.done():
            self._pending.cancel()
            await asyncio.wait([self._pending])
        if not self._pending.cancelled():
            self._pending.exception()  # retrieved: the error, if any, was already reported


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
) -> StoredFile:
    """Compress and hash `source` into `writer`.

    On success the writer is closed (durable); on any error or cancellation it is aborted.
    `on_progress` gets the number of original bytes just handled (a delta).
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
) -> list[StoredFile]:
    """Split `source` round-robin in blocks of `block_size` into the writers (xtrabackup stripes),
    each compressed and stored in parallel by its own `store`. One StoredFile per stripe."""
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

    async def one(k: int) -> None:
        results[k] = await store(
            pieces(queues[k]),
            writers[k],
            codec,
            chunk_size=stripe_chunk,
            on_progress=on_progress,
            on_stderr_line=on_stderr_line,
        )

    try:
        await run_concurrently(split(), *(one(k) for k in range(n)))
    finally:
        await _aclose(source)
    return [r for r in results if r is not None]


# --- restore direction ------------------------------------------------------------------------


class _End:
    pass


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
        self._out: asyncio.Queue[bytes | _End | Exception] = asyncio.Queue(QUEUE_DEPTH)
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self._sha, self._crc = _Digest("sha256"), _Digest("crc32")
        self._size = self._stored = 0
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
            self.stats = StoredFile(self._size, self._stored, await self._crc.hexdigest(), sha)
            await self._out.put(_End())
        except Exception as e:
            await self._out.put(e)
        finally:
            await _aclose(self._chunks)

    async def _check_crc(self) -> None:
        got = await self._crc.hexdigest()
        if self._crc_expected is not None and got != self._crc_expected:
            raise _mismatch(self._name, got, self._crc_expected)

    def _corrupt(self, e: CorruptData) -> DataLoss:
        return DataLoss(f"cannot decompress {self._name} ({self._codec.name}): {e}")

    async def _run_in_process(self, codec: InProcessCodec) -> None:
        decompressor = codec.new_decompressor()
        stored: asyncio.Queue[Buffer | None] = asyncio.Queue(QUEUE_DEPTH)
        failure: CorruptData | None = None

        async def read() -> None:
            async for chunk in self._chunks:
                await stored.put(chunk)
            await stored.put(None)

        async def decode() -> None:
            nonlocal failure
            while (chunk := await stored.get()) is not None:
                self._stored += len(chunk)
                await self._crc.feed(chunk)
                if failure is not None:
                    continue  # keep reading: a CRC mismatch explains the corruption best
                pieces = decompressor.decompress(chunk)
                try:
                    while True:
                        data, more = await in_thread(_pull, pieces, self._chunk_size)
                        if data:
                            await self._emit(data)
                        if not more:
                            break
                except CorruptData as e:
                    failure = e

        await run_concurrently(read(), decode())
        await self._check_crc()
        try:
            if failure is not None:
                raise failure
            decompressor.finish()
        except CorruptData as e:
            raise self._corrupt(e) from None

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
                await self._check_crc()
                if failure is not None:
                    raise failure
                await proc.close_stdin()

            async def drain() -> None:
                async for data in stream_chunks(proc.stdout, self._chunk_size):
                    await self._emit(data)

            await run_concurrently(feed(), drain())


def _pull(pieces: Iterator[bytes], limit: int) -> tuple[bytes, bool]:
    """Take output pieces until about `limit` bytes; False when the iterator is exhausted."""
    out: list[bytes] = []
    n = 0
    for piece in pieces:
        out.append(piece)
        n += len(piece)
        if n >= limit:
            return (out[0] if len(out) == 1 else b"".join(out)), True
    return b"".join(out), False


async def sink_chunks(
    chunks: AsyncIterable[bytes], dest: Sink, *, on_progress: Callable[[int], None] | None = None
) -> int:
    """Write chunks to a local file (created 0o640 with its parents, fsync'd at the end, removed on
    failure) or to an async callable such as a subprocess's stdin writer. Returns the byte count."""
    total = 0
    if not isinstance(dest, Path):
        async for chunk in chunks:
            await dest(chunk)
            total += len(chunk)
            if on_progress is not None:
                on_progress(len(chunk))
        return total
    path = dest

    def open_() -> int:
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
            return os.open(path, flags, FILE_MODE)
        except OSError as e:
            raise local_error("cannot create", path, e) from e

    def write(fd: int, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as e:
            raise local_error("cannot write", path, e) from e

    def finish(fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as e:
            raise local_error("cannot sync", path, e) from e

    def discard(fd: int) -> None:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()

    fd = await in_thread(open_)
    try:
        async for chunk in chunks:
            await in_thread(write, fd, chunk)
            total += len(chunk)
            if on_progress is not None:
                on_progress(len(chunk))
        await in_thread(finish, fd)
    except BaseException:
        await complete(in_thread(discard, fd))
        raise
    os.close(fd)
    return total


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
) -> StoredFile:
    """Decompress stored `chunks` into `dest`, verifying the stored CRC-32 and the original sha256
    (either may be None when the MANIFEST has none). DataLoss on any mismatch or corruption."""
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
        await sink_chunks(stream, dest, on_progress=on_progress)
    finally:
        await stream.aclose()
    assert stream.stats is not None
    return stream.stats


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
