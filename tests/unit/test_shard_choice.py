"""Choosing the tablet of a shard backup from the tablets' Status."""

from __future__ import annotations

import pytest

from agent.ctl.shard import choose, judge
from agent.errors import FailedPrecondition
from agent.pb import agentdata_pb2, topodata_pb2


def status(
    kind: str, *, sql: bool = True, io: bool = True, lag: int = 0, running: bool = True
) -> agentdata_pb2.StatusResponse:
    return agentdata_pb2.StatusResponse(
        tablet_type=topodata_pb2.TabletType.Value(kind),
        mysqld=agentdata_pb2.MysqldState(
            running=running,
            replication=agentdata_pb2.ReplicationState(
                configured=kind != "PRIMARY", sql_running=sql, io_running=io, lag_seconds=lag
            ),
        ),
    )


def test_least_lagging_healthy_replica_wins() -> None:
    tablets = [
        judge("zone1-0000000101", "a:1", status("PRIMARY"), ""),
        judge("zone1-0000000102", "a:2", status("REPLICA", lag=7), ""),
        judge("zone1-0000000103", "a:3", status("RDONLY", lag=2), ""),
        judge("zone1-0000000104", "a:4", status("REPLICA", sql=False), ""),
    ]
    assert choose(tablets, False, "ks/0").alias == "zone1-0000000103"
    assert choose(tablets, True, "ks/0").alias == "zone1-0000000103"  # the primary only as a last resort


def test_no_tablet_lists_every_reason_and_the_primary_needs_the_flag() -> None:
    busy = status("REPLICA")
    busy.current_operation.CopyFrom(agentdata_pb2.Operation(id="abc", kind=agentdata_pb2.BACKUP))
    tablets = [
        judge("zone1-0000000101", "a:1", status("PRIMARY"), ""),
        judge("zone1-0000000102", "a:2", status("REPLICA", io=False), ""),
        judge("zone1-0000000103", "a:3", None, "UNAVAILABLE: connection refused"),
        judge("zone1-0000000104", "a:4", busy, ""),
        judge("zone1-0000000105", "a:5", status("DRAINED"), ""),
        judge("zone1-0000000106", "a:6", status("REPLICA", running=False), ""),
    ]
    with pytest.raises(FailedPrecondition) as e:
        choose(tablets, False, "ks/0")
    text = str(e.value)
    assert text.startswith("no tablet available for backup in ks/0")
    for part in ("pass --allow-primary", "replication IO thread stopped", "agent unreachable at a:3",
                 "busy: a backup is running (operation abc)", "type DRAINED does not take backups", "mysqld not running"):  # fmt: skip
        assert part in text
    assert choose(tablets, True, "ks/0").alias == "zone1-0000000101"
    with pytest.raises(FailedPrecondition, match="no tablet of the shard is registered"):
        choose([], True, "ks/0")
