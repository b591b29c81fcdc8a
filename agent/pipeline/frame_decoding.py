"""Decoding a zstd object's frames on several threads at once, in order.

The agent writes zstd streams as independent frames of `FRAME_SIZE` input bytes, each declaring its
content size (`compression.ZstdCodec`). Such frames are cut out of the stored stream (after decryption)
and decoded whole by a pool of threads, at most `window` frames in flight; their output is handed on in
stream order. A frame that declares no content size or a larger one than `MAX_WHOLE_FRAME` (a stream
written by another tool) goes through one streaming decompressor in bounded steps instead, in its place
in the order, so any valid stream decodes in bounded memory. The CRC-32 of the stored bytes is taken in
the same thread step as their decryption; a damaged stream is read to its end anyway, since a CRC-32
mismatch explains corruption best (`check`).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator
from dataclasses import dataclass

import zstandard

from agent.aio.tasks import in_thread, run_concurrently
from agent.errors import CorruptData, DataLoss
from agent.pipeline.compression import PIECE, Buffer, Decompressor, ZstdCodec
from agent.pipeline.digests import hash_mismatch
from agent.pipeline.encryption import AuthenticationFailed, Opener
from agent.pipeline.ratelimit import TokenBucket
from agent.pipeline.workers import Workers
from agent.pipeline.zstd_frames import FRAME_END, HEADER_END, ZstdScanner

MAX_WHOLE_FRAME = 8 << 20  # frames declaring at most this much content are decoded whole, in parallel
# A valid frame of at most MAX_WHOLE_FRAME content is stored in at most about this many bytes
# (ZSTD_compressBound plus headers); a longer one is streamed (and reported if it is corrupt).
_MAX_WHOLE_STORED = MAX_WHOLE_FRAME + (MAX_WHOLE_FRAME >> 7) + (64 << 10)
_ANY_BLOCKS = 1 << 30  # scanner steps stop only at frame headers and frame ends


@dataclass(frozen=True)
class WholeFrame:
    """A complete frame to decode in one call: `index` in the stream, `offset` of its first byte."""

    data: bytes
    content_size: int
    index: int
    offset: int


@dataclass(frozen=True)
class StreamedPart:
    """Bytes of frames that are decoded by the streaming decompressor, in order."""

    data: bytes


Segment = WholeFrame | StreamedPart


def decode_frame(frame: WholeFrame) -> bytes:
    """One frame's content, checked against its declared size and checksum. Thread-safe."""
    try:
        out = zstandard.ZstdDecompressor().decompress(frame.data, max_output_size=frame.content_size)
    except zstandard.ZstdError as e:
        raise CorruptData(f"{_where(frame)}: invalid zstd data: {e}") from None
    if len(out) != frame.content_size:
        raise CorruptData(f"{_where(frame)}: it declares {frame.content_size} bytes and holds {len(out)}")
    return out


def _where(frame: WholeFrame) -> str:
    return f"frame {frame.index} (at byte {frame.offset} of the zstd stream)"


class FrameSplitter:
    """Cuts a zstd stream (given in pieces of any size) into segments: whole frames of a bounded size,
    and streamed parts for the others. Skippable frames are dropped. Not thread-safe: one caller."""

    def __init__(self) -> None:
        self._scan = ZstdScanner()
        self._held: list[Buffer] = []  # the current frame so far: views of this input, copies of earlier
        self._held_size = 0
        self._streaming = False  # the current frame is being passed on as streamed parts
        self._index = 0
        self._offset = 0  # of the current frame
        self._position = 0  # bytes of the stream consumed

    @property
    def at_frame_boundary(self) -> bool:
        return self._scan.at_frame_boundary

    def split(self, data: Buffer) -> list[Segment]:
        """The segments completed by `data` (which may be reused once this returns). CorruptData when
        it is not a zstd stream."""
        out: list[Segment] = []
        view = memoryview(data)
        while view:
            n, event = self._scan.advance(view, _ANY_BLOCKS)
            part, view = view[:n], view[n:]
            self._position += n
            if self._streaming:
                out.append(StreamedPart(bytes(part)))
            else:
                self._held.append(part)
                self._held_size += n
                self._on_held(event, out)
            if event == FRAME_END:
                self._streaming = False
                self._index += 1
                self._offset = self._position
        self._held = [bytes(p) for p in self._held]  # one copy of a frame that goes on in the next input
        return out

    def _take(self) -> bytes:
        data = b"".join(self._held)
        self._held, self._held_size = [], 0
        return data

    def _on_held(self, event: str, out: list[Segment]) -> None:
        size = self._scan.content_size
        if event == FRAME_END:
            data = self._take()
            if size is not None:  # else a skippable frame
                out.append(WholeFrame(data, size, self._index, self._offset))
        elif (event == HEADER_END and (size is None or size > MAX_WHOLE_FRAME)) or (
            self._held_size > _MAX_WHOLE_STORED
        ):
            out.append(StreamedPart(self._take()))
            self._streaming = True


class _Streamed:
    """The streaming decompressor for frames not decoded whole, fed in its place in the order; its
    output is pulled about `limit` bytes per thread step."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._decompressor: Decompressor | None = None
        self._pieces: Iterator[Buffer] = iter(())

    def feed(self, data: bytes) -> tuple[list[Buffer], bool]:
        if self._decompressor is None:
            self._decompressor = ZstdCodec().new_decompressor()
        self._pieces = self._decompressor.decompress(data)
        return self.pull()

    def pull(self) -> tuple[list[Buffer], bool]:
        out: list[Buffer] = []
        n = 0
        for piece in self._pieces:
            out.append(piece)
            n += len(piece)
            if n >= self._limit:
                return out, True
        return out, False

    def finish(self) -> None:
        if self._decompressor is not None:
            self._decompressor.finish()


_Pending = asyncio.Future[bytes] | StreamedPart | None


class FrameDecoding:
    """Stored chunks of a zstd object to its original bytes: decrypted first by `opener`, frames decoded
    by `workers` (up to `window` in flight), output handed to `emit` in order."""

    def __init__(
        self,
        workers: Workers,
        window: int,
        opener: Opener | None = None,
        pace: TokenBucket | None = None,
        limit: int = PIECE,
    ) -> None:
        if window < 1:
            raise ValueError("the window of frames in flight must be at least 1")
        self._workers = workers
        self._window = window
        self._opener = opener
        self._pace = pace
        self._splitter = FrameSplitter()
        self._streamed = _Streamed(limit)
        self.crc = self.stored = 0
        self.failure: DataLoss | None = None

    def _open(self, chunk: Buffer) -> list[Segment]:
        """Thread step: CRC-32 of the stored bytes, decryption, cutting into segments."""
        self.crc = zlib.crc32(chunk, self.crc)
        self.stored += len(chunk)
        if self.failure is not None:
            return []  # keep reading: a CRC mismatch explains the corruption best
        try:
            if self._opener is not None:
                chunk = self._opener.update(chunk)
            return self._splitter.split(chunk)
        except DataLoss as e:  # AuthenticationFailed, CorruptData
            self.failure = e
            return []

    def _close(self) -> list[Segment]:
        """Thread step after the last chunk: the final encrypted chunk's segments."""
        if self._opener is None or self.failure is not None:
            return []
        try:
            return self._splitter.split(self._opener.finish())
        except DataLoss as e:
            self.failure = e
            return []

    async def run(self, chunks: AsyncIterable[Buffer], emit: Callable[[Buffer], Awaitable[None]]) -> None:
        stored: asyncio.Queue[Buffer | None] = asyncio.Queue(1)
        # Every segment holds a slot from being cut out until its output is handed on: at most `window`
        # frames are being decoded or wait to be written.
        slots = asyncio.Semaphore(self._window)
        pending: asyncio.Queue[_Pending] = asyncio.Queue()

        async def read() -> None:
            async for chunk in chunks:
                if self._pace is not None:
                    await self._pace.pace(len(chunk))
                await stored.put(chunk)
            await stored.put(None)

        async def submit(segments: list[Segment]) -> None:
            for segment in segments:
                await slots.acquire()
                if isinstance(segment, WholeFrame):
                    pending.put_nowait(self._workers.submit(decode_frame, segment))
                else:
                    pending.put_nowait(segment)

        async def split() -> None:
            try:
                while (chunk := await stored.get()) is not None:
                    await submit(await in_thread(self._open, chunk))
                await submit(await in_thread(self._close))
            finally:
                pending.put_nowait(None)

        async def write() -> None:
            while (item := await pending.get()) is not None:
                try:
                    if self.failure is not None:
                        _drop(item)
                    elif isinstance(item, StreamedPart):
                        await self._write_streamed(item, emit)
                    else:
                        await emit(await item)
                except CorruptData as e:
                    self.failure = e
                finally:
                    slots.release()

        try:
            await run_concurrently(read(), split(), write())
        finally:
            while not pending.empty():
                _drop(pending.get_nowait())

    async def _write_streamed(self, part: StreamedPart, emit: Callable[[Buffer], Awaitable[None]]) -> None:
        pieces, more = await in_thread(self._streamed.feed, part.data)
        while True:
            for piece in pieces:
                await emit(piece)
            if not more:
                return
            pieces, more = await in_thread(self._streamed.pull)

    def check(self, name: str, codec: str, expected_crc32_hex: str | None) -> str:
        """At the end: the CRC-32 as hex if it and the stream are sound, else DataLoss naming `name`."""
        got = f"{self.crc:08x}"
        if expected_crc32_hex is not None and got != expected_crc32_hex:
            raise hash_mismatch(name, got, expected_crc32_hex)
        if isinstance(self.failure, AuthenticationFailed):
            raise self.failure
        try:
            if self.failure is not None:
                raise self.failure
            if not self._splitter.at_frame_boundary:
                raise CorruptData("zstd stream is truncated (it ends inside a frame)")
            self._streamed.finish()
        except CorruptData as e:
            raise DataLoss(f"cannot decompress {name} ({codec}): {e}") from None
        return got


def _drop(item: _Pending) -> None:
    if isinstance(item, asyncio.Future):
        item.cancel()
        if item.done() and not item.cancelled():
            item.exception()  # retrieved: the first failure is the one reported
