"""Set-up mistakes: refused at start with exit 2 and the fix, before anything is served; and
`tabletctl check` (the Check RPC) on a correct tablet and on broken ones, with its lines and exit codes."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.agent_process import REPO, AgentProcess
from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, complete_backups
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration

XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` cannot be written by the agent: mode 555 for an ordinary user; root ignores modes, so for
    root a read-only bind mount over it (skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    bind = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, text=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot make {path} read-only for root (bind mount): {bind.stderr.strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, text=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount {path} read-only: {ro.stderr.strip()}")
        yield
    finally:
        subprocess.run(["umount", str(path)], check=False)


# --- start-up --------------------------------------------------------------------------------------------


@pytest.fixture
def offline_agent(tmp_path: Path, storage_root: Path) -> Callable[..., AgentProcess]:
    """`offline_agent(extra=[...], env={...})`: an agent for a mysqld that is not running (the start-up
    checks need none), not started."""
    cnf = tmp_path / "my.cnf"
    cnf.write_text(f"[mysqld]\ndatadir={tmp_path / 'data'}\nsocket={tmp_path / 'mysqld.sock'}\n")

    def make(extra: Sequence[str] = (), env: dict[str, str] | None = None) -> AgentProcess:
        return AgentProcess(cnf, storage_root, tmp_path / "agents", extra=extra, env=env)

    return make


def start_refused(agent: AgentProcess) -> str:
    """Run an agent that must refuse to start: exit 2, nothing served; its stderr."""
    done = subprocess.run(agent.argv, env=agent.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "tablet-agent serving" not in done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("tablet-agent: error: ")]


OfflineAgent = Callable[..., AgentProcess]


def test_a_bad_compression_engine_is_refused_at_start(offline_agent: OfflineAgent) -> None:
    agent = offline_agent(extra=["--compression-engine-name", "zst"])
    (line,) = error_lines(start_refused(agent))
    assert "compression: unknown compression engine 'zst': use one of external, lz4, none" in line
    assert "; fix: set a valid --compression-engine-name" in line


def test_an_unwritable_storage_root_is_refused_at_start(
    offline_agent: OfflineAgent, storage_root: Path
) -> None:
    agent = offline_agent()
    with read_only(storage_root):
        (line,) = error_lines(start_refused(agent))
    assert f"storage: cannot create a probe backup in file:{storage_root} (ks/0)" in line
    assert "fix: give the agent's user write access to --file_backup_storage_root" in line
    assert list(storage_root.iterdir()) == []


def test_a_missing_xtrabackup_is_refused_at_start(offline_agent: OfflineAgent, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    agent = offline_agent(extra=XTRA, env={"PATH": str(empty)})
    (line,) = error_lines(start_refused(agent))
    assert (
        'xtrabackup: unable to start backup: exec: "xtrabackup": executable file not found in $PATH' in line
    )
    assert "fix: install xtrabackup (or MariaDB's mariabackup) on the agent's PATH" in line


def test_an_unresolvable_start_command_is_refused_at_start(offline_agent: OfflineAgent) -> None:
    agent = offline_agent(extra=["--mysqld_start_command", "systemctl-typo start mariadb@tab1.service"])
    (line,) = error_lines(start_refused(agent))
    assert (
        "mysqld start command: 'systemctl-typo' of --mysqld_start_command is not on the agent's PATH" in line
    )
    assert "fix: install it, give its full path, or correct --mysqld_start_command" in line


def test_a_busy_grpc_port_is_one_line_and_exit_2(offline_agent: OfflineAgent) -> None:
    agent = offline_agent()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", agent.port))
        busy.listen()
        stderr = start_refused(agent)
    (line,) = error_lines(stderr)
    assert f"grpc port: cannot listen on 127.0.0.1:{agent.port}: the port is in use" in line
    assert "choose another --grpc_port" in line
    assert len([ln for ln in stderr.splitlines() if ln.strip()]) <= 2  # that line (and its JSON log line)


# --- tabletctl check --------------------------------------------------------------------------------------


def tabletctl_check(agent: AgentProcess, *args: str) -> tuple[int, list[str]]:
    """Exit code and output lines of `tabletctl check`."""
    done = subprocess.run(
        [sys.executable, "-m", "agent.ctl.main", "--server", agent.address, "check", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout.splitlines()


def named(lines: Sequence[str], name: str) -> str:
    found = [ln for ln in lines if ln.split(None, 1)[1].startswith(f"{name}:")]
    assert len(found) == 1, (name, lines)
    return found[0]


def test_check_on_a_correct_replica_is_all_ok(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root: Path
) -> None:
    agent = agent_factory(replica, extra=XTRA)
    backup(agent)  # something for the restore-space check to size
    assert len(complete_backups(storage_root)) == 1
    code, lines = tabletctl_check(agent)
    assert code == 0, lines
    assert lines and all(ln.startswith("OK ") for ln in lines), lines
    names = [ln.split(None, 1)[1].split(":", 1)[0] for ln in lines]
    for name in ("compression", "mysqld start command", "state directory", "xtrabackup settings", "xtrabackup",
                 "xbstream", "storage", "mysqld", "xtrabackup user", "xtrabackup grants", "binary log",
                 "gtid_strict_mode", "log_slave_updates", "binlog_format", "restore space"):  # fmt: skip
        assert name in names, (name, lines)
    assert "a staged restore of" in named(lines, "restore space")
    assert (
        "root@localhost holds RELOAD, PROCESS, BINLOG MONITOR, SLAVE MONITOR, REPLICATION SLAVE ADMIN"
        in named(lines, "xtrabackup grants")
    )
    assert len(complete_backups(storage_root)) == 1 and len(list((storage_root / "ks" / "0").iterdir())) == 1


def test_check_finds_a_missing_grant_and_storage_that_became_unwritable(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root: Path
) -> None:
    primary.sql("CREATE USER 'xb'@'localhost' IDENTIFIED BY 'xb-secret'")
    primary.sql("GRANT RELOAD, PROCESS, BINLOG MONITOR ON *.* TO 'xb'@'localhost'")  # no replica grants
    replica.wait_for_gtid(primary.gtid_binlog_pos())
    extra = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "xb"]
    agent = agent_factory(replica, extra=extra, env={"TABLET_AGENT_XTRABACKUP_PASSWORD": "xb-secret"})
    assert "xb@localhost lacks SLAVE MONITOR, REPLICATION SLAVE ADMIN" in agent.log()  # warned at start

    code, lines = tabletctl_check(agent)
    assert code == 1, lines
    grants = named(lines, "xtrabackup grants")
    assert grants.startswith(
        "FAIL xtrabackup grants: xb@localhost lacks SLAVE MONITOR, REPLICATION SLAVE ADMIN"
    )
    assert "fix: `GRANT SLAVE MONITOR, REPLICATION SLAVE ADMIN ON *.* TO 'xb'@'localhost'`" in grants
    assert named(lines, "xtrabackup user").startswith("OK ")
    assert named(lines, "storage").startswith("OK ")
    assert [ln for ln in lines if ln.startswith("FAIL")] == [grants]
    assert "xb-secret" not in "\n".join(lines) + agent.log()

    primary.sql("GRANT SLAVE MONITOR, REPLICATION SLAVE ADMIN ON *.* TO 'xb'@'localhost'")
    replica.wait_for_gtid(primary.gtid_binlog_pos())
    with read_only(storage_root):
        code, lines = tabletctl_check(agent)
    assert code == 1, lines
    storage = named(lines, "storage")
    assert storage.startswith(f"FAIL storage: cannot create a probe backup in file:{storage_root} (ks/0)")
    assert "fix: give the agent's user write access" in storage
    assert named(lines, "xtrabackup grants").startswith("OK ")
    assert [ln for ln in lines if ln.startswith("FAIL")] == [storage]


def test_check_finds_binary_logging_off(sandbox_factory: SandboxFactory, agent_factory: AgentFactory) -> None:
    nolog = sandbox_factory(extra_options=["skip-log-bin"])
    agent = agent_factory(nolog)
    code, lines = tabletctl_check(agent)
    assert code == 1, lines
    line = named(lines, "binary log")
    assert line.startswith("FAIL binary log: log_bin is OFF: incremental backups")
    assert "fix: set log_bin" in line and "restart mysqld" in line
    assert [ln for ln in lines if ln.startswith("FAIL")] == [line]
    code, _ = tabletctl_check(agent, "--json")
    assert code == 1
