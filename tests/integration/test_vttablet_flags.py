"""vttablet's way of running the agent: a vttablet flag file with every backup flag starts it, Vitess's
JSON credentials file works, and `--restore_from_backup` restores a new tablet at start (waiting for a
first backup when asked), but never a tablet that holds data."""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.pb import agentdata_pb2
from tests.agent_process import AgentProcess
from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, complete_backups
from tests.sandbox import Sandbox

# vttablet's backup-related flags, each with a value a flag file of vttablet's could carry.
VTTABLET_BACKUP_FLAGS = """
--backup_engine_implementation=builtin
--backup_storage_block_size=250000
--backup_storage_compress=true
--backup_storage_number_blocks=2
--builtinbackup_mysqld_timeout=10m
--builtinbackup_progress=5s
--builtinbackup-file-read-buffer-size=0
--builtinbackup-file-write-buffer-size=2097152
--compression-engine-name=pgzip
--compression-level=1
--external-compressor=
--external-compressor-extension=
--external-decompressor=
--manifest-external-decompressor=
--restore_concurrency=4
--restore_from_backup=false
--restore_from_backup_ts=
--restore-to-pos=
--restore-to-timestamp=
--restore-from-backup-allowed-engines=
--wait_for_backup_interval=0
--incremental_restore_path=
--xbstream_restore_flags=
--xtrabackup_backup_flags=
--xtrabackup_prepare_flags=
--xtrabackup_root_path=
--xtrabackup_stream_mode=xbstream
--xtrabackup_stripe_block_size=102400
--xtrabackup_stripes=0
--xtrabackup_user=
--s3_backup_aws_endpoint=
--s3_backup_aws_region=us-east-1
--s3_backup_aws_retries=-1
--s3_backup_aws_min_partsize=5242880
--s3_backup_force_path_style=false
--s3_backup_log_level=LogOff
--s3_backup_server_side_encryption=
--s3_backup_storage_bucket=
--s3_backup_storage_root=
--s3_backup_tls_skip_verify_cert=false
--gcs_backup_storage_bucket=
--gcs_backup_storage_root=
--azblob_backup_account_name=
--azblob_backup_account_key_file=
--azblob_backup_container_name=
--azblob_backup_storage_root=
--azblob_backup_parallelism=1
--azblob_backup_buffer_size=104857600
--ceph_backup_storage_config=
--mysql_shutdown_timeout=5m
--db-credentials-server=file
--init_db_name_override=
"""


def test_a_vttablet_flag_file_with_every_backup_flag_starts_the_agent(
    replica: Sandbox, agent_factory: AgentFactory, tmp_path: Path, storage_root: Path
) -> None:
    flags = tmp_path / "vttablet.flags"
    flags.write_text("# vttablet flags\n" + VTTABLET_BACKUP_FLAGS)
    agent = agent_factory(replica, extra=["--flagfile", str(flags)])
    backup(agent)
    (done,) = complete_backups(storage_root)
    assert json.loads((done / "MANIFEST").read_text())["CompressionEngine"] == "pgzip", (
        "the file's flags apply"
    )
    log = agent.log()
    for ignored in ("backup_storage_block_size", "builtinbackup_progress", "s3_backup_log_level"):
        assert f"--{ignored} is accepted for vttablet compatibility and ignored" in log


def test_vitess_json_credentials_file(replica: Sandbox, agent_factory: AgentFactory, tmp_path: Path) -> None:
    replica.sql("CREATE USER IF NOT EXISTS 'vt_dba'@'localhost' IDENTIFIED BY 'dba-secret'")
    replica.sql("GRANT ALL ON *.* TO 'vt_dba'@'localhost' WITH GRANT OPTION")
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"vt_dba": ["dba-secret"]}))
    creds.chmod(0o600)
    agent = agent_factory(replica, extra=["--db-credentials-file", str(creds)])
    with agent.channel() as ch:
        status = agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10)
    assert status.mysqld.running, status.mysqld.error
    assert "dba-secret" not in agent.log()


def _wait_restored(agent: AgentProcess, timeout: float = 120) -> agentdata_pb2.StatusResponse:
    deadline = time.monotonic() + timeout
    with agent.channel() as ch:
        while time.monotonic() < deadline:
            status = agent.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10)
            if status.restored_to:
                return status
            time.sleep(0.3)
    raise AssertionError(f"no restore at start:\n{agent.log()[-3000:]}")


def test_restore_from_backup_at_start_waits_for_a_backup_and_spares_a_tablet_with_data(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
) -> None:
    primary.write_rows(42)
    replica.wait_for_gtid(primary.gtid_binlog_pos())
    fresh = sandbox_factory()
    waiting = agent_factory(
        fresh, alias="zone1-0000000105", extra=["--restore_from_backup", "--wait_for_backup_interval", "1s"]
    )
    time.sleep(2)
    assert "no backup in ks/0 yet" in waiting.log()
    backup(agent_factory(replica))
    status = _wait_restored(waiting)
    assert "backup" in status.restored_to
    assert int(fresh.value("SELECT COUNT(*) FROM test.t")) == 42
    waiting.stop()
    # a restart of the same tablet finds data and does not restore again
    again = agent_factory(fresh, alias="zone1-0000000105", extra=["--restore_from_backup"])
    time.sleep(2)
    assert "already holds data" in again.log()
    with again.channel() as ch:
        assert not again.stub(ch).Status(agentdata_pb2.StatusRequest(), timeout=10).restored_to
