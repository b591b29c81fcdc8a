"""A throw-away MariaDB server whose binary logs are a backup's binlog files, so the restored mysqld can
replicate from it: its own parallel replication applier then replays them, skipping by GTID exactly as
for a real source.

The server has an empty system datadir (`mariadb-install-db`), listens on 127.0.0.1 only, and has one
replication user with a random password; it lives in a private directory that is removed afterwards.
Bootstrapping that datadir takes seconds (install-db's fsyncs, more on a busy host): `bootstrap` makes one
template, early (a restore does it while the full backup is restored), and each server starts from a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.aio.procs import Process, ProcessError, describe_exit, run, spawn
from agent.aio.tasks import in_thread
from agent.errors import AgentError
from agent.mysql.mysqld import find_program
from agent.operations import Operation

INSTALL_DB = ("mariadb-install-db", "mysql_install_db")
SERVER = ("mariadbd", "mysqld")
START_TIMEOUT = 60.0
SERVER_ID = 4_294_967_000  # far from the server ids fleets use
BOOTSTRAPPED = "bootstrapped"  # written into a template once install-db succeeded
USER = "tablet_agent_pitr"
SERVER_TOOLS_MISSING = (
    "the replication applier needs mariadbd and mariadb-install-db: install mariadb-server or use "
    "--binlog_applier=pipe"
)


@dataclass(frozen=True)
class BinlogSource:
    """How the restored mysqld connects to the binlog server."""

    port: int
    user: str
    password: str = field(repr=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _options(root: Path, sock: Path, port: int, binlogs: bool) -> str:
    lines = [
        f"user={pwd.getpwuid(os.getuid()).pw_name}",
        f"datadir={root / 'data'}",
        f"socket={sock}",  # short: a socket path has at most 107 bytes
        f"pid-file={root / 'server.pid'}",
        f"log-error={root / 'error.log'}",
        f"tmpdir={root / 'tmp'}",  # private: concurrent bootstraps clash on temporary tables in /tmp
        f"port={port}",
        "bind-address=127.0.0.1",
        f"server_id={SERVER_ID}",
        "skip-name-resolve",
        "skip-slave-start",
        "performance_schema=OFF",
        "innodb_buffer_pool_size=16M",
        "innodb_log_file_size=8M",  # not the default 96M: the template is copied for every server
        "gtid_strict_mode=OFF",
    ]
    if binlogs:
        lines += [
            f"log_bin={root / 'binlog'}",
            f"log_bin_index={root / 'binlog.index'}",
            f"init-file={root / 'init.sql'}",
        ]
    return "[mysqld]\n" + "".join(f"{line}\n" for line in lines)


def _fresh_root(root: Path, options: str, template: Path | None = None) -> None:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700, parents=True)
    (root / "tmp").mkdir(mode=0o700)
    (root / "my.cnf").write_text(options)
    if template is not None:
        shutil.copytree(template / "data", root / "data")


def is_bootstrapped(template: Path) -> bool:
    return (template / BOOTSTRAPPED).is_file()


async def bootstrap(template: Path) -> None:
    """A server's system datadir in `template/data`, made by install-db, for `binlog_server` to copy."""
    await in_thread(shutil.rmtree, template / BOOTSTRAPPED, True)
    sock_dir = Path(await in_thread(tempfile.mkdtemp, "", "tablet-agent-"))
    try:
        await _install_db(template, sock_dir / "bootstrap.sock")
        await in_thread((template / BOOTSTRAPPED).touch)
    finally:
        await in_thread(shutil.rmtree, sock_dir, True)


async def _install_db(root: Path, sock: Path) -> None:
    install_db = find_program(INSTALL_DB, SERVER_TOOLS_MISSING)
    await in_thread(_fresh_root, root, _options(root, sock, 0, binlogs=False))
    try:
        await run(
            [
                install_db,
                f"--defaults-file={root / 'my.cnf'}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            on_stderr_line=lambda _line: None,
        )
    except ProcessError as e:
        raise AgentError(f"{e}: {_error_log_tail(root)}") from None


def _prepare(root: Path, files: Sequence[Path], password: str, options: str) -> None:
    """Move the binlog files in as binlog.000001.. with their index, write the user's init file, and
    the options that turn binary logging on."""
    names = []
    for i, path in enumerate(files, 1):
        name = root / f"binlog.{i:06d}"
        shutil.move(path, name)
        names.append(f"{name}\n")
    (root / "binlog.index").write_text("".join(names))
    fd = os.open(root / "init.sql", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        # Not binlogged: the server's own transactions must never reach the restored mysqld.
        f.write(
            "SET sql_log_bin = 0;\n"
            f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{password}';\n"
            f"GRANT REPLICATION SLAVE ON *.* TO '{USER}'@'127.0.0.1';\n"
        )
    (root / "my.cnf").write_text(options)


def _error_log_tail(root: Path, lines: int = 8) -> str:
    try:
        return " | ".join((root / "error.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no error log)"


@contextlib.asynccontextmanager
async def binlog_server(
    root: Path, files: Sequence[Path], op: Operation, template: Path | None = None
) -> AsyncIterator[BinlogSource]:
    """Serve `files` (oldest first; they are moved into `root`) for the duration of the block; the
    system datadir is a copy of a bootstrapped `template`, else bootstrapped here."""
    server = find_program(SERVER, SERVER_TOOLS_MISSING)
    port, password = _free_port(), secrets.token_hex(16)
    cnf = root / "my.cnf"
    sock_dir = Path(await in_thread(tempfile.mkdtemp, "", "tablet-agent-"))
    sock = sock_dir / "binlog-server.sock"
    try:
        if template is not None and await in_thread(is_bootstrapped, template):
            await in_thread(_fresh_root, root, _options(root, sock, port, binlogs=False), template)
        else:
            await _install_db(root, sock)
        await in_thread(_prepare, root, files, password, _options(root, sock, port, binlogs=True))
        async with spawn([server, f"--defaults-file={cnf}"], check=False) as proc:
            await _wait_listening(port, proc, root)
            op.info(f"binlog server for {len(files)} file(s) listening on 127.0.0.1:{port}")
            try:
                yield BinlogSource(port, USER, password)
            finally:
                await proc.shutdown()
    finally:
        await in_thread(shutil.rmtree, root, True)
        await in_thread(shutil.rmtree, sock_dir, True)


async def _wait_listening(port: int, proc: Process, root: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise AgentError(
                f"the binlog server exited ({describe_exit(proc.returncode)}): {_error_log_tail(root)}"
            )
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise AgentError(f"the binlog server did not start within {START_TIMEOUT:g}s: {_error_log_tail(root)}")
