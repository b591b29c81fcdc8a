"""How many closed binary logs hold transactions that no backup of the shard covers yet (a metric: it
grows when incremental backups stop running)."""

from __future__ import annotations

from pathlib import Path

from agent.aio.tasks import in_thread
from agent.catalog.summary import Newest
from agent.mysql import replication
from agent.mysql.binlog_headers import read_binlog_header
from agent.mysql.client import SqlRunner
from agent.mysql.gtid import GTIDSet, parse_position
from agent.mysql.mycnf import MyCnf


def _preceding_sets(directory: Path, names: list[str]) -> list[GTIDSet]:
    return [read_binlog_header(directory / name, walk=False).previous_gtids for name in names]


async def pending_binlogs(client: SqlRunner, mycnf: MyCnf, newest: Newest) -> int | None:
    """None when binlogging is off or mysqld does not answer."""
    if mycnf.log_bin is None:
        return None
    logs = [name for name, _ in await replication.binary_logs(client)]
    if len(logs) < 2:
        return 0
    # file i holds the transactions between its preceding set and the next file's
    sets = await in_thread(_preceding_sets, mycnf.log_bin.parent, logs[1:])
    covered: GTIDSet | None = None
    for entry in (newest.full, newest.incremental):
        if entry is not None and entry.manifest is not None and entry.manifest.position:
            gtids = parse_position(entry.manifest.position).gtids
            covered = gtids if covered is None else covered.union(gtids)
    return sum(1 for after in sets if covered is None or not covered.contains(after))
