"""Mysqld lifecycle and MysqlClient against real MariaDB sandboxes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from agent.errors import DeadlineExceeded, Unavailable
from agent.mysql.client import Credentials, MysqlClient, QueryError, credentials_from
from agent.mysql.gtid import Flavor
from agent.mysql.mycnf import read_mycnf
from agent.mysql.mysqld import Mysqld
from tests.sandbox import Sandbox, SandboxFactory, find_program, is_alive

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def mysqld_for(sandbox: Sandbox, start_command: str | None = None) -> Mysqld:
    mycnf = read_mycnf(sandbox.cnf)
    return Mysqld(mycnf, MysqlClient(credentials_from(mycnf, None, {})), start_command)


def wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while is_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.05)


async def test_mycnf_agrees_with_the_running_server(primary: Sandbox) -> None:
    mycnf = read_mycnf(primary.cnf)
    row = primary.sql(
        "SELECT @@datadir, @@socket, @@port, @@pid_file, @@log_error, @@log_bin_basename, @@log_bin_index, "
        "@@server_id"
    )[0]
    assert row == (
        f"{mycnf.datadir}/",
        str(mycnf.socket),
        mycnf.port,
        str(mycnf.pid_file),
        str(mycnf.log_error),
        str(mycnf.log_bin),
        str(mycnf.log_bin_index),
        mycnf.server_id,
    )


async def test_start_wait_info_and_shutdown(sandbox_factory: SandboxFactory) -> None:
    sandbox = sandbox_factory(start=False)
    mysqld = mysqld_for(sandbox)
    assert not await mysqld.is_running()
    assert mysqld.pid() is None

    await mysqld.start(timeout=60)
    assert await mysqld.is_running()
    pid = mysqld.pid()
    assert pid is not None and pid == sandbox.pid()
    assert os.getsid(pid) == pid  # its own session: no terminal signal of ours reaches it
    info = await mysqld.server_info()
    assert info.flavor is Flavor.MARIADB
    assert "MariaDB" in info.version and info.version.startswith("10.")
    assert info.server_id == sandbox.server_id
    assert info.server_uuid  # MariaDB's @@server_uid

    await mysqld.shutdown(timeout=60)
    assert not is_alive(pid)
    assert not await mysqld.is_running()
    assert mysqld.pid() is None
    assert "Shutdown complete" in sandbox.error_log_tail()
    await mysqld.shutdown(timeout=5)  # already down: fine


def test_pid_ignores_a_stale_pid_file_whose_pid_was_reused(sandbox_factory: SandboxFactory) -> None:
    sandbox = sandbox_factory(start=False)
    sandbox.pid_file.write_text(f"{os.getpid()}\n")  # alive, but python, not mariadbd
    assert mysqld_for(sandbox).pid() is None
    sandbox.pid_file.write_text("garbage\n")
    assert mysqld_for(sandbox).pid() is None


async def test_start_when_running_is_a_noop(primary: Sandbox) -> None:
    pid = primary.pid()
    mysqld = mysqld_for(primary)
    await mysqld.start(timeout=5)
    assert mysqld.pid() == pid


async def test_start_waits_for_a_live_mysqld_that_does_not_answer_yet(primary: Sandbox) -> None:
    pid = primary.pid()
    assert pid is not None
    mycnf = read_mycnf(primary.cnf)
    mysqld = Mysqld(mycnf, MysqlClient(credentials_from(mycnf, None, {}), connect_timeout=0.3))
    os.kill(pid, signal.SIGSTOP)  # alive, socket open, no answer: like a server in crash recovery
    try:
        with pytest.raises(DeadlineExceeded, match="neither answered nor exited"):
            await mysqld.start(timeout=1)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert await mysqld.is_running()
    assert processes_mentioning(str(primary.cnf)) == [pid]  # no second mariadbd was started


def processes_mentioning(arg: str) -> list[int]:
    """Pids of live processes with `arg` in their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and arg in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


async def test_slow_shutdown_past_its_timeout_raises_and_leaves_mysqld_alone(primary: Sandbox) -> None:
    pid = primary.pid()
    assert pid is not None
    mysqld = mysqld_for(primary)
    with pytest.raises(
        DeadlineExceeded, match=r"mysqld did not shut down within 0.001s .*it was not killed"
    ) as e:
        await mysqld.shutdown(timeout=0.001, slow=True)
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_gone(pid)  # it finishes the shutdown it was asked for, cleanly
    assert "Shutdown complete" in primary.error_log_tail()
    assert primary.process is not None and primary.process.wait(5) == 0  # not killed by a signal


async def test_start_failure_reports_the_error_log(sandbox_factory: SandboxFactory) -> None:
    sandbox = sandbox_factory(start=False, extra_options=["no_such_option=1"])
    mysqld = mysqld_for(sandbox)
    with pytest.raises(
        Unavailable, match=r"(?s)mysqld exited with status \d+ before it answered.*no_such_option"
    ):
        await mysqld.start(timeout=60)


async def test_wait_ready_times_out_naming_the_socket(sandbox_factory: SandboxFactory) -> None:
    sandbox = sandbox_factory(start=False)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=f"did not answer at socket {sandbox.socket}"):
        await mysqld_for(sandbox).wait_ready(timeout=0.3)
    assert time.monotonic() - started < 2


async def test_start_command_runs_and_waits(sandbox_factory: SandboxFactory, tmp_path: Path) -> None:
    sandbox = sandbox_factory(start=False)
    failing = mysqld_for(sandbox, start_command="sh -c 'echo broken >&2; exit 3'")
    with pytest.raises(Unavailable, match="exited with status 3: broken"):
        await failing.start(timeout=10)

    script = tmp_path / "start.sh"
    # Like an init script: it backgrounds the server (which inherits stdout/stderr) and returns.
    script.write_text(
        f"#!/bin/sh\nsetsid {find_program('mariadbd')} --defaults-file={sandbox.cnf} &\necho started\n"
    )
    script.chmod(0o755)
    mysqld = mysqld_for(sandbox, start_command=f"{script} --some 'quoted arg'")
    await mysqld.start(timeout=60)
    assert await mysqld.is_running()


@pytest.mark.parametrize("ending", ["killed", "exits"])
def test_mysqld_outlives_the_process_that_started_it(sandbox_factory: SandboxFactory, ending: str) -> None:
    """SIGKILLed, or exiting normally (event loop closed, interpreter finalized): mysqld keeps running."""
    sandbox = sandbox_factory(start=False)
    child = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from pathlib import Path
        from agent.mysql.client import MysqlClient, credentials_from
        from agent.mysql.mycnf import read_mycnf
        from agent.mysql.mysqld import Mysqld

        cnf = read_mycnf(Path({str(sandbox.cnf)!r}))
        mysqld = Mysqld(cnf, MysqlClient(credentials_from(cnf, None, {{}})))
        asyncio.run(mysqld.start(60))
        print(mysqld.pid(), flush=True)
        if {ending!r} == "killed":
            time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"the child did not start mysqld: {line!r}"
        pid = int(line)
        if ending == "exits":
            assert proc.wait(10) == 0  # the reaper thread does not hold the exit up
    finally:
        proc.kill()
        proc.wait()
    assert pid == sandbox.pid()
    time.sleep(0.3)
    assert is_alive(pid)
    assert sandbox.value("SELECT 1") == 1
    sandbox.stop()  # by pid: it is no child of ours
    assert not is_alive(pid)


async def test_client_queries_sessions_and_errors(primary: Sandbox) -> None:
    mycnf = read_mycnf(primary.cnf)
    client = MysqlClient(credentials_from(mycnf, None, {}))
    assert await client.ping()
    assert await client.query("SELECT 1 AS one, 'x' AS s") == [{"one": 1, "s": "x"}]
    assert await client.query_one("SELECT 1 FROM DUAL WHERE 0") is None
    await client.execute("CREATE DATABASE d")
    await client.execute("CREATE TABLE d.t (id INT PRIMARY KEY)")
    assert await client.execute("INSERT INTO d.t VALUES (%s), (%s)", (1, 2)) == 2

    before = primary.gtid_binlog_pos()
    async with client.connection() as session:
        await session.execute("SET sql_log_bin = 0")
        await session.execute("INSERT INTO d.t VALUES (3)")
        assert (await session.query_one("SELECT @@session.sql_log_bin AS b")) == {"b": 0}
    assert primary.gtid_binlog_pos() == before  # the session setting held for the write
    assert (await client.query_one("SELECT @@session.sql_log_bin AS b")) == {"b": 1}  # a fresh session

    with pytest.raises(
        QueryError, match=r"mysqld refused `SELECT \* FROM d.nope WHERE x = '…'`: \(1146\)"
    ) as e:
        await client.query("SELECT * FROM d.nope WHERE x = 'secret'")
    assert e.value.errno == 1146
    assert "secret" not in str(e.value)


async def test_client_connection_errors_are_unavailable_without_the_password(
    tmp_path: Path, primary: Sandbox
) -> None:
    nowhere = MysqlClient(Credentials(user="root", password="pw-123", socket=tmp_path / "none.sock"))
    assert not await nowhere.ping()
    with pytest.raises(
        Unavailable, match=f"cannot connect to mysqld at socket {tmp_path}/none.sock as 'root'"
    ) as e:
        await nowhere.query("SELECT 1")
    assert "pw-123" not in str(e.value)

    tcp = MysqlClient(Credentials(user="root", host="127.0.0.1", port=1), connect_timeout=2)
    with pytest.raises(Unavailable, match=r"at 127\.0\.0\.1:1 as 'root'"):
        await tcp.execute("SELECT 1")

    wrong = MysqlClient(Credentials(user="root", password="pw-123", host="127.0.0.1", port=primary.port))
    assert await wrong.ping()  # it answers, so it runs, even though it refuses us
    with pytest.raises(Unavailable, match=r"Access denied for user 'root'@'127.0.0.1'") as e:
        await wrong.query("SELECT 1")
    assert "pw-123" not in str(e.value)


async def test_unix_socket_authentication_works_without_a_password(primary: Sandbox) -> None:
    assert os.geteuid() == 0, "unix_socket maps the OS user (root here) to the account of the same name"
    primary.sql("ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket")
    client = MysqlClient(Credentials(user="root", socket=primary.socket))
    assert await client.query_one("SELECT CURRENT_USER() AS u") == {"u": "root@localhost"}


async def test_wait_ready_is_cancellable(sandbox_factory: SandboxFactory) -> None:
    mysqld = mysqld_for(sandbox_factory(start=False))
    task = asyncio.ensure_future(mysqld.wait_ready(timeout=30))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
