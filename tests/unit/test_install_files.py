"""The files `make install` ships: the example instance TOML and env file, and `tablet-agent-paths`."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from agent.config import build_config

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"


def load_paths_tool() -> ModuleType:
    path = SYSTEMD / "tablet-agent-paths"
    loader = importlib.machinery.SourceFileLoader("tablet_agent_paths", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_example_toml_is_a_valid_configuration() -> None:
    tool = load_paths_tool()
    environ = tool.unit_environment("tab1", SYSTEMD / "example.env")
    config = build_config({}, environ, SYSTEMD / "example.toml")
    assert config.mycnf_group_suffix == ".tab1"
    assert config.effective_state_dir == Path("/var/lib/tablet-agent/tab1")
    assert config.mysqld_start_command is None  # the unit's Environment= line sets it


def test_example_env_holds_only_settings_the_agent_tabletctl_or_aws_reads() -> None:
    env = load_paths_tool().read_env_file(SYSTEMD / "example.env")
    assert env == {"TABLET_AGENT_DB_USER": "mysql", "TABLETCTL_SERVER": "127.0.0.1:16101"}
    commented = re.findall(r"^# ?([A-Z_]+)=", (SYSTEMD / "example.env").read_text(), re.M)
    assert set(commented) >= {"TABLET_AGENT_DB_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(n.startswith(("TABLET_AGENT_", "TABLETCTL_", "AWS_")) for n in commented)


def test_unit_environment_matches_the_unit() -> None:
    unit = (SYSTEMD / "tablet-agent@.service").read_text()
    assert "Environment=MARIADB_GROUP_SUFFIX=.%I" in unit
    assert "StateDirectory=tablet-agent/%i" in unit
    assert '"TABLET_AGENT_MYSQLD_START_COMMAND=systemctl start mariadb@%i.service"' in unit
    assert load_paths_tool().unit_environment("tab1", Path("/nonexistent")) == {
        "MARIADB_GROUP_SUFFIX": ".tab1",
        "STATE_DIRECTORY": "/var/lib/tablet-agent/tab1",
    }


def test_env_file_parsing(tmp_path: Path) -> None:
    path = write(tmp_path / "x.env", "# c\n; c\n\nA=1\n B = two words \nC='q'\nD=\"d d\"\nnot a line\n")
    assert load_paths_tool().read_env_file(path) == {"A": "1", "B": "two words", "C": "q", "D": "d d"}


def test_paths_drop_in_lists_what_the_agent_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etc = tmp_path / "etc"
    srv = tmp_path / "srv"
    for d in ("tab1/data", "tab1/binlog", "tab1/redo", "backups"):
        (srv / d).mkdir(parents=True)
    mycnf = write(
        etc / "my.cnf",
        f"""\
        [mysqld]
        datadir = /var/lib/mysql
        [mysqld.tab1]
        datadir = {srv}/tab1/data
        log-bin = {srv}/tab1/binlog/tab1-bin
        innodb_log_group_home_dir = {srv}/tab1/redo
        innodb_undo_directory = {srv}/tab1/data/undo
        relay-log = {srv}/tab1/data/relay/tab1-relay
        """,
    )
    toml = write(
        etc / "tab1.toml",
        f"""\
        tablet_alias = "zone1-101"
        init_keyspace = "ks"
        init_shard = "0"
        mycnf_file = "{mycnf}"
        file_backup_storage_root = "{srv}/backups"
        """,
    )
    tool = load_paths_tool()
    argv = [
        "tab1",
        "--config",
        str(toml),
        "--env-file",
        str(etc / "none.env"),
        "--state-root",
        str(tmp_path / "st"),
    ]
    assert tool.main(argv) == 0
    out = capsys.readouterr()
    assert out.err == ""
    lines = out.out.splitlines()
    assert lines[0].startswith(
        f"# tablet-agent@tab1.service: written by `tablet-agent-paths tab1` from {toml}"
    )
    assert "[Service]" in lines
    # Outermost directories only; the state directory is the unit's StateDirectory= already.
    want = [srv / "backups", srv / "tab1/binlog", srv / "tab1/data", srv / "tab1/redo"]
    assert lines[-1] == "ReadWritePaths=" + " ".join(map(str, want))

    # A state_dir of its own is listed; a missing path is warned about.
    with toml.open("a") as f:
        f.write(f'state_dir = "{srv}/state"\n')
    assert tool.main(argv) == 0
    out = capsys.readouterr()
    assert f"{srv}/state does not exist: create it (owned by mysql)" in out.err
    assert out.out.splitlines()[-1].endswith(f"{srv}/tab1/redo")
    assert f" {srv}/state " in out.out


def test_paths_tool_reports_configuration_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_paths_tool().main(["tab9", "--config", str(tmp_path / "tab9.toml")]) == 2
    assert "config file" in capsys.readouterr().err
