"""Many local files to stored objects and back, several at a time (the builtin engine's data files and the
binlog engine's binary logs): one object per file (each sealed with its own data key when encrypted),
compression threads, buffers and rate limits shared by all.

Files below `SMALL_FILE` go in batches: the files of a batch are read, compressed, sealed and hashed in one
step of a CPU thread and written by the storage in one step, where a streaming `store` per file would cost
several tasks and thread hops each (thousands of tables make as many tiny files); the way back reads a
batch of objects in one storage step and decodes, checks and writes them in one CPU step. Each is still
its own object, encoded exactly as `store` encodes it (the codec's stream of the whole file, sealed with
the object's own data key), so a restore cannot tell the two apart. Memory is bounded by the batch size
times the number of batches in flight. Bigger files go through the streaming pipeline each.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.aio.localfiles import LocalFile, fsync_path, local_error
from agent.aio.tasks import complete, for_each, in_thread
from agent.operations import Operation
from agent.pipeline.compression import Buffer, Codec, ExternalCodec, InProcessCodec, whole_compressor
from agent.pipeline.digests import StoredFile, stored_whole
from agent.pipeline.encryption import BackupCipher, opener_for, sealer_for
from agent.pipeline.load import decode_whole, restore
from agent.pipeline.progress import FileProgress
from agent.pipeline.ratelimit import IoLimits
from agent.pipeline.store import file_chunks, store
from agent.pipeline.workers import CODEC_NICENESS, Workers
from agent.storage.base import BackupHandle, get_objects, object_sizes, put_objects

SMALL_FILE = 1 << 20  # files below this size are stored in batches
BATCH_BYTES = 4 << 20
BATCH_FILES = 128
READ_MORE = 1 << 16
SYNC_BATCH = 64  # restored files fsync'd per thread step


@dataclass(frozen=True)
class FileToStore:
    """A file to store as object `object_name`; `name` is how messages call it."""

    object_name: str
    name: str
    path: Path
    size: int


@dataclass(frozen=True)
class FileToRestore:
    """An object to restore into `path`, with what its record says (hashes may be unknown); `name` is the
    file's name (progress), `where` how errors name the stored object."""

    object_name: str
    name: str
    where: str
    path: Path
    size: int | None
    crc32_hex: str | None
    sha256_hex: str | None


async def store_files(
    handle: BackupHandle,
    files: Sequence[FileToStore],
    codec: Codec,
    op: Operation,
    concurrency: int,
    *,
    cipher: BackupCipher | None = None,
    limits: IoLimits | None = None,
) -> list[StoredFile]:
    """Store each file (compressed, encrypted with `cipher`, hashed), `concurrency` at a time; the results
    in `files` order."""
    total = sum(f.size for f in files)
    op.add_total(total)
    op.info(f"copying {len(files)} files ({total / 2**20:.1f} MiB) with concurrency {concurrency}")
    results: list[StoredFile | None] = [None] * len(files)
    work: list[int | list[int]] = []  # a file streamed on its own, or a batch of small files
    small = (
        [] if isinstance(codec, ExternalCodec) else [i for i, f in enumerate(files) if f.size < SMALL_FILE]
    )
    if small:
        work += [i for i, f in enumerate(files) if f.size >= SMALL_FILE]
        work += [[small[k] for k in run] for run in batches([files[i].size for i in small])]
    else:
        work += range(len(files))
    # One set of compression threads for all files: the CPUs stay busy to the end of the
    # biggest file, and memory does not grow with the concurrency.
    async with Workers(niceness=limits.niceness if limits is not None else CODEC_NICENESS) as workers:

        async def store_one(f: FileToStore) -> StoredFile:
            writer = await handle.add_file(f.object_name, f.size)
            try:
                return await store(
                    file_chunks(f.path),
                    writer,
                    codec,
                    on_progress=FileProgress(op, "backing up", f.name, f.size),
                    workers=workers,
                    sealer=sealer_for(cipher, f.object_name),
                    limits=limits,
                )
            except BaseException:
                await writer.abort()
                raise

        async def copy(_: int, item: int | list[int]) -> None:
            if isinstance(item, int):
                results[item] = await store_one(files[item])
                return
            assert not isinstance(codec, ExternalCodec)
            stored = await store_batch(
                handle,
                [SmallFile(files[i].object_name, files[i].path, files[i].size) for i in item],
                codec,
                workers,
                cipher=cipher,
                limits=limits,
                on_progress=op.add_done,
            )
            for i, s in zip(item, stored, strict=True):
                results[i] = s

        await for_each(work, copy, concurrency)
    return [r for r in results if r is not None]


async def restore_files(
    handle: BackupHandle,
    objects: Sequence[FileToRestore],
    codec: Codec,
    op: Operation,
    concurrency: int,
    *,
    cipher: BackupCipher | None = None,
    limits: IoLimits | None = None,
) -> None:
    """Put every object back into its path, check its hashes, and make the files and their directories
    durable; the biggest first, `concurrency` at a time."""
    sizes = await object_sizes(handle, [o.object_name for o in objects])
    op.add_total(sum(o.size if o.size is not None else s or 0 for o, s in zip(objects, sizes, strict=True)))
    op.info(f"restoring {len(objects)} files with concurrency {concurrency}")
    order = sorted(range(len(objects)), key=lambda i: sizes[i] or 0, reverse=True)
    await in_thread(_make_directories, {o.path.parent for o in objects})

    # whole objects decoded in batches: small as stored and as restored (zeros compress a thousandfold)
    small: list[int] = []
    if not isinstance(codec, ExternalCodec):
        small = [i for i, o in enumerate(objects) if _small(o.size) and _small(sizes[i])]
    batched = set(small)
    work: list[int | list[int]] = [i for i in order if i not in batched]
    work += [[small[k] for k in run] for run in batches([objects[i].size or 0 for i in small])]

    async def restore_one(_: int, item: int | list[int]) -> None:
        if not isinstance(item, int):
            assert not isinstance(codec, ExternalCodec)
            await restore_batch(
                handle,
                [
                    SmallObject(o.object_name, o.where, o.path, o.crc32_hex, o.sha256_hex)
                    for o in (objects[i] for i in item)
                ],
                codec,
                workers,
                cipher=cipher,
                limits=limits,
                on_progress=op.add_done,
            )
            return
        i = item
        o = objects[i]
        await restore(
            handle.read_file(o.object_name),
            codec,
            o.path,
            expected_crc32_hex=o.crc32_hex,
            expected_sha256_hex=o.sha256_hex,
            name=o.where,
            on_progress=FileProgress(op, "restoring", o.name, o.size or sizes[i] or 0),
            sync=False,
            workers=workers,
            opener=opener_for(cipher, o.object_name, o.where),
            limits=limits,
        )

    async with Workers(niceness=0) as workers:  # a restore runs at the agent's own priority
        await for_each(work, restore_one, concurrency)
    # fsync'd together at the end rather than one by one: the journal commits of many small
    # files are shared, and big files were written back while being restored.
    op.info(f"syncing {len(objects)} restored files to disk")
    paths = [o.path for o in objects]
    directories = sorted({d for p in paths for d in (p.parent, p.parent.parent)})
    everything = [*paths, *directories]
    await for_each(
        [everything[k : k + SYNC_BATCH] for k in range(0, len(everything), SYNC_BATCH)], _fsync, concurrency
    )


def _small(size: int | None) -> bool:
    return size is not None and size < SMALL_FILE


def _make_directories(directories: set[Path]) -> None:
    for d in sorted(directories):
        d.mkdir(mode=0o750, parents=True, exist_ok=True)


async def _fsync(_: int, paths: list[Path]) -> None:
    await in_thread(_fsync_all, paths)


def _fsync_all(paths: list[Path]) -> None:
    for path in paths:
        fsync_path(path)


# --- small files, in batches ---------------------------------------------------------------


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
