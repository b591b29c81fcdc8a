"""A throw-away mysqld on a restored data directory, to prove a backup starts and reads (deep
verification): the tablet's option file with every path pointed into a private directory, no network
(a private socket only), no grant tables, no replication, and removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from agent.aio.procs import Process, describe_exit, spawn
from agent.aio.tasks import in_thread
from agent.errors import AgentError
from agent.mysql.client import Credentials, MysqlClient
from agent.mysql.mycnf import MyCnf
from agent.mysql.mysqld import find_program

SERVER = ("mariadbd", "mysqld")
SERVER_ID = 4_294_967_001  # far from the server ids fleets use
START_TIMEOUT = 300.0  # crash recovery of a big restored datadir takes a while
SYSTEM_SCHEMAS = ("information_schema", "performance_schema", "sys")
FINE = ("OK", "TABLE IS ALREADY UP TO DATE")


@dataclass(frozen=True)
class ScratchDirs:
    datadir: Path
    innodb_data_home_dir: Path
    innodb_log_group_home_dir: Path
    innodb_undo_directory: Path
    binlog_base: Path  # binlog files are `<base>.000001`, the GTID state `<base>.state`


def options_text(tablet_cnf: MyCnf, dirs: ScratchDirs, root: Path, sock: Path) -> str:
    lines = [
        f"!include {tablet_cnf.path}",
        "[mysqld]",
        f"user={pwd.getpwuid(os.getuid()).pw_name}",
        f"datadir={dirs.datadir}",
        f"innodb_data_home_dir={dirs.innodb_data_home_dir}",
        f"innodb_log_group_home_dir={dirs.innodb_log_group_home_dir}",
        f"innodb_undo_directory={dirs.innodb_undo_directory}",
        f"log_bin={dirs.binlog_base}",
        f"log_bin_index={dirs.binlog_base}.index",
        f"relay_log={root / 'relay'}",
        f"socket={sock}",
        f"pid-file={root / 'mysqld.pid'}",
        f"log-error={root / 'error.log'}",
        f"tmpdir={root / 'tmp'}",
        f"server_id={SERVER_ID}",
        "skip-networking",
        "skip-grant-tables",
        "skip-slave-start",
        "event_scheduler=OFF",
        "general_log=0",
        "slow_query_log=0",
        "performance_schema=OFF",
        "innodb_buffer_pool_size=64M",
    ]
    return "".join(f"{line}\n" for line in lines)


def _error_log_tail(root: Path, lines: int = 10) -> str:
    try:
        return " | ".join((root / "error.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no error log)"


@contextlib.asynccontextmanager
async def scratch_mysqld(tablet_cnf: MyCnf, dirs: ScratchDirs, root: Path) -> AsyncIterator[MysqlClient]:
    """Run a mysqld on `dirs` for the duration of the block; a client for it (as root, over its socket)."""
    server = find_program(SERVER, "deep verification needs mariadbd (or mysqld): install the server")
    sock_dir = Path(await in_thread(tempfile.mkdtemp, "", "tablet-agent-verify-"))
    sock = sock_dir / "mysqld.sock"  # short: a socket path has at most 107 bytes
    cnf = root / "scratch.cnf"
    try:
        await in_thread(cnf.write_text, options_text(tablet_cnf, dirs, root, sock))
        await in_thread(lambda: (root / "tmp").mkdir(mode=0o700, exist_ok=True))
        client = MysqlClient(Credentials(user="root", socket=sock))
        async with spawn([server, f"--defaults-file={cnf}"], check=False) as proc:
            try:
                await _wait_ready(client, proc, root)
                yield client
            finally:
                await _shutdown(client, proc)
    finally:
        await in_thread(shutil.rmtree, sock_dir, True)
        await in_thread(cnf.unlink, True)


async def _wait_ready(client: MysqlClient, proc: Process, root: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise AgentError(
                f"the restored data does not start a mysqld ({describe_exit(proc.returncode)}): "
                f"{_error_log_tail(root)}"
            )
        if await client.ping():
            return
        await asyncio.sleep(0.1)
    raise AgentError(f"the scratch mysqld did not answer within {START_TIMEOUT:g}s: {_error_log_tail(root)}")


async def _shutdown(client: MysqlClient, proc: Process) -> None:
    with contextlib.suppress(AgentError):
        await client.execute("SHUTDOWN")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(60):
            await proc.wait(check=False)
    await proc.shutdown()


async def check_tables(client: MysqlClient) -> list[str]:
    """`CHECK TABLE` of every table; the problems found (`db.t: message`)."""
    rows = await client.query(
        "SELECT TABLE_SCHEMA AS db, TABLE_NAME AS name FROM information_schema.TABLES "
        f"WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ({', '.join(['%s'] * len(SYSTEM_SCHEMAS))})",
        SYSTEM_SCHEMAS,
    )
    problems = []
    async with client.connection() as session:
        for row in rows:
            table = ".".join(f"`{str(part).replace('`', '``')}`" for part in (row["db"], row["name"]))
            for result in await session.query(f"CHECK TABLE {table}"):
                kind, text = str(result.get("Msg_type", "")), str(result.get("Msg_text", ""))
                if kind.lower() == "error" or (kind.lower() == "status" and text.upper() not in FINE):
                    problems.append(f"{row['db']}.{row['name']}: {text}")
    return problems
