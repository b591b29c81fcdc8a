"""The gRPC contract: Vitess's packages, names and field numbers, checked with hand-encoded bytes."""

from agent.pb import logutil_pb2, tabletmanagerdata_pb2, tabletmanagerservice_pb2, topodata_pb2, vttime_pb2
from tests.wire import field_bytes, field_varint


def test_method_paths_are_vitess_ones() -> None:
    service = tabletmanagerservice_pb2.DESCRIPTOR.services_by_name["TabletManager"]
    assert service.full_name == "tabletmanagerservice.TabletManager"
    methods = {
        m.name: (m.input_type.full_name, m.output_type.full_name, m.server_streaming) for m in service.methods
    }
    assert methods["Ping"] == ("tabletmanagerdata.PingRequest", "tabletmanagerdata.PingResponse", False)
    assert methods["Backup"] == ("tabletmanagerdata.BackupRequest", "tabletmanagerdata.BackupResponse", True)
    assert methods["RestoreFromBackup"] == (
        "tabletmanagerdata.RestoreFromBackupRequest",
        "tabletmanagerdata.RestoreFromBackupResponse",
        True,
    )


def test_backup_request_decodes_from_raw_field_numbers() -> None:
    duration = field_varint(1, 42) + field_varint(2, 5)
    init_sql = (
        field_bytes(1, "SELECT 1")
        + field_bytes(2, bytes([2, 3]))
        + field_bytes(3, duration)
        + field_varint(4, 1)
    )
    raw = (
        field_varint(1, 8)
        + field_varint(2, 1)
        + field_bytes(3, "MariaDB/0-1-5")
        + field_varint(4, 1)
        + field_bytes(5, "xtrabackup")
        + field_bytes(6, duration)
        + field_bytes(7, init_sql)
    )
    req = tabletmanagerdata_pb2.BackupRequest.FromString(raw)
    assert req.concurrency == 8
    assert req.allow_primary
    assert req.incremental_from_pos == "MariaDB/0-1-5"
    assert req.upgrade_safe
    assert req.HasField("backup_engine") and req.backup_engine == "xtrabackup"
    assert (req.mysql_shutdown_timeout.seconds, req.mysql_shutdown_timeout.nanos) == (42, 5)
    assert list(req.init_sql.queries) == ["SELECT 1"]
    assert list(req.init_sql.tablet_types) == [topodata_pb2.REPLICA, topodata_pb2.RDONLY]
    assert req.init_sql.timeout.seconds == 42 and req.init_sql.fail_on_error
    assert req.SerializeToString() == raw


def test_restore_request_decodes_from_raw_field_numbers() -> None:
    time_ = field_varint(1, 1_700_000_000) + field_varint(2, 7)
    raw = (
        field_bytes(1, time_)
        + field_bytes(2, "MySQL56/3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5")
        + field_varint(3, 1)
        + field_bytes(4, time_)
        + field_bytes(5, "builtin")
        + field_bytes(5, "xtrabackup")
    )
    req = tabletmanagerdata_pb2.RestoreFromBackupRequest.FromString(raw)
    assert (req.backup_time.seconds, req.backup_time.nanoseconds) == (1_700_000_000, 7)
    assert req.restore_to_pos.startswith("MySQL56/3e11fa47")
    assert req.dry_run
    assert req.restore_to_timestamp.seconds == 1_700_000_000
    assert list(req.allowed_backup_engines) == ["builtin", "xtrabackup"]


def test_event_and_enums_match_vitess() -> None:
    raw = (
        field_bytes(1, field_varint(1, 10) + field_varint(2, 20))
        + field_varint(2, 1)
        + field_bytes(3, "backup.go")
        + field_varint(4, 77)
        + field_bytes(5, "hello")
    )
    ev = logutil_pb2.Event.FromString(raw)
    assert (ev.time.seconds, ev.time.nanoseconds, ev.level, ev.file, ev.line, ev.value) == (
        10, 20, logutil_pb2.WARNING, "backup.go", 77, "hello",
    )  # fmt: skip
    assert [logutil_pb2.Level.Name(i) for i in range(4)] == ["INFO", "WARNING", "ERROR", "CONSOLE"]
    names = [
        "UNKNOWN",
        "PRIMARY",
        "REPLICA",
        "RDONLY",
        "SPARE",
        "EXPERIMENTAL",
        "BACKUP",
        "RESTORE",
        "DRAINED",
    ]
    assert [topodata_pb2.TabletType.Name(i) for i in range(9)] == names
    assert vttime_pb2.Duration.DESCRIPTOR.full_name == "vttime.Duration"
    assert tabletmanagerdata_pb2.BackupResponse.DESCRIPTOR.fields_by_name["event"].number == 1
