"""vttablet's restore at start-up (`--restore_from_backup`): when the tablet's datadir holds no user data,
restore the newest backup (or the one the flags choose), waiting for a first backup to appear when
`--wait_for_backup_interval` is set; with none and no wait, the tablet starts up empty, as vttablet does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from agent.catalog.listing import list_backup_entries
from agent.catalog.manifest import parse_time
from agent.config import AgentConfig
from agent.errors import AgentError, ConfigError
from agent.log import get_logger
from agent.mysql.datafiles import SYSTEM_SCHEMAS, user_schemas_on_disk
from agent.operations import Operation
from agent.ops.restore.run import start_restore
from agent.params import RestoreParams
from agent.tablet import Tablet

log = get_logger("agent.ops.restore.at_start")
BACKUP_TS_FORMAT = "%Y-%m-%d.%H%M%S"


def startup_restore_params(config: AgentConfig) -> RestoreParams:
    """The restore the flags ask for; ConfigError (exit 2) when they cannot be read."""
    backup_time = None
    if config.restore_from_backup_ts:
        try:
            backup_time = datetime.strptime(config.restore_from_backup_ts, BACKUP_TS_FORMAT).replace(
                tzinfo=UTC
            )
        except ValueError:
            raise ConfigError(
                f"--restore_from_backup_ts={config.restore_from_backup_ts!r}: use YYYY-MM-DD.HHMMSS (UTC), "
                "e.g. 2026-01-02.150405"
            ) from None
    to_time = None
    if config.restore_to_timestamp:
        try:
            to_time = parse_time(config.restore_to_timestamp)
        except ValueError:
            raise ConfigError(
                f"--restore-to-timestamp={config.restore_to_timestamp!r}: use RFC 3339, e.g. 2026-01-02T15:04:05Z"
            ) from None
    if config.restore_to_pos and to_time is not None:
        raise ConfigError("--restore-to-pos and --restore-to-timestamp are mutually exclusive: give one")
    engines = tuple(e.strip() for e in config.restore_from_backup_allowed_engines.split(",") if e.strip())
    return RestoreParams(
        backup_time=backup_time,
        restore_to_pos=config.restore_to_pos,
        restore_to_timestamp=to_time,
        dry_run=False,
        allowed_engines=engines,
    )


async def restore_on_start(tablet: Tablet) -> Operation | None:
    """Restore when the datadir holds no user data; the operation started, or None (data present, or no
    backup and no wait)."""
    config = tablet.config
    params = startup_restore_params(config)
    schemas = await _user_schemas(tablet)
    if schemas:
        log.info(
            "--restore_from_backup: mysqld already holds data; assuming the agent was restarted",
            schemas=", ".join(schemas[:5]),
        )
        return None
    while True:
        entries = await list_backup_entries(tablet.storage, tablet.backup_directory)
        if any(e.complete for e in entries):
            break
        if not config.wait_for_backup_interval:
            log.warning(
                f"--restore_from_backup: no backup in {tablet.backup_directory} to restore; starting up empty"
            )
            return None
        log.info(
            f"--restore_from_backup: no backup in {tablet.backup_directory} yet; checking again in "
            f"{config.wait_for_backup_interval:g}s"
        )
        await asyncio.sleep(config.wait_for_backup_interval)
    log.info("--restore_from_backup: restoring", backup_dir=tablet.backup_directory)
    return await start_restore(tablet, params)


async def _user_schemas(tablet: Tablet) -> list[str]:
    """User schemas, asked of mysqld, or read from the datadir when it does not answer."""
    try:
        rows = await tablet.client.query("SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA")
    except AgentError:
        return user_schemas_on_disk(tablet.mycnf.datadir)
    return sorted(str(r["name"]) for r in rows if str(r["name"]) not in SYSTEM_SCHEMAS)
