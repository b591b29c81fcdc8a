"""Backup expiry: the retention policy (catalog/retention.py) applied to the shard's backups, one expirer per
shard (an etcd lease lock when a topology is configured), every removal logged and counted.

Run by the ExpireBackups RPC (`tabletctl expire [--dry-run]`) and after every successful full backup when a
policy is configured; a failure after a backup is a warning (and a health problem), never a failed backup.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent.catalog.listing import list_backup_entries
from agent.catalog.retention import Plan, Policy, plan_retention
from agent.config import AgentConfig
from agent.errors import AgentError, FailedPrecondition, NotFound
from agent.log import get_logger
from agent.operations import Kind, Operation
from agent.tablet import Tablet

LOCK_WAIT = 30.0  # seconds an expiry waits for another tablet's expiry of the shard
log = get_logger("agent.ops.expire")


@dataclass(frozen=True)
class Expiry:
    plan: Plan
    policy: Policy
    removed: tuple[str, ...]
    dry_run: bool


def retention_policy(config: AgentConfig) -> Policy:
    return Policy(
        full_count=config.backup_retention_full,
        full_age=timedelta(days=config.backup_retention_days),
        binlog_age=timedelta(days=config.binlog_retention_days),
    )


async def expire_backups(tablet: Tablet, *, dry_run: bool, op: Operation | None = None) -> Expiry:
    """Plan the policy over the shard's backups and, unless `dry_run`, remove what it lets go (dependents
    before their bases, so an interrupted run never leaves an incremental without its base)."""
    policy = retention_policy(tablet.config)
    if not policy.configured:
        raise FailedPrecondition(
            "no retention policy is configured: set --backup_retention_full, --backup_retention_days or "
            "--binlog_retention_days (agent flags) to expire backups"
        )
    current = tablet.runner.current
    if current is not None and current.kind is Kind.RESTORE and not dry_run:
        raise FailedPrecondition(
            f"a restore is running (operation {current.id}) and may be reading backups: expire after it ends"
        )
    running = {current.backup_name} if current is not None and current.backup_name else set()
    async with tablet.expiry_lock, _shard_lock(tablet, dry_run):
        entries = await list_backup_entries(
            tablet.storage, tablet.backup_directory, cache=tablet.summary.manifests
        )
        plan = plan_retention(entries, policy, datetime.now(UTC), running=running, own_alias=tablet.alias)
        if dry_run:
            return Expiry(plan, policy, (), True)
        removed = []
        try:
            for decision in reversed(plan.removals):
                try:
                    await tablet.storage.remove_backup(tablet.backup_directory, decision.name)
                except NotFound:
                    log.info("backup already gone", backup=decision.name)
                    continue
                removed.append(decision.name)
                tablet.backups_removed[decision.kind] += 1
                text = f"removed {decision.kind} backup {tablet.backup_directory}/{decision.name}: {decision.reason}"
                log.info(text, backup=decision.name, kind=decision.kind)
                if op is not None:
                    op.info(text)
        finally:
            if removed:
                tablet.summary.refresh()
    return Expiry(plan, policy, tuple(removed), False)


async def expire_after_backup(tablet: Tablet, op: Operation) -> None:
    """The hook at the end of a successful full backup: expire when a policy is configured; a failure is
    reported as a warning and kept for Status, the backup stays successful."""
    if not retention_policy(tablet.config).configured:
        return
    op.set_phase("expiring old backups")
    try:
        result = await expire_backups(tablet, dry_run=False, op=op)
    except (AgentError, OSError) as e:
        tablet.expiry_error = str(e)
        op.warning(f"expiring old backups failed (the backup itself succeeded): {e}")
        return
    tablet.expiry_error = ""
    kept = len(result.plan.decisions) - len(result.plan.removals)
    op.info(f"retention ({result.policy.describe()}): {len(result.removed)} backup(s) removed, {kept} kept")


@contextlib.asynccontextmanager
async def _shard_lock(tablet: Tablet, dry_run: bool) -> AsyncIterator[None]:
    """`<root>/keyspaces/<ks>/shards/<shard>/expire_lock` in etcd when a topology is configured: one expirer
    per shard, whichever of its tablets runs it. A dry run only reads and takes no lock."""
    config = tablet.config
    if dry_run or not config.topo_implementation:
        yield
        return
    # Imported here, as the daemon does: agents without a topology do not load the HTTP client.
    from agent.topo.etcd import PASSWORD_ENV, EtcdClient, EtcdSettings, split_endpoints
    from agent.topo.locks import shard_lock

    settings = EtcdSettings(
        tls_ca=config.topo_etcd_tls_ca,
        tls_cert=config.topo_etcd_tls_cert,
        tls_key=config.topo_etcd_tls_key,
        tls_server_name=config.topo_etcd_tls_server_name,
        username=config.topo_etcd_username,
        password=os.environ.get(PASSWORD_ENV, ""),
    )
    async with (
        EtcdClient(split_endpoints(config.topo_global_server_address), settings) as client,
        shard_lock(
            client,
            config.topo_global_root,
            config.init_keyspace,
            config.init_shard,
            f"expire on {tablet.alias}",
            wait=LOCK_WAIT,
            action="expire",
        ),
    ):
        yield
