"""Thousands of random and malformed requests to a running agent: only the expected error codes come back,
the agent stays up, mysqld keeps running and nothing outside the storage root changes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.pb import agentdata_pb2, tabletmanagerdata_pb2, vttime_pb2
from tests.agent_process import AgentProcess
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration

EXPECTED = {
    grpc.StatusCode.OK,  # read-only calls
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,  # lookups of an operation id or a backup name that do not exist
}
METHODS = ["Ping", "Backup", "RestoreFromBackup", "Status", "ListBackups", "RemoveBackup",
           "CancelOperation", "WatchOperation"]  # fmt: skip
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "600"))
STREAMING = {"Backup", "RestoreFromBackup", "WatchOperation"}

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["auto", "MariaDB/0-1-5", "0-1-5", "MySQL56/x:1-2", "MariaDB/", "../../etc", "builtin", "-"]
    ),
)
int32 = st.integers(-(2**31), 2**31 - 1)
times = st.one_of(
    st.just(vttime_pb2.Time()),
    st.builds(vttime_pb2.Time, seconds=st.integers(0, 2**31), nanoseconds=st.integers(0, 999_999_999)),
    st.builds(vttime_pb2.Time, seconds=st.integers(-(2**40), 2**40), nanoseconds=int32),
)
durations = st.one_of(
    st.builds(vttime_pb2.Duration, seconds=st.integers(1, 3600), nanos=st.integers(0, 999_999_999)),
    st.builds(vttime_pb2.Duration, seconds=st.integers(-(2**40), 2**40), nanos=int32),
)
engines = st.one_of(st.sampled_from(["", "builtin", "xtrabackup"]), texts)
backups = st.builds(
    tabletmanagerdata_pb2.BackupRequest,
    concurrency=st.one_of(st.integers(0, 64), int32),
    allow_primary=st.just(False),  # the primary refuses: a fuzz case never starts a real backup
    incremental_from_pos=st.one_of(st.just(""), texts),
    upgrade_safe=st.booleans(),
    backup_engine=engines,
    mysql_shutdown_timeout=durations,
)
restores = st.builds(
    tabletmanagerdata_pb2.RestoreFromBackupRequest,
    backup_time=times,
    restore_to_pos=st.one_of(st.just(""), texts),
    dry_run=st.booleans(),
    restore_to_timestamp=st.one_of(st.just(vttime_pb2.Time()), times),
    allowed_backup_engines=st.lists(engines, max_size=3),
)


def snapshot(root: Path) -> set[str]:
    """The sandbox's file names (InnoDB's own temporary files aside)."""
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if "#" not in p.name and not p.name.startswith("ib")
    }


@dataclass
class Target:
    sandbox: Sandbox
    agent: AgentProcess
    storage: Path
    files: set[str]
    pid: int | None
    codes: dict[str, int]


@pytest.fixture(scope="module")
def target(mariadb_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One primary and its agent (of type PRIMARY) for the whole module: a primary refuses backups without
    allow_primary and every restore, so no fuzz case can start a real operation."""
    root = tmp_path_factory.mktemp("fuzz")
    sb = Sandbox(root / "primary")
    sb.init_from(mariadb_template)
    sb.start()
    storage = root / "backups"
    storage.mkdir()
    agent = AgentProcess(sb.cnf, storage, root / "agent", extra=["--init_tablet_type", "PRIMARY"]).start()
    try:
        sb.write_rows(5)
        yield Target(sb, agent, storage, snapshot(sb.root), sb.pid(), {})
    finally:
        agent.stop()
        sb.destroy()


def call(t: Target, method: str, request: object) -> None:
    with t.agent.channel() as ch:
        try:
            result = getattr(t.agent.stub(ch), method)(request, timeout=10)
            if method in STREAMING:
                list(result)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
            assert code in EXPECTED, f"{method}({request!r}) -> {code}: {e.details()}"
    t.codes[code.name] = t.codes.get(code.name, 0) + 1


FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(request=backups)
def test_backup_requests(target: Target, request: tabletmanagerdata_pb2.BackupRequest) -> None:
    call(target, "Backup", request)


@FUZZ
@given(request=restores)
def test_restore_requests(target: Target, request: tabletmanagerdata_pb2.RestoreFromBackupRequest) -> None:
    call(target, "RestoreFromBackup", request)


@FUZZ
@given(name=texts, force=st.booleans(), op_id=texts)
def test_lookup_requests(target: Target, name: str, force: bool, op_id: str) -> None:
    call(target, "RemoveBackup", agentdata_pb2.RemoveBackupRequest(name=name, force=force))
    call(target, "CancelOperation", agentdata_pb2.CancelOperationRequest(id=op_id))
    call(target, "WatchOperation", agentdata_pb2.WatchOperationRequest(id=op_id))


@FUZZ
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=64))
def test_random_bytes(target: Target, method: str, payload: bytes) -> None:
    if method == "Backup":
        # bytes that happen to say allow_primary=true would start a real backup of the primary
        with contextlib.suppress(DecodeError):
            assume(not tabletmanagerdata_pb2.BackupRequest.FromString(payload).allow_primary)
    with target.agent.channel() as ch:
        path = f"/tabletmanagerservice.TabletManager/{method}"
        rpc = ch.unary_stream(path) if method in STREAMING else ch.unary_unary(path)
        try:
            result = rpc(payload, timeout=10)
            if method in STREAMING:
                list(result)  # type: ignore[call-overload]
        except grpc.RpcError as e:
            assert e.code() in EXPECTED, f"raw {method}({payload!r}) -> {e.code()}: {e.details()}"


def test_after_the_fuzz_nothing_changed(target: Target) -> None:
    """Runs last in the module: the agent is up, mysqld ran throughout, nothing was written."""
    with target.agent.channel() as ch:
        ping = target.agent.stub(ch).Ping(tabletmanagerdata_pb2.PingRequest(payload="still here"), timeout=5)
    assert ping.payload == "still here"
    assert target.agent.proc is not None and target.agent.proc.poll() is None
    assert target.sandbox.is_answering() and target.sandbox.pid() == target.pid
    assert snapshot(target.sandbox.root) == target.files
    # Nothing stored: the start-up storage check leaves only the empty <keyspace>/<shard> directories
    # its probe backup was created in (as the first backup would).
    assert [p for p in target.storage.rglob("*") if not p.is_dir()] == []
    codes = target.codes
    assert (
        codes.get("INVALID_ARGUMENT", 0) > EXAMPLES // 10
        and codes.get("FAILED_PRECONDITION", 0) > EXAMPLES // 10
    ), codes
