"""The daemon's log is quiet and structured: a backup of thousands of tables is a few INFO lines (phases,
progress summaries, the outcome), and every line on stderr is one JSON object when JSON is on, through a
builtin backup, an xtrabackup backup and a point-in-time restore (the libraries' own logging included)."""

from __future__ import annotations

import json

from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, restore
from tests.sandbox import Sandbox

TABLES = 3000
XTRA = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]


def log_records(text: str) -> list[dict[str, object]]:
    records = []
    for line in text.splitlines():
        assert line.startswith("{"), f"not a JSON line: {line!r}"
        records.append(json.loads(line))
    return records


def test_a_backup_of_thousands_of_tables_logs_a_few_info_lines(
    replica: Sandbox, agent_factory: AgentFactory
) -> None:
    with replica.session() as cur:
        cur.execute("SET sql_log_bin = 0")
        cur.execute("CREATE DATABASE many")
        for i in range(TABLES):
            cur.execute(f"CREATE TABLE many.t{i} (id INT PRIMARY KEY) ENGINE=InnoDB")
    agent = agent_factory(replica)
    events = backup(agent, timeout=600)
    records = log_records(agent.log())
    info = [r for r in records if r.get("level") == "info" and r.get("op")]
    assert len(info) <= 30, [r["event"] for r in info]
    assert len(events) <= 30, events
    assert any("copying" in str(r["event"]) for r in info)


def test_every_line_is_json_through_backups_and_a_point_in_time_restore(
    primary: Sandbox, sandbox_factory: SandboxFactory, agent_factory: AgentFactory
) -> None:
    primary.write_rows(50)
    agent = agent_factory(
        primary,
        alias="zone1-0000000101",
        extra=[*XTRA, "--init_tablet_type", "PRIMARY", "--log_level", "debug"],
    )
    backup(agent, allow_primary=True)
    backup(agent, allow_primary=True, backup_engine="builtin")
    primary.write_rows(20)
    backup(agent, allow_primary=True, incremental_from_pos="auto")
    fresh = sandbox_factory()
    target = agent_factory(fresh, alias="zone1-0000000105", extra=["--log_level", "debug"])
    restore(target, restore_to_pos="MariaDB/" + primary.gtid_binlog_pos())
    for a in (agent, target):
        records = log_records(a.log())
        assert any(r.get("level") == "debug" for r in records), "debug lines are JSON too"
    assert any("stderr" in str(r.get("event")) for r in log_records(agent.log())), "the tool's lines"
