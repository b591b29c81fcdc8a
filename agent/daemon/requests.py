"""Backup and RestoreFromBackup requests parsed into the domain's parameters (`agent.params`).

Every field is checked here; a bad value gets INVALID_ARGUMENT naming the field and the offending value.
"""

from __future__ import annotations

from datetime import datetime

from agent.catalog.manifest import looks_like_backup_name
from agent.config import AgentConfig, EngineName
from agent.daemon.convert import duration_from_pb, time_from_pb
from agent.errors import InvalidArgument
from agent.mysql.gtid import parse_position
from agent.params import BackupParams, InitSQL, RestoreParams
from agent.pb import tabletmanagerdata_pb2, topodata_pb2

MAX_CONCURRENCY = 64
MAX_SHUTDOWN_TIMEOUT = 24 * 3600.0
MAX_POSITION_LEN = 64 * 1024
ENGINES = tuple(e.value for e in EngineName)


def _engine(value: str, field: str) -> EngineName:
    try:
        return EngineName(value)
    except ValueError:
        raise InvalidArgument(
            f"{field}: unknown backup engine {value!r}; use one of {', '.join(ENGINES)}"
        ) from None


def _position_text(value: str, field: str, *, allow_backup: bool = False) -> str:
    """A GTID position (flavor prefix optional), checked now so a typo fails before anything runs; with
    `allow_backup` also `auto` or a backup's name (its position, as Vitess resolves it)."""
    if len(value) > MAX_POSITION_LEN:
        raise InvalidArgument(f"{field}: position is too long ({len(value)} characters)")
    text = value.strip()
    if not text or (allow_backup and (text == "auto" or looks_like_backup_name(text))):
        return text
    try:
        parse_position(text)
    except InvalidArgument as e:
        raise InvalidArgument(f"{field}: {e}") from None
    return text


def backup_params(req: tabletmanagerdata_pb2.BackupRequest, config: AgentConfig) -> BackupParams:
    if req.concurrency < 0 or req.concurrency > MAX_CONCURRENCY:
        raise InvalidArgument(
            f"concurrency: {req.concurrency} is out of range; use 1..{MAX_CONCURRENCY} (0: default)"
        )
    engine = (
        _engine(req.backup_engine, "backup_engine")
        if req.HasField("backup_engine") and req.backup_engine
        else config.backup_engine_implementation
    )
    timeout = config.mysql_shutdown_timeout
    if req.HasField("mysql_shutdown_timeout"):
        timeout = duration_from_pb(req.mysql_shutdown_timeout)
        if timeout <= 0 or timeout > MAX_SHUTDOWN_TIMEOUT or req.mysql_shutdown_timeout.nanos < 0:
            raise InvalidArgument(
                f"mysql_shutdown_timeout: {timeout:g}s is out of range; use a positive duration up to 24h"
            )
    init_sql = None
    if req.HasField("init_sql") and req.init_sql.queries:
        init = req.init_sql
        if not init.tablet_types:
            raise InvalidArgument(
                "init_sql.tablet_types: give the tablet types the queries run on (e.g. REPLICA, RDONLY)"
            )
        if not init.HasField("timeout") or duration_from_pb(init.timeout) <= 0:
            raise InvalidArgument("init_sql.timeout: give a positive timeout for the queries")
        init_timeout = duration_from_pb(init.timeout)
        if init_timeout > MAX_SHUTDOWN_TIMEOUT:
            raise InvalidArgument(f"init_sql.timeout: {init_timeout:g}s is out of range; at most 24h")
        init_sql = InitSQL(
            queries=tuple(init.queries),
            tablet_types=tuple(topodata_pb2.TabletType.Name(t) for t in init.tablet_types),
            timeout=init_timeout,
            fail_on_error=init.fail_on_error,
        )
    for name in ("backup_max_rate", "storage_max_rate"):
        if getattr(req, name) < 0:
            raise InvalidArgument(
                f"{name}: {getattr(req, name)} is negative; use bytes/s (0: the configured limit)"
            )
    return BackupParams(
        concurrency=req.concurrency or config.concurrency,
        allow_primary=req.allow_primary,
        incremental_from_pos=_position_text(
            req.incremental_from_pos, "incremental_from_pos", allow_backup=True
        ),
        upgrade_safe=req.upgrade_safe,
        engine=engine,
        mysql_shutdown_timeout=timeout,
        init_sql=init_sql,
        max_disk_rate=req.backup_max_rate or None,
        max_storage_rate=req.storage_max_rate or None,
    )


def _time(has: bool, t: tabletmanagerdata_pb2.RestoreFromBackupRequest, field: str) -> datetime | None:
    if not has:
        return None
    value = getattr(t, field)
    if value.seconds == 0 and value.nanoseconds == 0:
        return None
    if value.seconds < 0 or value.seconds > 253402300799 or not 0 <= value.nanoseconds < 1_000_000_000:
        raise InvalidArgument(f"{field}: {value.seconds}s {value.nanoseconds}ns is not a valid time")
    return time_from_pb(value)


def restore_params(req: tabletmanagerdata_pb2.RestoreFromBackupRequest) -> RestoreParams:
    to_ts = _time(req.HasField("restore_to_timestamp"), req, "restore_to_timestamp")
    to_pos = _position_text(req.restore_to_pos, "restore_to_pos")
    if to_pos and to_ts is not None:
        raise InvalidArgument(
            "restore_to_pos and restore_to_timestamp are mutually exclusive: give one point in time"
        )
    allowed = tuple(_engine(e, "allowed_backup_engines").value for e in req.allowed_backup_engines)
    return RestoreParams(
        backup_time=_time(req.HasField("backup_time"), req, "backup_time"),
        restore_to_pos=to_pos,
        restore_to_timestamp=to_ts,
        dry_run=req.dry_run,
        allowed_engines=allowed,
        in_place=req.restore_in_place,
        over_existing_data=req.restore_over_existing_data,
    )
