"""Vitess's replication RPCs and FullStatus, called with stubs compiled from Vitess's own protos, on real
MariaDB replicas and primaries: every field as vttablet fills it (checked against SQL), no field Vitess
does not know, and StopReplication/StartReplication really stop and start the threads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup
from tests.sandbox import Sandbox
from tests.vitess_client import Answer, Poller, call, compile_vitess_stubs
from tests.vitess_topo import vitess_proto_dir

pytestmark = pytest.mark.integration

ZERO_UUID = "00000000-0000-0000-0000-000000000000"
NOT_REPLICA = "no replication status (errno 100) (sqlstate HY000)"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if vitess_proto_dir() is None:
        pytest.skip("shared/vitess-proto is missing: the tests call the agent with Vitess's own stubs")
    return compile_vitess_stubs(tmp_path_factory.mktemp("vitess-stubs"))


def one(stubs: Path, address: str, method: str, **request: Any) -> Answer:
    return call(stubs, address, (method, request))[0]


def rows(sandbox: Sandbox, statement: str) -> list[dict[str, Any]]:
    with sandbox.session() as cur:
        cur.execute(statement)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def variables(sandbox: Sandbox, like: str, status: bool = False) -> dict[str, str]:
    kind = "STATUS" if status else "VARIABLES"
    return {
        str(r["Variable_name"]): str(r["Value"]) for r in rows(sandbox, f"SHOW GLOBAL {kind} LIKE '{like}'")
    }


def file_pos(file: Any, pos: Any) -> str:
    return f"FilePos/{file}:{pos}" if file and pos is not None else ""


def expected_status(row: dict[str, Any], backup_running: bool = False) -> dict[str, Any]:
    """Vitess's ParseReplicationStatus + ParseMariadbReplicationStatus + ReplicationStatusToProto of one
    `SHOW ALL SLAVES STATUS` row, written out field by field."""
    states = {"Yes": 3, "No": 1, "Connecting": 2}
    lag = row["Seconds_Behind_Master"]
    return {
        "position": f"MariaDB/{row['Gtid_Slave_Pos']}",
        "replication_lag_seconds": lag or 0,
        "source_host": row["Master_Host"],
        "source_port": row["Master_Port"],
        "connect_retry": row["Connect_Retry"],
        "relay_log_position": "",  # MariaDB does not expose the relay log's GTID set
        "file_position": file_pos(row["Relay_Master_Log_File"], row["Exec_Master_Log_Pos"]),
        "relay_log_source_binlog_equivalent_position": file_pos(row["Master_Log_File"], row["Read_Master_Log_Pos"]),
        "source_server_id": row["Master_Server_Id"],
        "source_uuid": ZERO_UUID,
        "io_state": states.get(row["Slave_IO_Running"], 0),
        "last_io_error": row["Last_IO_Error"],
        "sql_state": states.get(row["Slave_SQL_Running"], 0),
        "last_sql_error": row["Last_SQL_Error"],
        "relay_log_file_position": file_pos(row["Relay_Log_File"], row["Relay_Log_Pos"]),
        "source_user": row["Master_User"],
        "sql_delay": row["SQL_Delay"],
        "auto_position": False,  # MariaDB has no Auto_Position column
        "using_gtid": row["Using_Gtid"] not in ("", "No"),
        "has_replication_filters": any(row[k] for k in row if k.startswith("Replicate_") and "Domain" not in k
                                       and "Server_Ids" not in k and "Rewrite" not in k),
        "ssl_allowed": row["Master_SSL_Allowed"] == "Yes",
        "replication_lag_unknown": lag is None,
        "backup_running": backup_running,
    }  # fmt: skip


def expected_full_status(sandbox: Sandbox, tablet_type: str) -> dict[str, Any]:
    """What vttablet's FullStatus fills on a MariaDB tablet, from SQL (MariaDB flavor: no server UUID, no
    gtid_mode, no purged set; super_read_only does not exist there)."""
    replica = rows(sandbox, "SHOW ALL SLAVES STATUS")
    master = rows(sandbox, "SHOW MASTER STATUS")
    semi = variables(sandbox, "rpl_semi_sync_%")
    semi_status = variables(sandbox, "Rpl_semi_sync_%", status=True)
    binlog = rows(
        sandbox,
        "SELECT @@global.binlog_format AS f, @@global.log_bin AS b, @@global.log_slave_updates AS u, "
        "@@global.binlog_row_image AS i",
    )[0]
    version = re.match(r"(\d+\.\d+\.\d+)", sandbox.value("SELECT @@global.version"))
    assert version is not None
    return {
        "server_id": int(sandbox.value("SELECT @@global.server_id")),
        "server_uuid": "",
        "replication_status": expected_status(replica[0]) if replica else None,
        "primary_status": {
            "position": f"MariaDB/{sandbox.gtid_binlog_pos()}",
            "file_position": file_pos(master[0]["File"], master[0]["Position"]),
            "server_uuid": "",
        }
        if master
        else None,
        "gtid_purged": "",
        "version": version.group(1),
        "version_comment": sandbox.value("SELECT @@global.version_comment"),
        "read_only": variables(sandbox, "read_only")["read_only"] == "ON",
        "gtid_mode": "",
        "binlog_format": binlog["f"],
        "binlog_row_image": binlog["i"],
        "log_bin_enabled": binlog["b"] == 1,
        "log_replica_updates": binlog["u"] == 1,
        "semi_sync_primary_enabled": semi["rpl_semi_sync_master_enabled"] == "ON",
        "semi_sync_replica_enabled": semi["rpl_semi_sync_slave_enabled"] == "ON",
        "semi_sync_primary_status": semi_status["Rpl_semi_sync_master_status"] == "ON",
        "semi_sync_replica_status": semi_status["Rpl_semi_sync_slave_status"] == "ON",
        "semi_sync_primary_clients": int(semi_status["Rpl_semi_sync_master_clients"]),
        "semi_sync_primary_timeout": int(semi["rpl_semi_sync_master_timeout"]),
        "semi_sync_wait_for_replica_count": 0,  # MariaDB has no such setting
        "super_read_only": False,
        "replication_configuration": {
            "heartbeat_interval": float(replica[0]["Slave_heartbeat_period"]),
            "replica_net_timeout": int(sandbox.value("SELECT @@global.slave_net_timeout")),
        }
        if replica
        else None,
        "disk_stalled": False,
        "semi_sync_blocked": False,
        "tablet_type": tablet_type,
    }


def test_full_status_is_what_vttablet_fills(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, stubs: Path
) -> None:
    pos = primary.write_rows(5)
    replica.wait_for_gtid(pos)
    replica_agent = agent_factory(replica)
    primary_agent = agent_factory(primary, alias="zone1-0000000101", extra=["--init_tablet_type", "PRIMARY"])

    answer = one(stubs, replica_agent.address, "FullStatus")
    assert answer.code == "OK", answer.details
    assert answer.unknown_fields == 0
    assert answer.response is not None
    assert answer.response["status"] == expected_full_status(replica, "REPLICA")
    assert answer.response["status"]["replication_status"]["position"] == f"MariaDB/{pos}"

    answer = one(stubs, primary_agent.address, "FullStatus")
    assert answer.code == "OK", answer.details
    assert answer.unknown_fields == 0
    assert answer.response is not None
    status = answer.response["status"]
    assert status == expected_full_status(primary, "PRIMARY")
    assert status["replication_status"] is None and status["replication_configuration"] is None
    assert status["primary_status"]["position"] == f"MariaDB/{pos}"


def test_replication_rpcs_on_a_replica_and_a_primary(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    stubs: Path,
) -> None:
    pos = primary.write_rows(3)
    replica.wait_for_gtid(pos)
    replica_agent = agent_factory(replica)
    primary_agent = agent_factory(primary, alias="zone1-0000000101", extra=["--init_tablet_type", "PRIMARY"])
    calls = (("ReplicationStatus", {}), ("PrimaryStatus", {}), ("PrimaryPosition", {}))

    status, prim, position = call(stubs, replica_agent.address, *calls)
    assert status.code == "OK" and status.unknown_fields == 0 and status.response is not None
    assert status.response["status"] == expected_status(rows(replica, "SHOW ALL SLAVES STATUS")[0])
    assert status.response["status"]["position"] == f"MariaDB/{pos}"
    master = rows(replica, "SHOW MASTER STATUS")[0]
    assert prim.code == "OK" and prim.response is not None
    assert prim.response["status"] == {
        "position": f"MariaDB/{replica.gtid_binlog_pos()}",
        "file_position": f"FilePos/{master['File']}:{master['Position']}",
        "server_uuid": "",
    }
    assert position.response == {"position": f"MariaDB/{replica.gtid_binlog_pos()}"}

    # a primary has no replication status: vttablet's ErrNotReplica, code UNKNOWN, errno 100 in the text
    status, prim, position = call(stubs, primary_agent.address, *calls)
    assert status.code == "UNKNOWN" and status.details.startswith(NOT_REPLICA), status
    assert prim.code == "OK" and prim.response is not None
    assert prim.response["status"]["position"] == f"MariaDB/{pos}"
    assert position.response == {"position": f"MariaDB/{pos}"}

    # without binlogs there is no primary status (vttablet: "no master status") and an empty position
    nolog = sandbox_factory(extra_options=["skip-log-bin"])
    nolog_agent = agent_factory(nolog, alias="zone1-0000000109")
    status, prim, position = call(stubs, nolog_agent.address, *calls)
    assert status.code == "UNKNOWN" and status.details.startswith(NOT_REPLICA)
    assert prim.code == "UNKNOWN" and prim.details.startswith("no master status"), prim
    assert position.response == {"position": "MariaDB/"}


def test_stop_and_start_replication(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, stubs: Path
) -> None:
    agent = agent_factory(replica)
    stopped, status = call(stubs, agent.address, ("StopReplication", {}), ("ReplicationStatus", {}))
    assert stopped.code == "OK", stopped.details
    sql = replica.replica_status()
    assert sql["Slave_IO_Running"] == "No" and sql["Slave_SQL_Running"] == "No"
    assert status.response is not None
    assert status.response["status"]["io_state"] == 1 and status.response["status"]["sql_state"] == 1
    pos = primary.write_rows(4)
    assert replica.value("SELECT MASTER_GTID_WAIT(%s, 0.5)", (pos,)) == -1  # nothing applied while stopped

    started = one(stubs, agent.address, "StartReplication", semiSync=False)
    assert started.code == "OK", started.details
    replica.wait_replicating()
    replica.wait_for_gtid(pos)
    semi = variables(replica, "rpl_semi_sync_%_enabled")
    assert semi == {"rpl_semi_sync_master_enabled": "OFF", "rpl_semi_sync_slave_enabled": "OFF"}

    # semiSync: the replica side on, the source side only on a PRIMARY (this tablet is a REPLICA)
    assert one(stubs, agent.address, "StopReplication").code == "OK"
    assert one(stubs, agent.address, "StartReplication", semiSync=True).code == "OK"
    replica.wait_replicating()
    semi = variables(replica, "rpl_semi_sync_%_enabled")
    assert semi == {"rpl_semi_sync_master_enabled": "OFF", "rpl_semi_sync_slave_enabled": "ON"}
    assert one(stubs, agent.address, "StartReplication").code == "OK"  # already running: still fine
    assert variables(replica, "rpl_semi_sync_slave_enabled") == {"rpl_semi_sync_slave_enabled": "OFF"}

    # a tablet without a source: STOP is a no-op (as STOP SLAVE), START says how to configure one
    primary_agent = agent_factory(primary, alias="zone1-0000000101")
    stop, start = call(stubs, primary_agent.address, ("StopReplication", {}), ("StartReplication", {}))
    assert stop.code == "OK"
    assert start.code == "FAILED_PRECONDITION" and "CHANGE MASTER TO" in start.details


def test_backup_running_while_a_backup_runs(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory, stubs: Path, tmp_path: Path
) -> None:
    """A builtin backup stops mysqld while it copies (FullStatus then fails UNAVAILABLE, as vttablet's
    would); before, and after while it verifies the backup, mysqld answers and backup_running is set."""
    replica.wait_for_gtid(primary.write_rows(5000))
    agent = agent_factory(
        replica, extra=["--backup_engine_implementation", "builtin", "--verify_after_backup", "deep"]
    )
    before = one(stubs, agent.address, "FullStatus")
    assert before.response is not None
    assert before.response["status"]["replication_status"]["backup_running"] is False

    poller = Poller(stubs, agent.address, tmp_path / "stop", ("FullStatus", {}), ("ReplicationStatus", {}))
    backup(agent)
    answers = poller.stop()

    full = [a for a in answers[0::2] if a.code == "OK" and a.response is not None]
    during = [
        a.response["status"]
        for a in full
        if a.response and a.response["status"]["replication_status"]["backup_running"]
    ]
    assert during, f"no FullStatus saw the backup running: {[a.code for a in answers[0::2]]}"
    assert all(s["tablet_type"] == "BACKUP" for s in during)  # builtin takes the tablet out of serving
    assert {a.code for a in answers} <= {"OK", "UNAVAILABLE"}
    down = [a.details for a in answers if a.code == "UNAVAILABLE"]
    assert all("needs a running mysqld" in d and "the running backup" in d for d in down), down[:2]
    assert any(
        a.response and a.response["status"]["backup_running"] for a in answers[1::2] if a.code == "OK"
    ), "no ReplicationStatus saw the backup running"

    after = one(stubs, agent.address, "FullStatus")
    assert after.response is not None
    assert after.response["status"]["replication_status"]["backup_running"] is False
    assert after.response["status"]["tablet_type"] == "REPLICA"
