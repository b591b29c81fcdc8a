"""Small files stored and restored in batches: the files of a batch are read, compressed, sealed and hashed
in one step of a CPU thread, and written by the storage in one step, where a streaming `store` per file
would cost several tasks and thread hops each (thousands of tables make as many tiny files); the way back
reads a batch of objects in one storage step and decodes, checks and writes them in one CPU step.

Each file is still its own object, encoded exactly as `store` encodes it (the codec's stream of the
whole file, sealed with the object's own data key), so a restore cannot tell the two apart. Memory is
bounded by the batch size times the number of batches in flight.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.aio.localfiles import LocalFile, local_error
from agent.aio.tasks import complete
from agent.pipeline.compression import Buffer, InProcessCodec, whole_compressor
from agent.pipeline.digests import StoredFile, stored_whole
from agent.pipeline.encryption import BackupCipher, opener_for, sealer_for
from agent.pipeline.load import decode_whole
from agent.pipeline.ratelimit import IoLimits
from agent.pipeline.workers import Workers
from agent.storage.base import BackupHandle, get_objects, put_objects

SMALL_FILE = 1 << 20  # files below this size are stored in batches
BATCH_BYTES = 4 << 20
BATCH_FILES = 128
READ_MORE = 1 << 16


@dataclass(frozen=True)
class SmallFile:
    object_name: str
    path: Path
    size: int


@dataclass(frozen=True)
class SmallObject:
    """An object to restore into `path`; `where` is how errors name it."""

    object_name: str
    where: str
    path: Path
    crc32_hex: str | None
    sha256_hex: str | None


def batches(
    sizes: Sequence[int], max_bytes: int = BATCH_BYTES, max_files: int = BATCH_FILES
) -> list[list[int]]:
    """The indexes of `sizes` in order, cut into runs of at most `max_files` files and `max_bytes` bytes
    (a single file may be bigger)."""
    out: list[list[int]] = []
    run: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        if run and (len(run) >= max_files or total + size > max_bytes):
            out.append(run)
            run, total = [], 0
        run.append(i)
        total += size
    if run:
        out.append(run)
    return out


def read_whole(path: Path) -> bytes:
    """A local file's bytes, read in one call where its size says how many there are."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise local_error("cannot open", path, e) from e
    try:
        size = os.fstat(fd).st_size
        parts = [os.read(fd, size + 1)]
        # a short read of a regular file is its end; a full one means it grew since fstat
        while len(parts[-1]) > size and (data := os.read(fd, READ_MORE)):
            parts.append(data)
            size = 0
    except OSError as e:
        raise local_error("cannot read", path, e) from e
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def encode_bytes(
    original: Buffer, compress: Callable[[Buffer], bytes], cipher: BackupCipher | None, object_name: str
) -> bytes:
    """`original` as object `object_name` stores it: the codec's whole stream (`compress`, from
    `whole_compressor`), sealed when encrypted."""
    out = compress(original)
    sealer = sealer_for(cipher, object_name)
    return out if sealer is None else sealer.update(out) + sealer.finish()


def _encode_batch(
    files: Sequence[SmallFile], codec: InProcessCodec, cipher: BackupCipher | None
) -> list[tuple[bytes, StoredFile]]:
    compress = whole_compressor(codec)
    out = []
    for f in files:
        original = read_whole(f.path)
        stored = encode_bytes(original, compress, cipher, f.object_name)
        out.append((stored, stored_whole(original, stored)))
    return out


async def store_batch(
    handle: BackupHandle,
    files: Sequence[SmallFile],
    codec: InProcessCodec,
    workers: Workers,
    *,
    cipher: BackupCipher | None = None,
    limits: IoLimits | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[StoredFile]:
    """Store each of `files` as its own object, the batch in one CPU step (a slot of `workers`) and one
    storage step; reads are paced by the disk limit, writes by the storage limit."""
    if limits is not None:
        await limits.disk.pace(sum(f.size for f in files))
    await workers.acquire()
    try:
        encoded = await complete(workers.call(functools.partial(_encode_batch, files, codec, cipher)))
    finally:
        workers.release()
    stored_bytes = sum(len(data) for data, _ in encoded)
    if limits is not None:
        await limits.storage.pace(stored_bytes)
    await put_objects(handle, [(f.object_name, data) for f, (data, _) in zip(files, encoded, strict=True)])
    if on_progress is not None:
        on_progress(sum(s.size for _, s in encoded))
    return [s for _, s in encoded]


def _decode_batch(
    objects: Sequence[SmallObject],
    stored: Sequence[bytes],
    codec: InProcessCodec,
    cipher: BackupCipher | None,
) -> int:
    done = 0
    for o, data in zip(objects, stored, strict=True):
        local = LocalFile(o.path)
        local.open()
        try:
            result = decode_whole(
                data,
                codec,
                local.write,
                expected_crc32_hex=o.crc32_hex,
                expected_sha256_hex=o.sha256_hex,
                name=o.where,
                opener=opener_for(cipher, o.object_name, o.where),
            )
            local.finish(sync=False)
        except BaseException:
            local.discard()
            raise
        done += result.size
    return done


async def restore_batch(
    handle: BackupHandle,
    objects: Sequence[SmallObject],
    codec: InProcessCodec,
    workers: Workers,
    *,
    cipher: BackupCipher | None = None,
    limits: IoLimits | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Restore each of `objects` (whole, small, into directories that exist) with the checks of `restore`:
    read in one storage step (paced by the storage limit), decoded and written in one CPU step. The files
    are not synced: the caller syncs them all at the end."""
    stored = await get_objects(handle, [o.object_name for o in objects])
    if limits is not None:
        await limits.storage.pace(sum(len(data) for data in stored))
    await workers.acquire()
    try:
        # to the end even when cancelled: the thread must be done with the files before anyone removes them
        done = await complete(workers.call(functools.partial(_decode_batch, objects, stored, codec, cipher)))
    finally:
        workers.release()
    if on_progress is not None:
        on_progress(done)
