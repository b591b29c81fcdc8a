import json
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent.catalog.manifest import (
    AgentInfo,
    FileBase,
    FileEntry,
    IncrementalDetails,
    Manifest,
    StoredObject,
    backup_name,
    format_time,
    manifest_pieces,
    manifest_to_json,
    parse_manifest,
    parse_time,
    validate_file_entries,
)
from agent.errors import DataLoss, InvalidArgument

# As Vitess's builtin engine writes it (json.MarshalIndent, Go field names).
VITESS_BUILTIN = """{
  "BackupMethod": "builtin",
  "Position": "MySQL56/16b1039f-22b6-11ed-b765-0a43f95f28a3:1-615",
  "PurgedPosition": "",
  "FromPosition": "",
  "FromBackup": "",
  "Incremental": false,
  "BackupTime": "2026-11-23T18:45:00Z",
  "FinishedTime": "2026-11-23T18:47:12Z",
  "ServerUUID": "16b1039f-22b6-11ed-b765-0a43f95f28a3",
  "TabletAlias": "zone1-0000000102",
  "Keyspace": "commerce",
  "Shard": "0",
  "BackupName": "2026-11-23.184500.zone1-0000000102",
  "MySQLVersion": "8.0.34",
  "UpgradeSafe": false,
  "IncrementalDetails": null,
  "CompressionEngine": "pargzip",
  "FileEntries": [
    {"Base": "InnoDBData", "Name": "ibdata1", "Hash": "6c4b04e4", "ParentPath": "", "RetryCount": 0},
    {"Base": "Data", "Name": "commerce/corder.ibd", "Hash": "0f9c8e3a", "ParentPath": ""}
  ],
  "SkipCompress": false,
  "ExternalDecompressor": "",
  "BackupDuration": "2m12s"
}"""

VITESS_XTRABACKUP = {
    "BackupName": "2026-11-23.184500.zone1-0000000102",
    "BackupMethod": "xtrabackup",
    "Position": "MariaDB/0-1-100",
    "BackupTime": "2026-11-23T18:45:00Z",
    "FileName": "backup.xbstream.gz",
    "ExtraCommandLineParams": "",
    "CompressionEngine": "pgzip",
    "StreamMode": "xbstream",
    "NumStripes": 4,
    "StripeBlockSize": 102400,
    "SkipCompress": False,
    "ExternalDecompressor": "",
}


def test_reads_a_vitess_builtin_manifest_and_writes_it_back_with_unknown_keys() -> None:
    m = parse_manifest(VITESS_BUILTIN.encode(), backup="commerce/0/x")
    assert m.engine == "builtin"
    assert m.position.startswith("MySQL56/")
    assert m.compression_engine == "pargzip"
    assert m.file_entries is not None
    assert m.file_entries[1] == FileEntry(Base=FileBase.DATA, Name="commerce/corder.ibd", Hash="0f9c8e3a")
    assert m.backup_datetime == datetime(2026, 11, 23, 18, 45, tzinfo=UTC)
    again = json.loads(manifest_to_json(m))
    assert again == json.loads(VITESS_BUILTIN) | {"Hostname": ""}


def test_reads_a_vitess_xtrabackup_manifest_and_omits_builtin_keys() -> None:
    m = parse_manifest(json.dumps(VITESS_XTRABACKUP).encode())
    assert (m.file_name, m.num_stripes, m.stripe_block_size, m.stream_mode) == (
        "backup.xbstream.gz",
        4,
        102400,
        "xbstream",
    )
    out = json.loads(manifest_to_json(m))
    assert "FileEntries" not in out
    assert out["NumStripes"] == 4


def test_written_json_has_go_field_names_and_vitess_indentation() -> None:
    m = Manifest(
        BackupName="2026-11-23.184500.zone1-0000000102",
        BackupMethod="builtin",
        Position="MariaDB/0-1-100,1-2-7",
        BackupTime=format_time(datetime(2026, 11, 23, 18, 45, tzinfo=UTC)),
        IncrementalDetails=None,
        FileEntries=[
            FileEntry(
                Base=FileBase.INNODB_DATA,
                Name="ibdata1",
                Hash="00000000",
                Sha256="ab" * 32,
                Size=1,
                StoredSize=9,
            )
        ],
        SkipCompress=False,
        ExternalDecompressor="",
        TabletAgent=AgentInfo(Version="0.1.0"),
    )
    text = manifest_to_json(m).decode()
    assert text.startswith(
        '{\n  "BackupName": "2026-11-23.184500.zone1-0000000102",\n  "BackupMethod": "builtin"'
    )
    data = json.loads(text)
    assert "CompressionEngine" not in data  # omitempty, as Go
    assert data["IncrementalDetails"] is None
    assert data["BackupTime"] == "2026-11-23T18:45:00Z"
    assert data["FileEntries"][0] == {
        "Base": "InnoDBData",
        "Name": "ibdata1",
        "Hash": "00000000",
        "ParentPath": "",
        "Sha256": "ab" * 32,
        "Size": 1,
        "StoredSize": 9,
    }
    for key in ("FileName", "NumStripes", "StripeBlockSize", "StreamMode", "ExtraCommandLineParams"):
        assert key not in data
    assert data["TabletAgent"] == {"Version": "0.1.0", "Objects": []}
    assert parse_manifest(text.encode()) == m


def test_incremental_details_and_stripe_hashes_round_trip() -> None:
    m = Manifest(
        BackupMethod="xtrabackup",
        Incremental=True,
        IncrementalDetails=IncrementalDetails(
            FirstTimestamp="2026-11-23T18:00:00Z", LastTimestampBinlog="b.2"
        ),
        TabletAgent=AgentInfo(
            Version="0.1.0",
            Objects=[
                StoredObject(Name="backup.xbstream.zst-000", Size=10, StoredSize=5, Crc32="1", Sha256="2")
            ],
        ),
    )
    data = json.loads(manifest_to_json(m))
    assert data["IncrementalDetails"] == {
        "FirstTimestamp": "2026-11-23T18:00:00Z",
        "FirstTimestampBinlog": "",
        "LastTimestamp": "",
        "LastTimestampBinlog": "b.2",
    }
    assert parse_manifest(manifest_to_json(m)) == m


def test_null_means_zero_value_as_in_go() -> None:
    m = parse_manifest(b'{"BackupMethod": null, "Incremental": null, "IncrementalDetails": null}')
    assert m.engine == "builtin" and m.incremental is False and m.incremental_details is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "MANIFEST of backup ks/0/b is not valid JSON"),
        (b"[1, 2]", "MANIFEST of backup ks/0/b is not a JSON object"),
        (b'{"Incremental": "perhaps"}', "MANIFEST of backup ks/0/b is invalid: Incremental"),
        (b'{"FileEntries": [{"Base": "Etc", "Name": "x"}]}', "FileEntries.0.Base"),
        (b'{"FileEntries": [{"Base": "Data", "Name": "../../etc/cron.d/x"}]}', "unsafe Name"),
        (b"", "not valid JSON"),
    ],
)
def test_unusable_manifests_are_data_loss_naming_the_backup(data: bytes, message: str) -> None:
    with pytest.raises(DataLoss, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_manifest(data, backup="ks/0/b")


def test_oversized_manifest_is_refused() -> None:
    with pytest.raises(DataLoss, match="over the 64 MiB limit"):
        parse_manifest(b" " * ((64 << 20) + 1), backup="ks/0/b")


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "..", "a/../../b", "a/./b", "a//b", "", "a\x00b", "a\\..\\b", "db/", "./x"]
)
def test_unsafe_file_entry_names_are_refused(name: str) -> None:
    with pytest.raises(DataLoss, match="outside the restore target"):
        validate_file_entries([FileEntry(Base=FileBase.DATA, Name=name)])


def test_file_entry_checks_parent_path_duplicates_and_count() -> None:
    with pytest.raises(DataLoss, match="unsafe ParentPath"):
        validate_file_entries([FileEntry(Base=FileBase.DATA, Name="x", ParentPath="/tmp/evil")])
    fe = FileEntry(Base=FileBase.DATA, Name="db/t.ibd")
    with pytest.raises(DataLoss, match=r"repeats Data/db/t\.ibd"):
        validate_file_entries([fe, fe])
    with pytest.raises(DataLoss, match="more than the limit of 1000000"):
        validate_file_entries([fe] * 1_000_001)
    validate_file_entries(
        [
            fe,
            FileEntry(Base=FileBase.INNODB_DATA, Name="db/t.ibd"),
            FileEntry(Base=FileBase.BINLOG, Name="b.1"),
        ]
    )


def test_backup_name_is_utc() -> None:
    t = datetime(2026, 11, 23, 19, 45, 0, tzinfo=timezone(timedelta(hours=1)))
    assert backup_name(t, "zone1-0000000102") == "2026-11-23.184500.zone1-0000000102"
    with pytest.raises(InvalidArgument):
        backup_name(datetime(2026, 11, 23), "zone1-0000000102")
    with pytest.raises(InvalidArgument):
        backup_name(t, "../x")


def test_times_are_rfc3339_utc() -> None:
    t = datetime(2026, 11, 23, 19, 45, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(t) == "2026-11-23T18:45:00Z"
    assert parse_time("2026-11-23T18:45:00Z") == datetime(2026, 11, 23, 18, 45, tzinfo=UTC)
    assert parse_time("2026-11-23T19:45:00.5+01:00") == datetime(2026, 11, 23, 18, 45, 0, 500000, tzinfo=UTC)
    for bad in ("2026-11-23", "2026-11-23T18:45:00", "yesterday"):
        with pytest.raises(ValueError):
            parse_time(bad)
    assert Manifest(BackupTime="garbage").backup_datetime is None


def test_python_names_and_go_names_both_work() -> None:
    assert Manifest(BackupMethod="xtrabackup") == Manifest.model_validate({"BackupMethod": "xtrabackup"})


def test_server_fields_are_filled_as_vitess_fills_them_per_flavor() -> None:
    from agent.ops.backup import qualified_hostname, vitess_server_fields
    from engines.base import BackupOutcome

    def outcome(position: str, purged: str, uuid: str) -> BackupOutcome:
        return BackupOutcome(position, purged, uuid, "Ver 10.11.6-MariaDB", {})

    mariadb = outcome("MariaDB/0-1-9", "MariaDB/0-1-3", "PWQzODNmYjM5NjY2")
    assert vitess_server_fields(mariadb) == ("", "")
    uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
    mysql = outcome(f"MySQL56/{uuid}:1-9", f"MySQL56/{uuid}:1-3", uuid)
    assert vitess_server_fields(mysql) == (f"MySQL56/{uuid}:1-3", uuid)
    assert qualified_hostname()


def test_manifest_pieces_are_the_whole_dump_in_little_memory() -> None:
    entries = [
        FileEntry(
            Base="Data",
            Name=f"db/t{i}.ibd",
            Hash=f"{i:08x}",
            ParentPath="sub" if i % 3 else "",
            Sha256="ab" * 32 if i % 2 else None,
            Size=i,
            StoredSize=i // 2,
        )
        for i in range(5000)
    ]
    for m in (
        Manifest(BackupName="b", CompressionEngine="zstd", FileEntries=entries),
        Manifest(BackupName="b", FileEntries=[]),
        Manifest(BackupName="b"),
    ):
        whole = json.dumps(m.model_dump(mode="json", by_alias=True), indent=2, ensure_ascii=False).encode()
        assert manifest_to_json(m) == whole
        assert b"".join(manifest_pieces(m, size=1000)) == whole
    tracemalloc.start()
    try:
        for _ in manifest_pieces(Manifest(BackupName="b", FileEntries=entries)):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20  # the entries as dicts, or the encoder's fragments, would be several MB
