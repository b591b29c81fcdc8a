"""The tablet's mysqld process: start it detached, wait until it answers, shut it down cleanly, identify it.

The default start runs `mariadbd`/`mysqld --defaults-file=<mycnf>` in its own session with stdio on
/dev/null, so it outlives the agent; while the agent lives, a daemon thread reaps it (no zombies).
Under systemd, give the agent's unit `KillMode=process` (or use a `start_command` such as
`systemctl start mariadb`), or stopping the agent would kill the mysqld it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.aio.procs import describe_exit, format_argv
from agent.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from agent.mysql.client import MysqlClient, MysqlSession, QueryError
from agent.mysql.gtid import Flavor
from agent.mysql.mycnf import MyCnf

POLL_INTERVAL = 0.15
ERROR_LOG_LINES = 20
SERVER_PROGRAMS = ("mariadbd", "mysqld")
SBIN = Path("/usr/sbin")
READ_ONLY_ENV = "TABLET_AGENT_MYSQLD_READ_ONLY"


@dataclass(frozen=True)
class ServerInfo:
    flavor: Flavor
    version: str
    version_comment: str
    server_uuid: str  # MariaDB: @@server_uid (a base64 hash), "" where absent
    server_id: int

    @property
    def vitess_version(self) -> str:
        """The version as Vitess's version query prints it (`Ver <version> <comment>`), which is how its
        MANIFESTs record `MySQLVersion` and what it parses with `Ver ([0-9]+)\\.([0-9]+)\\.([0-9]+)`."""
        return f"Ver {self.version} {self.version_comment}".rstrip()


class Mysqld:
    """Lifecycle of the mysqld described by `mycnf`, reached through `client`."""

    def __init__(self, mycnf: MyCnf, client: MysqlClient, start_command: str | None = None) -> None:
        self.mycnf = mycnf
        self.client = client
        self.start_command = start_command

    async def is_running(self) -> bool:
        """Whether mysqld answers on its socket/port."""
        return await self.client.ping()

    async def start(self, timeout: float, read_only: bool = False) -> None:
        """Start mysqld unless it already answers, and wait until it does. A mysqld whose process
        is alive but does not answer yet (crash recovery) is waited for, not started twice.

        `read_only`: the server must not take a write before the caller has decided (a restore not yet
        settled): mysqld started by the agent gets `--read-only --skip-slave-start`; one started by
        `--mysqld_start_command` is made read-only as soon as it answers (the command sees
        `TABLET_AGENT_MYSQLD_READ_ONLY=1` in its environment, for wrappers that can pass it on)."""
        if await self.is_running():
            if read_only:
                await self._force_read_only()
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Alive but silent: still starting (crash recovery) or still shutting down. Wait for either.
        while self.pid() is not None:
            if await self.is_running():
                return
            if loop.time() >= deadline:
                raise DeadlineExceeded(
                    f"mysqld (pid {self.pid()}) neither answered nor exited within {timeout:g}s; "
                    f"see its error log {self.mycnf.log_error}"
                )
            await asyncio.sleep(POLL_INTERVAL)
        if self.start_command:
            await self._run_start_command(self.start_command, timeout, read_only)
            await self._wait_ready(deadline, None)
        else:
            await self._wait_ready(deadline, self._spawn_detached(read_only))
        if read_only:
            await self._force_read_only()

    async def _force_read_only(self) -> None:
        async with self.client.connection() as s:
            await s.execute("SET GLOBAL read_only = 1")

    async def wait_ready(self, timeout: float) -> None:
        """Poll until mysqld answers; DeadlineExceeded after `timeout` seconds."""
        await self._wait_ready(asyncio.get_running_loop().time() + timeout, None)

    async def shutdown(self, timeout: float, slow: bool = False) -> None:
        """Shut mysqld down with SQL `SHUTDOWN` (slow: innodb_fast_shutdown=0 first) and wait until its
        process is gone. On timeout raise DeadlineExceeded and leave it running: the caller decides.
        A mysqld that is already down is fine."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pid = self.pid() or self._socket_peer_pid()
        if await self.is_running():
            await self._send_shutdown(slow)
        while (pid is not None and _alive(pid)) or await self.client.ping():
            if loop.time() >= deadline:
                still = f"pid {pid} still running" if pid is not None else "it still answers"
                raise DeadlineExceeded(
                    f"mysqld did not shut down within {timeout:g}s ({still}); it was not killed: "
                    f"wait longer (--mysql_shutdown_timeout) and see its error log {self.mycnf.log_error}"
                )
            await asyncio.sleep(POLL_INTERVAL)

    async def server_info(self, session: MysqlSession | None = None) -> ServerInfo:
        """Flavor, version and identity of the running server (on `session` if given)."""
        if session is None:
            async with self.client.connection() as own:
                return await self._server_info(own)
        return await self._server_info(session)

    async def _server_info(self, s: MysqlSession) -> ServerInfo:
        row = await s.query_one(
            "SELECT VERSION() AS version, @@version_comment AS comment, @@server_id AS server_id"
        )
        if row is None:
            raise Unavailable(f"mysqld at {self.client.credentials.address} returned no version")
        version = str(row["version"])
        flavor = Flavor.MARIADB if "mariadb" in version.lower() else Flavor.MYSQL56
        variable = "@@server_uid" if flavor is Flavor.MARIADB else "@@server_uuid"
        try:
            uuid_row = await s.query_one(f"SELECT {variable} AS uuid")
        except QueryError:  # a server without the variable
            uuid_row = None
        return ServerInfo(
            flavor=flavor,
            version=version,
            version_comment=str(row["comment"] or ""),
            server_uuid=str(uuid_row["uuid"] or "") if uuid_row else "",
            server_id=int(row["server_id"]),
        )

    def pid(self) -> int | None:
        """The pid in the pid file if that process is alive and a mysqld (not a zombie, not a reused pid)."""
        try:
            pid = int(self.mycnf.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    async def _wait_ready(self, deadline: float, proc: subprocess.Popen[bytes] | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(deadline - loop.time(), POLL_INTERVAL)):
                    if await self.client.ping():
                        return
            if proc is not None and proc.returncode is not None:
                raise Unavailable(
                    f"mysqld {describe_exit(proc.returncode)} before it answered at "
                    f"{self.client.credentials.address}; {self._error_log_tail()}"
                )
            if loop.time() >= deadline:
                raise DeadlineExceeded(
                    f"mysqld did not answer at {self.client.credentials.address} in time: it may still "
                    f"be starting (crash recovery); see its error log {self.mycnf.log_error}"
                )
            await asyncio.sleep(POLL_INTERVAL)

    def _spawn_detached(self, read_only: bool) -> subprocess.Popen[bytes]:
        argv = [self._server_program(), f"--defaults-file={self.mycnf.path}"]
        if read_only:
            argv += ["--read-only", "--skip-slave-start"]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                cwd="/",
            )
        except OSError as e:
            raise FailedPrecondition(f"cannot start mysqld ({shlex.join(argv)}): {e}") from None
        threading.Thread(target=proc.wait, name=f"reap-mysqld-{proc.pid}", daemon=True).start()
        return proc

    def _server_program(self) -> str:
        return find_program(
            SERVER_PROGRAMS,
            "cannot start mysqld: neither mariadbd nor mysqld is on PATH or in /usr/sbin: "
            "install the server or set --mysqld_start_command",
        )

    async def _run_start_command(self, command: str, timeout: float, read_only: bool) -> None:
        """Run the configured command to completion. Its output goes to a file, not a pipe: the
        server it starts may inherit the descriptors and keep a pipe open forever."""
        argv = shlex.split(command)
        shown = f"--mysqld_start_command `{format_argv(argv)}`"
        with tempfile.TemporaryFile() as out:
            try:
                env = {**os.environ, READ_ONLY_ENV: "1" if read_only else "0"}
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
                )
            except OSError as e:
                raise FailedPrecondition(f"{shown}: {e}") from None
            try:
                async with asyncio.timeout(timeout):
                    rc = await proc.wait()
            except TimeoutError:
                raise DeadlineExceeded(f"{shown} did not finish within {timeout:g}s") from None
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await asyncio.shield(proc.wait())
            if rc != 0:
                out.seek(0)
                tail = out.read()[-4000:].decode(errors="replace").strip()
                raise Unavailable(f"{shown} {describe_exit(rc)}: {tail}")

    async def _send_shutdown(self, slow: bool) -> None:
        try:
            async with self.client.connection() as s:
                if slow:
                    await s.execute("SET GLOBAL innodb_fast_shutdown = 0")
                with contextlib.suppress(Unavailable):  # the server may drop us as it goes down
                    await s.execute("SHUTDOWN")
        except Unavailable:
            if await self.client.ping():
                raise  # it answers but refuses us: it cannot be shut down with these credentials

    def _socket_peer_pid(self) -> int | None:
        """The pid of whoever listens on the socket (SO_PEERCRED), when the pid file is missing."""
        path = self.client.credentials.socket or self.mycnf.socket
        if path is None:
            return None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(path))
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        except OSError:
            return None
        pid = int.from_bytes(creds[:4], "little")
        return pid or None

    def _error_log_tail(self) -> str:
        log = self.mycnf.log_error
        if log is None:
            return f"it has no log_error: set one in {self.mycnf.path} to see why it stopped"
        try:
            with log.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
                lines = f.read().decode(errors="replace").splitlines()[-ERROR_LOG_LINES:]
        except OSError as e:
            return f"its error log {log} cannot be read: {e}"
        return f"last lines of its error log {log}:\n" + "\n".join(lines)


def find_program(names: Sequence[str], missing: str) -> str:
    """The first of `names` found on PATH, else in /usr/sbin (servers live there); FailedPrecondition
    with the `missing` message otherwise."""
    for name in names:
        if found := shutil.which(name):
            return found
    for name in names:
        if (SBIN / name).is_file():
            return str(SBIN / name)
    raise FailedPrecondition(missing)


def _alive(pid: int) -> bool:
    """Whether pid is a live mysqld/mariadbd (a zombie counts as gone, a reused pid as not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :][:1]
    return state != "Z" and name.startswith(SERVER_PROGRAMS)
