"""The daemon as a real process: Ping, health, reflection, wire contract, config errors, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent.pb import agentdata_pb2, tabletmanagerdata_pb2
from tests.agent_process import REPO, AgentProcess
from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.sandbox import Sandbox
from tests.wire import field_bytes, field_varint

pytestmark = pytest.mark.integration


def test_ping_health_and_reflection_on_a_replica(replica: Sandbox, agent_factory: AgentFactory) -> None:
    agent = agent_factory(replica)
    with agent.channel() as ch:
        assert (
            agent.stub(ch).Ping(tabletmanagerdata_pb2.PingRequest(payload="hello"), timeout=5).payload
            == "hello"
        )
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "tabletmanagerservice.TabletManager"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = list(
            refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        names = {s.name for s in answers[0].list_services_response.service}
        assert "tabletmanagerservice.TabletManager" in names
        assert "grpc.health.v1.Health" in names
        status = agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=5)
    assert status.tablet_alias == "zone1-0000000102"
    assert status.mysqld.running and status.mysqld.flavor == "MariaDB"
    assert status.mysqld.replication.configured and status.mysqld.replication.sql_running


def test_raw_bytes_reach_the_right_fields(replica: Sandbox, agent_factory: AgentFactory) -> None:
    """Hand-encoded requests on Vitess's method paths are decoded field by field by the server."""
    agent = agent_factory(replica)
    with agent.channel() as ch:
        ping = ch.unary_unary("/tabletmanagerservice.TabletManager/Ping")
        assert ping(field_bytes(1, "raw-payload"), timeout=5) == field_bytes(1, "raw-payload")
        backup = ch.unary_stream("/tabletmanagerservice.TabletManager/Backup")
        with pytest.raises(grpc.RpcError) as err:
            list(backup(field_varint(1, 999), timeout=10))  # concurrency = 999
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "concurrency: 999" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            list(backup(field_bytes(5, "rsync"), timeout=10))  # backup_engine = "rsync"
        assert "unknown backup engine 'rsync'" in (err.value.details() or "")
        restore = ch.unary_stream("/tabletmanagerservice.TabletManager/RestoreFromBackup")
        ts = field_varint(1, 1_700_000_000)
        with pytest.raises(grpc.RpcError) as err:
            list(restore(field_bytes(2, "MariaDB/0-1-5") + field_bytes(4, ts), timeout=10))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "mutually exclusive" in (err.value.details() or "")


def _run_agent(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.daemon.main", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def _base_args(cnf: Path, tmp_path: Path) -> list[str]:
    return ["--tablet-path", "zone1-102", "--init_keyspace", "ks", "--init_shard", "0", "--mycnf_file", str(cnf),
            "--file_backup_storage_root", str(tmp_path / "b"), "--grpc_port", "0", "--state_dir", str(tmp_path / "s")]  # fmt: skip


def test_missing_mycnf_exits_2_with_the_fix(tmp_path: Path) -> None:
    res = _run_agent(_base_args(tmp_path / "nope.cnf", tmp_path))
    assert res.returncode == 2
    assert "nope.cnf" in res.stderr and "does not exist" in res.stderr


def test_mysqld_down_at_start_is_served_and_picked_up_when_it_comes(
    sandbox_factory: SandboxFactory, agent_factory: AgentFactory
) -> None:
    stopped = sandbox_factory(start=False)
    agent = agent_factory(stopped)  # serves although mysqld does not answer
    with agent.channel() as ch:
        status = agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10)
        assert not status.mysqld.running
        assert (
            "mysqld is not reachable" in status.health_problems
            or "mysqld is not running" in status.health_problems
        )
        stopped.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10)
            if status.mysqld.running:
                break
            time.sleep(0.3)
        assert status.mysqld.running and status.mysqld.version
    assert "mysqld does not answer" in agent.log()


def test_unknown_flag_and_bad_alias_exit_2(tmp_path: Path) -> None:
    res = _run_agent(["--bogus-flag", "1"])
    assert res.returncode == 2 and "unrecognized arguments" in res.stderr
    args = _base_args(tmp_path / "x.cnf", tmp_path)
    args[1] = "not an alias"
    res = _run_agent(args)
    assert res.returncode == 2 and "invalid tablet alias" in res.stderr


def test_sigterm_stops_within_grace_and_notifies_systemd(
    replica: Sandbox, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(10)
    with sock:
        agent = agent_factory(
            replica, env={"NOTIFY_SOCKET": str(notify_path)}, extra=["--grpc_shutdown_grace", "3"]
        )
        assert b"READY=1" in sock.recv(4096)
        assert agent.proc is not None
        started = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(15) == 0
        assert time.monotonic() - started < 5
        assert sock.recv(4096).startswith(b"STOPPING=1")
    assert replica.is_answering()


def test_tabletctl_ping_and_status(replica: Sandbox, agent_factory: AgentFactory) -> None:
    agent: AgentProcess = agent_factory(replica)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ctl = [sys.executable, "-m", "agent.ctl.main", "--server", agent.address]
    res = subprocess.run([*ctl, "ping"], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == "ping"
    res = subprocess.run([*ctl, "status"], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "zone1-0000000102" in res.stdout and "operation    idle" in res.stdout
    res = subprocess.run(
        [*ctl, "--server", "127.0.0.1:1", "ping"], capture_output=True, text=True, env=env, timeout=30
    )
    assert res.returncode == 2


def test_operation_history_survives_a_restart(replica: Sandbox, agent_factory: AgentFactory) -> None:
    from tests.integration.helpers import backup

    agent = agent_factory(replica)
    backup(agent)
    with agent.channel() as ch:
        before = agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10).finished_operations
    agent.stop()
    again = agent_factory(replica)
    with again.channel() as ch:
        after = again.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10).finished_operations
    assert [o.id for o in after] == [o.id for o in before] and after[0].result == agentdata_pb2.SUCCEEDED
