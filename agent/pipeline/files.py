"""Many local files to stored objects and back, several at a time (the builtin engine's data files and the
binlog engine's binary logs): one object per file (each sealed with its own data key when encrypted),
compression threads, buffers and rate limits shared by all. Files below `SMALL_FILE` go in batches
(`pipeline.small_files`), bigger ones through the streaming pipeline each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.aio.localfiles import fsync_path
from agent.aio.tasks import for_each, in_thread
from agent.operations import Operation
from agent.pipeline.compression import Codec, ExternalCodec
from agent.pipeline.digests import StoredFile
from agent.pipeline.encryption import BackupCipher, opener_for, sealer_for
from agent.pipeline.load import restore
from agent.pipeline.progress import FileProgress
from agent.pipeline.ratelimit import IoLimits
from agent.pipeline.small_files import (
    SMALL_FILE,
    SmallFile,
    SmallObject,
    batches,
    restore_batch,
    store_batch,
)
from agent.pipeline.store import file_chunks, store
from agent.pipeline.workers import Workers
from agent.storage.base import BackupHandle, object_sizes

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
    async with Workers() as workers:

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
    op.add_total(sum(o.size or s or 0 for o, s in zip(objects, sizes, strict=True)))
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

    async with Workers() as workers:  # buffers shared by the files
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
