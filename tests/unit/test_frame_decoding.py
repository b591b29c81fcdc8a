"""zstd frames decoded on several threads: output in stream order whatever order the threads finish in,
at most `window` frames in flight, a damaged frame named, streams of other tools still decoded; and the
backup side's pipe: the pipe buffer asked for, a pipe hashed by a thread of its own."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import random
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import zstandard

from agent.aio.localfiles import FileChunks
from agent.aio.pipes import PIPE_SIZE, grow_pipe, write_all
from agent.errors import DataLoss
from agent.pipeline.compression import Buffer, ZstdCodec
from agent.pipeline.digests import StoredFile
from agent.pipeline.frame_decoding import FrameDecoding, FrameSplitter, StreamedPart, WholeFrame
from agent.pipeline.load import DecodedStream, unstripe
from agent.pipeline.store import store, store_striped
from agent.pipeline.workers import Workers

A = TypeVar("A")
T = TypeVar("T")
FRAME = 4096


def _data(frames: int) -> bytes:
    """Distinct, compressible frames: a frame decoded into the wrong place changes the output."""
    return b"".join((f"frame {i:06d} ".encode() * (FRAME // 13 + 1))[:FRAME] for i in range(frames))


def _compressed(data: bytes, frame: int = FRAME) -> bytes:
    codec = ZstdCodec(frame_size=frame)
    return b"".join(codec.compress_frame(data[i : i + frame]) for i in range(0, len(data), frame))


async def _pieces(data: bytes, step: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), step):
        yield data[i : i + step]


class Memory:
    """A backup writer into memory."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: Buffer) -> None:
        self.data += chunk

    async def close(self) -> None:
        pass

    async def abort(self) -> None:
        pass


class ShuffledWorkers(Workers):
    """Threads that finish frames out of order (early frames sleep longest), counting frames in flight:
    submitted and not yet handed on."""

    def __init__(self, threads: int) -> None:
        super().__init__(threads, niceness=0)
        self.submitted = 0
        self.emitted = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[A], T], data: A) -> asyncio.Future[T]:
        delay = max(0.0, 0.004 - 0.0002 * self.submitted) * random.random()

        def slow(arg: A) -> T:
            time.sleep(delay)
            return fn(arg)

        self.submitted += 1
        self.most_in_flight = max(self.most_in_flight, self.submitted - self.emitted)
        return super().submit(slow, data)


async def _decode(
    stored: bytes, workers: Workers, window: int, step: int = 3000, emitted: Callable[[], None] | None = None
) -> tuple[bytes, FrameDecoding]:
    out = bytearray()

    async def emit(piece: Buffer) -> None:
        out.extend(piece)
        if emitted is not None:
            emitted()

    decoding = FrameDecoding(workers, window)
    async with workers:
        await decoding.run(_pieces(stored, step), emit)
    return bytes(out), decoding


async def test_frames_come_out_in_stream_order_and_the_window_holds() -> None:
    data = _data(300)
    stored = _compressed(data)
    workers = ShuffledWorkers(4)

    def emitted() -> None:
        workers.emitted += 1

    out, decoding = await _decode(stored, workers, window=5, emitted=emitted)
    assert out == data
    assert workers.submitted == 300
    assert 2 <= workers.most_in_flight <= 5
    assert decoding.check("ks/0/b/backup.xbstream.zst", "zstd", f"{zlib.crc32(stored):08x}") == (
        f"{zlib.crc32(stored):08x}"
    )
    assert decoding.stored == len(stored)


async def test_a_damaged_frame_is_named_and_nothing_after_it_is_handed_on() -> None:
    data = _data(50)
    frames = [ZstdCodec().compress_frame(data[i : i + FRAME]) for i in range(0, len(data), FRAME)]
    damaged = bytearray(frames[17])
    damaged[len(damaged) // 2] ^= 0xFF
    stored = b"".join(frames[:17]) + bytes(damaged) + b"".join(frames[18:])
    out, decoding = await _decode(stored, Workers(2, niceness=0), window=4)
    assert data.startswith(out) and len(out) <= 17 * FRAME
    offset = sum(len(f) for f in frames[:17])
    with pytest.raises(DataLoss, match=rf"cannot decompress ks/0/b/x \(zstd\): frame 17 \(at byte {offset} "):
        decoding.check("ks/0/b/x", "zstd", None)
    # With the object's CRC-32 known, the mismatch is what is reported (read to the end regardless).
    with pytest.raises(DataLoss, match="hash mismatch for ks/0/b/x"):
        decoding.check("ks/0/b/x", "zstd", f"{zlib.crc32(_compressed(data)):08x}")


async def test_a_truncated_stream_and_garbage_are_data_loss() -> None:
    stored = _compressed(_data(10))
    _, decoding = await _decode(stored[:-5], Workers(2, niceness=0), window=3)
    with pytest.raises(DataLoss, match="truncated"):
        decoding.check("x", "zstd", None)
    _, decoding = await _decode(b"not zstd at all", Workers(2, niceness=0), window=3)
    with pytest.raises(DataLoss, match="not zstd data"):
        decoding.check("x", "zstd", None)


async def test_frames_of_other_tools_are_streamed_in_their_place() -> None:
    """A frame without a content size (a streaming compressor's) or a huge one goes through the streaming
    decoder in its place among whole frames; skippable frames are dropped."""
    ours = _data(20)
    theirs = os.urandom(3000) * 5000  # 15 MB in one frame without a content size
    streamed = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    their_frame = streamed.compress(theirs) + streamed.flush()
    skippable = (0x184D2A50).to_bytes(4, "little") + (7).to_bytes(4, "little") + b"ignored"
    stored = _compressed(ours) + skippable + their_frame + _compressed(ours)
    out, decoding = await _decode(stored, ShuffledWorkers(2), window=3, step=1 << 20)
    assert out == ours + theirs + ours
    decoding.check("x", "zstd", None)
    splitter = FrameSplitter()
    kinds = [type(s) for s in splitter.split(stored)]
    assert kinds.count(WholeFrame) == 40 and StreamedPart in kinds


async def test_decoded_stream_uses_frames_and_checks_both_hashes() -> None:
    data = _data(64)
    stored = _compressed(data)
    sha = hashlib.sha256(data).hexdigest()
    stream = DecodedStream(
        _pieces(stored, 5000),
        ZstdCodec(threads=2),
        expected_crc32_hex=f"{zlib.crc32(stored):08x}",
        expected_sha256_hex=sha,
        name="ks/0/b/backup.xbstream.zst",
    )
    assert b"".join([chunk async for chunk in stream]) == data
    assert stream.stats == StoredFile(len(data), len(stored), f"{zlib.crc32(stored):08x}", sha)
    wrong = DecodedStream(
        _pieces(stored, 5000),
        ZstdCodec(threads=2),
        expected_crc32_hex=None,
        expected_sha256_hex="0" * 64,
        name="ks/0/b/backup.xbstream.zst",
    )
    with pytest.raises(DataLoss, match=r"hash mismatch for ks/0/b/backup.xbstream.zst, got [0-9a-f]{64}"):
        async for _ in wrong:
            pass
    await wrong.aclose()


def test_a_window_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        FrameDecoding(Workers(1), 0)


def test_grow_pipe_asks_for_a_one_mib_buffer() -> None:
    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    r, w = os.pipe()
    try:
        grow_pipe(w)  # best effort: beyond pipe-max-size only with CAP_SYS_RESOURCE
        allowed = limit >= PIPE_SIZE or os.geteuid() == 0
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == (PIPE_SIZE if allowed else 65536)
    finally:
        os.close(r)
        os.close(w)


async def test_a_pipe_is_hashed_apart_from_its_reader() -> None:
    """A child's output read from a pipe: frames compressed and hashed in order by threads other than the
    one draining the pipe; the hashes are those of the bytes."""
    data = os.urandom(1 << 20) * 5 + bytes(3 << 20)
    r, w = os.pipe()
    grow_pipe(w)
    source = FileChunks.from_pipe(r, 1 << 20, "the output of a test")
    assert source.is_pipe and not FileChunks(Path("/dev/null"), 1).is_pipe
    writer_thread = threading.Thread(target=lambda: (write_all(w, data), os.close(w)))
    writer_thread.start()

    out = Memory()
    try:
        result = await store(source, out, ZstdCodec(threads=2))  # type: ignore[arg-type]
    finally:
        writer_thread.join()
    assert result.sha256_hex == hashlib.sha256(data).hexdigest()
    assert result.size == len(data) and result.crc32_hex == f"{zlib.crc32(out.data):08x}"
    assert zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(out.data) == data


async def test_stripes_share_the_threads_and_a_window_each() -> None:
    data = _data(97)
    codec = ZstdCodec(threads=2, frame_size=FRAME)
    writers = [Memory(), Memory(), Memory()]
    stored = await store_striped(_pieces(data, 10_000), writers, codec, block_size=1000)  # type: ignore[arg-type]
    shared = ShuffledWorkers(2)
    streams = [
        DecodedStream(
            _pieces(bytes(w.data), 3000),
            codec,
            expected_crc32_hex=s.crc32_hex,
            expected_sha256_hex=s.sha256_hex,
            name=f"b-00{i}",
            workers=shared,
            window=1,
        )
        for i, (w, s) in enumerate(zip(writers, stored, strict=True))
    ]
    async with shared:
        out = b"".join([chunk async for chunk in unstripe(streams, 1000)])
    assert out == data
    assert shared.submitted >= len(data) // FRAME  # every frame went through the shared threads
