"""How an xtrabackup backup's stream is stored, as its MANIFEST says (Vitess's names), checked before use.

One object `FileName` (`backup.xbstream.zst`), or with N stripes `FileName-000` ... `FileName-<N-1>`,
block `i` of the stream going to stripe `i mod N`. Our per-object hashes live in `TabletAgent.Objects`:
Vitess's xtrabackup MANIFEST has none, so a Vitess-made backup restores unverified.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.catalog.manifest import Manifest, StoredObject
from agent.errors import DataLoss, InvalidArgument
from agent.storage.base import validate_object_name
from engines.xtrabackup_tool import StreamMode, stream_mode

MAX_STRIPES = 1024
MAX_STRIPE_BLOCK = 1 << 30


@dataclass(frozen=True)
class Layout:
    file_name: str
    stream_mode: StreamMode
    stripes: int  # 0: one object, not striped
    block_size: int

    @property
    def object_names(self) -> list[str]:
        if self.stripes == 0:
            return [self.file_name]
        return [f"{self.file_name}-{i:03d}" for i in range(self.stripes)]


def layout_of(manifest: Manifest) -> Layout:
    """The layout a MANIFEST describes; DataLoss when it is not one this agent can safely read."""
    where = f"MANIFEST of backup {manifest.backup_name}"
    name = manifest.file_name or ""
    try:
        validate_object_name(name)
    except InvalidArgument:
        raise DataLoss(f"{where} has FileName {name!r}, which is not a plain object name") from None
    try:
        mode = stream_mode(manifest.stream_mode or "", "StreamMode")
    except InvalidArgument as e:
        raise DataLoss(f"{where}: {e}") from None
    stripes = manifest.num_stripes or 0
    block = manifest.stripe_block_size or 0
    if not 0 <= stripes <= MAX_STRIPES:
        raise DataLoss(f"{where} has NumStripes {stripes}: expected 0 to {MAX_STRIPES}")
    if stripes and not 0 < block <= MAX_STRIPE_BLOCK:
        raise DataLoss(f"{where} has StripeBlockSize {block}: expected 1 to {MAX_STRIPE_BLOCK} bytes")
    return Layout(file_name=name, stream_mode=mode, stripes=stripes, block_size=block)


def object_records(manifest: Manifest, layout: Layout) -> dict[str, StoredObject | None]:
    """Our record (hashes, sizes) of each object: for all of them, or (Vitess-made) for none."""
    known = {o.name: o for o in (manifest.tablet_agent.objects if manifest.tablet_agent else [])}
    names = layout.object_names
    missing = [n for n in names if n not in known]
    if known and missing:
        raise DataLoss(
            f"MANIFEST of backup {manifest.backup_name} has no hash for object(s) {', '.join(missing[:10])}"
        )
    return {n: known.get(n) for n in names}
