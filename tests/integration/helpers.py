"""Small helpers for integration tests that drive the agent over gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from agent.pb import tabletmanagerdata_pb2
from tests.agent_process import AgentProcess


def backup(agent: AgentProcess, timeout: float = 300, **fields: object) -> list[str]:
    """Run Backup and return the event texts; raises grpc.RpcError on failure."""
    with agent.channel() as ch:
        req = tabletmanagerdata_pb2.BackupRequest(**fields)  # type: ignore[arg-type]
        return [r.event.value for r in agent.stub(ch).Backup(req, timeout=timeout)]


def restore(agent: AgentProcess, timeout: float = 300, **fields: object) -> list[str]:
    with agent.channel() as ch:
        req = tabletmanagerdata_pb2.RestoreFromBackupRequest(**fields)  # type: ignore[arg-type]
        return [r.event.value for r in agent.stub(ch).RestoreFromBackup(req, timeout=timeout)]


def rpc_error(fn: object, *args: object, **kwargs: object) -> grpc.RpcError:
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as e:
        return e
    raise AssertionError("expected the RPC to fail")


def backup_dirs(root: Path, keyspace: str = "ks", shard: str = "0") -> list[Path]:
    d = root / keyspace / shard
    return sorted(p for p in d.iterdir() if p.is_dir()) if d.exists() else []


def complete_backups(root: Path) -> list[Path]:
    return [p for p in backup_dirs(root) if (p / "MANIFEST").exists()]


def manifest(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((path / "MANIFEST").read_text())
    return data
