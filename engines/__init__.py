"""Backup engines, registered by name. The restore engine is the one the MANIFEST names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from agent.catalog.manifest import Manifest
from agent.config import AgentConfig, EngineName
from agent.errors import DataLoss, Unimplemented
from agent.params import BackupParams
from engines.base import Engine
from engines.binlog import BinlogEngine
from engines.builtin import BuiltinEngine
from engines.xtrabackup import XtrabackupEngine

ENGINES: Mapping[str, Callable[[AgentConfig], Engine]] = MappingProxyType(
    {
        EngineName.BUILTIN.value: lambda config: BuiltinEngine(config.mysqld_start_timeout),
        EngineName.XTRABACKUP.value: XtrabackupEngine,
    }
)


def engine_for_backup(params: BackupParams, config: AgentConfig) -> Engine:
    if params.incremental:
        return BinlogEngine()  # whatever the full backup engine
    factory = ENGINES.get(params.engine.value)
    if factory is None:
        raise Unimplemented(f"backup engine {params.engine.value!r} is not available yet")
    return factory(config)


def engine_for_manifest(manifest: Manifest, config: AgentConfig) -> Engine:
    if manifest.incremental:
        return BinlogEngine()
    factory = ENGINES.get(manifest.engine)
    if factory is None:
        raise DataLoss(
            f"backup {manifest.backup_name} was made with engine {manifest.engine!r}, which this agent "
            f"cannot restore (known: {', '.join(ENGINES)})"
        )
    return factory(config)
