"""The xtrabackup engine's pure parts: settings, finding the tools, argv, the password file, reading the
tool's stderr, and the stored layout a MANIFEST describes."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.aio.procs import ProcessError
from agent.catalog.manifest import AgentInfo, Manifest, StoredObject
from agent.config import AgentConfig
from agent.errors import DataLoss, FailedPrecondition, InvalidArgument
from agent.mysql.client import Credentials
from agent.operations import Kind, Operation
from engines.base import RestoreTargets
from engines.xtrabackup import XtrabackupEngine
from engines.xtrabackup_layout import layout_of, object_records
from engines.xtrabackup_restore import check_binlog_info, fix_ownership
from engines.xtrabackup_tool import (
    PASSWORD_ENV,
    Settings,
    StreamMode,
    ToolOutput,
    Tools,
    backup_argv,
    child_env,
    extract_argv,
    find_tool,
    move_back_argv,
    option_file_text,
    parse_binlog_info,
    password_for,
    settings_from,
    write_option_file,
)

# The end of a real `mariabackup --backup --slave-info --safe-slave-backup` run (10.11).
MARIABACKUP_TAIL = """\
[00] 2026-11-23 22:56:47 Slave is safe to backup
[00] 2026-11-23 22:56:48 All tables unlocked
[00] 2026-11-23 22:56:48 Starting slave SQL thread
[00] 2026-11-23 22:56:48 Backup created in directory '/tmp/xt/t5/'
[00] 2026-11-23 22:56:48 MySQL binlog position: filename 'binlog.000001', position '14232', GTID of the last change '0-1-5'
[00] 2026-11-23 22:56:48 MySQL slave binlog position: gtid_slave_pos '0-1-5'; master '' master_use_gtid = slave_pos
[00] 2026-11-23 22:56:48 Redo log (from LSN 44404 to 133059) was copied.
2026-11-23 22:56:48 0 [Note] InnoDB: Starting shutdown...
[00] 2026-11-23 22:56:48 completed OK!"""


def config(**kw: Any) -> AgentConfig:
    base: dict[str, Any] = {
        "tablet_alias": "zone1-1",
        "init_keyspace": "ks",
        "init_shard": "0",
        "mycnf_file": Path("/etc/my.cnf"),
        "file_backup_storage_root": Path("/tmp/b"),
        "backup_engine_implementation": "xtrabackup",
    }
    return AgentConfig.model_validate({**base, **kw})


def settings(**kw: Any) -> Settings:
    return settings_from(config(xtrabackup_user="backup", **kw))


# --- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", [None, "", "  "])
def test_a_user_is_required_with_vitess_wording(user: str | None) -> None:
    with pytest.raises(InvalidArgument) as e:
        settings_from(config(xtrabackup_user=user))
    assert str(e.value) == "xtrabackupUser must be specified."
    assert e.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_stream_mode_is_checked_and_tar_is_allowed() -> None:
    assert settings(xtrabackup_stream_mode="tar").stream_mode is StreamMode.TAR
    with pytest.raises(InvalidArgument, match="xbstream"):
        settings(xtrabackup_stream_mode="zip")


def test_flags_split_like_a_shell_and_refuse_passwords() -> None:
    s = settings(xtrabackup_backup_flags="--parallel=4 --use-memory='1 G'")
    assert s.backup_flags == ("--parallel=4", "--use-memory=1 G")
    with pytest.raises(InvalidArgument, match=PASSWORD_ENV):
        settings(xtrabackup_backup_flags="--password=hunter2")
    with pytest.raises(InvalidArgument, match="cannot parse"):
        settings(xtrabackup_prepare_flags="--x='unclosed")


# --- finding the tools -------------------------------------------------------------------------------


def make_tools(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = directory / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return directory


def test_percona_names_are_preferred_and_mariadb_names_are_the_fallback(tmp_path: Path) -> None:
    both = make_tools(tmp_path / "both", "xtrabackup", "mariabackup")
    maria = make_tools(tmp_path / "maria", "mariabackup", "mbstream")
    assert find_tool("xtrabackup", None, "backup", str(both)) == str(both / "xtrabackup")
    assert find_tool("xtrabackup", None, "backup", str(maria)) == str(maria / "mariabackup")
    assert find_tool("xbstream", None, "restore", str(maria)) == str(maria / "mbstream")
    assert find_tool("xtrabackup", maria, "backup", "") == str(maria / "mariabackup")


def test_not_found_keeps_vitess_wording_and_names_the_fix(tmp_path: Path) -> None:
    empty = make_tools(tmp_path / "empty")
    with pytest.raises(FailedPrecondition) as e:
        find_tool("xtrabackup", None, "backup", str(empty))
    message = str(e.value)
    assert message.startswith(
        'unable to start backup: exec: "xtrabackup": executable file not found in $PATH'
    )
    assert "PATH" in message.split(";", 1)[1] and "--xtrabackup_root_path" in message
    with pytest.raises(FailedPrecondition) as e:
        find_tool("xtrabackup", empty, "backup", "")
    assert f"fork/exec {empty}/xtrabackup: no such file or directory" in str(e.value)
    assert f"--xtrabackup_root_path={empty}" in str(e.value)


def test_a_configured_name_has_no_fallback_and_must_be_executable(tmp_path: Path) -> None:
    d = make_tools(tmp_path / "d", "mariabackup")
    with pytest.raises(FailedPrecondition, match=re.escape('exec: "xtrabackup-8.0"')):
        find_tool("xtrabackup-8.0", None, "backup", str(d))
    (d / "xtrabackup").write_text("not executable")
    assert find_tool("xtrabackup", None, "backup", str(d)) == str(d / "mariabackup")
    assert find_tool(str(d / "mariabackup"), None, "backup", "") == str(d / "mariabackup")


# --- argv -------------------------------------------------------------------------------------------


def test_backup_argv_has_defaults_file_first_replica_options_and_no_password() -> None:
    s = settings(xtrabackup_backup_flags="--parallel=2")
    argv = backup_argv(
        "/usr/bin/mariabackup", Path("/x/my.cnf"), Path("/t"), s, socket=Path("/s"), replica=True
    )
    assert argv[:2] == ["/usr/bin/mariabackup", "--defaults-file=/x/my.cnf"]
    assert {"--backup", "--stream=xbstream", "--target-dir=/t", "--user=backup", "--socket=/s"} <= set(argv)
    assert {"--slave-info", "--safe-slave-backup"} <= set(argv)
    assert argv[-1] == "--parallel=2"
    assert not any("password" in a for a in argv)
    primary = backup_argv("xb", Path("/c"), Path("/t"), s, socket=None, replica=False)
    assert "--safe-slave-backup" not in primary and not any(a.startswith("--socket") for a in primary)


def test_restore_argvs() -> None:
    tools = Tools(xtrabackup="/bin/xtrabackup", xbstream="/bin/xbstream")
    assert extract_argv(tools, StreamMode.XBSTREAM, Path("/d"), (), 4) == [
        "/bin/xbstream", "-x", "-C", "/d", "--parallel=4"
    ]  # fmt: skip
    assert extract_argv(tools, StreamMode.XBSTREAM, Path("/d"), ("-p", "8"), 4)[-2:] == ["-p", "8"]
    assert "--parallel=4" not in extract_argv(tools, StreamMode.XBSTREAM, Path("/d"), ("--parallel=2",), 4)
    assert extract_argv(Tools("x", "tar"), StreamMode.TAR, Path("/d"), (), 4) == ["tar", "-xi", "-C", "/d"]
    assert move_back_argv("/bin/xb", Path("/c"), Path("/d"))[:3] == [
        "/bin/xb",
        "--defaults-file=/c",
        "--move-back",
    ]


# --- password ---------------------------------------------------------------------------------------


def test_password_comes_from_the_environment_then_the_agent_credentials() -> None:
    creds = Credentials(user="backup", password="agent-pw")
    assert password_for("backup", creds, {PASSWORD_ENV: "env-pw"}) == "env-pw"
    assert password_for("backup", creds, {}) == "agent-pw"
    assert password_for("other", creds, {}) is None  # e.g. unix_socket authentication
    assert password_for("backup", Credentials(user="backup"), {PASSWORD_ENV: ""}) is None


def test_child_environment_has_no_secrets() -> None:
    env = child_env({"PATH": "/bin", PASSWORD_ENV: "x", "TABLET_AGENT_DB_PASSWORD": "y", "MYSQL_PWD": "z"})
    assert env == {"PATH": "/bin"}


TRICKY = "p#a\"s\\s w'o\trd "


def test_option_file_is_private_and_includes_the_tablet_cnf(tmp_path: Path) -> None:
    cnf = tmp_path / "my.cnf"
    cnf.write_text("[mysqld]\ndatadir=/d\n")
    path = tmp_path / "xb.cnf"
    write_option_file(path, cnf, TRICKY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.index(f"!include {cnf}") < text.index("[xtrabackup]")
    with pytest.raises(FileExistsError):
        write_option_file(path, cnf, "again")  # never reuses (or follows) an existing file
    with pytest.raises(InvalidArgument):
        option_file_text(cnf, "nul\0")


@pytest.mark.skipif(shutil.which("my_print_defaults") is None, reason="my_print_defaults is not installed")
def test_option_file_reads_back_the_exact_password_with_the_real_parser(tmp_path: Path) -> None:
    cnf = tmp_path / "my.cnf"
    cnf.write_text("[xtrabackup]\nuser=backup\npassword=from-the-tablet-cnf\n")
    path = tmp_path / "xb.cnf"
    write_option_file(path, cnf, TRICKY)
    out = subprocess.run(
        ["my_print_defaults", f"--defaults-file={path}", "xtrabackup"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[-1] == f"--password={TRICKY}" and "--user=backup" in out


# --- what the tool prints ---------------------------------------------------------------------------


def feed(text: str) -> ToolOutput:
    out = ToolOutput()
    for line in text.splitlines():
        out.feed(line)
    return out


def test_reads_position_and_completion_from_real_mariabackup_output() -> None:
    out = feed(MARIABACKUP_TAIL)
    assert out.completed and out.gtids == "0-1-5"
    assert (out.binlog_file, out.binlog_pos) == ("binlog.000001", 14232)
    assert out.problems == []
    assert not feed(MARIABACKUP_TAIL.rsplit("\n", 1)[0]).completed


def test_reads_a_mysql_gtid_set_spanning_lines() -> None:
    out = feed(
        "xtrabackup: MySQL binlog position: filename 'mysql-bin.000003', position '1783', GTID of the last "
        "change 'ad6e5bb0-1a0c-11ef-9e42-0242ac120002:1-11,\n"
        "be3a0e6b-1a0c-11ef-9e42-0242ac120002:1-5'\nxtrabackup: completed OK!"
    )
    assert out.gtids == "ad6e5bb0-1a0c-11ef-9e42-0242ac120002:1-11,be3a0e6b-1a0c-11ef-9e42-0242ac120002:1-5"
    assert out.completed


@pytest.mark.parametrize(
    ("line", "flag"),
    [
        ("[00] 2026-11-23 22:53:53 Invalid --stream argument: tar", "--xtrabackup_stream_mode=xbstream"),
        (
            "2026-11-23T12:00:00 0 [ERROR] [MY-011825] [Xtrabackup] Unsupported server version 8.4.0",
            "--xtrabackup_backup_flags=--no-server-version-check",
        ),
    ],
)
def test_known_failures_pass_the_line_through_and_name_the_fix(line: str, flag: str) -> None:
    out = feed(f"[00] starting\n{line}")
    error = out.failure(ProcessError(["xtrabackup", "--backup"], 1, [line]))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert line.strip() in str(error) and flag in str(error) and "exited with status 1" in str(error)


def test_unknown_failures_keep_the_process_error() -> None:
    error = ProcessError(["xtrabackup"], 1, ["something else"])
    assert feed("something else").failure(error) is error


def test_exit_zero_without_completion_line_is_an_error() -> None:
    with pytest.raises(ProcessError, match="never printed 'completed OK!'"):
        feed("[00] Streaming ./ibdata1").check_completed(["xtrabackup"], ["tail"])
    feed(MARIABACKUP_TAIL).check_completed(["xtrabackup"], [])


def test_parse_binlog_info() -> None:
    assert parse_binlog_info("binlog.000001\t14232\t0-1-5\n") == ("binlog.000001", 14232, "0-1-5")
    assert parse_binlog_info("mysql-bin.000003\t1783\tu1:1-11,\nu2:1-5\n") == (
        "mysql-bin.000003",
        1783,
        "u1:1-11,u2:1-5",
    )
    assert parse_binlog_info("binlog.000002\t4\n") == ("binlog.000002", 4, "")
    with pytest.raises(DataLoss):
        parse_binlog_info("garbage")


# --- stored layout ----------------------------------------------------------------------------------


def manifest(**kw: Any) -> Manifest:
    base: dict[str, Any] = {
        "BackupName": "b",
        "BackupMethod": "xtrabackup",
        "FileName": "backup.xbstream.zst",
        "StreamMode": "xbstream",
        "NumStripes": 0,
        "StripeBlockSize": 102400,
    }
    return Manifest.model_validate({**base, **kw})


@pytest.mark.parametrize(
    ("stripes", "names"),
    [
        (0, ["backup.xbstream.zst"]),
        (1, ["backup.xbstream.zst-000"]),
        (4, [f"backup.xbstream.zst-00{i}" for i in range(4)]),
    ],
)
def test_object_names_follow_vitess(stripes: int, names: list[str]) -> None:
    assert [o.name for o in XtrabackupEngine(config()).stored_objects(manifest(NumStripes=stripes))] == names


@pytest.mark.parametrize(
    "fields",
    [
        {"FileName": "../../etc/passwd"},
        {"FileName": ""},
        {"FileName": None},
        {"StreamMode": "zip"},
        {"StreamMode": ""},
        {"NumStripes": -1},
        {"NumStripes": 100000},
        {"NumStripes": 2, "StripeBlockSize": 0},
    ],
)
def test_forged_layouts_are_refused_before_anything_is_touched(fields: dict[str, Any]) -> None:
    with pytest.raises(DataLoss):
        XtrabackupEngine(config()).stored_objects(manifest(**fields))


def test_hashes_are_all_or_nothing() -> None:
    obj = StoredObject(Name="backup.xbstream.zst-000", Size=1, StoredSize=1, Crc32="0", Sha256="0")
    m = manifest(NumStripes=2, TabletAgent=AgentInfo(Version="1", Objects=[obj]))
    with pytest.raises(DataLoss, match="no hash for object"):
        XtrabackupEngine(config()).stored_objects(m)
    vitess_made = manifest(NumStripes=2)
    assert set(object_records(vitess_made, layout_of(vitess_made)).values()) == {None}


# --- restore checks ---------------------------------------------------------------------------------


def test_the_extracted_binlog_info_must_match_the_manifest_position(tmp_path: Path) -> None:
    op = Operation(kind=Kind.RESTORE)
    (tmp_path / "xtrabackup_binlog_info").write_text("binlog.000001\t14232\t0-1-5\n")
    check_binlog_info(tmp_path, manifest(Position="MariaDB/0-1-5"), op)
    with pytest.raises(DataLoss, match="xtrabackup_binlog_info says position MariaDB/0-1-5"):
        check_binlog_info(tmp_path, manifest(Position="MariaDB/0-1-9"), op)
    check_binlog_info(tmp_path / "missing", manifest(Position="MariaDB/0-1-9"), op)  # Vitess tar backups


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_restored_files_get_the_owner_of_their_directory(tmp_path: Path) -> None:
    datadir, state = tmp_path / "data", tmp_path / "data" / "agent-state"
    (datadir / "db").mkdir(parents=True)
    state.mkdir()
    for path in (datadir / "ibdata1", datadir / "db" / "t.ibd", state / "record"):
        path.write_text("x")
    os.chown(datadir, 4321, 4321)
    fix_ownership(RestoreTargets(datadir, datadir, datadir, datadir, None, keep=(state,)), datadir)
    owners = {
        p.relative_to(datadir).as_posix(): (p.stat().st_uid, p.stat().st_gid) for p in datadir.rglob("*")
    }
    assert owners["ibdata1"] == owners["db"] == owners["db/t.ibd"] == (4321, 4321)
    assert owners["agent-state"] == owners["agent-state/record"] == (0, 0), "the agent's state is left alone"


def test_backup_max_rate_becomes_throttle_unless_the_flags_set_it() -> None:
    argv = backup_argv(
        "xb", Path("/c"), Path("/t"), settings(), socket=None, replica=False, max_rate=50 << 20
    )
    assert "--throttle=125" in argv  # 50 MiB/s, 1.25 x at 512 KiB a unit
    slow = backup_argv("xb", Path("/c"), Path("/t"), settings(), socket=None, replica=False, max_rate=1000)
    assert "--throttle=1" in slow
    assert not any(a.startswith("--throttle") for a in backup_argv("xb", Path("/c"), Path("/t"), settings(),
                                                                    socket=None, replica=False))  # fmt: skip
    own = settings(xtrabackup_backup_flags="--throttle=7")
    argv = backup_argv("xb", Path("/c"), Path("/t"), own, socket=None, replica=False, max_rate=50 << 20)
    assert [a for a in argv if a.startswith("--throttle")] == ["--throttle=7"]
