"""Backup orchestration: checks, the operation, MANIFEST last, abort on any failure.

The orchestrator, not the engine, decides between ending and aborting a backup, and keeps the original
error when the cleanup fails too.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime

from agent import AGENT_VERSION
from agent.aio.tasks import complete, in_thread
from agent.catalog.encryption import backup_cipher, seal_manifest
from agent.catalog.listing import BackupEntry, list_backup_entries, write_manifest
from agent.catalog.manifest import (
    AgentInfo,
    Manifest,
    backup_name,
    format_time,
    looks_like_backup_name,
    stored_size,
)
from agent.catalog.verification import Depth
from agent.config import VerifyMode
from agent.errors import AgentError, DataLoss, FailedPrecondition
from agent.mysql.gtid import Flavor, parse_position
from agent.operations import Kind, Operation
from agent.ops.codecs import codec_for_backup, compression_fields
from agent.ops.expire import expire_after_backup
from agent.ops.tablet_type import check_backup_allowed, resting_type
from agent.ops.verify import verify_backup
from agent.params import BackupParams, InitSQL
from agent.storage.base import BackupHandle
from agent.storage.recording import RecordingHandle
from agent.tablet import Tablet
from engines import engine_for_backup
from engines.base import BackupContext, BackupOutcome, Engine, IncrementalSource

NAME_ATTEMPTS = 3


async def start_backup(tablet: Tablet, params: BackupParams, *, background: bool = False) -> Operation:
    """Check the request against the tablet, then start the backup as an operation. `background`: the
    agent's own (binlog archiving); requests wait for such a one to end rather than being refused."""
    check_backup_allowed(tablet, params.allow_primary)
    if not background:
        await tablet.runner.wait_for_background()
    engine = engine_for_backup(params, tablet.config)

    async def work(op: Operation) -> None:
        await run_backup(tablet, params, engine, op)

    return tablet.runner.start(
        Kind.BACKUP, work, engine=engine.name, incremental=params.incremental, background=background
    )


async def run_backup(tablet: Tablet, params: BackupParams, engine: Engine, op: Operation) -> None:
    config = tablet.config
    directory = tablet.backup_directory
    if params.init_sql is not None:
        await run_init_sql(tablet, params.init_sql, op)
    started, name, stored = await _new_backup(tablet)
    handle = RecordingHandle(stored)
    op.backup_name = name
    op.info(f"starting {engine.name} backup {directory}/{name} to {tablet.storage.describe()}")
    try:
        codec = codec_for_backup(config)
        cipher = backup_cipher(config, name)
        if cipher is not None:
            op.info(f"every object is encrypted (AES-256-GCM) under key id {cipher.key.key_id}")
        source = await incremental_source(tablet, params) if params.incremental else None
        ctx = BackupContext(
            mycnf=tablet.mycnf,
            mysqld=tablet.mysqld,
            client=tablet.client,
            state_dir=tablet.state_dir,
            params=params,
            codec=codec,
            op=op,
            handle=handle,
            incremental_from=source,
            cipher=cipher,
            limits=tablet.limits.for_operation(params.max_disk_rate, params.max_storage_rate),
        )
        outcome = await engine.backup(ctx)
        op.set_phase("making the backup durable")
        await handle.make_durable()  # every object on disk before the MANIFEST names them
        op.set_phase("checking the stored objects")
        problems = await handle.unsealable()
        if problems:
            raise DataLoss(
                f"storage lost objects of backup {directory}/{name} while it was written "
                f"({'; '.join(problems[:10])}): the backup is removed; check what else writes to "
                f"{tablet.storage.describe()} and take the backup again"
            )
        op.set_phase("writing MANIFEST")
        purged, server_uuid = vitess_server_fields(outcome)
        manifest = Manifest(
            BackupName=name,
            Position=outcome.position,
            PurgedPosition=purged,
            BackupTime=format_time(started),
            FinishedTime=format_time(datetime.now(UTC)),
            ServerUUID=server_uuid,
            TabletAlias=tablet.alias,
            Hostname=await in_thread(qualified_hostname),
            Keyspace=config.init_keyspace,
            Shard=config.init_shard,
            MySQLVersion=outcome.mysql_version,
            # an engine may bring its own TabletAgent (xtrabackup: per-object hashes), BackupMethod
            # (incrementals say builtin, as Vitess writes them) or UpgradeSafe (xtrabackup: always)
            **{
                "UpgradeSafe": params.upgrade_safe,
                "BackupMethod": engine.name,
                "TabletAgent": AgentInfo(Version=AGENT_VERSION),
                **compression_fields(codec, config),
                **outcome.manifest_fields,
            },
        )
        manifest = seal_manifest(manifest, cipher)  # with its tag, when encrypted
        await write_manifest(handle, manifest)
        await handle.end()
    except BaseException as error:
        await _abort(handle, op, error)
        raise
    # known as written: listings need not read back (and parse) a MANIFEST of thousands of entries
    tablet.summary.manifests.put(directory, name, manifest, stored_size(manifest))
    op.info(f"backup {directory}/{name} is complete at position {outcome.position}")
    depth = config.verify_after_backup
    if depth is not VerifyMode.OFF and not params.incremental:
        entry = BackupEntry(handle=stored, manifest=manifest, complete=True, problem=None)
        result = await verify_backup(tablet, entry, Depth(depth.value), op)
        if not result.ok:
            raise DataLoss(
                f"backup {directory}/{name} failed its verification ({depth}): {'; '.join(result.problems[:5])}; "
                "restores will pass over it"
            )
    if not params.incremental:
        await expire_after_backup(tablet, op)


async def _new_backup(tablet: Tablet) -> tuple[datetime, str, BackupHandle]:
    """A new backup named after the current second. Names have second resolution and are never reused:
    when the previous backup (an incremental takes well under a second) holds this second's name, the
    next second's is used."""
    for attempt in range(NAME_ATTEMPTS):
        started = datetime.now(UTC)
        name = backup_name(started, tablet.alias)
        try:
            return started, name, await tablet.storage.start_backup(tablet.backup_directory, name)
        except FailedPrecondition:
            if attempt == NAME_ATTEMPTS - 1:
                raise
            await asyncio.sleep(1.0 - started.microsecond / 1e6 + 0.01)
    raise AssertionError("unreachable")


async def _abort(handle: BackupHandle, op: Operation, error: BaseException) -> None:
    """Remove the partial backup; a failure here is reported but never hides the original error."""
    try:
        await complete(handle.abort())
    except (AgentError, OSError) as e:
        op.warning(f"could not remove the partial backup after {type(error).__name__}: {e}")


async def incremental_source(tablet: Tablet, params: BackupParams) -> IncrementalSource:
    """Where an incremental starts: `auto` (the newest complete backup's position), a backup's name (its
    position), or a position (flavor prefix optional: the server's flavor)."""
    text = params.incremental_from_pos
    info = await tablet.mysqld.server_info()
    if text != "auto" and not looks_like_backup_name(text):
        return IncrementalSource(parse_position(text, default_flavor=info.flavor))
    directory = tablet.backup_directory
    entries = await list_backup_entries(tablet.storage, directory, cache=tablet.summary.manifests)
    for entry in reversed(entries):
        m = entry.manifest
        if text not in ("auto", entry.name):
            continue
        if entry.complete and m is not None and m.position:
            position = parse_position(m.position, default_flavor=info.flavor)
            if position.flavor is info.flavor:
                return IncrementalSource(position, m.backup_name)
        if text != "auto":
            raise FailedPrecondition(
                f"incremental_from_pos={text}: that backup is not complete or has no position; choose "
                "another backup (`tabletctl backups`) or pass a position"
            )
    if text == "auto":
        raise FailedPrecondition(
            f"incremental_from_pos=auto: no complete backup in {directory} to continue from; "
            "take a full backup first"
        )
    raise FailedPrecondition(
        f"incremental_from_pos={text}: no backup of that name in {directory}; `tabletctl backups` lists them"
    )


async def run_init_sql(tablet: Tablet, init: InitSQL, op: Operation) -> None:
    """Run the request's queries (in one session, within their timeout) when this tablet's type is one
    they are for; a failure fails the backup only with fail_on_error, as Vitess does."""
    tablet_type = resting_type(tablet)
    if tablet_type not in init.tablet_types:
        op.info(
            f"init_sql: not run (the tablet is a {tablet_type}; the queries are for {', '.join(init.tablet_types)})"
        )
        return
    op.set_phase("running init_sql")
    try:
        async with asyncio.timeout(init.timeout):
            async with tablet.client.connection() as session:
                for query in init.queries:
                    await session.execute(query)
    except (AgentError, TimeoutError) as e:
        reason = f"timed out after {init.timeout:g}s" if isinstance(e, TimeoutError) else str(e)
        if init.fail_on_error:
            raise FailedPrecondition(f"init_sql failed: {reason}; nothing was backed up") from None
        op.warning(f"init_sql failed: {reason}; backing up anyway (fail_on_error is off)")
        return
    op.info(f"init_sql: {len(init.queries)} quer{'y' if len(init.queries) == 1 else 'ies'} run")


def vitess_server_fields(outcome: BackupOutcome) -> tuple[str, str]:
    """PurgedPosition and ServerUUID as Vitess fills them: MySQL's `@@gtid_purged` and `@@server_uuid`;
    both empty on MariaDB (Vitess's MariaDB flavor reports neither)."""
    if outcome.position and parse_position(outcome.position).flavor is Flavor.MARIADB:
        return "", ""
    return outcome.purged_position, outcome.server_uuid


def qualified_hostname() -> str:
    """The fully qualified name, as Vitess writes it; the plain host name when the resolver only
    knows an unqualified one (such as `localhost` for 127.0.0.1)."""
    fqdn = socket.getfqdn()
    return fqdn if "." in fqdn else socket.gethostname()
