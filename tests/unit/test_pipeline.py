import asyncio
import hashlib
import os
import shutil
import stat
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.aio.procs import ProcessError
from agent.errors import DataLoss, StorageError
from agent.pipeline.compression import Buffer, Codec, CodecOptions, ExternalCodec, get_codec
from agent.pipeline.digests import StoredFile
from agent.pipeline.load import DecodedStream, restore, unstripe
from agent.pipeline.store import file_chunks, store, store_striped, stream_chunks
from agent.storage.file import FileBackupStorage

CODECS = ["zstd", "pgzip", "lz4", "none"]
HAVE_ZSTD_CLI = shutil.which("zstd") is not None


class MemoryWriter:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = self.aborted = False

    async def write(self, data: Buffer) -> None:
        assert not (self.closed or self.aborted)
        self.data += data

    async def close(self) -> None:
        self.closed = True

    async def abort(self) -> None:
        self.aborted = True


class NullWriter(MemoryWriter):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def write(self, data: Buffer) -> None:
        self.count += len(data)


class FailingWriter(MemoryWriter):
    async def write(self, data: Buffer) -> None:
        raise StorageError("cannot write /b/0: No space left on device (ENOSPC)")


async def _pieces(data: bytes, step: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), step):
        yield data[i : i + step]


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


_SIXTEEN_LETTERS = bytes(b"abcdefghijklmnop"[i % 16] for i in range(256))


def _compressible(size: int) -> bytes:
    """Random letters: about 2:1 for zstd, with real work for its entropy coder."""
    return os.urandom(size).translate(_SIXTEEN_LETTERS)


def _codec(name: str) -> Codec:
    return get_codec(name, CodecOptions(threads=2, gzip_block_size=3000))


def _expected(data: bytes, stored: bytes) -> StoredFile:
    return StoredFile(len(data), len(stored), f"{zlib.crc32(stored):08x}", hashlib.sha256(data).hexdigest())


async def _round_trip(codec: Codec, data: bytes, piece: int, chunk: int) -> None:
    writer = MemoryWriter()
    progress: list[int] = []
    stored_file = await store(
        _pieces(data, piece), writer, codec, chunk_size=chunk, on_progress=progress.append
    )
    assert writer.closed and not writer.aborted
    stored = bytes(writer.data)
    assert stored_file == _expected(data, stored)
    assert sum(progress) == len(data)
    out = bytearray()

    async def sink(b: bytes) -> None:
        out.extend(b)

    restored = await restore(
        _pieces(stored, max(1, chunk // 3)),
        codec,
        sink,
        expected_crc32_hex=stored_file.crc32_hex,
        expected_sha256_hex=stored_file.sha256_hex,
        name="0",
        chunk_size=chunk,
    )
    assert out == data
    assert restored == stored_file


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(CODECS),
    size=st.one_of(st.just(0), st.integers(1, 50), st.integers(1, 200_000)),
    piece=st.integers(1, 40_000),
    chunk=st.integers(1000, 70_000),
)
def test_store_and_restore_round_trip(name: str, size: int, piece: int, chunk: int) -> None:
    data = os.urandom(size // 2) + bytes(size - size // 2)
    asyncio.run(_round_trip(_codec(name), data, piece, chunk))


@pytest.mark.skipif(not HAVE_ZSTD_CLI, reason="zstd not installed")
async def test_external_codec_round_trip_and_interop_with_builtin_zstd() -> None:
    external = ExternalCodec(("zstd", "-q", "-c"), ("zstd", "-q", "-d", "-c"), ".zst")
    data = os.urandom(1 << 20) + bytes(5 << 20)
    await _round_trip(external, data, 300_000, 1 << 20)
    writer = MemoryWriter()
    info = await store(_one(data), writer, external)
    out = bytearray()

    async def sink(b: bytes) -> None:
        out.extend(b)

    await restore(_one(bytes(writer.data)), _codec("zstd"), sink, expected_crc32_hex=info.crc32_hex, name="0")
    assert out == data


async def test_file_storage_and_local_files(tmp_path: Path) -> None:
    source = tmp_path / "ibdata1"
    data = os.urandom(3 << 20) + bytes(6 << 20) + b"end"
    source.write_bytes(data)
    handle = await FileBackupStorage(tmp_path / "backups").start_backup("ks/0", "b1")
    codec = _codec("zstd")
    info = await store(file_chunks(source, 1 << 20), await handle.add_file("0"), codec)
    await handle.end()
    assert info.sha256_hex == hashlib.sha256(data).hexdigest()
    assert await handle.file_size("0") == info.stored_size
    target = tmp_path / "restore" / "data" / "ibdata1"
    await restore(
        handle.read_file("0"),
        codec,
        target,
        expected_crc32_hex=info.crc32_hex,
        expected_sha256_hex=info.sha256_hex,
        name="ibdata1",
    )
    assert target.read_bytes() == data
    assert not stat.S_IMODE(target.stat().st_mode) & 0o007


@pytest.mark.parametrize("name", CODECS)
async def test_flipped_byte_is_a_hash_mismatch(name: str, tmp_path: Path) -> None:
    codec = _codec(name)
    data = os.urandom(200_000) + bytes(300_000)
    writer = MemoryWriter()
    info = await store(_one(data), writer, codec)
    stored = bytearray(writer.data)
    stored[len(stored) // 3] ^= 0x01
    got = f"{zlib.crc32(stored):08x}"
    target = tmp_path / "t"
    with pytest.raises(DataLoss) as e:
        await restore(
            _pieces(bytes(stored), 10_000),
            codec,
            target,
            expected_crc32_hex=info.crc32_hex,
            expected_sha256_hex=info.sha256_hex,
            name="db/t1.ibd",
        )
    assert str(e.value) == f"hash mismatch for db/t1.ibd, got {got} expected {info.crc32_hex}"
    assert not target.exists()


async def test_wrong_original_hash_is_a_mismatch() -> None:
    writer = MemoryWriter()
    info = await store(_one(b"payload"), writer, _codec("zstd"))

    async def sink(b: bytes) -> None:
        pass

    got = hashlib.sha256(b"payload").hexdigest()
    with pytest.raises(DataLoss, match=f"^hash mismatch for x, got {got} expected {'0' * 64}$"):
        await restore(
            _one(bytes(writer.data)),
            _codec("zstd"),
            sink,
            expected_crc32_hex=info.crc32_hex,
            expected_sha256_hex="0" * 64,
            name="x",
        )


async def test_truncated_stream_without_hashes_is_data_loss() -> None:
    writer = MemoryWriter()
    await store(_one(os.urandom(100_000)), writer, _codec("zstd"))

    async def sink(b: bytes) -> None:
        pass

    with pytest.raises(DataLoss, match=r"cannot decompress backup\.xbstream\.zst .*truncated"):
        await restore(
            _one(bytes(writer.data[:-100])),
            _codec("zstd"),
            sink,
            expected_crc32_hex=None,
            name="backup.xbstream.zst",
        )


@pytest.mark.skipif(not HAVE_ZSTD_CLI, reason="zstd not installed")
async def test_failing_external_decompressor_reports_its_stderr() -> None:
    codec = ExternalCodec(("zstd", "-c"), ("zstd", "-d", "-c"))

    async def sink(b: bytes) -> None:
        pass

    with pytest.raises(ProcessError, match="zstd -d -c"):
        await restore(_one(b"not zstd" * 1000), codec, sink, expected_crc32_hex=None, name="x")


async def test_writer_error_propagates_unwrapped_and_aborts() -> None:
    writer = FailingWriter()
    closed = False

    async def source() -> AsyncIterator[bytes]:
        nonlocal closed
        try:
            while True:
                yield os.urandom(1 << 20)
        finally:
            closed = True

    with pytest.raises(StorageError, match="ENOSPC"):
        await store(source(), writer, _codec("zstd"))
    assert writer.aborted and closed


async def test_cancellation_aborts_the_writer_and_closes_the_source(tmp_path: Path) -> None:
    handle = await FileBackupStorage(tmp_path).start_backup("ks/0", "b1")
    writer = await handle.add_file("0")
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield os.urandom(1 << 20)
        finally:
            closed.set()

    before = asyncio.all_tasks()
    task = asyncio.create_task(store(endless(), writer, _codec("zstd")))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()
    assert list((tmp_path / "ks" / "0" / "b1").iterdir()) == []
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == before


async def test_memory_stays_bounded_for_512_mib() -> None:
    blocks = [_compressible(4 << 20) for _ in range(8)]  # cycled: 32 MiB apart, beyond zstd's window

    async def source() -> AsyncIterator[bytes]:
        for i in range(128):
            yield blocks[i % 8]

    writer = NullWriter()
    tracemalloc.start()
    try:
        info = await store(source(), writer, _codec("zstd"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == 512 << 20
    assert writer.count == info.stored_size
    assert peak < 32 << 20, f"peak traced memory {peak >> 20} MiB"  # a few 4 MiB chunks in queues


async def _striped_round_trip(name: str, size: int, block: int, stripes: int) -> None:
    codec = _codec(name)
    data = os.urandom(size)
    writers = [MemoryWriter() for _ in range(stripes)]
    infos = await store_striped(_pieces(data, 7777), writers, codec, block_size=block, chunk_size=20_000)
    assert len(infos) == stripes
    for w, info in zip(writers, infos, strict=True):
        assert w.closed and info.stored_size == len(w.data) and info.crc32_hex == f"{zlib.crc32(w.data):08x}"
    assert sum(i.size for i in infos) == size
    streams = [
        DecodedStream(
            _pieces(bytes(w.data), 5000),
            codec,
            expected_crc32_hex=i.crc32_hex,
            expected_sha256_hex=i.sha256_hex,
            name=f"backup.xbstream.zst-{k:03d}",
            chunk_size=8192,
        )
        for k, (w, i) in enumerate(zip(writers, infos, strict=True))
    ]
    out = b"".join([c async for c in unstripe(streams, block)])
    assert out == data


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["zstd", "none", "lz4"]),
    size=st.integers(0, 120_000),
    block=st.integers(1, 9000),
    stripes=st.integers(1, 5),
)
def test_striping_round_trip(name: str, size: int, block: int, stripes: int) -> None:
    asyncio.run(_striped_round_trip(name, size, block, stripes))


async def test_unstripe_detects_a_corrupt_stripe_and_bad_lengths() -> None:
    codec = _codec("none")
    writers = [MemoryWriter(), MemoryWriter()]
    infos = await store_striped(_one(os.urandom(10_000)), writers, codec, block_size=1000)
    bad = bytearray(writers[1].data)
    bad[0] ^= 0xFF
    streams = [
        DecodedStream(
            _one(bytes(writers[0].data)), codec, expected_crc32_hex=infos[0].crc32_hex, name="s-000"
        ),
        DecodedStream(_one(bytes(bad)), codec, expected_crc32_hex=infos[1].crc32_hex, name="s-001"),
    ]
    with pytest.raises(DataLoss, match="hash mismatch for s-001"):
        async for _ in unstripe(streams, 1000):
            pass
    uneven = [_one(b"a" * 1000), _one(b"b" * 3000)]
    with pytest.raises(DataLoss, match="inconsistent lengths"):
        async for _ in unstripe(uneven, 1000):
            pass


async def test_stream_chunks_reads_full_chunks() -> None:
    reader = asyncio.StreamReader(limit=1 << 20)
    reader.feed_data(b"x" * 2_500_000)
    reader.feed_eof()
    sizes = [len(c) async for c in stream_chunks(reader, 1 << 20)]
    assert sizes == [1 << 20, 1 << 20, 2_500_000 - (2 << 20)]
