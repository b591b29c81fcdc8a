"""Vitess's FullStatus RPC on a real replica and primary, read with our own generated messages (the
field-by-field comparison with Vitess's messages is in test_replication_rpcs.py)."""

from __future__ import annotations

import pytest

from agent.pb import tabletmanagerdata_pb2, topodata_pb2
from tests.integration.conftest import AgentFactory
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration


def full_status(agent) -> object:
    with agent.channel() as ch:
        return agent.stub(ch).FullStatus(tabletmanagerdata_pb2.FullStatusRequest(), timeout=10).status


def test_full_status_of_a_replica_and_its_primary(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory
) -> None:
    pos = primary.write_rows(5)
    replica.wait_for_gtid(pos)
    s = full_status(agent_factory(replica))
    # MariaDB, as Vitess's MariaDB flavor reports it: no server UUID, GTID mode or purged set
    assert s.server_id == replica.server_id and s.server_uuid == ""
    assert s.log_bin_enabled and s.log_replica_updates and s.binlog_format == "ROW"
    assert s.version.count(".") == 2 and s.version.replace(".", "").isdigit()
    assert s.gtid_purged == "" and s.gtid_mode == ""
    assert s.tablet_type == topodata_pb2.REPLICA
    assert s.replication_configuration.replica_net_timeout > 0
    r = s.replication_status
    assert r.source_host == "127.0.0.1" and r.source_port == primary.port
    assert r.io_state == 3 and r.sql_state == 3 and not r.backup_running
    assert r.position == f"MariaDB/{pos}" and r.using_gtid and not r.replication_lag_unknown
    assert r.file_position.startswith("FilePos/binlog.")
    assert s.primary_status.position == f"MariaDB/{pos}"
    assert s.primary_status.file_position.startswith("FilePos/binlog.")

    p = full_status(agent_factory(primary, alias="zone1-0000000101"))
    assert p.server_id == primary.server_id and not p.read_only
    assert not p.HasField("replication_status")
    assert p.primary_status.position == f"MariaDB/{pos}"
