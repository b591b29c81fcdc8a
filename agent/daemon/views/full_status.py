"""Vitess's FullStatus RPC: what vtorc and vtctld read about a tablet's mysqld, filled as vttablet fills it.

Per flavor as Vitess's `go/mysql` flavors answer: on MariaDB `server_uuid`, `gtid_mode`, `gtid_purged`
and the primary status's `server_uuid` are empty, the replica's `source_uuid` is all zeros, and there is
no relay-log GTID position. `version` is `<major>.<minor>.<patch>`. `super_read_only` is false where the
server has no such variable (MariaDB; vttablet itself would fail the call there). `disk_stalled` and
`semi_sync_blocked` stay false: the agent runs neither monitor. `replication_status.backup_running` is
set while a backup operation runs, as ReplicationStatus sets it.
"""

from __future__ import annotations

import re

from agent.daemon.views.replication import backup_running, mysqld_session, primary_status_pb, status_pb
from agent.mysql import replication
from agent.mysql.gtid import Flavor
from agent.ops.tablet_type import current_type
from agent.pb import replicationdata_pb2, topodata_pb2
from agent.tablet import Tablet

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def vitess_version(version: str) -> str:
    """`10.11.6-MariaDB-log` -> `10.11.6`, as vttablet reports it (the text itself if it has no x.y.z)."""
    found = _VERSION.search(version)
    return ".".join(found.groups()) if found else version


async def build_full_status(tablet: Tablet) -> replicationdata_pb2.FullStatus:
    async with mysqld_session(tablet, "FullStatus") as (s, info):
        flavor = info.flavor
        replica = await replication.replica_status(s, flavor)
        primary = await replication.primary_status(s, flavor)
        purged = "" if flavor is Flavor.MARIADB else str(await replication.purged_position(s, flavor))
        read_only = await replication.read_only_state(s)
        binlog = await replication.binlog_settings(s)
        mode = await replication.gtid_mode(s, flavor)
        semi = await replication.semi_sync_state(s)
        config = await replication.replication_configuration(s, flavor, replica)
        uuid = await replication.server_uuid(s, flavor)

    status = replicationdata_pb2.FullStatus(
        server_id=info.server_id,
        server_uuid=uuid,
        gtid_purged=purged,
        version=vitess_version(info.version),
        version_comment=info.version_comment,
        read_only=read_only.read_only,
        super_read_only=bool(read_only.super_read_only),
        gtid_mode=mode,
        binlog_format=binlog.binlog_format,
        binlog_row_image=binlog.binlog_row_image,
        log_bin_enabled=binlog.log_bin,
        log_replica_updates=binlog.log_replica_updates,
        semi_sync_primary_enabled=semi.primary_enabled,
        semi_sync_replica_enabled=semi.replica_enabled,
        semi_sync_primary_status=semi.primary_status,
        semi_sync_replica_status=semi.replica_status,
        semi_sync_primary_clients=semi.primary_clients,
        semi_sync_primary_timeout=semi.primary_timeout,
        semi_sync_wait_for_replica_count=semi.wait_for_replica_count,
        tablet_type=topodata_pb2.TabletType.Value(current_type(tablet)),
    )
    if replica is not None:
        status.replication_status.CopyFrom(status_pb(replica, backup_running(tablet)))
    if primary is not None:
        status.primary_status.CopyFrom(primary_status_pb(primary))
    if config is not None:
        status.replication_configuration.CopyFrom(
            replicationdata_pb2.Configuration(
                heartbeat_interval=config.heartbeat_interval, replica_net_timeout=config.replica_net_timeout
            )
        )
    return status
