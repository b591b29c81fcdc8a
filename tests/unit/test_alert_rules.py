"""The Prometheus alert rules in deploy/prometheus/ are valid (`promtool check rules`) and fire when they
should, on series named as the agent exports them (`promtool test rules`). Skipped without promtool
(Debian's `prometheus` package provides it; .ci/run and `make setup` install it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.catalog.listing import BackupEntry
from agent.catalog.manifest import Manifest, format_time
from agent.catalog.summary import Newest
from agent.ops.health import PROBLEM_KINDS, backup_problem_kinds, backup_problems

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "tablet-agent.rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed: `apt-get install --no-install-recommends prometheus` provides it",
)
HEALTH = "`tabletctl status` on the tablet gives the full sentence and what to do."


def alert(severity: str, summary: str, description: str, **labels: str) -> dict[str, Any]:
    return {
        "exp_labels": {"severity": severity, "instance": "a:9100", **labels},
        "exp_annotations": {"summary": summary, "description": description},
    }


def health(problem: str) -> dict[str, Any]:
    return alert("warning", f"a:9100 has a health problem: {problem}", HEALTH, problem=problem)


# 30 hours of samples, one a minute; at t=0 the shard's newest full backup is 25 hours old.
SERIES = {
    'tablet_agent_newest_backup_timestamp_seconds{instance="a:9100",type="full"}': "-90000+0x1800",
    'tablet_agent_binlog_archive_lag_seconds{instance="a:9100"}': "0+60x1800",
    'tablet_agent_binlog_archive_interval_seconds{instance="a:9100"}': "60+0x1800",
    # archiving off at b: its growing lag is no alert
    'tablet_agent_binlog_archive_lag_seconds{instance="b:9100"}': "0+60x1800",
    'tablet_agent_binlog_archive_interval_seconds{instance="b:9100"}': "0+0x1800",
    'tablet_agent_health_problem{instance="a:9100",problem="last_backup_failed"}': "0x10 1x20 0x30",
    'tablet_agent_health_problem{instance="a:9100",problem="replication_sql_stopped"}': "0x5 1x60",
}
EXPECTED = [
    ("30m", "TabletAgentNoFullBackup", []),  # 25.5 h old
    (
        "75m",  # over 26 h since 60m, held for 10 min
        "TabletAgentNoFullBackup",
        [
            alert(
                "critical",
                "No full backup of a:9100's shard in 26 hours",
                "The newest complete full backup started 1d 2h 15m 0s ago. Check the scheduler "
                "(`tabletctl backup-shard`), `tabletctl status` on the shard's tablets and the last "
                "backup's events (`tabletctl watch`).",
                type="full",
            )
        ],
    ),
    ("8m", "TabletAgentRecoveryPointStale", []),
    (
        "12m",  # over 5 min since 5m, held for 5 min; b has archiving off
        "TabletAgentRecoveryPointStale",
        [
            alert(
                "critical",
                "a:9100: the newest restorable transaction is over 5 minutes old",
                "The newest transaction a point-in-time restore can reach is 12m 0s old: binlog archiving "
                "is behind or failing. Check the agent's log and `tabletctl status`.",
            )
        ],
    ),
    (
        "15m",
        "TabletAgentLastBackupFailed",
        [
            alert(
                "warning",
                "The last backup on a:9100 failed",
                "`tabletctl status` shows the error; `tabletctl watch <id>` replays its events.",
                problem="last_backup_failed",
            )
        ],
    ),
    ("45m", "TabletAgentLastBackupFailed", []),  # a later backup succeeded
    ("20m", "TabletAgentHealthProblem", [health("last_backup_failed"), health("replication_sql_stopped")]),
    ("3m", "TabletAgentHealthProblem", []),
]


@needs_promtool
def test_rules_are_valid() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 rules found" in result.stdout


@needs_promtool
def test_rules_fire_when_they_should(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    cases = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in SERIES.items()],
                "alert_rule_test": [
                    {"eval_time": t, "alertname": name, "exp_alerts": alerts} for t, name, alerts in EXPECTED
                ],
            }
        ],
    }
    path = tmp_path / "cases.yml"
    path.write_text(json.dumps(cases, indent=1))  # YAML is a superset of JSON
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_name_only_exported_problems() -> None:
    text = RULES.read_text()
    for name in ("last_backup_failed", "no_full_backup"):
        assert name in PROBLEM_KINDS
        assert name in text


@pytest.mark.parametrize(
    ("newest", "kind"),
    [
        ("error", "backup_listing_failed"),
        ("none", "no_full_backup"),
        ("old", "backup_too_old"),
        ("fresh", None),
    ],
)
def test_backup_problems_carry_their_kind(newest: str, kind: str | None) -> None:
    """The `problem` label values the rules match come from the same place as Status's sentences."""

    now = time.time()

    def full(age_hours: float) -> BackupEntry:
        when = datetime.fromtimestamp(now - age_hours * 3600, UTC)
        m = Manifest(BackupName="b", BackupTime=format_time(when))
        return BackupEntry(None, m, True, None)  # type: ignore[arg-type]

    state = {
        "error": Newest(None, None, now, error="storage down"),
        "none": Newest(None, None, now),
        "old": Newest(full(30), None, now),
        "fresh": Newest(full(1), None, now),
    }[newest]
    kinds = backup_problem_kinds(state, "ks/0", 24, now)
    assert [k for k, _ in kinds] == ([kind] if kind else [])
    assert all(k in PROBLEM_KINDS for k, _ in kinds)
    assert backup_problems(state, "ks/0", 24, now) == [text for _, text in kinds]
