"""The tablet's health problems for Status and metrics: what an operator must act on, and nothing that an
operation in progress causes on purpose (mysqld stopped for an offline backup, the replica's SQL thread
stopped by xtrabackup)."""

from __future__ import annotations

import time

from agent.catalog.summary import Newest
from agent.config import TabletType, is_loopback
from agent.mysql.state import MysqldState
from agent.operations import Kind, Result
from agent.tablet import Tablet

PLANNED_BY_OFFLINE_BACKUP = ("mysqld is not running", "mysqld is not reachable")
PLANNED_BY_ONLINE_BACKUP = ("replication SQL thread stopped",)
# The short, bounded name of each kind of problem (the `problem` label of tablet_agent_health_problem).
MYSQLD_PROBLEMS = {
    "mysqld is not running": "mysqld_not_running",
    "mysqld is not reachable": "mysqld_unreachable",
    "replication SQL thread stopped": "replication_sql_stopped",
    "replication IO thread stopped": "replication_io_stopped",
}
PROBLEM_KINDS = (
    *MYSQLD_PROBLEMS.values(),
    "mysqld_other",
    "unfinished_restore",
    "last_backup_failed",
    "backup_listing_failed",
    "no_full_backup",
    "backup_too_old",
    "backup_verification_failed",
    "not_replicating_after_restore",
    "insecure_grpc",
    "expiry_failed",
    "binlog_archive_gap",
    "binlog_archive_failed",
)


def planned_state(tablet: Tablet) -> str:
    """What the running operation does to mysqld on purpose, for Status ("" when nothing)."""
    op = tablet.runner.current
    if op is None:
        return ""
    if op.kind is Kind.BACKUP and op.engine == "builtin":
        return f"stopped for backup (operation {op.id})"
    if op.kind is Kind.BACKUP and op.engine == "xtrabackup":
        return f"replication SQL thread paused by xtrabackup (operation {op.id})"
    if op.kind is Kind.RESTORE:
        return f"being restored (operation {op.id})"
    return ""


def health_problems(tablet: Tablet, state: MysqldState) -> list[str]:
    """What an operator must act on, as sentences (Status)."""
    return [text for _, text in health_problem_kinds(tablet, state)]


def health_problem_kinds(tablet: Tablet, state: MysqldState) -> list[tuple[str, str]]:
    """The problems as (kind, sentence): kind is one of PROBLEM_KINDS (metrics), the sentence says more."""
    config = tablet.config
    problems = [
        (MYSQLD_PROBLEMS.get(p, "mysqld_other"), p) for p in state.problems if not _planned(tablet, p)
    ]
    if tablet.unfinished_restore:
        problems.append(("unfinished_restore", tablet.unfinished_restore))
    last_backup = next(
        (
            op
            for op in tablet.runner.finished
            if op.kind is Kind.BACKUP and op.result is not Result.NOTHING_TO_DO
        ),
        None,
    )
    if last_backup is not None and last_backup.result is Result.FAILED:
        problems.append(("last_backup_failed", "last backup failed"))
    if tablet.expiry_error:
        problems.append(("expiry_failed", f"expiring old backups failed: {tablet.expiry_error}"))
    newest = tablet.summary.newest
    problems += backup_problem_kinds(newest, tablet.backup_directory, config.backup_max_age_hours)
    if newest.full_verification is not None and not newest.full_verification.ok:
        problems.append(
            (
                "backup_verification_failed",
                f"the newest full backup {newest.full_verification.backup} failed verification: "
                + "; ".join(newest.full_verification.problems[:2]),
            )
        )
    if (
        tablet.restored_to
        and not tablet.drained
        and config.init_tablet_type is TabletType.REPLICA
        and state.running
        and tablet.runner.current is None
        and not (
            state.replication is not None and state.replication.sql_running and state.replication.io_running
        )
    ):
        problems.append(
            (
                "not_replicating_after_restore",
                f"replica not replicating since the restore of {tablet.restored_to}: start replication "
                "(START SLAVE) once it should follow its source",
            )
        )
    archive = tablet.archive
    if archive.gap:
        problems.append(("binlog_archive_gap", archive.gap))
    if archive.active and archive.problem:
        problems.append(("binlog_archive_failed", archive.problem))
    if config.grpc_cert is None and not is_loopback(config.grpc_bind_address):
        problems.append(
            ("insecure_grpc", f"INSECURE: plaintext gRPC on {config.grpc_bind_address} (--grpc_insecure)")
        )
    return problems


def _planned(tablet: Tablet, problem: str) -> bool:
    op = tablet.runner.current
    if op is None:
        return False
    if op.kind is Kind.RESTORE or (op.kind is Kind.BACKUP and op.engine == "builtin"):
        return problem in PLANNED_BY_OFFLINE_BACKUP or problem in PLANNED_BY_ONLINE_BACKUP
    if op.kind is Kind.BACKUP and op.engine == "xtrabackup":
        return problem in PLANNED_BY_ONLINE_BACKUP
    return False


def backup_problems(
    newest: Newest, directory: str, max_age_hours: float, now: float | None = None
) -> list[str]:
    """'no backup in 24h' and friends, from the cached listing."""
    return [text for _, text in backup_problem_kinds(newest, directory, max_age_hours, now)]


def backup_problem_kinds(
    newest: Newest, directory: str, max_age_hours: float, now: float | None = None
) -> list[tuple[str, str]]:
    if newest.error:
        return [("backup_listing_failed", f"cannot list backups: {newest.error}")]
    if not newest.listed_at:
        return []
    if newest.full is None:
        return [("no_full_backup", f"no complete full backup in {directory}")]
    times = [
        e.manifest.backup_datetime
        for e in (newest.full, newest.incremental)
        if e is not None and e.manifest is not None and e.manifest.backup_datetime is not None
    ]
    if max_age_hours and times:
        age = ((now or time.time()) - max(times).timestamp()) / 3600
        if age > max_age_hours:
            return [("backup_too_old", f"no backup in {max_age_hours:g}h (the newest is {age:.0f}h old)")]
    return []
