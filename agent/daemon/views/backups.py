"""ListBackups, RemoveBackup and ExpireBackups: the backups of this tablet's keyspace/shard, as the storage
holds them."""

from __future__ import annotations

from datetime import datetime

from agent.catalog.listing import BackupEntry, list_backup_entries
from agent.catalog.manifest import parse_time
from agent.catalog.verification import Verification, read_verifications
from agent.daemon import convert
from agent.errors import FailedPrecondition, NotFound
from agent.ops.expire import expire_backups
from agent.pb import agentdata_pb2
from agent.tablet import Tablet


def backup_info(entry: BackupEntry, verification: Verification | None = None) -> agentdata_pb2.BackupInfo:
    info = agentdata_pb2.BackupInfo(name=entry.name, directory=entry.directory, complete=entry.complete)
    if verification is not None:
        info.verification = "ok" if verification.ok else "failed"
        info.verification_depth = str(verification.depth)
        info.verification_problems.extend(verification.problems)
        verified = convert.time_to_pb(verification.verified_at)
        if verified is not None:
            info.verified_time.CopyFrom(verified)
    m = entry.manifest
    if m is None:
        return info
    info.engine = m.engine
    info.incremental = m.incremental
    info.position = m.position
    info.from_position = m.from_position
    info.from_backup = m.from_backup
    info.tablet_alias = m.tablet_alias
    info.compression_engine = "none" if m.skip_compress else (m.compression_engine or "pgzip")
    info.size_bytes = entry.stored_size
    for field, value in (("backup_time", m.backup_datetime), ("finished_time", _parse(m.finished_time))):
        t = convert.time_to_pb(value)
        if t is not None:
            getattr(info, field).CopyFrom(t)
    return info


def _parse(value: str) -> datetime | None:
    try:
        return parse_time(value)
    except ValueError:
        return None


async def list_backups(tablet: Tablet, include_incomplete: bool) -> agentdata_pb2.ListBackupsResponse:
    entries = [
        e
        for e in await list_backup_entries(tablet.storage, tablet.backup_directory)
        if e.complete or include_incomplete
    ]
    verifications = await read_verifications(entries)
    return agentdata_pb2.ListBackupsResponse(
        backups=[backup_info(e, v) for e, v in zip(entries, verifications, strict=True)],
        directory=tablet.backup_directory,
    )


def dependents(entries: list[BackupEntry], name: str) -> list[str]:
    """Complete incrementals that chain back, directly or through other incrementals, to `name`."""
    needed = {name}
    found: list[str] = []
    for e in entries:  # oldest first: a chain only points backwards
        m = e.manifest
        if m is not None and m.incremental and m.from_backup in needed:
            needed.add(e.name)
            found.append(e.name)
    return found


def _kind(e: BackupEntry) -> str:
    if not e.complete or e.manifest is None:
        return "incomplete"
    return "incremental" if e.manifest.incremental else "full"


async def remove_backup(tablet: Tablet, name: str, force: bool) -> agentdata_pb2.RemoveBackupResponse:
    running = tablet.runner.current
    if running is not None and running.backup_name == name:
        raise FailedPrecondition(f"backup {name} is being written by operation {running.id}: cancel it first")
    entries = await list_backup_entries(tablet.storage, tablet.backup_directory)
    if not any(e.name == name for e in entries):
        raise NotFound(
            f"no backup named {name!r} in {tablet.backup_directory}; `tabletctl backups --all` lists them"
        )
    deps = dependents(entries, name)
    if deps and not force:
        raise FailedPrecondition(
            f"backup {name} is the base of {len(deps)} incremental backup(s) ({', '.join(deps[:5])}): "
            "removing it breaks their restore chain; pass force (`tabletctl remove-backup --force`) to "
            "remove it and them"
        )
    removed = []
    kinds = {e.name: _kind(e) for e in entries}
    for victim in [*reversed(deps), name] if force else [name]:
        await tablet.storage.remove_backup(tablet.backup_directory, victim)
        removed.append(victim)
        tablet.backups_removed[kinds[victim]] += 1
    tablet.summary.refresh()
    return agentdata_pb2.RemoveBackupResponse(removed=removed)


async def expire(tablet: Tablet, dry_run: bool) -> agentdata_pb2.ExpireBackupsResponse:
    result = await expire_backups(tablet, dry_run=dry_run)
    plan = result.plan
    response = agentdata_pb2.ExpireBackupsResponse(
        policy=result.policy.describe(),
        decisions=[
            agentdata_pb2.ExpireDecision(name=d.name, kind=d.kind, keep=d.keep, reason=d.reason)
            for d in plan.decisions
        ],
        removed=list(result.removed),
        dry_run=result.dry_run,
        anchor=plan.anchor.name if plan.anchor is not None else "",
    )
    start = convert.time_to_pb(plan.window_start)
    if start is not None:
        response.window_start.CopyFrom(start)
    return response
