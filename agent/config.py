"""Agent configuration: one typed, frozen model built from defaults < TOML file < environment < flags.

Flag names follow Vitess (`--backup_engine_implementation`, `--file_backup_storage_root`, ...); the
underscore and the dashed spelling are interchangeable everywhere (flags, TOML keys, env names).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ConfigError

ENV_PREFIX = "TABLET_AGENT_"
ALIAS_RE = re.compile(r"^(?P<cell>[A-Za-z0-9_]+)-(?P<uid>[0-9]{1,10})$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
CONTAINER_RE = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
SHARD_RE = re.compile(r"^(-|[0-9a-fA-F]*-[0-9a-fA-F]*|[0-9A-Za-z_]+)$")
IO_CLASS_RE = re.compile(r"^(none|idle|(best-effort|realtime)(:[0-7])?)$")
SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?(?:/s)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`50M` -> 52428800: a byte count with an optional K/M/G/T suffix (powers of 1024)."""
    m = SIZE_RE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r}: use bytes, or a number with K, M, G or T (e.g. 50M)")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


class TabletType(enum.StrEnum):
    PRIMARY = "PRIMARY"
    REPLICA = "REPLICA"
    RDONLY = "RDONLY"
    SPARE = "SPARE"
    DRAINED = "DRAINED"  # what a point-in-time restore makes a tablet


class StorageKind(enum.StrEnum):
    FILE = "file"
    S3 = "s3"
    AZBLOB = "azblob"
    GCS = "gcs"


class EngineName(enum.StrEnum):
    BUILTIN = "builtin"
    XTRABACKUP = "xtrabackup"


class BinlogApplier(enum.StrEnum):
    AUTO = "auto"  # replication when the MariaDB server programs are there, else pipe
    REPLICATION = (
        "replication"  # the server's parallel replication applier, fed by a throw-away binlog server
    )
    PIPE = "pipe"  # mariadb-binlog | mariadb, one session


class VerifyMode(enum.StrEnum):
    OFF = "off"
    LIGHT = "light"  # re-read every object and check its hashes
    DEEP = "deep"  # also restore it into a scratch mysqld and check its tables


class LogFormat(enum.StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


def normalize_alias(value: str) -> str:
    """`zone1-102` -> `zone1-0000000102` (Vitess prints the uid with 10 digits)."""
    m = ALIAS_RE.match(value.strip())
    if not m:
        raise ValueError(
            f"invalid tablet alias {value!r}: expected <cell>-<uid> such as zone1-0000000102 "
            "(cell: letters, digits, underscore; uid: up to 10 digits)"
        )
    uid = int(m.group("uid"))
    if uid > 0xFFFFFFFF:
        raise ValueError(f"invalid tablet alias {value!r}: uid must fit in 32 bits")
    return f"{m.group('cell')}-{uid:010d}"


class AgentConfig(BaseModel):
    """Everything the daemon needs, validated once at start-up. Field names are the flag names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # identity
    tablet_alias: str
    init_keyspace: str
    init_shard: str
    init_tablet_type: TabletType = TabletType.REPLICA

    # gRPC
    grpc_port: int = Field(default=16002, ge=0, le=65535)
    grpc_bind_address: str = "127.0.0.1"
    grpc_shutdown_grace: float = Field(default=30.0, ge=0, description="seconds in-flight RPCs get on stop")
    grpc_cert: Path | None = None
    grpc_key: Path | None = None
    grpc_ca: Path | None = Field(
        default=None, description="CA for client certificates: mTLS required when set"
    )
    grpc_insecure: bool = Field(
        default=False, description="allow a non-loopback --grpc_bind_address without TLS (not recommended)"
    )
    grpc_auth_token_file: Path | None = Field(
        default=None,
        description="lines `<admin|readonly> <name> <token>`; callers send `authorization: Bearer`",
    )
    grpc_admin_identities: str = Field(default="", description="client cert CNs/SANs allowed to mutate")
    grpc_readonly_identities: str = Field(default="", description="client cert CNs/SANs allowed to read")

    # mysqld
    mycnf_file: Path
    mycnf_group_suffix: str = Field(
        default="",
        description="also read the option groups with this suffix, as mysqld's --defaults-group-suffix "
        "([mysqld.<i>] for Debian's mariadb@<i>.service: .<i>); default $MARIADB_GROUP_SUFFIX or "
        "$MYSQL_GROUP_SUFFIX",
    )
    db_credentials_file: Path | None = None
    mysqld_start_command: str | None = Field(
        default=None, description="command that starts mysqld; default runs mariadbd/mysqld itself"
    )
    mysqld_start_timeout: float = Field(default=120.0, gt=0)
    mysql_shutdown_timeout: float = Field(default=300.0, gt=0)

    # storage
    backup_storage_implementation: StorageKind = StorageKind.FILE
    file_backup_storage_root: Path | None = None
    s3_backup_storage_bucket: str | None = Field(default=None, description="bucket (required with s3)")
    s3_backup_storage_root: str = Field(default="", description="key prefix inside the bucket")
    s3_backup_aws_region: str = "us-east-1"
    s3_backup_aws_endpoint: str | None = Field(
        default=None, description="endpoint URL of an S3-compatible server"
    )
    s3_backup_force_path_style: bool = False
    s3_backup_server_side_encryption: str = Field(default="", description="e.g. AES256 or aws:kms")
    s3_backup_aws_min_partsize: int = Field(
        default=5 << 20, ge=5 << 20, description="minimum multipart part size"
    )
    gcs_backup_storage_bucket: str | None = Field(
        default=None, description="Google Cloud Storage bucket to use for backups (required with gcs)"
    )
    gcs_backup_storage_root: str = Field(
        default="", description="root prefix for all backup-related object names"
    )
    gcs_backup_storage_endpoint: str | None = Field(
        default=None,
        description="GCS endpoint URL for sovereign clouds or private endpoints; an http:// URL (an emulator) "
        "is sent no credentials",
    )

    azblob_backup_account_name: str = Field(
        default="", description="Azure Storage account (default: env VT_AZBLOB_ACCOUNT_NAME)"
    )
    azblob_backup_account_key_file: Path | None = Field(
        default=None,
        description="file holding the account key, mode 0600 (default: the key itself in env VT_AZBLOB_ACCOUNT_KEY)",
    )
    azblob_backup_container_name: str | None = Field(
        default=None, description="blob container (required with azblob; it must exist)"
    )
    azblob_backup_storage_root: str = Field(default="", description="blob name prefix inside the container")
    azblob_backup_parallelism: int = Field(
        default=4, ge=1, le=64, description="blocks uploaded at once per blob (memory: one buffer each)"
    )
    azblob_backup_buffer_size: int = Field(
        default=16 << 20,
        ge=1 << 20,
        le=4000 << 20,
        description="block size in bytes: the memory buffer per block when streaming a blob",
    )
    azblob_backup_endpoint: str | None = Field(
        default=None,
        description="blob service URL, e.g. Azurite's http://127.0.0.1:10000/devstoreaccount1 or a sovereign "
        "cloud's; default https://<account>.blob.core.windows.net",
    )

    # engines
    backup_engine_implementation: EngineName = EngineName.BUILTIN
    concurrency: int = Field(default=4, ge=1, le=64)
    compression_engine_name: str = "zstd"
    compression_level: int | None = None
    external_compressor: str | None = None
    external_compressor_extension: str | None = None
    external_decompressor: str | None = None

    xtrabackup_root_path: Path | None = None
    xtrabackup_user: str | None = None
    xtrabackup_stream_mode: str = "xbstream"
    xtrabackup_backup_flags: str = ""
    xtrabackup_prepare_flags: str = ""
    xbstream_restore_flags: str = ""
    xtrabackup_stripes: int = Field(default=0, ge=0, le=64)
    xtrabackup_stripe_block_size: int = Field(default=102400, ge=1024)
    xtrabackup_binary: str = Field(
        default="xtrabackup", description="xtrabackup program name or path; default falls back to mariabackup"
    )
    xbstream_binary: str = Field(
        default="xbstream", description="xbstream program name or path; default falls back to mbstream"
    )

    # point-in-time restore
    binlog_applier: BinlogApplier = Field(
        default=BinlogApplier.AUTO, description="how binlogs are replayed: auto, replication or pipe"
    )
    binlog_applier_threads: int = Field(
        default=4, ge=1, le=256, description="parallel replication workers of the replication applier"
    )

    # continuous binlog archiving
    binlog_archive_interval: float = Field(
        default=0.0,
        ge=0,
        description="ship closed binlogs as incremental backups and rotate the active one when it holds "
        "transactions older than this many seconds (0: off)",
    )

    # restore safety
    restore_in_place: bool = Field(
        default=False,
        description="restore into the live directories (after a full verification pass) instead of staging "
        "beside them; for hosts without room for a second copy",
    )
    keep_previous_datadir: bool = Field(
        default=False,
        description="keep the data a staged restore replaced (.tablet-agent-previous-*) until "
        "`tabletctl discard-previous`",
    )
    restore_over_existing_data: bool = Field(
        default=False,
        description="allow restoring onto a writable mysqld without a replication source that holds user "
        "schemas (likely a primary started with the default type)",
    )
    allowed_external_decompressors: str = Field(
        default="",
        description="commands (separated by ';') a MANIFEST's ExternalDecompressor may name and the agent "
        "will run; the configured --external-decompressor always may",
    )
    verify_after_backup: VerifyMode = Field(
        default=VerifyMode.OFF, description="verify each new full backup: off, light or deep"
    )

    # encryption and I/O limits
    backup_encryption_key_file: Path | None = Field(
        default=None,
        description="file (mode 600) with 32 random bytes as hex or base64: new backups are encrypted with "
        "it (AES-256-GCM); none: they are not",
    )
    backup_decryption_key_files: str = Field(
        default="", description="comma-separated older key files restores may use too (key rotation)"
    )
    backup_max_rate: int = Field(
        default=0,
        ge=0,
        description="bytes/s a backup reads from the tablet's disks (K/M/G suffixes; 0: no limit)",
    )
    storage_max_rate: int = Field(
        default=0, ge=0, description="bytes/s written to or read from storage (K/M/G suffixes; 0: no limit)"
    )
    backup_io_class: str = Field(
        default="idle",
        description="I/O scheduling class of child processes (xtrabackup, mbstream, external compressors): "
        "idle, best-effort[:0-7], realtime[:0-7] or none",
    )
    backup_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description="nice value of the xtrabackup engine's tools and compression threads (0: the agent's own)",
    )

    # topology (optional): tablet records and shard locks in etcd
    topo_implementation: str = Field(
        default="", description="etcd2 to register in an etcd topology; empty: none"
    )
    topo_global_server_address: str = Field(default="", description="etcd client endpoints, comma-separated")
    topo_global_root: str = "/vitess/global"
    topo_lease_ttl: int = Field(
        default=10, ge=2, le=600, description="seconds a dead agent's liveness key survives"
    )
    topo_cell_server_address: str = Field(
        default="", description="the cell's etcd endpoints for a new CellInfo (default: the global ones)"
    )
    topo_cell_root: str = Field(
        default="", description="the cell's key prefix for a new CellInfo (default: /vitess/<cell>)"
    )
    topo_etcd_tls_ca: Path | None = Field(default=None, description="CA that signs etcd's server certificate")
    topo_etcd_tls_cert: Path | None = Field(default=None, description="client certificate for etcd (mTLS)")
    topo_etcd_tls_key: Path | None = Field(default=None, description="key of --topo_etcd_tls_cert")
    topo_etcd_tls_server_name: str = Field(
        default="", description="name expected in etcd's server certificate (default: the endpoint's host)"
    )
    topo_etcd_username: str = Field(
        default="", description="etcd user; password from TABLET_AGENT_TOPO_ETCD_PASSWORD"
    )
    tablet_hostname: str = Field(default="", description="host name other tools reach this agent at")
    init_db_name_override: str = Field(
        default="",
        description="database name recorded in the tablet record (Vitess's default: vt_<keyspace>)",
    )

    # operation
    state_dir: Path | None = Field(
        default=None,
        description="agent state; default $STATE_DIRECTORY (systemd's StateDirectory=), else <mycnf dir>/tablet-agent",
    )
    log_format: LogFormat = LogFormat.AUTO
    log_level: str = "info"
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus /metrics HTTP port (0: off)")
    metrics_bind_address: str = Field(
        default="127.0.0.1", description="address the metrics endpoint listens on"
    )
    backup_max_age_hours: float = Field(
        default=24.0,
        ge=0,
        description="Status reports a health problem when the newest backup is older (0: never)",
    )
    backup_retention_full: int = Field(
        default=0, ge=0, description="keep the newest N complete full backups (0: no count limit)"
    )
    backup_retention_days: float = Field(
        default=0.0,
        ge=0,
        description="keep every full backup newer than D days and the newest one older (0: no age limit)",
    )
    binlog_retention_days: float = Field(
        default=0.0,
        ge=0,
        description="keep the incrementals covering the last D days of point-in-time restore "
        "(0: those of the full backups kept)",
    )

    # vttablet's restore at start-up
    restore_from_backup: bool = Field(
        default=False,
        description="at start, restore the newest backup when the datadir holds no user data (vttablet's flag)",
    )
    restore_from_backup_ts: str = Field(
        default="",
        description="with --restore_from_backup: the newest backup at or before YYYY-MM-DD.HHMMSS (UTC)",
    )
    restore_to_pos: str = Field(
        default="", description="with --restore_from_backup: restore to this GTID position"
    )
    restore_to_timestamp: str = Field(
        default="",
        description="with --restore_from_backup: restore to this time (RFC 3339, e.g. 2026-01-02T15:04:05Z)",
    )
    restore_from_backup_allowed_engines: str = Field(
        default="",
        description="with --restore_from_backup: engines the backup may come from (comma-separated)",
    )
    restore_concurrency: int = Field(default=4, ge=1, le=64, description="files restored in parallel")
    wait_for_backup_interval: float = Field(
        default=0.0,
        ge=0,
        description="with --restore_from_backup and no backup yet: check again this often (seconds or a Go "
        "duration like 10s); 0 starts up empty",
    )
    manifest_external_decompressor: str = Field(
        default="",
        description="the decompressor command recorded in the MANIFEST of externally compressed backups "
        "(default: --external-decompressor)",
    )
    backup_storage_compress: bool = Field(
        default=True, description="false: store backups uncompressed (as --compression-engine-name=none)"
    )
    s3_backup_aws_retries: int = Field(
        default=-1, ge=-1, le=100, description="attempts per S3 request (-1: the agent's default)"
    )
    s3_backup_tls_skip_verify_cert: bool = Field(
        default=False, description="do not verify the S3 endpoint's TLS certificate (test setups only)"
    )
    db_credentials_server: str = Field(
        default="file", description="where --db_credentials_file comes from: file (vault is not supported)"
    )
    ignored_flags: tuple[str, ...] = Field(default=(), description="vttablet flags accepted and ignored")

    @field_validator(
        "wait_for_backup_interval",
        "mysql_shutdown_timeout",
        "mysqld_start_timeout",
        "grpc_shutdown_grace",
        mode="before",
    )
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        """`--flag=` (as vttablet flag files write defaults) leaves an optional setting unset."""
        if not isinstance(data, dict):
            return data
        optional = {n for n, f in cls.model_fields.items() if f.default is None}
        return {k: v for k, v in data.items() if not (k in optional and v == "")}

    @field_validator("init_tablet_type", mode="before")
    @classmethod
    def _upper_enum(cls, v: Any) -> Any:
        """Enum values in any case: `replica` = `REPLICA`."""
        return v.strip().upper() if isinstance(v, str) else v

    @field_validator(
        "backup_storage_implementation",
        "backup_engine_implementation",
        "binlog_applier",
        "verify_after_backup",
        "log_format",
        mode="before",
    )
    @classmethod
    def _lower_enum(cls, v: Any) -> Any:
        """Enum values in any case: `XtraBackup` = `xtrabackup`."""
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("tablet_alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        return normalize_alias(v)

    @field_validator("init_keyspace")
    @classmethod
    def _keyspace(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"invalid keyspace {v!r}: use 1-64 letters, digits, '_', '-' or '.'")
        return v

    @field_validator("init_shard")
    @classmethod
    def _shard(cls, v: str) -> str:
        if not SHARD_RE.match(v) or len(v) > 64:
            raise ValueError(f"invalid shard {v!r}: use a number such as 0 or a key range such as -80 or 80-")
        return v

    @field_validator("mycnf_group_suffix")
    @classmethod
    def _group_suffix(cls, v: str) -> str:
        if any(ch.isspace() or ch in "[]#;=" for ch in v):
            raise ValueError(
                f"invalid mycnf_group_suffix {v!r}: it is appended to option group names, so it cannot hold "
                "spaces or any of []#;= (Debian's mariadb@<i>.service uses .<i>)"
            )
        return v

    @field_validator("backup_max_rate", "storage_max_rate", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> Any:
        return parse_size(v) if isinstance(v, str) else v

    @field_validator("backup_io_class")
    @classmethod
    def _io_class(cls, v: str) -> str:
        if not IO_CLASS_RE.match(v.strip().lower()):
            raise ValueError(f"invalid I/O class {v!r}: use idle, best-effort[:0-7], realtime[:0-7] or none")
        return v.strip().lower()

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError(f"invalid log_level {v!r}: use debug, info, warning or error")
        return v.lower()

    @model_validator(mode="after")
    def _consistent(self) -> AgentConfig:
        if self.backup_storage_implementation is StorageKind.FILE and self.file_backup_storage_root is None:
            raise ValueError(
                "--file_backup_storage_root is required with --backup_storage_implementation=file"
            )
        if self.backup_storage_implementation is StorageKind.S3 and not self.s3_backup_storage_bucket:
            raise ValueError("--s3_backup_storage_bucket is required with --backup_storage_implementation=s3")
        if self.backup_storage_implementation is StorageKind.AZBLOB:
            self._check_azblob()
        if self.backup_storage_implementation is StorageKind.GCS and not self.gcs_backup_storage_bucket:
            raise ValueError(
                "--gcs_backup_storage_bucket is required with --backup_storage_implementation=gcs"
            )
        if self.compression_engine_name == "external" and not (
            self.external_compressor and self.external_decompressor
        ):
            raise ValueError(
                "--compression-engine-name=external needs --external-compressor and --external-decompressor"
            )
        if self.db_credentials_server != "file":
            raise ValueError(
                f"--db-credentials-server={self.db_credentials_server} is not supported: use a credentials file "
                "(--db_credentials_file) or TABLET_AGENT_DB_PASSWORD"
            )
        if self.topo_implementation not in ("", "etcd2"):
            raise ValueError(
                f"unknown --topo_implementation {self.topo_implementation!r}: use etcd2 (or none)"
            )
        if self.topo_implementation and not self.topo_global_server_address:
            raise ValueError("--topo_implementation=etcd2 needs --topo_global_server_address (host:port,...)")
        if (self.topo_etcd_tls_cert is None) != (self.topo_etcd_tls_key is None):
            raise ValueError("--topo_etcd_tls_cert and --topo_etcd_tls_key must be given together")
        if (self.grpc_cert is None) != (self.grpc_key is None):
            raise ValueError("--grpc_cert and --grpc_key must be given together")
        if self.grpc_ca is not None and self.grpc_cert is None:
            raise ValueError("--grpc_ca (client certificates) needs TLS: give --grpc_cert and --grpc_key too")
        if not is_loopback(self.grpc_bind_address) and self.grpc_cert is None and not self.grpc_insecure:
            raise ValueError(
                f"--grpc_bind_address={self.grpc_bind_address} is not a loopback address: anyone who reaches it "
                "could shut mysqld down; give --grpc_cert/--grpc_key (and --grpc_ca for mTLS), or pass "
                "--grpc_insecure to accept plaintext"
            )
        return self

    def _check_azblob(self) -> None:
        container = self.azblob_backup_container_name
        if not container:
            raise ValueError(
                "--azblob_backup_container_name is required with --backup_storage_implementation=azblob"
            )
        if not CONTAINER_RE.match(container):
            raise ValueError(
                f"invalid --azblob_backup_container_name {container!r}: Azure container names are 3-63 "
                "lowercase letters, digits and single hyphens, starting and ending with a letter or digit"
            )
        endpoint = self.azblob_backup_endpoint
        if endpoint is not None and not re.match(r"^https?://[^/?#]+(/[^?#]*)?$", endpoint):
            raise ValueError(
                f"invalid --azblob_backup_endpoint {endpoint!r}: give a URL such as "
                "https://myaccount.blob.core.usgovcloudapi.net or http://127.0.0.1:10000/devstoreaccount1"
            )

    @property
    def decryption_key_paths(self) -> list[Path]:
        return [Path(p.strip()) for p in self.backup_decryption_key_files.split(",") if p.strip()]

    @property
    def effective_state_dir(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.mycnf_file.parent / "tablet-agent"


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


# Defaults taken from the environment other programs set: systemd's StateDirectory= and the group suffix
# MariaDB's own programs read (MARIADB_GROUP_SUFFIX wins over MYSQL_GROUP_SUFFIX, as in mysys).
STATE_DIRECTORY_ENV = "STATE_DIRECTORY"
GROUP_SUFFIX_ENVS = ("MARIADB_GROUP_SUFFIX", "MYSQL_GROUP_SUFFIX")

# Other spellings accepted for a field (Vitess uses --tablet-path for the alias).
FIELD_ALIASES: dict[str, str] = {"tablet_path": "tablet_alias"}
BOOL_TRUE = {"1", "true", "yes", "on"}


def canonical_key(name: str) -> str:
    key = name.strip().lstrip("-").replace("-", "_").lower()
    return FIELD_ALIASES.get(key, key)


def config_keys() -> list[str]:
    """The settable keys (flags, TOML keys, environment names)."""
    return [k for k in AgentConfig.model_fields if k != "ignored_flags"]


# vttablet's backup flags that mean nothing here: accepted (so a vttablet flag file works unchanged) and
# logged as ignored, with why.
IGNORED_VITESS_FLAGS: dict[str, str] = {
    "backup_storage_block_size": "the agent sizes compression frames itself",
    "backup_storage_number_blocks": "the agent sizes its compression threads to the CPUs",
    "backup_storage_hook": "transform hooks are not supported; use --compression-engine-name=external",
    "builtinbackup_file_read_buffer_size": "the agent reads in 4 MiB chunks",
    "builtinbackup_file_write_buffer_size": "the agent writes in 1 MiB chunks",
    "builtinbackup_progress": "progress is reported every few seconds in the operation's events",
    "builtinbackup_mysqld_timeout": "the builtin engine uses --mysql_shutdown_timeout",
    "s3_backup_log_level": "S3 requests are logged at debug level by the agent",
    "incremental_restore_path": "binlogs of a point-in-time restore go to the restore's own work directory",
    "ceph_backup_storage_config": "for Ceph, use --backup_storage_implementation=s3 with its RGW endpoint",
    "mysql_server_version": "the agent asks mysqld its version",
    "mycnf_server_id": "the agent reads server_id from --mycnf_file",
}


def parse_duration(text: str) -> float:
    """Seconds from `90`, `1.5`, or a Go duration (`10s`, `1m30s`, `500ms`, `2h`)."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    total, rest = 0.0, value
    pattern = re.compile(r"^([0-9]*\.?[0-9]+)(ms|us|µs|ns|h|m|s)")
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    while rest:
        m = pattern.match(rest)
        if m is None:
            raise ValueError(f"invalid duration {text!r}: use seconds or a Go duration such as 10s or 1m30s")
        total += float(m.group(1)) * units[m.group(2)]
        rest = rest[m.end() :]
    return total


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: fix --config") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = canonical_key(k)
        if key not in AgentConfig.model_fields:
            raise ConfigError(
                f"config file {path}: unknown key {k!r}; see `tablet-agent --help` for the names"
            )
        out[key] = v
    return out


def env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = canonical_key(name[len(ENV_PREFIX) :])
        if key in AgentConfig.model_fields:
            out[key] = value
    return out


def environment_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """Defaults from the environment the agent is started in; any flag, TOML key or TABLET_AGENT_* wins."""
    out: dict[str, Any] = {}
    # systemd joins several StateDirectory= paths with ':'; the first is the unit's own.
    if state := environ.get(STATE_DIRECTORY_ENV, "").split(":")[0]:
        out["state_dir"] = state
    for name in GROUP_SUFFIX_ENVS:
        if suffix := environ.get(name):
            out["mycnf_group_suffix"] = suffix
            break
    return out


def build_config(
    flags: Mapping[str, Any], environ: Mapping[str, str] | None = None, config_file: Path | None = None
) -> AgentConfig:
    """Merge the sources (later wins) and validate. Raises ConfigError with the fix in the message."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        merged.update(load_toml(config_file))
    merged.update(env_values(environ))
    merged.update({canonical_key(k): v for k, v in flags.items() if v is not None})
    ignored = sorted(k for k in merged if k in IGNORED_VITESS_FLAGS)
    for key in ignored:
        merged.pop(key)
    if ignored:
        merged["ignored_flags"] = tuple(ignored)
    if str(merged.get("backup_storage_compress", "true")).lower() not in BOOL_TRUE:
        merged.setdefault("compression_engine_name", "none")
    merged.update({k: v for k, v in environment_defaults(environ).items() if k not in merged})
    missing = [
        f"--{name}"
        for name in ("tablet_alias", "init_keyspace", "init_shard", "mycnf_file")
        if name not in merged
    ]
    if missing:
        spelled = ", ".join("--tablet-path" if m == "--tablet_alias" else m for m in missing)
        raise ConfigError(f"missing required setting(s): {spelled} (flag, TOML key or {ENV_PREFIX}* env)")
    try:
        return AgentConfig.model_validate(merged)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"--{loc}: {msg}" if loc else msg)
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
