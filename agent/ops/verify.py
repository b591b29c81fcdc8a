"""Verifying backups without touching the tablet.

Light: every stored object is read back, decompressed, and its CRC-32 (of the stored bytes) and sha256
(of the original bytes) checked against the MANIFEST; nothing is written but the result. Deep: the
backup is also restored into a scratch directory (prepared, for xtrabackup) and a throw-away mysqld
started on it, which must reach the MANIFEST's position and pass `CHECK TABLE` on every table. The
result is stored beside the backup (`catalog.verification`), never in its MANIFEST.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from agent import AGENT_VERSION
from agent.aio.tasks import complete, for_each, in_thread
from agent.catalog.listing import BackupEntry, list_backup_entries
from agent.catalog.manifest import ObjectRecord
from agent.catalog.pitr_path import RestorePath
from agent.catalog.verification import Depth, Verification, write_verification
from agent.errors import AgentError, DataLoss, FailedPrecondition, NotFound
from agent.mysql import replication
from agent.mysql.binlog_transactions import read_transactions
from agent.mysql.datafiles import write_binlog_state
from agent.mysql.gtid import MariaDBGTIDSet, parse_position
from agent.mysql.scratch import ScratchDirs, check_tables, scratch_mysqld
from agent.operations import Kind, Operation
from agent.ops.restore.preflight import PlannedBackup, check_space, plan_backups, space_needs
from agent.pipeline.encryption import opener_for
from agent.pipeline.load import DecodedStream
from agent.tablet import Tablet
from engines.base import RestoreTargets
from engines.binlog import binlog_files

MAX_PROBLEMS = 100


async def start_verify(tablet: Tablet, names: Sequence[str], all_backups: bool, depth: Depth) -> Operation:
    """Verify the named backups (or all complete ones, or the newest) as an operation."""

    async def work(op: Operation) -> None:
        entries = await _chosen(tablet, names, all_backups)
        bad = []
        for entry in entries:
            result = await verify_backup(tablet, entry, depth, op)
            if not result.ok:
                bad.append(result)
        if bad:
            summary = "; ".join(f"{r.backup}: {', '.join(r.problems[:3])}" for r in bad)
            raise DataLoss(f"{len(bad)} of {len(entries)} backup(s) failed verification: {summary}")
        op.info(f"{len(entries)} backup(s) verified ({depth}): all good")

    await tablet.runner.wait_for_background()
    return tablet.runner.start(Kind.VERIFY, work)


async def _chosen(tablet: Tablet, names: Sequence[str], all_backups: bool) -> list[BackupEntry]:
    entries = await list_backup_entries(tablet.storage, tablet.backup_directory)
    complete = [e for e in entries if e.complete]
    if all_backups:
        if not complete:
            raise NotFound(f"no complete backup in {tablet.backup_directory} to verify")
        return complete
    if not names:
        fulls = [e for e in complete if e.manifest is not None and not e.manifest.incremental]
        if not fulls:
            raise NotFound(f"no complete full backup in {tablet.backup_directory} to verify")
        return [fulls[-1]]
    by_name = {e.name: e for e in entries}
    chosen = []
    for name in names:
        entry = by_name.get(name)
        if entry is None:
            raise NotFound(
                f"no backup named {name!r} in {tablet.backup_directory}; `tabletctl backups --all` lists them"
            )
        if not entry.complete:
            raise FailedPrecondition(
                f"backup {name} is incomplete ({entry.problem or 'no MANIFEST'}): nothing to verify"
            )
        chosen.append(entry)
    return chosen


async def verify_backup(tablet: Tablet, entry: BackupEntry, depth: Depth, op: Operation) -> Verification:
    """Verify one backup, store the result beside it and report it in the operation's log."""
    where = f"{entry.directory}/{entry.name}"
    op.set_phase(f"verifying ({depth})", entry.name)
    problems: list[str] = []
    n_objects = n_bytes = 0
    try:
        (plan,) = await plan_backups(tablet.config, RestorePath(entry, ()))
        n_objects = len(plan.objects)
        problems, n_bytes = await verify_objects(plan, op, tablet.config.restore_concurrency)
        if depth is Depth.DEEP and not problems:
            problems = await _deep(tablet, plan, op)
    except (DataLoss, FailedPrecondition) as e:
        problems.append(str(e))
    result = Verification(
        backup=where,
        depth=depth,
        ok=not problems,
        problems=problems[:MAX_PROBLEMS],
        objects=n_objects,
        bytes=n_bytes,
        verified_by=tablet.alias,
        agent_version=AGENT_VERSION,
    )
    await write_verification(entry.handle, result)
    if result.ok:
        op.info(f"backup {where} verified ({depth}): {n_objects} object(s), {n_bytes} bytes, all good")
    else:
        for problem in result.problems:
            op.warning(f"backup {where}: {problem}")
    return result


async def verify_objects(plan: PlannedBackup, op: Operation, concurrency: int) -> tuple[list[str], int]:
    """Read back every object of `plan`, checking sizes and hashes; (problems naming each bad stored
    object, original bytes read)."""
    problems: list[str | None] = [None] * len(plan.objects)
    total = 0
    op.add_total(sum(o.size or o.stored_size or 0 for o in plan.objects))

    async def one(i: int, record: ObjectRecord) -> None:
        nonlocal total
        stream = DecodedStream(
            plan.entry.handle.read_file(record.name),
            plan.codec,
            expected_crc32_hex=record.crc32,
            expected_sha256_hex=record.sha256,
            name=plan.object_path(record),
            opener=opener_for(plan.cipher, record.name, plan.object_path(record)),
        )
        n = 0
        try:
            async for chunk in stream:
                n += len(chunk)
                op.add_done(len(chunk))
        except NotFound:
            problems[i] = f"{plan.object_path(record)} is missing"
            return
        except DataLoss as e:
            where = plan.object_path(record)
            problems[i] = str(e) if where in str(e) else f"{where}: {e}"
            return
        finally:
            await stream.aclose()
        total += n
        if record.size is not None and n != record.size:
            problems[i] = (
                f"{plan.object_path(record)} holds {n} bytes where the MANIFEST records {record.size}"
            )

    await for_each(plan.objects, one, concurrency)
    return [p for p in problems if p is not None], total


async def _deep(tablet: Tablet, plan: PlannedBackup, op: Operation) -> list[str]:
    """Restore into a scratch directory and start a throw-away mysqld on it (full backups), or decode
    every transaction of the binlogs (incrementals); the problems found."""
    root = tablet.state_dir / f"verify-{op.id}"
    data = root / "data"
    targets = RestoreTargets(data, data, data, data, root / "binlogs")
    await in_thread(_fresh, root)
    try:
        needs = await in_thread(space_needs, [plan], targets, root)
        try:
            check_space(needs)
        except AgentError as e:
            raise FailedPrecondition(f"deep verification restores a copy under {root}: {e}") from None
        op.set_phase("verifying: restoring into a scratch directory", plan.entry.name)
        await plan.engine.restore(plan.context(tablet, targets, root / "work", op))
        if plan.manifest.incremental:
            return await in_thread(_decode_binlogs, binlog_files(plan.manifest, root / "binlogs"))
        return await _start_and_check(tablet, plan, root, op)
    except DataLoss as e:
        return [str(e)]
    finally:
        await complete(in_thread(shutil.rmtree, root, True))


def _fresh(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    (root / "work").mkdir(mode=0o700, parents=True)
    (root / "binlogs").mkdir(mode=0o700)


def _decode_binlogs(files: list[Path]) -> list[str]:
    problems = []
    for path in files:
        try:
            for _ in read_transactions(path):
                pass
        except (AgentError, ValueError) as e:
            problems.append(f"binlog {path.name} does not decode: {e}")
    return problems


async def _start_and_check(tablet: Tablet, plan: PlannedBackup, root: Path, op: Operation) -> list[str]:
    data = root / "data"
    dirs = ScratchDirs(data, data, data, data, root / "binlogs" / "binlog")
    position = parse_position(plan.manifest.position) if plan.manifest.position else None
    if position is not None and isinstance(position.gtids, MariaDBGTIDSet):
        await in_thread(write_binlog_state, root / "binlogs", "binlog", position.gtids)
    op.set_phase("verifying: starting a scratch mysqld", plan.entry.name)
    async with scratch_mysqld(tablet.mycnf, dirs, root) as client:
        problems = []
        if position is not None:
            await replication.set_gtid_state(client, position)
            reached = await replication.executed_position(client, position.flavor)
            if not (reached.contains(position) and position.contains(reached)):
                problems.append(
                    f"the restored server is at position {reached}, not the MANIFEST's {position}"
                )
        op.set_phase("verifying: CHECK TABLE", plan.entry.name)
        problems += await check_tables(client)
        return problems
