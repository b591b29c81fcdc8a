"""Who may call Vitess's replication RPCs (and Check): the reads need a known caller, StopReplication and
StartReplication (they change mysqld) need an admin."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import build_config
from agent.daemon.auth import Authorizer, Caller
from agent.errors import PermissionDenied

READS = ("ReplicationStatus", "PrimaryStatus", "PrimaryPosition", "FullStatus", "Check")
WRITES = ("StopReplication", "StartReplication")


@pytest.fixture
def authorizer(tmp_path: Path) -> Authorizer:
    tokens = tmp_path / "tokens"
    tokens.write_text("admin ops admin-token\nreadonly dash read-token\n")
    tokens.chmod(0o600)
    config = build_config(
        {
            "tablet_alias": "zone1-102", "init_keyspace": "ks", "init_shard": "0", "mycnf_file": "/tmp/my.cnf",
            "file_backup_storage_root": "/tmp/backups", "grpc_auth_token_file": str(tokens),
        },
        environ={},
    )  # fmt: skip
    return Authorizer(config)


def caller(authorizer: Authorizer, token: str) -> Caller:
    return authorizer.identify([("authorization", f"Bearer {token}")], {}, "ipv4:127.0.0.1:1")


@pytest.mark.parametrize("method", READS)
def test_a_read_only_caller_may_read_replication_state(authorizer: Authorizer, method: str) -> None:
    authorizer.authorize(method, caller(authorizer, "read-token"))


@pytest.mark.parametrize("method", WRITES)
def test_stopping_and_starting_replication_needs_an_admin(authorizer: Authorizer, method: str) -> None:
    with pytest.raises(PermissionDenied, match=method):
        authorizer.authorize(method, caller(authorizer, "read-token"))
    authorizer.authorize(method, caller(authorizer, "admin-token"))
