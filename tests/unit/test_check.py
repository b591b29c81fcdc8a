"""The set-up checks that need no mysqld: grants as SHOW GRANTS prints them, ports, the storage round
trip, the state directory, compression and commands."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from agent.config import AgentConfig, build_config
from agent.ops import check
from agent.ops.check import State
from agent.storage.base import BackupHandle
from agent.storage.file import FileBackupStorage


def config(tmp_path: Path, **settings: str) -> AgentConfig:
    return build_config(
        {"tablet_alias": "zone1-102", "init_keyspace": "ks", "init_shard": "0",
         "mycnf_file": str(tmp_path / "my.cnf"), "file_backup_storage_root": str(tmp_path / "b"), **settings},
        environ={},
    )  # fmt: skip


def test_global_grants_with_old_and_new_names() -> None:
    lines = [
        "GRANT RELOAD, PROCESS, REPLICATION CLIENT ON *.* TO `xb`@`localhost` IDENTIFIED BY PASSWORD '*AB'",
        "GRANT SELECT ON `mysql`.* TO `xb`@`localhost`",
        "GRANT `backup_role` TO `xb`@`localhost`",
        "SET DEFAULT ROLE `backup_role` FOR `xb`@`localhost`",
        "GRANT REPLICA MONITOR,REPLICATION REPLICA ADMIN ON *.* TO `backup_role`",
    ]
    assert check.parse_global_grants(lines) == {
        "RELOAD", "PROCESS", "BINLOG MONITOR", "SLAVE MONITOR", "REPLICATION SLAVE ADMIN",
    }  # fmt: skip
    assert check.parse_global_grants(
        ["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"]
    ) == {"ALL"}
    assert check.parse_global_grants(["GRANT USAGE ON *.* TO `nobody`@`%`"]) == {"USAGE"}


def test_a_listening_port_is_busy_and_a_free_one_is_not() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert check.port_problem("127.0.0.1", port) == "the port is in use"
    assert check.port_problem("127.0.0.1", port) == ""
    assert check.port_problem("192.0.2.1", port)  # not an address of this host


def test_the_storage_round_trip_leaves_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    result = asyncio.run(check.storage_round_trip(FileBackupStorage(tmp_path / "b"), cfg))
    assert result.state is State.OK, result
    assert list((tmp_path / "b" / "ks" / "0").iterdir()) == []


def test_a_storage_root_that_is_a_file_fails_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "b").write_text("not a directory")
    result = asyncio.run(check.storage_round_trip(FileBackupStorage(tmp_path / "b"), config(tmp_path)))
    assert result.state is State.FAIL
    assert result.detail.startswith(f"cannot create a probe backup in file:{tmp_path / 'b'} (ks/0)")
    assert "--file_backup_storage_root" in result.fix


def test_a_store_that_does_not_answer_fails_the_check_but_only_warns_at_start(tmp_path: Path) -> None:
    from agent.errors import StorageUnreachable

    class Unreachable(FileBackupStorage):
        async def start_backup(self, directory: str, name: str) -> BackupHandle:
            raise StorageUnreachable("HEAD on s3:b failed after 5 attempts: Connection refused")

    storage = Unreachable(tmp_path / "b")
    checked = asyncio.run(check.storage_round_trip(storage, config(tmp_path)))
    assert checked.state is State.FAIL and checked.detail.startswith("cannot reach file:")
    at_start = asyncio.run(check.storage_round_trip(storage, config(tmp_path), unreachable=State.WARN))
    assert at_start.state is State.WARN and "Connection refused" in at_start.detail


def test_state_dir_is_created_and_a_file_in_the_way_fails(tmp_path: Path) -> None:
    assert check.state_dir(tmp_path / "state" / "deep").state is State.OK
    assert (tmp_path / "state" / "deep").is_dir()
    (tmp_path / "file").write_text("")
    result = check.state_dir(tmp_path / "file" / "state")
    assert result.state is State.FAIL and "--state_dir" in result.fix


@pytest.mark.parametrize(
    ("settings", "detail"),
    [
        ({"compression_engine_name": "zst"}, "unknown compression engine 'zst'"),
        (
            {"compression_engine_name": "lz4", "compression_level": "99"},
            "invalid compression level 99 for lz4",
        ),
    ],
)
def test_compression_is_built_at_start(tmp_path: Path, settings: dict[str, str], detail: str) -> None:
    result = check.compression(config(tmp_path, **settings))
    assert result.state is State.FAIL and detail in result.detail
    assert check.compression(config(tmp_path)).line() == "compression: zstd level 1"


def test_external_commands_and_the_start_command_must_resolve(tmp_path: Path) -> None:
    ext = config(tmp_path, compression_engine_name="external", external_compressor="no-such-zstd -c",
                 external_decompressor="zstd -d -c")  # fmt: skip
    compressor, _ = check.external_commands(ext)
    assert compressor.state is State.FAIL and "'no-such-zstd'" in compressor.detail
    bad = check.start_command(config(tmp_path, mysqld_start_command="/no/such/mariadbd --x"))
    assert bad.state is State.FAIL and "--mysqld_start_command" in bad.fix
    assert check.start_command(config(tmp_path, mysqld_start_command="true")).state is State.OK
