"""The restore preflight: everything a restore needs, checked before anything is touched (and in a dry
run): the engine and codec each backup of the path names, the key an encrypted backup needs and its
MANIFEST's authentication tag, every program they run, every stored object with the size the MANIFEST
records, and room for the restored data beside the live data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.binlogs.apply import check_applier_tools
from agent.catalog.encryption import keyring_from, restore_cipher
from agent.catalog.listing import BackupEntry
from agent.catalog.manifest import Manifest, ObjectRecord
from agent.catalog.pitr_path import RestorePath
from agent.config import AgentConfig
from agent.errors import DataLoss, FailedPrecondition, ResourceExhausted
from agent.ops.codecs import codec_for_restore
from agent.pipeline.compression import Codec, ExternalCodec
from agent.pipeline.encryption import BackupCipher
from agent.storage.base import object_sizes
from engines import engine_for_manifest
from engines.base import Engine, RestoreContext, RestoreTargets

if TYPE_CHECKING:
    from agent.operations import Operation
    from agent.tablet import Tablet

SPACE_MARGIN = 0.05  # of the restored size, plus:
SPACE_SLACK = 64 << 20
MAX_NAMED = 10


@dataclass(frozen=True)
class PlannedBackup:
    """One backup of a restore path, with what restoring it takes."""

    entry: BackupEntry
    manifest: Manifest
    engine: Engine
    codec: Codec
    objects: list[ObjectRecord]
    cipher: BackupCipher | None = None  # an encrypted backup: its key, its MANIFEST verified

    @property
    def where(self) -> str:
        return f"{self.entry.directory}/{self.entry.name}"

    def context(
        self, tablet: Tablet, targets: RestoreTargets, work_dir: Path, op: Operation
    ) -> RestoreContext:
        """What the engine needs to restore this backup into `targets`."""
        return RestoreContext(
            mycnf=tablet.mycnf,
            targets=targets,
            work_dir=work_dir,
            codec=self.codec,
            op=op,
            handle=self.entry.handle,
            manifest=self.manifest,
            concurrency=tablet.config.restore_concurrency,
            cipher=self.cipher,
            limits=tablet.limits.shared,
        )

    def object_path(self, record: ObjectRecord) -> str:
        """`ks/0/<backup>/17`, and the file it holds when that says more."""
        path = f"{self.where}/{record.name}"
        return path if record.label == record.name else f"{path} ({record.label})"

    @property
    def restored_size(self) -> int:
        return sum(o.size or o.stored_size or 0 for o in self.objects)


async def plan_backups(config: AgentConfig, path: RestorePath) -> list[PlannedBackup]:
    """Engine, codec, key, tools and the objects of each backup of `path`; every object is checked to exist
    with its recorded size. FailedPrecondition (a missing tool or key, an untrusted decompressor) or
    DataLoss (missing or resized objects, an unusable or forged MANIFEST) before anything is touched."""
    plans = []
    keyring = keyring_from(config)
    for entry in (path.full, *path.incrementals):
        manifest = entry.manifest
        assert manifest is not None
        cipher = restore_cipher(manifest, keyring, f"{entry.directory}/{entry.name}")
        engine = engine_for_manifest(manifest, config)
        codec = codec_for_restore(manifest, config)
        _check_codec_tool(codec)
        engine.needed_tools(manifest)
        plans.append(PlannedBackup(entry, manifest, engine, codec, engine.stored_objects(manifest), cipher))
    if path.incrementals:
        check_applier_tools(config.binlog_applier)
    for plan in plans:
        await check_objects(plan)
    return plans


def _check_codec_tool(codec: Codec) -> None:
    if isinstance(codec, ExternalCodec) and codec.decompress_argv:
        program = codec.decompress_argv[0]
        if not (shutil.which(program) or (os.sep in program and os.access(program, os.X_OK))):
            raise FailedPrecondition(
                f"the backup's decompressor {program!r} is not installed or not executable: install it or set "
                "--external-decompressor"
            )


async def check_objects(plan: PlannedBackup) -> None:
    """DataLoss naming every stored object that is missing or has another size than recorded."""
    sizes = await object_sizes(plan.entry.handle, [o.name for o in plan.objects])
    problems = []
    for record, size in zip(plan.objects, sizes, strict=True):
        if size is None:
            problems.append(f"{plan.object_path(record)} is missing")
        elif record.stored_size is not None and size != record.stored_size:
            problems.append(
                f"{plan.object_path(record)} has {size} bytes where the MANIFEST records {record.stored_size}"
            )
    if problems:
        more = f" (and {len(problems) - MAX_NAMED} more)" if len(problems) > MAX_NAMED else ""
        raise DataLoss(f"backup {plan.where} is damaged: {'; '.join(problems[:MAX_NAMED])}{more}")


@dataclass(frozen=True)
class SpaceNeed:
    directory: Path  # one directory on the filesystem
    needed: int
    free: int

    @property
    def short(self) -> bool:
        return self.free < self.needed


def space_needs(
    plans: Sequence[PlannedBackup], targets: RestoreTargets, binlog_work: Path
) -> list[SpaceNeed]:
    """Bytes each filesystem must take for a staged restore (with a margin), and what it has free.
    Blocks: call it in a thread."""
    by_device: dict[int, tuple[Path, int]] = {}

    def add(directory: Path, n: int) -> None:
        device = _device(directory)
        path, total = by_device.get(device, (directory, 0))
        by_device[device] = (path, total + n)

    full, *incrementals = plans
    if full.manifest.file_entries is not None:
        dirs = targets.by_base()
        for fe, record in zip(full.manifest.file_entries, full.objects, strict=True):
            add(dirs.get(fe.base, targets.datadir), record.size or record.stored_size or 0)
    else:  # a stream extracted into the work directory beside the datadir, then renamed into place
        add(targets.datadir, full.restored_size)
    for plan in incrementals:
        add(binlog_work, plan.restored_size)
    needs = []
    for path, total in by_device.values():
        needed = int(total * (1 + SPACE_MARGIN)) + SPACE_SLACK
        needs.append(SpaceNeed(path, needed, _free(path)))
    return needs


def check_space(needs: Sequence[SpaceNeed]) -> None:
    short = [n for n in needs if n.short]
    if short:
        detail = "; ".join(f"{n.directory} needs {_gib(n.needed)} and has {_gib(n.free)} free" for n in short)
        raise ResourceExhausted(
            f"not enough space to stage the restore beside the live data: {detail}. Free space there, or "
            "restore in place (--restore_in_place, or the request's restore_in_place): the live data is then "
            "verified, cleared and replaced, with no copy to go back to"
        )


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _device(path: Path) -> int:
    return _existing(path).stat().st_dev


def _free(path: Path) -> int:
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
