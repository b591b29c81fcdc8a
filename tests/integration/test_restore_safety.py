"""A restore never costs the tablet its data, proven with faults on real MariaDB and the agent as a process:
every kind of damage to a backup (each engine) fails the restore before the tablet is touched, and a
kill -9 of the agent at every step of a staged restore leaves, after the next start, a tablet that is
untouched or fully restored, never writable, with its replication source, ready for the next restore."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agent.pb import agentdata_pb2
from tests.agent_process import REPO, AgentProcess
from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, complete_backups, manifest, restore, rpc_error
from tests.sandbox import Sandbox

XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]
ENGINES = {"builtin": [], "xtrabackup": XTRA}
ALIAS = "zone1-0000000102"
PAUSE_ENV = "TABLET_AGENT_PAUSE_AFTER_RESTORE_STEP"
KILL_STEPS = ("staging", "swap_aside", "swap_in", "swapped", "started", "committed")
KILLS_PER_STEP = 3


@dataclass(frozen=True)
class TabletState:
    """What a restore must either keep or replace as a whole."""

    checksum: int
    rows: int
    read_only: int
    source: str
    io_running: str
    sql_running: str

    @classmethod
    def of(cls, sb: Sandbox) -> TabletState:
        status = sb.replica_status()
        return cls(
            checksum=int(sb.sql("CHECKSUM TABLE test.t")[0][1]),
            rows=int(sb.value("SELECT COUNT(*) FROM test.t")),
            read_only=int(sb.value("SELECT @@read_only")),
            source=f"{status.get('Master_Host', '')}:{status.get('Master_Port', '')}",
            io_running=str(status.get("Slave_IO_Running", "")),
            sql_running=str(status.get("Slave_SQL_Running", "")),
        )


def state_dir(agent: AgentProcess) -> Path:
    return agent.workdir / f"state-{ALIAS}"


def no_leftovers(sb: Sandbox, agent: AgentProcess) -> None:
    assert not (state_dir(agent) / "restore.json").exists(), "the journal is settled"
    left = [p.name for p in (*sb.root.iterdir(), *sb.datadir.iterdir()) if "tablet-agent-" in p.name]
    assert not left, f"staging or previous data left behind: {left}"


@pytest.fixture
def tablet(primary: Sandbox, replica: Sandbox) -> Iterator[Sandbox]:
    """The replica: read-only, replicating, with rows the backup holds; the restore target."""
    primary.write_rows(200)
    replica.wait_for_gtid(primary.gtid_binlog_pos())
    replica.sql("SET GLOBAL read_only = 1")
    yield replica


def damage_cases(done: Path, engine: str, rng: random.Random) -> list[tuple[str, str, object]]:
    """(kind, object, damage) cases for one backup: each kind on a sample of its objects."""
    m = manifest(done)
    if engine == "builtin":
        names = [str(i) for i in range(len(m["FileEntries"]))]  # type: ignore[arg-type]
        sample = sorted(set(rng.sample(names, 2)) | {"0"})
    else:
        sample = [str(m["FileName"])]
    cases: list[tuple[str, str, object]] = []
    for name in sample:
        cases.append(("flip", name, None))
    cases.append(("truncate", sample[-1], None))
    cases.append(("delete", sample[0], None))
    cases.append(("hash", sample[0], None))
    cases.append(("decompressor", "MANIFEST", None))
    return cases


def apply_damage(done: Path, kind: str, name: str) -> None:
    if kind == "flip":
        obj = done / name
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0x01
        obj.write_bytes(bytes(data))
    elif kind == "truncate":
        obj = done / name
        obj.write_bytes(obj.read_bytes()[:-7])
    elif kind == "delete":
        (done / name).unlink()
    elif kind == "hash":
        m = manifest(done)
        if m.get("FileEntries"):
            entry = m["FileEntries"][int(name)]  # type: ignore[index]
            entry["Hash"] = "00000000" if entry["Hash"] != "00000000" else "11111111"
        else:
            obj = m["TabletAgent"]["Objects"][0]  # type: ignore[index]
            obj["Crc32"] = "00000000" if obj["Crc32"] != "00000000" else "11111111"
        (done / "MANIFEST").write_text(json.dumps(m, indent=2))
    elif kind == "decompressor":
        m = manifest(done)
        m["CompressionEngine"] = "external"
        m["ExternalDecompressor"] = "sh -c 'touch /tmp/tablet-agent-pwned; zstd -dc'"
        (done / "MANIFEST").write_text(json.dumps(m, indent=2))


def tabletctl(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.ctl.main", "--server", agent.address, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )


def verify(agent: AgentProcess) -> grpc.RpcError | None:
    with agent.channel() as ch:
        try:
            for _ in agent.stub(ch).VerifyBackup(agentdata_pb2.VerifyBackupRequest(all=True), timeout=300):
                pass
        except grpc.RpcError as e:
            return e
    return None


@pytest.mark.timeout(900)
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_kind_of_damage_fails_before_the_tablet_is_touched(
    engine: str, tablet: Sandbox, agent_factory: AgentFactory, storage_root: Path, tmp_path: Path
) -> None:
    agent = agent_factory(tablet, extra=ENGINES[engine])
    backup(agent)
    (done,) = complete_backups(storage_root)
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    for f in done.iterdir():
        (pristine / f.name).write_bytes(f.read_bytes())
    before = TabletState.of(tablet)
    for kind, name, _ in damage_cases(done, engine, random.Random(1)):
        apply_damage(done, kind, name)
        where = f"ks/0/{done.name}/{name}"
        err = rpc_error(restore, agent)
        details = err.details() or ""
        if kind == "decompressor":
            assert err.code() is grpc.StatusCode.FAILED_PRECONDITION, details
            assert "--allowed_external_decompressors" in details, details
            assert not Path("/tmp/tablet-agent-pwned").exists(), "a command from storage ran"
        else:
            assert err.code() is grpc.StatusCode.DATA_LOSS, (kind, details)
            assert where in details, (kind, where, details)
        assert TabletState.of(tablet) == before, f"{kind} of {name} changed the tablet"
        no_leftovers(tablet, agent)
        dry = rpc_error(restore, agent, dry_run=True)
        assert dry.code() in (grpc.StatusCode.DATA_LOSS, grpc.StatusCode.FAILED_PRECONDITION), dry.details()
        if kind != "decompressor":
            verified = verify(agent)
            assert verified is not None and where in (verified.details() or ""), kind
        if kind == "truncate":
            ctl = tabletctl(agent, "verify", "--all")
            assert ctl.returncode == 1 and where in ctl.stderr, ctl.stderr
        for f in pristine.iterdir():  # undo the damage for the next case
            (done / f.name).write_bytes(f.read_bytes())
        (done / "tablet-agent-verification.json").unlink(missing_ok=True)  # its verdict was right
    assert verify(agent) is None, "the repaired backup verifies again"
    assert tabletctl(agent, "verify", "--all").returncode == 0
    restore(agent)
    restored = TabletState.of(tablet)
    assert restored.checksum == before.checksum and restored.read_only == 1
    assert restored.source == before.source, "the replication source is configured again"


def start_restore_in_background(agent: AgentProcess) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(grpc.RpcError):  # the agent is killed under it
            restore(agent, timeout=600)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def wait_for_step(agent: AgentProcess, step: str, timeout: float = 120) -> None:
    journal = state_dir(agent) / "restore.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(journal.read_text())["step"] == step:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the restore never reached step {step}:\n{agent.log()[-3000:]}")


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_kill_9_at_every_restore_step_leaves_a_tablet_untouched_or_restored(
    engine: str,
    primary: Sandbox,
    tablet: Sandbox,
    agent_factory: AgentFactory,
    storage_root: Path,
) -> None:
    agent = agent_factory(tablet, extra=ENGINES[engine])
    backup(agent)
    backed_up = TabletState.of(tablet)
    agent.stop()
    primary.write_rows(50)  # the tablet moves on: a restore takes it back
    tablet.wait_for_gtid(primary.gtid_binlog_pos())
    rng = random.Random(7)
    for step in KILL_STEPS:
        for attempt in range(KILLS_PER_STEP):
            before = TabletState.of(tablet)
            paused = agent_factory(tablet, extra=ENGINES[engine], env={PAUSE_ENV: step})
            worker = start_restore_in_background(paused)
            wait_for_step(paused, step)
            time.sleep(rng.random() * 0.3)
            paused.kill()
            worker.join(30)
            agent = agent_factory(tablet, extra=ENGINES[engine])  # recovery runs before it serves
            after = TabletState.of(tablet)
            assert after.read_only == 1, f"writable after a kill at {step}"
            if step == "committed":
                assert after.checksum == backed_up.checksum, "a committed restore is finished"
            else:
                assert after == before, f"a kill at {step} (attempt {attempt}) changed the tablet"
            assert after.source == before.source, "the replication source is kept"
            no_leftovers(tablet, agent)
            with agent.channel() as ch:
                status = agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10)
            assert not [p for p in status.health_problems if "restore" in p], status.health_problems
            if attempt == KILLS_PER_STEP - 1:
                restore(agent)  # a following restore succeeds
                assert TabletState.of(tablet).checksum == backed_up.checksum
                tablet.sql("START SLAVE")
                tablet.wait_for_gtid(primary.gtid_binlog_pos())
            agent.stop()


def test_objects_removed_during_a_backup_make_it_fail(
    tablet: Sandbox, agent_factory: AgentFactory, storage_root: Path
) -> None:
    tablet.sql("SET GLOBAL read_only = 0")
    for i in range(6):
        tablet.write_rows(2000, table=f"big{i}", database="bulk")
    tablet.sql("SET GLOBAL read_only = 1")
    agent = agent_factory(tablet, extra=["--concurrency", "1", "--compression-engine-name", "none"])
    removed: list[str] = []

    def remover() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not removed:
            for d in (storage_root / "ks" / "0").glob("*/*"):
                if not d.name.startswith(".") and d.name != "MANIFEST":
                    d.unlink(missing_ok=True)
                    removed.append(d.name)
                    return
            time.sleep(0.01)

    t = threading.Thread(target=remover)
    t.start()
    err = rpc_error(backup, agent)
    t.join()
    assert removed, "an object was removed while the backup ran"
    assert err.code() is grpc.StatusCode.DATA_LOSS, err.details()
    assert "storage lost objects" in (err.details() or "")
    assert complete_backups(storage_root) == []
    assert tablet.is_answering() and int(tablet.value("SELECT @@read_only")) == 1


@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_deep_verify_passes_a_good_backup_and_names_the_bad_object(
    engine: str, tablet: Sandbox, agent_factory: AgentFactory, storage_root: Path
) -> None:
    agent = agent_factory(tablet, extra=ENGINES[engine])
    backup(agent)
    (done,) = complete_backups(storage_root)
    with agent.channel() as ch:
        events = [
            r.event.value
            for r in agent.stub(ch).VerifyBackup(agentdata_pb2.VerifyBackupRequest(deep=True), timeout=300)
        ]
        listed = agent.stub(ch).ListBackups(agentdata_pb2.ListBackupsRequest(), timeout=30)
    assert any("verified (deep)" in e and "all good" in e for e in events), events
    assert listed.backups[0].verification == "ok" and listed.backups[0].verification_depth == "deep"
    name = "0" if engine == "builtin" else str(manifest(done)["FileName"])
    apply_damage(done, "flip", name)
    with agent.channel() as ch:
        err = rpc_error(
            lambda: list(
                agent.stub(ch).VerifyBackup(agentdata_pb2.VerifyBackupRequest(deep=True), timeout=300)
            )
        )
        listed = agent.stub(ch).ListBackups(agentdata_pb2.ListBackupsRequest(), timeout=30)
    assert err.code() is grpc.StatusCode.DATA_LOSS
    assert f"ks/0/{done.name}/{name}" in (err.details() or "")
    assert listed.backups[0].verification == "failed"
    # a restore of "the newest" now passes over it, saying so
    err = rpc_error(restore, agent)
    assert "skipping backup" in agent.log() and "verification" in agent.log()
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION, err.details()


@pytest.mark.timeout(600)
def test_every_kind_of_restore_leaves_a_read_only_tablet(
    primary: Sandbox, sandbox_factory: SandboxFactory, agent_factory: AgentFactory
) -> None:
    primary.write_rows(20)
    source = agent_factory(primary, alias="zone1-0000000101", extra=["--init_tablet_type", "PRIMARY"])
    backup(source, allow_primary=True)
    primary.write_rows(5)
    backup(source, allow_primary=True, incremental_from_pos="auto")
    target_pos = primary.gtid_binlog_pos()
    for applier, pitr in (("auto", False), ("replication", True), ("pipe", True)):
        fresh = sandbox_factory()
        agent = agent_factory(fresh, alias="zone1-0000000105", extra=["--binlog_applier", applier])
        restore(agent, restore_to_pos=f"MariaDB/{target_pos}" if pitr else "")
        assert int(fresh.value("SELECT @@read_only")) == 1, applier
        with agent.channel() as ch:
            status = agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10)
        assert status.mysqld.read_only, applier
        agent.stop()
