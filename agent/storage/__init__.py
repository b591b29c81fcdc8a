"""Backup storage backends, registered by name (`--backup_storage_implementation`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.storage.base import BackupHandle, BackupStorage, BackupWriter, ListsDirectories
from agent.storage.file import FileBackupStorage

__all__ = [
    "STORAGES",
    "BackupHandle",
    "BackupStorage",
    "BackupWriter",
    "FileBackupStorage",
    "ListsDirectories",
    "storage_from_config",
]


def _file_storage(config: AgentConfig) -> BackupStorage:
    if config.file_backup_storage_root is None:
        raise ConfigError("--file_backup_storage_root is required with --backup_storage_implementation=file")
    return FileBackupStorage(config.file_backup_storage_root)


def _s3_storage(config: AgentConfig) -> BackupStorage:
    # Imported here: the AWS SDK costs ~20 MB of memory that agents on other storage need not pay.
    from agent.storage.s3 import ATTEMPTS, S3BackupStorage, S3Settings

    if not config.s3_backup_storage_bucket:
        raise ConfigError("--s3_backup_storage_bucket is required with --backup_storage_implementation=s3")
    return S3BackupStorage(
        S3Settings(
            bucket=config.s3_backup_storage_bucket,
            root=config.s3_backup_storage_root,
            region=config.s3_backup_aws_region,
            endpoint=config.s3_backup_aws_endpoint,
            force_path_style=config.s3_backup_force_path_style,
            server_side_encryption=config.s3_backup_server_side_encryption,
            min_part_size=config.s3_backup_aws_min_partsize,
            attempts=config.s3_backup_aws_retries if config.s3_backup_aws_retries > 0 else ATTEMPTS,
            verify_tls=not config.s3_backup_tls_skip_verify_cert,
        )
    )


def _azblob_storage(config: AgentConfig) -> BackupStorage:
    # Imported here, like the S3 backend: agents on other storage do not load it.
    from agent.storage.azblob import AzblobSettings, AzureBlobBackupStorage, load_account

    if not config.azblob_backup_container_name:
        raise ConfigError(
            "--azblob_backup_container_name is required with --backup_storage_implementation=azblob"
        )
    return AzureBlobBackupStorage(
        AzblobSettings(
            account=load_account(config.azblob_backup_account_name, config.azblob_backup_account_key_file),
            container=config.azblob_backup_container_name,
            root=config.azblob_backup_storage_root,
            endpoint=config.azblob_backup_endpoint,
            parallelism=config.azblob_backup_parallelism,
            buffer_size=config.azblob_backup_buffer_size,
        )
    )


def _gcs_storage(config: AgentConfig) -> BackupStorage:
    # Imported here, like S3: agents on other storage need not load the GCS client and its auth library.
    from agent.storage.gcs import GcsBackupStorage, GcsSettings

    if not config.gcs_backup_storage_bucket:
        raise ConfigError("--gcs_backup_storage_bucket is required with --backup_storage_implementation=gcs")
    return GcsBackupStorage(
        GcsSettings(
            bucket=config.gcs_backup_storage_bucket,
            root=config.gcs_backup_storage_root,
            endpoint=config.gcs_backup_storage_endpoint or "",
        )
    )


STORAGES: Mapping[str, Callable[[AgentConfig], BackupStorage]] = MappingProxyType(
    {"file": _file_storage, "s3": _s3_storage, "gcs": _gcs_storage, "azblob": _azblob_storage}
)


def storage_from_config(config: AgentConfig) -> BackupStorage:
    """The storage named by `--backup_storage_implementation`."""
    name = str(config.backup_storage_implementation)
    factory = STORAGES.get(name)
    if factory is None:
        valid = ", ".join(sorted(STORAGES))
        raise ConfigError(f"unknown --backup_storage_implementation {name!r}: use one of {valid}")
    return factory(config)
