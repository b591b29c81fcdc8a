"""Backup engines, registered by name. The restore engine is the one the MANIFEST names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from agent.catalog.manifest import Manifest
from agent.config import EngineName
from agent.errors import DataLoss, Unimplemented
from agent.params import BackupParams
from engines.base import Engine
from engines.binlog import BinlogEngine
from engines.builtin import BuiltinEngine
from engines.xtrabackup import XtrabackupEngine

ENGINES: Mapping[str, Callable[[], Engine]] = MappingProxyType(
    {EngineName.BUILTIN.value: BuiltinEngine, EngineName.XTRABACKUP.value: XtrabackupEngine}
)


def engine_for_backup(params: BackupParams) -> Engine:
    if params.incremental:
        return BinlogEngine()  # whatever the full backup engine
    factory = ENGINES.get(params.engine.value)
    if factory is None:
        raise Unimplemented(f"backup engine {params.engine.value!r} is not available yet")
    return factory()


def engine_for_manifest(manifest: Manifest) -> Engine:
    if manifest.incremental:
        return BinlogEngine()
    factory = ENGINES.get(manifest.engine)
    if factory is None:
        raise DataLoss(
            f"backup {manifest.backup_name} was made with engine {manifest.engine!r}, which this agent "
            f"cannot restore (known: {', '.join(ENGINES)})"
        )
    return factory()
