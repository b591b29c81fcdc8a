"""Restore never trusts the backup: forged MANIFESTs are rejected and touch nothing."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.helpers import restore, rpc_error
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration


def forge(root: Path, name: str, entries: list[dict[str, str]], payload: bytes = b"owned\n") -> None:
    d = root / "ks" / "0" / name
    d.mkdir(parents=True)
    stored = gzip.compress(payload)
    for i, fe in enumerate(entries):
        (d / str(i)).write_bytes(stored)
        fe.setdefault("Hash", f"{zlib.crc32(stored):08x}")
        fe.setdefault("ParentPath", "")
    manifest = {"BackupName": name, "BackupMethod": "builtin", "Position": "MariaDB/0-1-1",
                "BackupTime": "2026-01-01T00:00:00Z", "Keyspace": "ks", "Shard": "0",
                "CompressionEngine": "pgzip", "FileEntries": entries}  # fmt: skip
    (d / "MANIFEST").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "entries",
    [
        [{"Base": "Data", "Name": "../../../canary"}],
        [{"Base": "Data", "Name": "/tmp/canary"}],
        [{"Base": "Data", "Name": "test/x", "ParentPath": "../.."}],
        [{"Base": "Data", "Name": "a\\..\\..\\canary"}],
        [{"Base": "Nowhere", "Name": "x"}],
        [{"Base": "Data", "Name": "f0"}, {"Base": "Data", "Name": "f0"}],
    ],
    ids=["dotdot", "absolute", "parent-path", "backslashes", "unknown-base", "duplicate"],
)
def test_forged_manifest_is_rejected_and_touches_nothing(
    replica: Sandbox,
    agent_factory: AgentFactory,
    storage_root: Path,
    tmp_path: Path,
    entries: list[dict[str, str]],
) -> None:
    canary = tmp_path / "canary"
    canary.write_text("untouched")
    forge(storage_root, "2026-01-01.000000.zone1-0000000666", entries)
    replica.sql("SET GLOBAL read_only=1")
    agent = agent_factory(replica)
    err = rpc_error(restore, agent)
    details = err.details() or ""
    assert "refusing" in details or "none are complete" in details or "unknown" in details, details
    assert canary.read_text() == "untouched" and not Path("/tmp/canary").exists()
    assert replica.is_answering(), "nothing was stopped"
    assert not (agent.workdir / "state-zone1-0000000102" / "restore.json").exists()


def test_huge_entry_count_is_rejected(
    replica: Sandbox, agent_factory: AgentFactory, storage_root: Path
) -> None:
    d = storage_root / "ks" / "0" / "2026-01-01.000000.zone1-0000000667"
    d.mkdir(parents=True)
    entries = ",".join('{"Base":"Data","Name":"f%d","Hash":"0"}' % i for i in range(1_000_001))  # noqa: UP031
    (d / "MANIFEST").write_text('{"BackupMethod":"builtin","FileEntries":[' + entries + "]}")
    replica.sql("SET GLOBAL read_only=1")
    err = rpc_error(restore, agent_factory(replica))
    assert "none are complete" in (err.details() or "")
    assert replica.is_answering()


def test_forged_xbstream_with_paths_outside_the_target_is_refused(
    replica: Sandbox, agent_factory: AgentFactory, storage_root: Path, tmp_path: Path
) -> None:
    """mbstream skips `../` and absolute names with only a warning; the restore must fail on them."""
    import subprocess

    work = tmp_path / "forge" / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "forge" / "evil.txt").write_text("owned\n")
    stream = subprocess.run(
        ["mbstream", "-c", "../../evil.txt"], cwd=work, capture_output=True, check=True
    ).stdout
    d = storage_root / "ks" / "0" / "2026-01-01.000000.zone1-0000000668"
    d.mkdir(parents=True)
    (d / "backup.xbstream").write_bytes(stream)
    manifest = {"BackupName": d.name, "BackupMethod": "xtrabackup", "Position": "MariaDB/0-1-1",
                "BackupTime": "2026-01-01T00:00:00Z", "Keyspace": "ks", "Shard": "0", "FileName": "backup.xbstream",
                "StreamMode": "xbstream", "NumStripes": 0, "StripeBlockSize": 102400, "SkipCompress": True,
                "CompressionEngine": ""}  # fmt: skip
    (d / "MANIFEST").write_text(json.dumps(manifest))
    replica.sql("SET GLOBAL read_only=1")
    agent = agent_factory(replica)
    err = rpc_error(restore, agent)
    assert "outside the restore directory" in (err.details() or ""), err.details()
    assert (
        not (replica.root / "evil.txt").exists() and not (replica.datadir.parent.parent / "evil.txt").exists()
    )
