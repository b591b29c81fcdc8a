"""The xtrabackup engine end to end: real mariabackup/mbstream, real sandboxes, the agent over gRPC.

Fake `xtrabackup` binaries (tests/fakes) only inject failures the real tool cannot be made to show.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.agent_process import AgentProcess
from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, backup_dirs, complete_backups, manifest, restore, rpc_error
from tests.sandbox import Sandbox, is_alive

pytestmark = pytest.mark.integration

XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]
# Slow the copy down (mariabackup's --throttle) so a test can act while it runs: ~5 s on a fresh sandbox.
SLOW = ["--xtrabackup_backup_flags=--throttle=100"]
FAKES = Path(__file__).resolve().parent.parent / "fakes"
PASSWORD = "xb #pa\"ss\\word' 0f-the-Backup"


# --- helpers ---------------------------------------------------------------------------------------


class Writer:
    """Single-row autocommit INSERTs into test.w from a thread, recording (id, GTID sequence) of each
    commit and the slowest commit."""

    def __init__(self, sandbox: Sandbox) -> None:
        sandbox.sql("CREATE DATABASE IF NOT EXISTS test")
        sandbox.sql("CREATE TABLE IF NOT EXISTS test.w (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        self._sandbox = sandbox
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.committed: list[tuple[int, int]] = []
        self.max_latency = 0.0
        self.error: BaseException | None = None

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert self.error is None, f"the writer failed: {self.error!r}"

    def _run(self) -> None:
        try:
            with self._sandbox.session(database="test") as cur:
                while not self._stop.is_set():
                    started = time.monotonic()
                    cur.execute("INSERT INTO w (v) VALUES (1)")
                    self.max_latency = max(self.max_latency, time.monotonic() - started)
                    cur.execute("SELECT LAST_INSERT_ID(), @@last_gtid")
                    row_id, gtid = cur.fetchone()
                    self.committed.append((int(row_id), int(str(gtid).rsplit("-", 1)[1])))
                    time.sleep(0.002)
        except BaseException as e:
            self.error = e

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.committed) < count:
            assert time.monotonic() < deadline and self.error is None, f"writer stuck: {self.error!r}"
            time.sleep(0.01)


class Prober:
    """Runs `query` on a sandbox every 20 ms from a thread; records how long each answer took."""

    def __init__(self, sandbox: Sandbox, query: str) -> None:
        self._sandbox, self._query = sandbox, query
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with self._sandbox.session() as cur:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    cur.execute(self._query)
                    cur.fetchall()
                except Exception as e:
                    self.errors.append(e)
                self.latencies.append(time.monotonic() - started)
                time.sleep(0.02)

    def report(self) -> str:
        ordered = sorted(self.latencies)
        p99 = ordered[int(len(ordered) * 0.99)] if ordered else 0.0
        return f"{len(ordered)} queries, p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"


def gtid_seq(position: object) -> int:
    """`MariaDB/0-1-42` -> 42 (one domain, one server)."""
    (gtid,) = str(position).removeprefix("MariaDB/").split(",")
    return int(gtid.rsplit("-", 1)[1])


def tool_pids(sandbox: Sandbox) -> list[int]:
    """The xtrabackup processes backing up `sandbox`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--backup" in argv and f"--defaults-file={sandbox.cnf}".encode() in argv:
            pids.append(int(entry.name))
    return pids


def wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(is_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"processes {pids} still running"
        time.sleep(0.05)


class BackgroundBackup:
    """A Backup RPC read to its end in a thread; `error` is its failure, if any."""

    def __init__(self, agent: AgentProcess) -> None:
        self._agent = agent
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            backup(self._agent, timeout=120)
        except grpc.RpcError as e:
            self.error = e

    def join(self, timeout: float = 60) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the Backup RPC did not end"


def wait_copying_with_sql_thread_stopped(replica: Sandbox, timeout: float = 30) -> list[int]:
    """Wait until xtrabackup runs against `replica` and has stopped its SQL thread; its pids."""
    deadline = time.monotonic() + timeout
    while True:
        pids = tool_pids(replica)
        if pids and replica.replica_status()["Slave_SQL_Running"] == "No":
            return pids
        assert time.monotonic() < deadline, "xtrabackup never stopped the replica's SQL thread"
        time.sleep(0.02)


def restore_target(
    sandbox_factory: SandboxFactory, agent_factory: AgentFactory, alias: str, extra: list[str] | None = None
) -> tuple[Sandbox, AgentProcess]:
    fresh = sandbox_factory()
    fresh.sql("SET GLOBAL read_only = 1")  # a replica-to-be, not a primary
    return fresh, agent_factory(fresh, alias=alias, extra=extra or [])


# --- bounds and availability -------------------------------------------------------------------------


def test_replica_backup_under_writes_restores_exactly_to_its_position(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root: Path,
) -> None:
    writer = Writer(primary)
    replica.wait_for_gtid(primary.gtid_binlog_pos())
    agent = agent_factory(replica, extra=[*XTRA, "--xtrabackup_stripes", "2"])
    with writer, Prober(replica, "SELECT COUNT(*) FROM test.w") as reads:
        writer.wait_for(100)
        started = time.monotonic()
        events = backup(agent)
        took = time.monotonic() - started
        writer.wait_for(len(writer.committed) + 100)
    (done,) = complete_backups(storage_root)
    m = manifest(done)
    seq = gtid_seq(m["Position"])
    assert writer.committed[0][1] < seq < writer.committed[-1][1], (
        "the backup was taken while rows were written"
    )
    assert "--safe-slave-backup" in agent.log() and events
    print(f"replica backup {took:.1f}s under writes; replica reads during it: {reads.report()}")
    assert not reads.errors and reads.latencies and max(reads.latencies) < 1.0, reads.report()
    # the replica's SQL thread runs again and catches up
    replica.wait_replicating()
    replica.wait_for_gtid(primary.gtid_binlog_pos())

    fresh, target = restore_target(sandbox_factory, agent_factory, "zone1-0000000103")
    restore(target)
    restored = {int(r[0]) for r in fresh.sql("SELECT id FROM test.w")}
    assert restored == {i for i, s in writer.committed if s <= seq}, "exactly the rows up to the position"
    assert str(fresh.value("SELECT @@GLOBAL.gtid_slave_pos")) == m["Position"].removeprefix("MariaDB/")  # type: ignore[union-attr]


def test_primary_answers_queries_throughout_and_restores_exactly_under_concurrent_writes(
    primary: Sandbox, sandbox_factory: SandboxFactory, agent_factory: AgentFactory, storage_root: Path
) -> None:
    primary.sql("CREATE DATABASE IF NOT EXISTS test")
    primary.sql("CREATE TABLE test.pad (id INT PRIMARY KEY, pad CHAR(200)) ENGINE=InnoDB")
    primary.sql("INSERT INTO test.pad SELECT seq, REPEAT('x', 200) FROM test.seq_1_to_100000")
    agent = agent_factory(primary, extra=XTRA)
    with Writer(primary) as writer, Prober(primary, "SELECT COUNT(*) FROM test.w") as reads:
        writer.wait_for(100)
        before = len(writer.committed)
        started = time.monotonic()
        backup(agent, allow_primary=True)
        took = time.monotonic() - started
        during = len(writer.committed) - before
        writer.wait_for(len(writer.committed) + 100)
    print(
        f"primary backup {took:.1f}s: {during} commits during it, slowest commit "
        f"{writer.max_latency * 1000:.0f} ms; reads: {reads.report()}"
    )
    assert during > 0 and writer.max_latency < 3.0  # commits pause while xtrabackup blocks them (~1 s)
    assert not reads.errors and max(reads.latencies) < 1.0, reads.report()
    (done,) = complete_backups(storage_root)
    seq = gtid_seq(manifest(done)["Position"])
    assert writer.committed[0][1] < seq < writer.committed[-1][1]

    fresh, target = restore_target(sandbox_factory, agent_factory, "zone1-0000000103")
    restore(target)
    restored = {int(r[0]) for r in fresh.sql("SELECT id FROM test.w")}
    assert restored == {i for i, s in writer.committed if s <= seq}
    assert int(fresh.value("SELECT COUNT(*) FROM test.pad")) == 100000


# --- stripes, codecs, password ----------------------------------------------------------------------

EXTERNAL = ["--external-compressor", "zstd -1 -c", "--external-compressor-extension", ".zst",
            "--external-decompressor", "zstd -d -c"]  # fmt: skip
ROUNDS = [(0, "zstd", []), (1, "pgzip", []), (4, "lz4", []), (4, "pargzip", []), (0, "none", []),
          (1, "external", EXTERNAL)]  # fmt: skip


def test_stripes_and_every_compression_engine_round_trip_with_a_password_user(
    primary: Sandbox, sandbox_factory: SandboxFactory, agent_factory: AgentFactory, storage_root: Path
) -> None:
    escaped = PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
    primary.sql(f"CREATE USER 'xb'@'localhost' IDENTIFIED BY '{escaped}'")
    primary.sql("GRANT RELOAD, PROCESS, BINLOG MONITOR ON *.* TO 'xb'@'localhost'")  # the README's GRANTs
    fresh, restorer = restore_target(sandbox_factory, agent_factory, "zone1-0000000106")
    user = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "xb"]
    for i, (stripes, codec, flags) in enumerate(ROUNDS):
        primary.write_rows(10 * (i + 1), table=f"c{i}")
        extra = [*user, "--xtrabackup_stripes", str(stripes), "--compression-engine-name", codec, *flags]
        agent = agent_factory(primary, extra=extra, env={"TABLET_AGENT_XTRABACKUP_PASSWORD": PASSWORD})
        events = backup(agent, allow_primary=True)
        agent.stop()
        assert PASSWORD not in "\n".join(events) + agent.log()
        done = complete_backups(storage_root)[-1]
        m = manifest(done)
        names = [o["Name"] for o in m["TabletAgent"]["Objects"]]  # type: ignore[index]
        assert sorted(p.name for p in done.iterdir()) == sorted([*names, "MANIFEST"])
        assert len(names) == max(1, stripes) and m["NumStripes"] == stripes, codec
        assert all(n.startswith(str(m["FileName"])) for n in names)
        time.sleep(1.1)  # backup names have one-second resolution
        if codec == "external":  # the restoring agent must know how to decompress an external format
            restorer.stop()
            restorer = agent_factory(fresh, alias="zone1-0000000106", extra=flags)
        restore(restorer)  # a builtin-configured agent: the MANIFEST picks the engine
        for j in range(i + 1):
            assert int(fresh.value(f"SELECT COUNT(*) FROM test.c{j}")) == 10 * (j + 1), (stripes, codec)
    assert not list((restorer.workdir).rglob("xtrabackup.cnf")), "the password file is removed"


# --- faults ------------------------------------------------------------------------------------------


def test_killing_the_agent_mid_backup_leaves_no_backup_and_the_replica_replicating(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root: Path
) -> None:
    agent = agent_factory(replica, extra=[*XTRA, *SLOW])
    rpc = BackgroundBackup(agent)
    pids = wait_copying_with_sql_thread_stopped(replica)
    agent.kill()
    rpc.join()
    wait_gone(pids)  # without its reader the orphaned tool dies at its next write
    assert complete_backups(storage_root) == []
    assert replica.replica_status()["Slave_SQL_Running"] == "No", "the dead tool left the SQL thread stopped"
    again = agent_factory(replica, extra=XTRA)  # its start-up repairs replication
    replica.wait_replicating()
    replica.wait_for_gtid(primary.write_rows(5))
    assert backup_dirs(storage_root) == [], "the partial backup was removed"
    assert "repaired" in again.log()


def test_tool_dying_mid_backup_fails_it_and_restarts_the_sql_thread(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root: Path
) -> None:
    agent = agent_factory(replica, extra=[*XTRA, *SLOW])
    rpc = BackgroundBackup(agent)
    for pid in wait_copying_with_sql_thread_stopped(replica):
        os.kill(pid, signal.SIGKILL)
    rpc.join()
    assert rpc.error is not None and "killed by signal SIGKILL" in (rpc.error.details() or "")
    assert backup_dirs(storage_root) == []
    assert "starting it again" in agent.log()
    replica.wait_replicating()
    replica.wait_for_gtid(primary.write_rows(5))


def test_stopping_the_agent_mid_backup_cancels_it_and_restarts_the_sql_thread(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root: Path
) -> None:
    agent = agent_factory(replica, extra=[*XTRA, *SLOW])
    rpc = BackgroundBackup(agent)
    pids = wait_copying_with_sql_thread_stopped(replica)
    assert agent.stop() == 0  # SIGTERM: the operation is cancelled and cleaned up before exit
    rpc.join()
    assert not any(is_alive(p) for p in pids), "the tool was stopped with the agent"
    assert backup_dirs(storage_root) == []
    status = replica.replica_status()
    assert status["Slave_SQL_Running"] == "Yes" and status["Slave_IO_Running"] in ("Yes", "Connecting")


def test_a_flipped_byte_in_a_stripe_fails_restore_with_the_hash_error(
    primary: Sandbox, sandbox_factory: SandboxFactory, agent_factory: AgentFactory, storage_root: Path
) -> None:
    primary.write_rows(50)
    backup(agent_factory(primary, extra=[*XTRA, "--xtrabackup_stripes", "2"]), allow_primary=True)
    (done,) = complete_backups(storage_root)
    stripe = done / "backup.xbstream.zst-001"
    data = bytearray(stripe.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stripe.write_bytes(bytes(data))
    fresh, target = restore_target(sandbox_factory, agent_factory, "zone1-0000000104")
    fresh.write_rows(3, table="kept", database="keep")
    err = rpc_error(restore, target)
    assert err.code() is grpc.StatusCode.DATA_LOSS, err.details()
    assert f"hash mismatch for ks/0/{done.name}/backup.xbstream.zst-001" in (err.details() or "")
    assert fresh.is_answering() and fresh.value("SELECT COUNT(*) FROM keep.kept") == 3, "untouched"
    assert not (target.workdir / "state-zone1-0000000104" / "restore.json").exists()


def test_a_backup_without_our_hashes_restores_as_vitess_writes_it(
    primary: Sandbox, sandbox_factory: SandboxFactory, agent_factory: AgentFactory, storage_root: Path
) -> None:
    primary.write_rows(40)
    extra = [*XTRA, "--xtrabackup_stripes", "3", "--compression-engine-name", "pgzip"]
    backup(agent_factory(primary, extra=extra), allow_primary=True)
    (done,) = complete_backups(storage_root)
    m = manifest(done)
    del m["TabletAgent"]  # Vitess's xtrabackup MANIFEST keeps no hash
    (done / "MANIFEST").write_text(json.dumps(m, indent=2))
    fresh, target = restore_target(sandbox_factory, agent_factory, "zone1-0000000105")
    restore(target, dry_run=True)
    assert "dry run" in target.log() and fresh.value("SHOW DATABASES LIKE 'test'") is None
    restore(target)
    assert int(fresh.value("SELECT COUNT(*) FROM test.t")) == 40


# --- errors users search for --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lone_primary(mariadb_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One primary shared by the error tests: none of them changes it."""
    factory = SandboxFactory(mariadb_template, tmp_path_factory)
    try:
        yield factory()
    finally:
        factory.cleanup()


@pytest.fixture
def fake_path(tmp_path: Path) -> str:
    """A PATH whose `xtrabackup` is tests/fakes/xtrabackup."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    shutil.copy(FAKES / "xtrabackup", bin_dir / "xtrabackup")
    (bin_dir / "xtrabackup").chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def failed_backup(agent: AgentProcess, storage_root: Path) -> grpc.RpcError:
    err = rpc_error(backup, agent, allow_primary=True)
    assert backup_dirs(storage_root) == [], "a failed backup leaves nothing behind"
    return err


def refused_at_start(agent: AgentProcess) -> str:
    """The agent's stderr when it refuses to start (exit 2, the start-up checks)."""
    done = subprocess.run(agent.argv, env=agent.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    return done.stderr


def test_missing_user(lone_primary: Sandbox, agent_factory: AgentFactory, storage_root: Path) -> None:
    agent = agent_factory(lone_primary, extra=["--backup_engine_implementation", "xtrabackup"], start=False)
    stderr = refused_at_start(agent)  # Vitess finds it at the first backup; the agent at start
    assert "xtrabackup settings: xtrabackupUser must be specified.; fix: set --xtrabackup_user" in stderr


def test_binary_not_found(
    lone_primary: Sandbox, agent_factory: AgentFactory, storage_root: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    agent = agent_factory(lone_primary, extra=XTRA, env={"PATH": str(tmp_path / "empty")}, start=False)
    stderr = refused_at_start(agent)  # found at start, not at the first backup
    assert (
        'xtrabackup: unable to start backup: exec: "xtrabackup": executable file not found in $PATH' in stderr
    )
    assert "--xtrabackup_root_path" in stderr


def test_tar_stream_refused_by_the_real_tool(
    lone_primary: Sandbox, agent_factory: AgentFactory, storage_root: Path
) -> None:
    agent = agent_factory(lone_primary, extra=[*XTRA, "--xtrabackup_stream_mode", "tar"])
    err = failed_backup(agent, storage_root)
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "Invalid --stream argument: tar" in (err.details() or "")
    assert "--xtrabackup_stream_mode=xbstream" in (err.details() or "")


def test_unsupported_server_version(
    lone_primary: Sandbox, agent_factory: AgentFactory, storage_root: Path, fake_path: str
) -> None:
    env = {"PATH": fake_path, "FAKE_XTRABACKUP": "unsupported-version"}
    err = failed_backup(agent_factory(lone_primary, extra=XTRA, env=env), storage_root)
    details = err.details() or ""
    assert "Unsupported server version 10.11.19" in details or "Unsupported server version" in details
    assert "--xtrabackup_backup_flags=--no-server-version-check" in details


def test_exit_status_zero_without_the_completion_line_is_a_failure(
    lone_primary: Sandbox, agent_factory: AgentFactory, storage_root: Path, fake_path: str
) -> None:
    env = {"PATH": fake_path, "FAKE_XTRABACKUP": "no-completion"}
    err = failed_backup(agent_factory(lone_primary, extra=XTRA, env=env), storage_root)
    assert "never printed 'completed OK!'" in (err.details() or "")


def test_megabytes_of_stderr_do_not_block_the_stream(
    lone_primary: Sandbox, agent_factory: AgentFactory, storage_root: Path, fake_path: str
) -> None:
    env = {"PATH": fake_path, "FAKE_XTRABACKUP": "chatty"}
    events = backup(agent_factory(lone_primary, extra=XTRA, env=env), timeout=120, allow_primary=True)
    assert len(events) < 100, "the tool's chatter goes to the debug log, not to the events"
    (done,) = complete_backups(storage_root)
    assert manifest(done)["TabletAgent"]["Objects"][0]["Size"] == 5_000_000  # type: ignore[index]
