"""Binlog headers read from a real MariaDB's files agree with what the server itself reports.

Self-contained: starts a throw-away mariadbd (own datadir, socket, port on 127.0.0.1), writes in two
domains with two server ids, rotates (once with nothing written; one file is finished by a restart), then
compares `read_binlog_header` with ``BINLOG_GTID_POS`` and ``SHOW BINLOG EVENTS`` for every file.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.binlogs.selection import select_binlogs
from agent.mysql.binlog_headers import (
    BinlogHeader,
    parse_binlog_gtid_pos,
    previous_gtids_from_binlog_events,
    read_binlog_header,
)
from agent.mysql.gtid import Flavor, Position, parse_gtid_set

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mariadbd") is None, reason="needs MariaDB (mariadbd) installed"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Sandbox:
    """One mariadbd in its own directory, driven through the CLI tools and one option file."""

    root: Path
    process: subprocess.Popen[bytes] | None = None
    defaults: Path = field(init=False)

    def __post_init__(self) -> None:
        self.defaults = self.root / "my.cnf"
        self.defaults.write_text(
            "[mysqld]\n"
            f"user=root\ndatadir={self.root / 'data'}\nsocket={self.root / 'mysqld.sock'}\n"
            f"pid-file={self.root / 'mysqld.pid'}\nlog-error={self.root / 'error.log'}\n"
            f"port={free_port()}\nbind-address=127.0.0.1\nserver_id=1\nlog_bin={self.root / 'binlog'}\n"
            "binlog_format=ROW\ngtid_strict_mode=ON\ngtid_domain_id=0\ninnodb_buffer_pool_size=64M\n"
            "skip-name-resolve\n"
            f"[client]\nsocket={self.root / 'mysqld.sock'}\nuser=root\n"
        )

    def tool(self, name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [name, f"--defaults-file={self.defaults}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def install(self) -> None:
        done = self.tool("mariadb-install-db", "--auth-root-authentication-method=normal", "--skip-test-db")
        assert done.returncode == 0, done.stderr

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["mariadbd", f"--defaults-file={self.defaults}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while self.tool("mariadb-admin", "ping", timeout=10).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.root / "error.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"mariadbd did not start:\n{log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        self.tool("mariadb-admin", "shutdown")
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def sql(self, statements: str) -> list[list[str]]:
        done = self.tool("mariadb", "-N", "-B", "-e", statements)
        assert done.returncode == 0, done.stderr
        return [line.split("\t") for line in done.stdout.splitlines()]

    def value(self, query: str) -> str:
        return self.sql(query)[0][0]


@dataclass(frozen=True)
class History:
    server: Sandbox
    started: float
    after_first_file: str
    headers: list[BinlogHeader]
    sizes: dict[str, int]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    server = Sandbox(tmp_path_factory.mktemp("mariadb"))
    started = time.time()
    server.install()
    try:
        server.start()
        server.sql(
            "CREATE DATABASE t; CREATE TABLE t.a (i INT PRIMARY KEY) ENGINE=InnoDB;"
            "INSERT INTO t.a VALUES (1); INSERT INTO t.a VALUES (2); FLUSH BINARY LOGS;"
        )
        after_first_file = server.value("SELECT @@gtid_binlog_pos")
        server.sql(
            "SET gtid_domain_id=1; INSERT INTO t.a VALUES (10); INSERT INTO t.a VALUES (11);"
            "FLUSH BINARY LOGS;"
            "SET gtid_domain_id=0, server_id=2; INSERT INTO t.a VALUES (20); FLUSH BINARY LOGS;"
            "FLUSH BINARY LOGS;"
            "INSERT INTO t.a VALUES (30);"
        )
        server.stop()  # finishes binlog.000005 with a Stop event
        server.start()
        server.sql("INSERT INTO t.a VALUES (40)")
        names = [row[0] for row in server.sql("SHOW BINARY LOGS")]
        sizes = {row[0]: int(row[1]) for row in server.sql("SHOW BINARY LOGS")}
        headers = [read_binlog_header(server.root / name) for name in names]
        yield History(server, started, after_first_file, headers, sizes)
    finally:
        server.stop()


def test_files_were_produced(history: History) -> None:
    assert [h.name for h in history.headers] == [f"binlog.{i:06d}" for i in range(1, 7)]


def test_previous_gtids_match_binlog_gtid_pos(history: History) -> None:
    for header in history.headers:
        value = history.server.value(f"SELECT BINLOG_GTID_POS('{header.name}', 4)")
        assert header.previous_gtids == parse_binlog_gtid_pos(value), header.name


def test_previous_gtids_match_show_binlog_events(history: History) -> None:
    for header in history.headers:
        rows = history.server.sql(f"SHOW BINLOG EVENTS IN '{header.name}' LIMIT 3")
        assert header.previous_gtids == previous_gtids_from_binlog_events(rows), header.name


def test_expected_gtid_states(history: History) -> None:
    states = [str(h.previous_gtids) for h in history.headers]
    assert states[0] == ""
    assert states[1] == history.after_first_file == "0-1-4"
    assert states[2:] == ["0-1-4,1-1-2", "0-2-5,1-1-2", "0-2-5,1-1-2", "0-2-6,1-1-2"]


def test_flavor_checksum_size_and_closed_state(history: History) -> None:
    for header in history.headers:
        assert header.flavor is Flavor.MARIADB
        assert header.checksum
        assert header.size == history.sizes[header.name]
    assert [h.closed for h in history.headers] == [True] * 5 + [False]


def test_timestamps(history: History) -> None:
    low, high = int(history.started) - 2, int(time.time()) + 2
    for header in history.headers:
        assert header.first_timestamp is not None
        assert header.last_timestamp is not None
        assert low <= header.first_timestamp <= header.last_timestamp <= high


def test_crc_verification_passes_on_every_real_file(history: History) -> None:
    for header in history.headers:
        assert read_binlog_header(header.path, verify_crc=False) == header


def test_selection_over_real_headers(history: History) -> None:
    closed = [h for h in history.headers if h.closed]
    executed = parse_gtid_set(Flavor.MARIADB, history.server.value("SELECT @@gtid_binlog_pos"))
    requested = Position(Flavor.MARIADB, parse_gtid_set(Flavor.MARIADB, history.after_first_file))
    selection = select_binlogs(closed, parse_gtid_set(Flavor.MARIADB, ""), requested, executed)
    assert selection.files == ("binlog.000002", "binlog.000003", "binlog.000004", "binlog.000005")
    assert str(selection.from_position) == "MariaDB/0-1-4"
    assert str(selection.to_position) == "MariaDB/0-1-7,1-1-2"
