"""Backups written the way Vitess writes them restore here, and tabletctl drives backup/restore."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.agent_process import REPO
from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import complete_backups, restore
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration


def write_vitess_backup(source: Sandbox, dest: Path, position: str) -> None:
    """A builtin backup as Vitess's mysqlctl lays it out: pgzip (gzip) objects "0", "1", ... and a
    MANIFEST with exactly Vitess's keys (no tablet-agent extras)."""
    dest.mkdir(parents=True)
    entries = []
    for root, _, files in os.walk(source.datadir):
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(source.datadir).as_posix()
            base = (
                "InnoDBData"
                if name == "ibdata1"
                else "InnoDBLog"
                if name.startswith("ib_logfile")
                else "Data"
            )
            if base == "Data" and "/" not in rel:
                continue  # Vitess copies the database directories, not the datadir's top-level files
            stored = gzip.compress(path.read_bytes(), compresslevel=1)
            (dest / str(len(entries))).write_bytes(stored)
            entries.append({"Base": base, "Name": rel, "Hash": f"{zlib.crc32(stored):08x}", "ParentPath": ""})
    manifest = {
        "BackupMethod": "builtin", "Position": f"MariaDB/{position}", "PurgedPosition": "", "FromPosition": "",
        "FromBackup": "", "Incremental": False, "BackupTime": "2026-01-02T03:04:05Z",
        "FinishedTime": "2026-01-02T03:05:00Z", "ServerUUID": "", "TabletAlias": "zone1-0000000200",
        "Hostname": "vttablet-200", "Keyspace": "ks", "Shard": "0", "MySQLVersion": "10.11.6-MariaDB",
        "UpgradeSafe": False, "IncrementalDetails": None, "BackupName": dest.name,
        "CompressionEngine": "pgzip", "FileEntries": entries, "SkipCompress": False, "ExternalDecompressor": "",
    }  # fmt: skip
    (dest / "MANIFEST").write_text(json.dumps(manifest, indent=2))


def test_a_vitess_written_backup_restores(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root,
) -> None:
    pos = primary.write_rows(77)
    replica.wait_for_gtid(pos)
    replica.sql("STOP SLAVE")
    replica.stop()
    write_vitess_backup(replica, storage_root / "ks" / "0" / "2026-01-02.030405.zone1-0000000200", pos)
    fresh = sandbox_factory()
    fresh.sql("SET GLOBAL read_only=1")
    events = restore(agent_factory(fresh, alias="zone1-0000000107"))
    assert any("2026-01-02.030405.zone1-0000000200" in e for e in events)
    assert int(fresh.value("SELECT COUNT(*) FROM test.t")) == 77
    fresh.make_replica_of(primary)
    fresh.wait_for_gtid(primary.write_rows(3))
    assert int(fresh.value("SELECT COUNT(*) FROM test.t")) == 80


def test_tabletctl_backup_and_restore(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    primary.write_rows(5)
    agent = agent_factory(replica)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "dumb"}
    ctl = [sys.executable, "-m", "agent.ctl.main", "--server", agent.address]
    res = subprocess.run([*ctl, "backup"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "is complete at position MariaDB/" in res.stdout
    assert len(complete_backups(storage_root)) == 1
    res = subprocess.run([*ctl, "restore", "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "restore plan" in res.stdout and "dry run" in res.stdout
    # a tablet of type PRIMARY refuses a backup without allow_primary
    primary_agent = agent_factory(primary, alias="zone1-0000000101", extra=["--init_tablet_type", "PRIMARY"])
    res = subprocess.run(
        [sys.executable, "-m", "agent.ctl.main", "--server", primary_agent.address, "backup"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 1
    assert "allow_primary" in res.stderr


def test_init_sql_runs_on_the_types_listed_and_can_fail_the_backup(
    replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    from agent.pb import tabletmanagerdata_pb2, topodata_pb2, vttime_pb2
    from tests.integration.helpers import backup, rpc_error

    agent = agent_factory(replica)

    def init(queries: list[str], types: list[int], fail: bool, timeout: bool = True) -> object:
        return tabletmanagerdata_pb2.BackupRequest.InitSQL(
            queries=queries,
            tablet_types=types,
            timeout=vttime_pb2.Duration(seconds=10) if timeout else None,
            fail_on_error=fail,
        )

    err = rpc_error(backup, agent, init_sql=init(["SELEKT junk"], [topodata_pb2.REPLICA], True))
    assert err.code().name == "FAILED_PRECONDITION" and "init_sql failed" in (err.details() or "")
    assert complete_backups(storage_root) == []
    err = rpc_error(backup, agent, init_sql=init(["SELECT 1"], [topodata_pb2.REPLICA], True, timeout=False))
    assert err.code().name == "INVALID_ARGUMENT" and "init_sql.timeout" in (err.details() or "")
    err = rpc_error(backup, agent, init_sql=init(["SELECT 1"], [], True))
    assert err.code().name == "INVALID_ARGUMENT" and "init_sql.tablet_types" in (err.details() or "")
    marker = [
        "CREATE DATABASE IF NOT EXISTS initsql",
        "CREATE TABLE IF NOT EXISTS initsql.marker (i INT)",
        "INSERT INTO initsql.marker VALUES (42)",
    ]
    events = backup(agent, init_sql=init(marker, [topodata_pb2.RDONLY], True))
    assert any("init_sql: not run" in e for e in events)
    assert (
        replica.value("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'initsql'") == 0
    )
    events = backup(agent, init_sql=init(marker, [topodata_pb2.REPLICA], True))
    assert any("init_sql: 3 queries run" in e for e in events)
    assert replica.value("SELECT i FROM initsql.marker") == 42
    events = backup(agent, init_sql=init(["SELEKT junk"], [topodata_pb2.REPLICA], False))
    assert any("init_sql failed" in e for e in events), "without fail_on_error the backup goes on"
    assert len(complete_backups(storage_root)) == 3


def test_a_backup_name_works_as_incremental_from_pos(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, storage_root
) -> None:
    from tests.integration.helpers import backup, manifest

    primary.write_rows(10)
    agent = agent_factory(replica)
    backup(agent)
    (full,) = complete_backups(storage_root)
    replica.wait_for_gtid(primary.write_rows(5))
    backup(agent, incremental_from_pos=full.name)
    incremental = complete_backups(storage_root)[-1]
    m = manifest(incremental)
    assert m["Incremental"] is True and m["FromBackup"] == full.name
    assert m["FromPosition"] == manifest(full)["Position"]
