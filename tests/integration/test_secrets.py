"""The database password never shows up: logs, events, Status, errors or any child's command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from agent.pb import agentdata_pb2, tabletmanagerdata_pb2
from tests.agent_process import REPO
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, rpc_error
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration
SECRET = "Pa55-S3cret-0f-the-Agent"


def cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
    return out


def test_password_is_never_shown(
    replica: Sandbox, primary: Sandbox, agent_factory: AgentFactory, tmp_path: Path
):
    with replica.session() as cur:
        cur.execute("SET sql_log_bin = 0")
        cur.execute(f"CREATE USER 'agent'@'localhost' IDENTIFIED BY '{SECRET}'")
        cur.execute("GRANT ALL ON *.* TO 'agent'@'localhost'")
    creds = tmp_path / "agent.cnf"
    creds.write_text(f"[client]\nuser=agent\npassword={SECRET}\nsocket={replica.socket}\n")
    creds.chmod(0o644)
    bad = agent_factory(replica, extra=["--db_credentials_file", str(creds)], start=False)
    with pytest.raises(RuntimeError, match="chmod 600"):
        bad.start(timeout=20)
    creds.chmod(0o600)
    agent = agent_factory(replica, alias="zone1-0000000108", extra=["--db_credentials_file", str(creds)])
    primary.write_rows(10)
    events = backup(agent)
    seen = dict(cmdlines())
    with agent.channel() as ch:
        status = agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=5)
        # an error path
        bad_request = tabletmanagerdata_pb2.BackupRequest(concurrency=-1)
        err = rpc_error(lambda: list(agent.stub(ch).Backup(bad_request, timeout=5)))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    texts = [
        "\n".join(events),
        json_format.MessageToJson(status),
        err.details() or "",
        agent.log(),
        "\n".join(seen.values()),
    ]
    for text in texts:
        assert SECRET not in text
    assert status.mysqld.running
    # the wrong password gives a clear error without echoing it
    creds.write_text(f"[client]\nuser=agent\npassword=wrong-{SECRET}\nsocket={replica.socket}\n")
    res = subprocess.run(
        [sys.executable, "-m", "agent.daemon.main", *agent.argv[3:], "--grpc_port", "0"],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 2
    assert SECRET not in res.stderr and "wrong-" not in res.stderr
