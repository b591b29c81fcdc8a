"""Replay binlog files onto the restored mysqld, up to a GTID position, exactly.

A replay is a list of steps, one per incremental backup of the chain: its files and the position at
which the step ends (the backup's position, or the target for the last step). Each step starts where the
previous one ended; transactions already applied are skipped by GTID.

Two appliers:
- `pipe`: `mariadb-binlog --start-position=<current> --stop-position=<end> files | mariadb`, every step
  into one client session. Simple, one thread of apply.
- `replication`: a throw-away binlog server serves each step's files; the restored mysqld replicates
  from it with `START SLAVE UNTIL master_gtid_pos=<end>` and parallel workers. The servers' system
  datadir is bootstrapped once (`SERVER_TEMPLATE` in the work directory, made early by
  `bootstrap_server` when the restore can) and copied for each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from agent.aio.procs import ProcessError, spawn
from agent.aio.tasks import in_thread
from agent.binlogs.server import (
    INSTALL_DB,
    SERVER,
    SERVER_TOOLS_MISSING,
    binlog_server,
    bootstrap,
    is_bootstrapped,
)
from agent.config import BinlogApplier
from agent.errors import AgentError, DataLoss, FailedPrecondition
from agent.mysql import replication
from agent.mysql.binlog_transactions import read_transactions
from agent.mysql.client import Credentials, MysqlClient
from agent.mysql.gtid import Flavor, MariaDBGTIDSet, Position
from agent.mysql.mysqld import ServerInfo, find_program
from agent.operations import Operation

BINLOG_TOOLS = ("mariadb-binlog", "mysqlbinlog")
CLIENT_TOOLS = ("mariadb", "mysql")
POLL = 0.2
PROGRESS_EVERY = 5.0
SERVER_TEMPLATE = "server-template"  # in the replay's work directory


@dataclass(frozen=True)
class ReplayStep:
    name: str  # the incremental backup
    files: tuple[Path, ...]  # oldest first
    end: Position  # where the step stops (inclusive)


def position_before(files: Iterable[Path], start: Position, target: datetime) -> tuple[Position, bool]:
    """The position after every transaction of `files` (in order) older than `target`, skipping those
    `start` holds: (position, whether a transaction at or after `target` was seen). Binlog timestamps
    have second resolution: a transaction counts as older when its second is before `target`."""
    limit = target.timestamp()
    current = start.gtids
    for path in files:
        for tx in read_transactions(path):
            if current.contains(tx.gtid):
                continue
            if tx.timestamp >= limit:
                return Position(start.flavor, current), True
            current = current.union(tx.gtid)
    return Position(start.flavor, current), False


def own_transactions(files: Iterable[Path], server_id: int) -> bool:
    """True if a MariaDB GTID in `files` was written by `server_id`: replication would skip those as the
    server's own events."""
    for path in files:
        for tx in read_transactions(path):
            if isinstance(tx.gtid, MariaDBGTIDSet) and any(g.server == server_id for g in tx.gtid):
                return True
    return False


class Applier(Protocol):
    name: str

    async def apply(
        self, client: MysqlClient, op: Operation, start: Position, steps: Sequence[ReplayStep], workdir: Path
    ) -> None:
        """Replay `steps` onto the running mysqld, whose GTID position is `start`."""


# --- pipe ---------------------------------------------------------------------------------------------


def binlog_argv(tool: str, current: Position, end: Position, files: Sequence[Path]) -> list[str]:
    """The decoder's command line: transactions after `current` up to `end` (both GTID positions)."""
    argv = [tool, "--no-defaults"]
    if current.flavor is Flavor.MARIADB:
        if not current.is_empty():
            argv.append(f"--start-position={current.gtids}")
        argv.append(f"--stop-position={end.gtids}")
    else:
        if not current.is_empty():
            argv.append(f"--exclude-gtids={current.gtids}")
        argv.append(f"--include-gtids={end.gtids}")
    return argv + [str(f) for f in files]


def _client_options(credentials: Credentials) -> str:
    lines = [f"user={credentials.user}"]
    if credentials.password:
        escaped = credentials.password.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'password="{escaped}"')
    if credentials.uses_socket:
        lines.append(f"socket={credentials.socket}")
    else:
        lines += [f"host={credentials.host or '127.0.0.1'}", f"port={credentials.port}", "protocol=tcp"]
    return "[client]\n" + "".join(f"{line}\n" for line in lines)


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


PIPE_TOOLS_MISSING = "replaying binlogs needs mariadb-binlog (mysqlbinlog) and the mariadb (mysql) client: install mariadb-client"


def check_applier_tools(setting: BinlogApplier) -> None:
    """FailedPrecondition naming the fix when the programs a replay with `setting` runs are missing."""
    if setting is BinlogApplier.REPLICATION:
        find_program(INSTALL_DB, SERVER_TOOLS_MISSING)
        find_program(SERVER, SERVER_TOOLS_MISSING)
        return
    find_program(BINLOG_TOOLS, PIPE_TOOLS_MISSING)  # the pipe is auto's fallback
    find_program(CLIENT_TOOLS, PIPE_TOOLS_MISSING)


class PipeApplier:
    name = "pipe"

    async def apply(
        self, client: MysqlClient, op: Operation, start: Position, steps: Sequence[ReplayStep], workdir: Path
    ) -> None:
        decoder = find_program(BINLOG_TOOLS, PIPE_TOOLS_MISSING)
        mariadb = find_program(CLIENT_TOOLS, PIPE_TOOLS_MISSING)
        options = workdir / "client.cnf"
        await in_thread(_write_private, options, _client_options(client.credentials))
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        read_end, write_end = os.pipe()
        try:
            async with spawn(
                [mariadb, f"--defaults-file={options}", "--batch", "--skip-column-names"],
                stdin=read_end,
                env=env,
                on_stderr_line=op.warning,
            ) as session:
                os.close(read_end)
                read_end = -1
                current = start
                for step in steps:
                    if current.contains(step.end):
                        continue
                    op.info(f"replaying {len(step.files)} binlog file(s) of {step.name} up to {step.end}")
                    try:
                        async with spawn(
                            binlog_argv(decoder, current, step.end, step.files), stdout=write_end, env=env
                        ):
                            pass
                    except ProcessError:
                        if session.returncode not in (None, 0):
                            await session.wait()  # raises the client's error, the real cause
                        raise
                    current = step.end
                os.close(write_end)
                write_end = -1
        finally:
            for fd in (read_end, write_end):
                if fd >= 0:
                    os.close(fd)
            await in_thread(options.unlink, True)


# --- replication --------------------------------------------------------------------------------------


class ReplicationApplier:
    name = "replication"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    async def apply(
        self, client: MysqlClient, op: Operation, start: Position, steps: Sequence[ReplayStep], workdir: Path
    ) -> None:
        saved = await client.query_one(
            "SELECT @@GLOBAL.slave_parallel_threads AS threads, @@GLOBAL.slave_parallel_mode AS mode"
        )
        assert saved is not None
        await _reset_replication(client)
        await client.execute("SET GLOBAL slave_parallel_threads = %s", (self.threads,))
        await client.execute("SET GLOBAL slave_parallel_mode = 'optimistic'")
        template = workdir / SERVER_TEMPLATE
        try:
            current = start
            for i, step in enumerate(steps):
                if current.contains(step.end):
                    continue
                if not await in_thread(is_bootstrapped, template):
                    await bootstrap(template)
                op.info(
                    f"replaying {len(step.files)} binlog file(s) of {step.name} up to {step.end} "
                    f"with {self.threads} parallel workers"
                )
                async with binlog_server(workdir / f"server-{i}", step.files, op, template) as source:
                    await client.execute(
                        "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER=%s, "
                        "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
                        (source.port, source.user, source.password),
                    )
                    await client.execute("START SLAVE UNTIL master_gtid_pos = %s", (str(step.end.gtids),))
                    await _wait_until(client, op, step.end)
                    await _reset_replication(client)
                current = step.end
        finally:
            with contextlib.suppress(AgentError):
                await _reset_replication(client)
            with contextlib.suppress(AgentError):
                await client.execute("SET GLOBAL slave_parallel_threads = %s", (int(saved["threads"]),))
                await client.execute("SET GLOBAL slave_parallel_mode = %s", (str(saved["mode"]),))


async def _reset_replication(client: MysqlClient) -> None:
    await replication.stop_replication(client, Flavor.MARIADB)
    await client.execute("RESET SLAVE ALL")


async def _wait_until(client: MysqlClient, op: Operation, end: Position) -> None:
    """Until the SQL thread has applied `end`; its errors (or the IO thread's, persisting) fail the replay."""
    loop = asyncio.get_running_loop()
    next_report = loop.time() + PROGRESS_EVERY
    io_error_since: float | None = None
    while True:
        status: dict[str, Any] = await client.query_one("SHOW SLAVE STATUS") or {}
        applied = (await replication.replica_position(client)).gtids
        if applied.contains(end.gtids):
            return
        if status.get("Last_SQL_Errno"):
            raise DataLoss(f"replaying binlogs failed at {applied}: {status.get('Last_SQL_Error')}")
        if status.get("Slave_SQL_Running") == "No":
            raise DataLoss(f"the replication applier stopped at {applied} before reaching {end}")
        now = loop.time()
        if status.get("Last_IO_Errno"):
            io_error_since = io_error_since or now
            if now - io_error_since > 30:
                raise AgentError(
                    f"replaying binlogs: cannot read from the binlog server: {status.get('Last_IO_Error')}"
                )
        else:
            io_error_since = None
        if now >= next_report:
            op.info(f"replayed up to {applied}")
            next_report = now + PROGRESS_EVERY
        await asyncio.sleep(POLL)


async def bootstrap_server(setting: BinlogApplier, workdir: Path, op: Operation) -> None:
    """Bootstrap the replication applier's binlog server ahead of the replay (a restore runs this while
    the full backup is restored: install-db waits on fsyncs far more than it computes). Errors are only
    noted: the replay bootstraps again and reports its own."""
    if setting is BinlogApplier.PIPE:
        return
    try:
        await bootstrap(workdir / SERVER_TEMPLATE)
    except AgentError as e:
        op.info(f"bootstrapping the binlog server ahead of the replay failed ({e}); the replay tries again")


# --- choice -------------------------------------------------------------------------------------------


async def choose_applier(
    *,
    setting: BinlogApplier,
    threads: int,
    client: MysqlClient,
    info: ServerInfo,
    op: Operation,
    steps: Sequence[ReplayStep],
) -> Applier:
    """The configured applier; `auto` takes replication when it can work here, else the pipe."""
    if setting is BinlogApplier.PIPE:
        return PipeApplier()
    reasons = []
    if info.flavor is not Flavor.MARIADB:
        reasons.append("the server is not MariaDB")
    files = [f for step in steps for f in step.files]
    row = await client.query_one("SELECT @@GLOBAL.log_bin AS log_bin, @@GLOBAL.log_slave_updates AS updates")
    if row is not None and str(row["log_bin"]) == "1" and str(row["updates"]) == "0":
        reasons.append(
            "log_slave_updates is off: replicated transactions would not reach this server's binlog"
        )
    if await in_thread(own_transactions, files, info.server_id):
        reasons.append(f"the binlogs hold transactions of this server's own server_id {info.server_id}")
    if not reasons:
        return ReplicationApplier(threads)
    if setting is BinlogApplier.REPLICATION:
        raise FailedPrecondition(
            f"--binlog_applier=replication cannot replay these binlogs: {'; '.join(reasons)}; use --binlog_applier=pipe"
        )
    op.info(f"replaying with the pipe applier: {'; '.join(reasons)}")
    return PipeApplier()
