"""Operations owned by the daemon, watched through Status, tabletctl and metrics, against real MariaDB."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from agent.pb import agentdata_pb2, tabletmanagerdata_pb2
from tests.agent_process import AgentProcess, free_port
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, backup_dirs, complete_backups, rpc_error
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]
SLOW = ["--xtrabackup_backup_flags=--throttle=100"]  # ~5 s on a fresh sandbox


def status(agent: AgentProcess, **fields: object) -> agentdata_pb2.StatusResponse:
    with agent.channel() as ch:
        return agent.stub(ch).Status(agentdata_pb2.StatusRequest(**fields), timeout=10)  # type: ignore[arg-type]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running_phase(agent: AgentProcess, phase: str) -> agentdata_pb2.Operation | None:
    s = status(agent)
    if s.HasField("current_operation") and phase in s.current_operation.phase:
        return s.current_operation
    return None


def ctl(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "agent.ctl.main", "--server", agent.address, *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def test_backup_survives_the_client_disconnecting(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    replica.wait_for_gtid(primary.write_rows(50))
    agent = agent_factory(replica, extra=[*XTRA, *SLOW])
    with agent.channel() as ch:
        stream = agent.stub(ch).Backup(tabletmanagerdata_pb2.BackupRequest(), timeout=120)
        next(stream)  # the backup started; now the client goes away
        stream.cancel()
    op = wait_for(lambda: running_phase(agent, "streaming"), what="the streaming phase")
    done = wait_for(
        lambda: next((o for o in status(agent).finished_operations if o.id == op.id), None),
        timeout=120,
        what="the backup to finish",
    )
    assert done.result == agentdata_pb2.SUCCEEDED, done.error
    assert len(complete_backups(storage_root)) == 1
    with agent.channel() as ch:
        listed = agent.stub(ch).ListBackups(agentdata_pb2.ListBackupsRequest(), timeout=10)
    assert [b.name for b in listed.backups] == [done.backup_name]
    s = wait_for(lambda: (s := status(agent)).last_full_backup.name and s, what="Status to list it")
    assert s.last_full_backup.name == done.backup_name and s.last_full_backup.complete


def test_cancel_mid_copy_restores_the_replica_and_leaves_no_backup(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    replica.wait_for_gtid(primary.write_rows(50))
    agent = agent_factory(replica, extra=[*XTRA, *SLOW])
    errors: list[grpc.RpcError] = []
    follower = threading.Thread(target=lambda: errors.append(rpc_error(backup, agent)))
    follower.start()
    op = wait_for(lambda: running_phase(agent, "streaming"), what="the streaming phase")
    with agent.channel() as ch:
        cancelled = agent.stub(ch).CancelOperation(agentdata_pb2.CancelOperationRequest(id=op.id), timeout=60)
    follower.join(60)
    assert cancelled.operation.result == agentdata_pb2.CANCELLED
    assert errors and errors[0].code() == grpc.StatusCode.CANCELLED
    assert complete_backups(storage_root) == [] and backup_dirs(storage_root) == []
    replica.wait_replicating()
    replica.wait_for_gtid(primary.write_rows(5))


def test_status_answers_in_milliseconds_during_a_full_speed_backup(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory
) -> None:
    primary.sql("CREATE DATABASE IF NOT EXISTS test")
    primary.sql("CREATE TABLE test.big (id INT PRIMARY KEY, pad VARCHAR(200))")
    primary.sql("INSERT INTO test.big SELECT seq, REPEAT(MD5(seq), 6) FROM test.seq_1_to_400000")
    replica.wait_for_gtid(primary.gtid_binlog_pos())
    agent = agent_factory(replica, extra=XTRA)
    follower = threading.Thread(target=lambda: backup(agent))
    follower.start()
    latencies = []
    with agent.channel() as ch:
        stub = agent.stub(ch)
        wait_for(lambda: status(agent).HasField("current_operation"), what="the backup to start")
        while follower.is_alive():
            t0 = time.perf_counter()
            s = stub.Status(agentdata_pb2.StatusRequest(), timeout=10)
            if s.HasField("current_operation"):
                latencies.append((time.perf_counter() - t0) * 1000)
    follower.join()
    assert len(latencies) >= 50, f"only {len(latencies)} Status calls while the backup ran"
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(
        f"Status during backup: n={len(latencies)} p50={statistics.median(latencies):.1f}ms p99={p99:.1f}ms"
    )
    assert p99 < 20, f"Status p99 {p99:.1f} ms"


def test_tabletctl_status_idle_backing_up_and_failed(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory
) -> None:
    replica.wait_for_gtid(primary.write_rows(20))
    agent = agent_factory(replica, extra=[*XTRA, *SLOW])
    idle = ctl(agent, "status")
    assert idle.returncode == 0, idle.stderr
    assert "operation    idle" in idle.stdout and "replication  source 127.0.0.1" in idle.stdout
    assert "no complete full backup in ks/0" in idle.stdout

    follower = threading.Thread(target=lambda: backup(agent))
    follower.start()
    wait_for(lambda: running_phase(agent, "streaming"), what="the streaming phase")
    busy = ctl(agent, "status")
    follower.join()
    assert busy.returncode == 0 and "backup running phase=streaming xtrabackup" in busy.stdout, busy.stdout

    failed = ctl(agent, "backup", "--incremental-from-pos", "MariaDB/0-1-999999")
    assert failed.returncode == 1 and "not a subset" in failed.stderr, failed.stderr
    after = ctl(agent, "status")
    assert "last backup failed" in after.stdout and "backup failed" in after.stdout
    assert "last full    " in after.stdout
    as_json = ctl(agent, "status", "--json")
    assert '"health_problems"' in as_json.stdout and '"last_full_backup"' in as_json.stdout


def test_tabletctl_backup_prints_progress_lines_when_not_a_tty(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    replica.wait_for_gtid(primary.write_rows(20))
    agent = agent_factory(replica)
    res = ctl(agent, "backup")
    assert res.returncode == 0, res.stderr
    assert "backup succeeded" in res.stdout and len(complete_backups(storage_root)) == 1
    bad = ctl(agent, "backup", "--concurrency", "1000")
    assert bad.returncode == 2 and "concurrency" in bad.stderr


def test_metrics_endpoint_after_backups(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory
) -> None:
    port = free_port()
    agent = agent_factory(replica, extra=["--metrics_port", str(port)])
    replica.wait_for_gtid(primary.write_rows(10))
    backup(agent)
    replica.wait_for_gtid(primary.write_rows(10))
    replica.sql("FLUSH BINARY LOGS")
    backup(agent, incremental_from_pos="auto")
    rpc_error(backup, agent, incremental_from_pos="auto")  # nothing new: not an error
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    lines = set(text.splitlines())
    assert 'tablet_agent_operations_total{engine="builtin",kind="backup",result="succeeded"} 1.0' in lines
    assert 'tablet_agent_operations_total{engine="binlog",kind="backup",result="succeeded"} 1.0' in lines
    assert 'tablet_agent_operations_total{engine="binlog",kind="backup",result="nothing_to_do"} 1.0' in lines
    assert not any(line.startswith("tablet_agent_errors_total{") for line in lines)
    assert 'tablet_agent_operation_in_progress{kind="backup"} 0.0' in lines
    assert any(
        line.startswith('tablet_agent_last_success_timestamp_seconds{type="incremental"}') for line in lines
    )
    assert any(line.startswith("tablet_agent_operation_duration_seconds_bucket{") for line in lines)
    assert any(line.startswith("tablet_agent_binlog_files_pending ") for line in lines)
    assert any(
        line.startswith(
            'tablet_agent_operation_bytes_total{engine="builtin",kind="backup",result="succeeded"}'
        )
        for line in lines
    )


def test_metrics_port_in_use_and_unreachable_topology_exit_2(
    replica: Sandbox, agent_factory: AgentFactory
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        nobody = free_port()
        for extra, text in (
            (["--metrics_port", str(port)], f"cannot serve metrics on 127.0.0.1:{port}"),
            (["--topo_implementation", "etcd2", "--topo_global_server_address", f"127.0.0.1:{nobody}"],
             "no etcd endpoint answered"),
        ):  # fmt: skip
            agent = agent_factory(replica, extra=extra, start=False)
            done = subprocess.run(agent.argv, env=agent.env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 2 and text in done.stderr, done.stderr[-2000:]
