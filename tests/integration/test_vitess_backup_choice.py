"""Vitess would use the backups we write: Vitess's `FindBackupToRestore` choice, reimplemented here from its
Go code (go/vt/mysqlctl: the MySQL version check `validateMySQLVersionUpgradeCompatible` with its
`Ver ([0-9]+)\\.([0-9]+)\\.([0-9]+)` parse, the UpgradeSafe rule, the allowed engines and the backup
time filter), run over MANIFESTs our agent wrote on a real MariaDB."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, complete_backups, manifest, restore
from tests.sandbox import Sandbox

VERSION_RE = re.compile(r"Ver ([0-9]+)\.([0-9]+)\.([0-9]+)")
XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]


class Skip(Exception):
    """Vitess logs "Skipping backup ..." and tries the next older one."""


def parse_version(text: str) -> tuple[int, int, int]:
    m = VERSION_RE.search(text)
    if m is None:
        raise Skip(f"can't parse MySQL version {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _patch_compatible(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """MySQL 8.0.35+ (within 8.0) and 8.4 keep the on-disk format between patch releases."""
    if a[:2] != b[:2]:
        return False
    return a[:2] == (8, 4) or (a[:2] == (8, 0) and min(a, b) >= (8, 0, 35))


def validate_version(running: str, backup_version: str, upgrade_safe: bool) -> None:
    """Vitess's validateMySQLVersionUpgradeCompatible(to=running, from=backup)."""
    if running == backup_version:
        return
    to, frm = parse_version(running), parse_version(backup_version)
    if to == frm or _patch_compatible(to, frm):
        return
    if to < frm:
        raise Skip(f"running MySQL version {running!r} is older than backup MySQL version {backup_version!r}")
    if not upgrade_safe:
        raise Skip(
            f"running MySQL version {running!r} is newer than backup MySQL version {backup_version!r} "
            "which is not safe to upgrade"
        )
    if frm < (8, 0, 0) and to >= (8, 4, 0):
        raise Skip(
            f"running MySQL version {running!r} is too new for backup MySQL version {backup_version!r}"
        )


@pytest.mark.parametrize(
    ("frm", "to", "safe", "ok"),
    [
        ("5.7.35", "8.0.23", True, True),
        ("8.0.23", "5.7.35", True, False),
        ("5.7.35", "8.0.23", False, False),
        ("8.0.23", "8.0.34", True, True),
        ("8.0.34", "8.0.23", True, False),
        ("8.0.23", "8.0.34", False, False),
        ("8.0.35", "8.0.36", False, True),
        ("8.0.36", "8.0.35", False, True),
        ("8.4.1", "8.4.0", False, True),
        ("8.0.32", "8.4.0", True, True),
        ("8.0.32", "8.4.0", False, False),
        ("5.7.32", "8.4.0", True, False),
    ],
)
def test_the_version_rule_matches_vitess_s_table(frm: str, to: str, safe: bool, ok: bool) -> None:
    try:
        validate_version(f"mysqld  Ver {to}", f"mysqld  Ver {frm}", safe)
    except Skip:
        assert not ok
    else:
        assert ok


def find_backup_to_restore(
    manifests: Sequence[dict[str, object]],
    running_version: str,
    allowed_engines: Sequence[str] = (),
    start_time: datetime | None = None,
) -> str:
    """The backup Vitess restores: the newest complete one that passes every filter (oldest first in)."""
    for m in reversed(manifests):
        engine = str(m.get("BackupMethod") or "builtin")
        if allowed_engines and engine not in allowed_engines:
            continue
        if start_time is not None:
            taken = datetime.strptime(str(m["BackupTime"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            if taken > start_time:
                continue
        try:
            validate_version(running_version, str(m["MySQLVersion"]), bool(m["UpgradeSafe"]))
        except Skip:
            continue
        return str(m["BackupName"])
    raise LookupError("ErrNoCompleteBackup: backup(s) found but none are complete")


def test_vitess_would_choose_our_builtin_and_xtrabackup_backups(
    primary: Sandbox, agent_factory: AgentFactory, storage_root: Path
) -> None:
    primary.write_rows(10)
    builtin_agent = agent_factory(primary, alias="zone1-0000000101")
    backup(builtin_agent, allow_primary=True)
    builtin_agent.stop()
    xtra_agent = agent_factory(primary, alias="zone1-0000000101", extra=XTRA)
    backup(xtra_agent, allow_primary=True)
    b_dir, x_dir = complete_backups(storage_root)
    b, x = manifest(b_dir), manifest(x_dir)
    running = f"Ver {primary.value('SELECT @@version')} {primary.value('SELECT @@version_comment')}"
    assert b["MySQLVersion"] == x["MySQLVersion"] == running, "Vitess's version query form"
    assert x["UpgradeSafe"] is True and b["UpgradeSafe"] is False
    for m in (b, x):  # Vitess's MariaDB flavor has no purged set and no server UUID; the host is named
        assert (m["PurgedPosition"], m["ServerUUID"]) == ("", "") and m["Hostname"]
    backups = [b, x]
    assert find_backup_to_restore(backups, running) == x["BackupName"]
    assert find_backup_to_restore(backups, running, ["builtin"]) == b["BackupName"]
    assert find_backup_to_restore(backups, running, ["xtrabackup"]) == x["BackupName"]
    b_time = datetime.strptime(str(b["BackupTime"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    if b["BackupTime"] != x["BackupTime"]:
        assert find_backup_to_restore(backups, running, start_time=b_time) == b["BackupName"]
    major, minor, patch = parse_version(running)
    newer = f"Ver {major}.{minor + 1}.0-MariaDB"
    assert find_backup_to_restore(backups, newer) == x["BackupName"], "only the upgrade-safe one"
    with pytest.raises(LookupError):
        find_backup_to_restore(backups, newer, ["builtin"])
    older = f"Ver {major}.{minor - 1}.{patch}-MariaDB"
    with pytest.raises(LookupError):
        find_backup_to_restore(backups, older)
    # MANIFESTs with the bare @@version (what older agents wrote) are skipped by Vitess: we read them still
    bare = {**b, "MySQLVersion": str(primary.value("SELECT @@version"))}
    with pytest.raises(LookupError):
        find_backup_to_restore([bare], running + " and more")
    (b_dir / "MANIFEST").write_text(json.dumps(bare, indent=2))
    restore(xtra_agent, allowed_backup_engines=["builtin"], restore_over_existing_data=True)
