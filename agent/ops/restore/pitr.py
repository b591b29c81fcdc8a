"""The point-in-time part of a restore: the chain's binlogs restored into a work directory (before the
tablet is touched), the target position resolved (a time becomes the position of the last transaction
before it), then the binlogs replayed onto the restored mysqld up to exactly that position."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from agent.aio.tasks import in_thread
from agent.binlogs.apply import ReplayStep, choose_applier, position_before
from agent.catalog.manifest import format_time
from agent.errors import DataLoss
from agent.mysql import replication
from agent.mysql.gtid import Position, parse_position
from agent.operations import Operation
from agent.ops.restore.preflight import PlannedBackup
from agent.params import RestoreParams
from agent.tablet import Tablet
from engines.base import RestoreTargets
from engines.binlog import binlog_files


async def restore_binlogs(
    tablet: Tablet, incrementals: Sequence[PlannedBackup], workdir: Path, start: Position, op: Operation
) -> list[ReplayStep]:
    """Each incremental's binlogs into `workdir/binlogs-<k>`, verified; one replay step per backup."""
    op.set_phase("restoring binlogs")
    steps = []
    for k, plan in enumerate(incrementals):
        dest = workdir / f"binlogs-{k}"
        await in_thread(lambda d=dest: d.mkdir(mode=0o700, parents=True, exist_ok=True))
        await plan.engine.restore(plan.context(tablet, RestoreTargets.binlogs_into(dest), workdir, op))
        end = parse_position(plan.manifest.position, default_flavor=start.flavor)
        steps.append(ReplayStep(plan.entry.name, tuple(binlog_files(plan.manifest, dest)), end))
    return steps


async def target_position(
    params: RestoreParams, steps: Sequence[ReplayStep], start: Position, op: Operation
) -> Position:
    """The position the replay must end at: the requested one, or that of the last transaction of the
    chain older than the requested time."""
    if params.restore_to_timestamp is None:
        return parse_position(params.restore_to_pos, default_flavor=start.flavor)
    files = [f for step in steps for f in step.files]
    target, _ = await in_thread(position_before, files, start, params.restore_to_timestamp)
    op.info(
        f"the last transaction before {format_time(params.restore_to_timestamp)} ends at position {target}"
    )
    return target


async def replay(
    tablet: Tablet,
    steps: Sequence[ReplayStep],
    start: Position,
    target: Position,
    *,
    workdir: Path,
    op: Operation,
) -> None:
    """Replay the binlogs onto the running, restored mysqld (at `start`) up to `target` exactly.
    Replication is left unconfigured: a point-in-time copy must not catch up with its source."""
    info = await tablet.mysqld.server_info()
    config = tablet.config
    applier = await choose_applier(
        setting=config.binlog_applier,
        threads=config.binlog_applier_threads,
        client=tablet.client,
        info=info,
        op=op,
        steps=steps,
    )
    op.set_phase("replaying binlogs", applier.name)
    await applier.apply(tablet.client, op, start, up_to(steps, target), workdir)
    executed = await replication.executed_position(tablet.client, info.flavor)
    if not executed.contains(target) or not target.contains(executed):
        raise DataLoss(f"the binlog replay ended at position {executed}, not at the target {target}")
    await replication.set_gtid_state(tablet.client, target)
    op.info(f"replayed binlogs up to {target}")


def up_to(steps: Sequence[ReplayStep], target: Position) -> list[ReplayStep]:
    """The steps needed to reach `target`, the last one ending there."""
    kept = []
    for step in steps:
        if target.contains(step.end):
            kept.append(step)
            if step.end.contains(target):
                break
        else:
            kept.append(dataclasses.replace(step, end=target))
            break
    return kept
