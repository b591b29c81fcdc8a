"""Throw-away MariaDB instances for tests: own option file, datadir, socket and port on 127.0.0.1.

Never the host's system MariaDB: every tool gets `--defaults-file` of the sandbox (as its first option).
`mariadb-install-db` runs once per session (`init`); each sandbox copies that template datadir
(`init_from`), which is much faster. Everything here is synchronous (pymysql), for fixtures and asserts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pymysql
import pytest

REPL_USER = "repl"
REPL_PASSWORD = "repl-secret"
# Files of one server instance that a copied datadir must not carry over.
INSTANCE_FILES = ("auto.cnf", "master.info", "relay-log.info", "multi-master.info")


def find_program(name: str) -> str | None:
    """A MariaDB program on PATH or in /usr/sbin (mariadbd lives there, often outside PATH)."""
    found = shutil.which(name)
    if found is None and Path("/usr/sbin", name).is_file():
        found = f"/usr/sbin/{name}"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_state(pid: int) -> tuple[str, str] | None:
    """(command name, state letter) of a live process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    close = stat.rindex(")")
    return stat[stat.index("(") + 1 : close], stat[close + 2]


def is_alive(pid: int) -> bool:
    state = process_state(pid)
    return state is not None and state[1] != "Z"


class Sandbox:
    """One mariadbd under `root`: `root/my.cnf`, `root/data`, `root/mysqld.sock`, `root/binlog.*`."""

    def __init__(
        self, root: Path, server_id: int = 1, extra_options: Sequence[str] = (), port: int | None = None
    ) -> None:
        self.root = root
        self.server_id = server_id
        self.port = port or free_port()
        self.cnf = root / "my.cnf"
        self.datadir = root / "data"
        self.socket = root / "mysqld.sock"
        self.pid_file = root / "mysqld.pid"
        self.error_log = root / "error.log"
        self.binlog = root / "binlog"
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        self.cnf.write_text(self._option_file(extra_options))

    def __repr__(self) -> str:
        return f"Sandbox({self.root}, server_id={self.server_id}, port={self.port})"

    def _option_file(self, extra_options: Sequence[str]) -> str:
        mysqld = [
            "user=root",
            f"datadir={self.datadir}",
            f"socket={self.socket}",
            f"pid-file={self.pid_file}",
            f"log-error={self.error_log}",
            f"tmpdir={self.root / 'tmp'}",  # private: concurrent bootstraps clash on temporary tables in /tmp
            f"port={self.port}",
            "bind-address=127.0.0.1",
            f"server_id={self.server_id}",
            f"log_bin={self.binlog}",
            f"log_bin_index={self.binlog}.index",
            "binlog_format=ROW",
            "gtid_strict_mode=ON",
            "log_slave_updates=ON",
            "gtid_domain_id=0",
            "innodb_buffer_pool_size=64M",
            "innodb_log_file_size=8M",
            "innodb_flush_log_at_trx_commit=2",
            "sync_binlog=0",
            "skip-name-resolve",
            "performance_schema=OFF",
            *extra_options,
        ]
        client = [f"socket={self.socket}", f"port={self.port}", "user=root"]
        return "".join(
            f"[{group}]\n" + "".join(f"{line}\n" for line in lines) + "\n"
            for group, lines in (("mysqld", mysqld), ("client", client), ("mariabackup", client))
        )

    # lifecycle

    def init(self) -> None:
        """Create the datadir with mariadb-install-db (about a second)."""
        program = find_program("mariadb-install-db")
        assert program is not None, "mariadb-install-db is not installed"
        done = subprocess.run(
            [
                program,
                f"--defaults-file={self.cnf}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"mariadb-install-db failed: {done.stderr[-3000:]}"

    def init_from(self, template: Path) -> None:
        """Copy an initialized (stopped) datadir, without the files that identify an instance."""
        shutil.copytree(template, self.datadir)
        for name in INSTANCE_FILES:
            (self.datadir / name).unlink(missing_ok=True)
        for pid_file in self.datadir.glob("*.pid"):
            pid_file.unlink()

    def start(self, timeout: float = 60.0) -> None:
        """Start mariadbd in its own session and wait until it answers on the socket."""
        program = find_program("mariadbd")
        assert program is not None, "mariadbd is not installed"
        self.process = subprocess.Popen(
            [program, f"--defaults-file={self.cnf}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self.is_answering():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self} exited with {self.process.returncode}:\n{self.error_log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self} did not answer within {timeout}s:\n{self.error_log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> None:
        """Clean shutdown (SIGTERM) of whoever runs this sandbox; SIGKILL of its group if it hangs."""
        pid = self.pid()
        if pid is None and self.process is not None and self.process.poll() is None:
            pid = self.process.pid
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while is_alive(pid) and time.monotonic() < deadline:
                if self.process is not None and self.process.pid == pid:
                    self.process.poll()  # reap our own child
                time.sleep(0.02)
            if is_alive(pid):
                self.kill()
                raise RuntimeError(f"{self} did not stop within {timeout}s: killed")
        if self.process is not None:
            self.process.wait(timeout=10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL the sandbox's process group (mariadbd leads its own session), if it is still ours."""
        for pid in {self.pid(), self.process.pid if self.process else None}:
            state = process_state(pid) if pid else None
            if pid and state and state[0] == "mariadbd":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)
            self.process = None

    def destroy(self) -> None:
        """Stop it (kill as a last resort) and delete its data; the option file and error log stay."""
        try:
            self.stop()
        finally:
            self.kill()
        shutil.rmtree(self.datadir, ignore_errors=True)
        for path in self.root.glob("binlog.*"):
            path.unlink()

    def pid(self) -> int | None:
        """The live mariadbd from the pid file, whoever started it."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_alive(pid) else None

    def is_answering(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            self.connect(timeout=2).close()
        except pymysql.err.MySQLError:
            return False
        return True

    def error_log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no error log: {e})"

    # SQL

    def connect(self, timeout: float = 10.0, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            password="",
            database=database,
            autocommit=True,
            connect_timeout=timeout,
        )

    @contextlib.contextmanager
    def session(self, database: str | None = None) -> Iterator[pymysql.cursors.Cursor]:
        """A cursor of one connection, for statements that share session state."""
        conn = self.connect(database=database)
        try:
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def sql(self, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
        with self.session() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall())

    def value(self, statement: str, args: Any = None) -> Any:
        rows = self.sql(statement, args)
        return rows[0][0] if rows else None

    def gtid_binlog_pos(self) -> str:
        return str(self.value("SELECT @@GLOBAL.gtid_binlog_pos"))

    def write_rows(self, count: int = 10, table: str = "t", database: str = "test") -> str:
        """Insert `count` rows into `database.table` (created if needed); returns @@gtid_binlog_pos."""
        with self.session() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            cur.execute(f"USE `{database}`")
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS `{table}` (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64))"
            )
            cur.execute(f"INSERT INTO `{table}` (v) SELECT CONCAT('row-', seq) FROM seq_1_to_{int(count)}")
        return self.gtid_binlog_pos()

    def purge_binlogs_to(self, name: str, timeout: float = 30.0) -> None:
        """PURGE BINARY LOGS TO `name`, retried: MariaDB keeps a file until its binlog checkpoint moves on."""
        deadline = time.monotonic() + timeout
        while True:
            self.sql("PURGE BINARY LOGS TO %s", (name,))
            if self.sql("SHOW BINARY LOGS")[0][0] == name:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self} still has binlogs before {name}: {self.sql('SHOW BINARY LOGS')}")
            time.sleep(0.05)

    # replication

    def make_replica_of(self, primary: Sandbox, start: bool = True) -> None:
        """Replicate from `primary` with GTIDs (slave_pos), retrying a lost source every second."""
        with primary.session() as cur:
            cur.execute("SET sql_log_bin = 0")
            cur.execute(
                f"CREATE USER IF NOT EXISTS '{REPL_USER}'@'127.0.0.1' IDENTIFIED BY '{REPL_PASSWORD}'"
            )
            cur.execute(f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'127.0.0.1'")
        self.sql(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s, "
            "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            (primary.port, REPL_USER, REPL_PASSWORD),
        )
        if start:
            self.sql("START SLAVE")

    def replica_status(self) -> dict[str, Any]:
        with self.session() as cur:
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
            return dict(zip([d[0] for d in cur.description], row, strict=True)) if row else {}

    def wait_for_gtid(self, pos: str, timeout: float = 30.0) -> None:
        """Block until this replica has applied `pos` (MASTER_GTID_WAIT)."""
        if self.value("SELECT MASTER_GTID_WAIT(%s, %s)", (pos, timeout)) != 0:
            status = self.replica_status()
            raise TimeoutError(
                f"{self} did not reach {pos} within {timeout}s: at {self.value('SELECT @@gtid_slave_pos')}, "
                f"IO error {status.get('Last_IO_Error')!r}, SQL error {status.get('Last_SQL_Error')!r}"
            )

    def wait_replicating(self, timeout: float = 30.0) -> None:
        """Block until both replication threads run and the IO thread is connected."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.replica_status()
            if status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self} is not replicating after {timeout}s: {status}")
            time.sleep(0.05)


class SandboxFactory:
    """Creates sandboxes from the session's template datadir; `cleanup` stops and deletes them all."""

    def __init__(self, template: Path, tmp: pytest.TempPathFactory) -> None:
        self._template = template
        self._tmp = tmp
        self.created: list[Sandbox] = []

    def __call__(self, start: bool = True, extra_options: Sequence[str] = ()) -> Sandbox:
        sandbox = Sandbox(
            self._tmp.mktemp("sb"), server_id=len(self.created) + 1, extra_options=extra_options
        )
        self.created.append(sandbox)
        sandbox.init_from(self._template)
        if start:
            sandbox.start()
        return sandbox

    def cleanup(self) -> None:
        errors: list[BaseException] = []
        for sandbox in reversed(self.created):
            try:
                sandbox.destroy()
            except Exception as e:  # keep going: every sandbox must be stopped
                errors.append(e)
        if errors:
            raise errors[0]
