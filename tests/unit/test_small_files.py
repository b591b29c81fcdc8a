"""Small files go in batches (one CPU step and one storage step per batch), each still its own object,
encoded exactly as the streaming pipeline encodes it: hashes, compression and encryption alike."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.errors import AgentError, DataLoss, NotFound
from agent.operations import Kind, Operation
from agent.pipeline.compression import Buffer, CodecOptions, ExternalCodec, get_codec, whole_compressor
from agent.pipeline.encryption import BackupCipher, MasterKey, sealer_for
from agent.pipeline.files import (
    SMALL_FILE,
    FileToRestore,
    FileToStore,
    batches,
    encode_bytes,
    restore_files,
    store_files,
)
from agent.pipeline.ratelimit import RateLimits
from agent.pipeline.store import file_chunks, store
from agent.storage.base import BackupHandle, BackupWriter
from agent.storage.file import FileBackupStorage
from agent.storage.recording import RecordingHandle

CODECS = ["zstd", "pgzip", "lz4", "none"]


class MemoryWriter:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: Buffer) -> None:
        self.data += data

    async def close(self) -> None:
        pass

    async def abort(self) -> None:
        pass


class CountingHandle(RecordingHandle):
    """Counts how objects reach storage: one by one (`add_file`) or in batches (`put_objects`)."""

    def __init__(self, inner: BackupHandle) -> None:
        super().__init__(inner)
        self.added: list[str] = []
        self.batches: list[list[str]] = []

    async def add_file(self, filename: str, size_hint: int = -1) -> BackupWriter:
        self.added.append(filename)
        return await super().add_file(filename, size_hint)

    async def put_objects(self, objects: Sequence[tuple[str, Buffer]]) -> None:
        self.batches.append([name for name, _ in objects])
        await super().put_objects(objects)


def test_batches_cut_by_count_and_bytes_in_order() -> None:
    assert batches([]) == []
    assert batches([1] * 5, max_bytes=100, max_files=2) == [[0, 1], [2, 3], [4]]
    assert batches([40, 40, 40, 10], max_bytes=100, max_files=10) == [[0, 1], [2, 3]]
    assert batches([500, 1, 1], max_bytes=100, max_files=10) == [[0], [1, 2]]  # one big file alone


@pytest.mark.parametrize("codec_name", CODECS)
@pytest.mark.parametrize("encrypted", [False, True])
async def test_a_small_file_is_stored_as_the_streaming_pipeline_stores_it(
    tmp_path: Path, codec_name: str, encrypted: bool
) -> None:
    codec = get_codec(codec_name, CodecOptions())
    assert not isinstance(codec, ExternalCodec)
    cipher = BackupCipher(MasterKey(os.urandom(32)), "b1") if encrypted else None
    for size in (0, 1, 70_000, 3 << 20):  # the last one: more than a zstd frame
        original = os.urandom(size // 2) + b"a" * (size - size // 2)
        path = tmp_path / f"f{size}"
        path.write_bytes(original)
        streamed = MemoryWriter()
        await store(file_chunks(path), streamed, codec, sealer=sealer_for(cipher, "7"))
        whole = encode_bytes(original, whole_compressor(codec), cipher, "7")
        if cipher is None:
            assert whole == bytes(streamed.data)  # byte for byte
        else:
            assert len(whole) == len(streamed.data)  # fresh data keys: same shape, other bytes


@pytest.mark.parametrize("encrypted", [False, True])
async def test_store_files_batches_small_files_and_streams_big_ones_then_restores_them(
    tmp_path: Path, encrypted: bool
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sizes = [SMALL_FILE * 2 + 5, 0, 10, 4096, SMALL_FILE - 1, SMALL_FILE, 100_000] + [1000] * 300
    files = []
    for i, size in enumerate(sizes):
        path = data / f"f{i}"
        path.write_bytes(os.urandom(min(size, 1000)) + b"z" * max(0, size - 1000))
        files.append(FileToStore(str(i), f"f{i}", path, size))
    storage = FileBackupStorage(tmp_path / "backups")
    handle = CountingHandle(await storage.start_backup("ks/0", "b1"))
    codec = get_codec("zstd", CodecOptions())
    cipher = BackupCipher(MasterKey(os.urandom(32)), "b1") if encrypted else None
    op = Operation(kind=Kind.BACKUP)
    stored = await store_files(handle, files, codec, op, 3, cipher=cipher, limits=RateLimits().shared)
    await handle.make_durable()
    assert await handle.unsealable() == []
    await handle.end()

    assert sorted(handle.added) == ["0", "5"]  # the files of SMALL_FILE bytes and more, one by one
    batched = [n for b in handle.batches for n in b]
    assert sorted(batched, key=int) == [str(i) for i in range(len(sizes)) if sizes[i] < SMALL_FILE]
    assert len(handle.batches) < 10
    assert [s.size for s in stored] == sizes
    assert op.bytes_done == op.bytes_total == sum(sizes)
    assert handle.written == {str(i): s.stored_size for i, s in enumerate(stored)}

    read = (await storage.list_backups("ks/0"))[0]
    targets = [
        FileToRestore(
            f.object_name, f.name, f.name, tmp_path / "out" / f.name, s.size, s.crc32_hex, s.sha256_hex
        )
        for f, s in zip(files, stored, strict=True)
    ]
    restoring = Operation(kind=Kind.RESTORE)
    await restore_files(read, targets, codec, restoring, 3, cipher=cipher)
    assert (
        restoring.bytes_done == restoring.bytes_total == sum(sizes)
    )  # the empty file counts 0, not its stored size
    for f in files:
        assert (tmp_path / "out" / f.name).read_bytes() == f.path.read_bytes()


async def test_a_small_file_that_cannot_be_read_fails_the_copy(tmp_path: Path) -> None:
    missing = FileToStore("0", "gone", tmp_path / "gone", 10)
    storage = FileBackupStorage(tmp_path / "backups")
    handle = await storage.start_backup("ks/0", "b1")
    with pytest.raises(AgentError, match="gone"):
        await store_files(
            handle, [missing], get_codec("zstd", CodecOptions()), Operation(kind=Kind.BACKUP), 2
        )
    await handle.abort()


async def test_batches_are_paced_by_the_rate_limits(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100_000)
    files = [FileToStore(str(i), "f", path, 100_000) for i in range(10)]
    limits = RateLimits(disk=4_000_000).for_operation()
    handle = await FileBackupStorage(tmp_path / "backups").start_backup("ks/0", "b1")
    started = time.monotonic()
    await store_files(
        handle, files, get_codec("none", CodecOptions()), Operation(kind=Kind.BACKUP), 2, limits=limits
    )
    assert time.monotonic() - started >= 0.2  # 1 MB at 4 MB/s, less the burst


async def _stored_backup(
    tmp_path: Path, sizes: list[int], cipher: BackupCipher | None = None
) -> tuple[FileBackupStorage, list[FileToRestore]]:
    data = tmp_path / "data"
    data.mkdir()
    files = []
    for i, size in enumerate(sizes):
        path = data / f"f{i}"
        path.write_bytes(os.urandom(min(size, 500)) + b"\0" * max(0, size - 500))
        files.append(FileToStore(str(i), f"f{i}", path, size))
    storage = FileBackupStorage(tmp_path / "backups")
    handle = await storage.start_backup("ks/0", "b1")
    codec = get_codec("zstd", CodecOptions())
    stored = await store_files(handle, files, codec, Operation(kind=Kind.BACKUP), 2, cipher=cipher)
    await handle.end()
    targets = [
        FileToRestore(
            f.object_name,
            f.name,
            f"b1/{f.object_name}",
            tmp_path / "out" / f.name,
            s.size,
            s.crc32_hex,
            s.sha256_hex,
        )
        for f, s in zip(files, stored, strict=True)
    ]
    return storage, targets


async def test_restore_reads_small_objects_in_batches_and_streams_what_expands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = [100] * 50 + [8 << 20]  # the last one: zeros, small as stored, big as restored
    storage, targets = await _stored_backup(tmp_path, sizes)
    read = (await storage.list_backups("ks/0"))[0]
    batched: list[int] = []
    real = type(read).get_objects

    async def counting(self: Any, names: Sequence[str]) -> list[bytes]:
        batched.append(len(names))
        return await real(self, names)

    monkeypatch.setattr(type(read), "get_objects", counting)
    op = Operation(kind=Kind.RESTORE)
    await restore_files(read, targets, get_codec("zstd", CodecOptions()), op, 2)
    assert sum(batched) == 50 and len(batched) <= 2
    assert op.bytes_done == sum(sizes)
    for t in targets:
        assert t.path.read_bytes() == (tmp_path / "data" / t.name).read_bytes()


@pytest.mark.parametrize("encrypted", [False, True])
async def test_a_damaged_small_object_is_named_and_its_file_removed(tmp_path: Path, encrypted: bool) -> None:
    cipher = BackupCipher(MasterKey(os.urandom(32)), "b1") if encrypted else None
    storage, targets = await _stored_backup(tmp_path, [100, 200, 300], cipher)
    obj = tmp_path / "backups" / "ks" / "0" / "b1" / "1"
    damaged = bytearray(obj.read_bytes())
    damaged[-3] ^= 0xFF
    obj.write_bytes(bytes(damaged))
    read = (await storage.list_backups("ks/0"))[0]
    with pytest.raises(DataLoss, match="b1/1"):
        await restore_files(
            read, targets, get_codec("zstd", CodecOptions()), Operation(kind=Kind.RESTORE), 1, cipher=cipher
        )
    assert not targets[1].path.exists()
    # without the CRC-32 to compare, the decoder or the authentication still catches it
    unchecked = [dataclasses.replace(t, crc32_hex=None) for t in targets]
    with pytest.raises(DataLoss, match="b1/1"):
        await restore_files(
            read, unchecked, get_codec("zstd", CodecOptions()), Operation(kind=Kind.RESTORE), 1, cipher=cipher
        )


async def test_a_missing_small_object_is_not_found(tmp_path: Path) -> None:
    storage, targets = await _stored_backup(tmp_path, [100, 200])
    (tmp_path / "backups" / "ks" / "0" / "b1" / "0").unlink()
    read = (await storage.list_backups("ks/0"))[0]
    with pytest.raises(NotFound, match="0 not found"):
        await restore_files(read, targets, get_codec("zstd", CodecOptions()), Operation(kind=Kind.RESTORE), 1)
