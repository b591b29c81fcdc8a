"""`tabletctl tablets` and `tabletctl backup-shard`: the shard's tablets from the topology, their health
from each agent's Status, and the choice of the tablet to back up (Vitess's BackupShard)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from agent.errors import FailedPrecondition
from agent.pb import agentdata_pb2, tabletmanagerservice_pb2_grpc, topodata_pb2
from agent.topo.tablets import TabletEntry, record_address

BACKUP_TYPES = ("REPLICA", "RDONLY", "SPARE")
STATUS_TIMEOUT = 5.0
NOT_ALIVE = "not alive: no running tablet-agent holds its liveness key (stopped, crashed, or not an agent)"


@dataclass(frozen=True)
class Candidate:
    alias: str
    address: str
    tablet_type: str
    lag: int  # seconds, -1 unknown
    reason: str  # why it cannot take the backup; "" when it can
    status: agentdata_pb2.StatusResponse | None = None

    @property
    def is_primary(self) -> bool:
        return self.tablet_type == "PRIMARY"


def judge(alias: str, address: str, status: agentdata_pb2.StatusResponse | None, error: str) -> Candidate:
    """A tablet's fitness for a backup, from its Status (or the error reaching it)."""
    if status is None:
        return Candidate(alias, address, "UNKNOWN", -1, f"agent unreachable at {address}: {error}")
    kind = topodata_pb2.TabletType.Name(status.tablet_type)
    m, r = status.mysqld, status.mysqld.replication
    reason = ""
    if status.HasField("current_operation"):
        op = status.current_operation
        reason = f"busy: a {agentdata_pb2.OperationKind.Name(op.kind).lower()} is running (operation {op.id})"
    elif kind != "PRIMARY" and kind not in BACKUP_TYPES:
        reason = f"type {kind} does not take backups"
    elif not m.running:
        reason = f"mysqld not running ({m.error})" if m.error else "mysqld not running"
    elif kind != "PRIMARY":
        if not r.configured:
            reason = "replication not configured"
        elif not r.sql_running:
            reason = "replication SQL thread stopped"
        elif not r.io_running:
            reason = "replication IO thread stopped"
        elif r.lag_seconds < 0:
            reason = "replication lag unknown"
    lag = 0 if kind == "PRIMARY" else r.lag_seconds
    return Candidate(alias, address, kind, lag, reason, status)


def choose(candidates: Sequence[Candidate], allow_primary: bool, shard: str) -> Candidate:
    """The healthy non-primary with the least lag; the primary only with `allow_primary` and no other."""
    usable = [c for c in candidates if not c.reason and (allow_primary or not c.is_primary)]
    if usable:
        return min(usable, key=lambda c: (c.is_primary, c.lag, c.alias))
    reasons = []
    for c in candidates:
        why = c.reason or (
            "PRIMARY: pass --allow-primary to back up the primary" if c.is_primary else "unusable"
        )
        reasons.append(f"{c.alias} ({c.tablet_type}): {why}")
    listing = "; ".join(reasons) if reasons else "no tablet of the shard is registered in the topology"
    raise FailedPrecondition(f"no tablet available for backup in {shard}: {listing}")


async def survey(
    entries: Sequence[TabletEntry], open_channel: Callable[[str], grpc.aio.Channel]
) -> list[Candidate]:
    """Ask every live tablet's agent for its Status, concurrently; a tablet whose agent holds no
    liveness key (stopped, crashed, or not run by an agent) is not dialled."""

    async def one(entry: TabletEntry) -> Candidate:
        alias, address = entry.alias, record_address(entry.record)
        if not entry.alive:
            kind = topodata_pb2.TabletType.Name(entry.record.type)
            return Candidate(alias, address, kind, -1, NOT_ALIVE)
        try:
            async with open_channel(address) as channel:
                stub: Any = _stub(channel)
                status = await stub.Status(
                    agentdata_pb2.StatusRequest(finished_operations=1), timeout=STATUS_TIMEOUT
                )
        except grpc.aio.AioRpcError as e:
            return judge(alias, address, None, f"{e.code().name}: {e.details()}")
        return judge(alias, address, status, "")

    return list(await asyncio.gather(*(one(e) for e in entries)))


def _stub(channel: grpc.aio.Channel) -> Any:
    return tabletmanagerservice_pb2_grpc.TabletManagerStub(channel)


def render_tablets(candidates: Sequence[Candidate]) -> str:
    lines = [f"{'alias':<18} {'type':<8} {'address':<24} {'lag':>5}  health"]
    for c in candidates:
        lag = "-" if c.lag < 0 else f"{c.lag}s"
        health = c.reason or "ok"
        if c.status is not None and c.status.health_problems and not c.reason:
            health = "ok (" + "; ".join(c.status.health_problems) + ")"
        lines.append(f"{c.alias:<18} {c.tablet_type:<8} {c.address:<24} {lag:>5}  {health}")
    return "\n".join(lines)
