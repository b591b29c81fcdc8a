"""The systemd unit, its drop-in and the polkit rule, checked with systemd's and polkit's own tools; the
option groups of a suffix as mariadbd reads them; `make install` into a temporary root."""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.mysql.mycnf import read_mycnf
from tests.agent_process import AgentProcess
from tests.conftest import SandboxFactory
from tests.integration.conftest import AgentFactory
from tests.integration.helpers import backup, restore
from tests.sandbox import Sandbox, find_program
from tests.unit.test_mycnf import debian_multi_instance

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "tablet-agent@.service"
MAX_EXPOSURE = 4.0

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing: `apt-get install --no-install-recommends systemd` (make setup does)",
)


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a program that exists here (verify checks it is executable)."""
    true = shutil.which("true")
    assert true is not None
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/tablet-agent", true))
    return unit


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_COLORS": "0"},
    )


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    unit = unit_copy(tmp_path)
    result = analyze("verify", str(unit.with_name("tablet-agent@tab1.service")))
    assert result.returncode == 0, result.stderr
    assert "tablet-agent" not in result.stdout + result.stderr, result.stdout + result.stderr


@needs_systemd_analyze
def test_unit_verifies_with_the_paths_drop_in(tmp_path: Path) -> None:
    unit = unit_copy(tmp_path)
    drop_in = tmp_path / "tablet-agent@tab1.service.d"
    drop_in.mkdir()
    text = (SYSTEMD / "paths.conf.example").read_text()
    for line in (
        "ProtectHome=read-only",
        "UnsetEnvironment=TABLET_AGENT_MYSQLD_START_COMMAND",
        "KillMode=process",
    ):
        text = text.replace(f"#{line}", line)  # the commented-out settings must parse too
    (drop_in / "paths.conf").write_text(text)
    result = analyze("verify", str(unit.with_name("tablet-agent@tab1.service")))
    assert result.returncode == 0, result.stderr
    assert "tablet-agent" not in result.stdout + result.stderr, result.stdout + result.stderr


@needs_systemd_analyze
def test_unit_exposure_is_low(tmp_path: Path) -> None:
    unit = unit_copy(tmp_path)
    result = analyze("security", "--offline=true", "--no-pager", str(unit))
    out = result.stdout + result.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert m is not None, out
    assert float(m.group(1)) <= MAX_EXPOSURE, out


# --- polkit ------------------------------------------------------------------------------------------

POLKIT_HARNESS = """
var polkit = {Result: {YES: "yes", NO: "no", NOT_HANDLED: null}, rules: [],
              addRule: function (f) { this.rules.push(f); }};
%s
var cases = %s, out = [];
for (var i = 0; i < cases.length; i++) {
    var c = cases[i];
    var action = {id: c[1], lookup: function (k) { return k === "unit" ? this.c[2] : this.c[3]; }, c: c};
    var r = polkit.rules[0](action, {user: c[0]});
    out.push(r === undefined ? null : r);
}
print(JSON.stringify(out));
"""

MANAGE = "org.freedesktop.systemd1.manage-units"
POLKIT_CASES: list[tuple[str, str, str, str, str | None]] = [
    ("mysql", MANAGE, "mariadb@tab1.service", "start", "yes"),
    ("mysql", MANAGE, "mariadb@tab1.service", "stop", "yes"),
    ("mysql", MANAGE, "mariadb@tab1.service", "restart", "yes"),
    ("mysql", MANAGE, "mariadb@tab-2.x.service", "start", "yes"),
    ("mysql", MANAGE, "mariadb@tab1.service", "reload", None),
    ("mysql", MANAGE, "mariadb@tab1.service", "try-restart", None),
    ("mysql", MANAGE, "mariadb.service", "start", None),
    ("mysql", MANAGE, "mariadb@.service", "start", None),
    ("mysql", MANAGE, "ssh.service", "stop", None),
    ("mysql", MANAGE, "mariadb@tab1.service.d", "start", None),
    ("mysql", MANAGE, "xmariadb@tab1.service", "start", None),
    ("mysql", MANAGE, "mariadb@tab1.socket", "start", None),
    ("mysql", "org.freedesktop.systemd1.manage-unit-files", "mariadb@tab1.service", "enable", None),
    ("mysql", "org.freedesktop.login1.reboot", "", "", None),
    ("www-data", MANAGE, "mariadb@tab1.service", "start", None),
]


@pytest.mark.skipif(
    shutil.which("duk") is None, reason="duk (polkit's JS engine, Debian package duktape) is missing"
)
def test_polkit_rule_allows_exactly_the_mariadb_instances() -> None:
    rule = (SYSTEMD / "50-tablet-agent.rules").read_text()
    cases = [list(c[:4]) for c in POLKIT_CASES]

    def run(rule_text: str) -> list[str | None]:
        harness = POLKIT_HARNESS % (rule_text, json.dumps(cases))
        result = subprocess.run(
            ["duk", "/dev/stdin"], input=harness, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stdout + result.stderr
        answer: list[str | None] = json.loads(result.stdout)
        return answer

    assert run(rule) == [c[4] for c in POLKIT_CASES]
    listed = run(rule.replace("var instances = null;", 'var instances = ["tab1"];'))
    assert listed == [c[4] if "tab-2" not in c[2] else None for c in POLKIT_CASES]


# --- option groups of a suffix, as mariadbd reads them ------------------------------------------------


def print_defaults(mariadbd: str, cnf: Path, suffix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_GROUP_SUFFIX")}
    env["MARIADB_GROUP_SUFFIX"] = suffix  # what the unit (and the agent, for its children) sets
    out = subprocess.run(
        [mariadbd, f"--defaults-file={cnf}", "--print-defaults"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    values: dict[str, str] = {}
    for arg in out.splitlines()[-1].split():
        name, _, value = arg.removeprefix("--").partition("=")
        values[name.replace("-", "_")] = value
    return values


@pytest.mark.parametrize("suffix", ["", ".tab1", ".tab2", ".TAB1"])
def test_suffix_groups_match_mariadbd(tmp_path: Path, suffix: str) -> None:
    mariadbd = find_program("mariadbd")
    if mariadbd is None:
        pytest.skip("mariadbd is missing: apt-get install mariadb-server")
    cnf = debian_multi_instance(tmp_path / "etc")
    server = print_defaults(mariadbd, cnf, suffix)
    ours = read_mycnf(cnf, suffix)
    assert str(ours.datadir) == server["datadir"]
    assert str(ours.socket) == server["socket"]
    assert ours.port == int(server.get("port", "3306"))
    assert ours.server_id == int(server["server_id"])
    assert str(ours.pid_file) == server["pid_file"]
    assert (ours.log_bin is not None) == ("log_bin" in server)
    assert str(ours.innodb_log_group_home_dir) == server.get("innodb_log_group_home_dir", str(ours.datadir))


# --- make install -------------------------------------------------------------------------------------


@pytest.mark.skipif(
    os.environ.get("TABLET_AGENT_INSTALL_TEST") != "1",
    reason="make install builds a fresh venv with every dependency (40-90 s, not a few seconds): "
    "set TABLET_AGENT_INSTALL_TEST=1 to run it",
)
def test_make_install_into_a_temporary_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    result = subprocess.run(
        ["make", "-C", str(REPO), "install", f"DESTDIR={root}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bindir = root / "usr/local/bin"
    for program in ("tablet-agent", "tabletctl", "tablet-agent-paths"):
        assert (bindir / program).is_symlink()
        assert os.readlink(bindir / program) == f"../../../opt/tablet-agent/bin/{program}"
    clean = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    version = subprocess.run(
        [bindir / "tablet-agent", "--version"], env=clean, cwd=tmp_path, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("tablet-agent "), version.stderr
    ctl = subprocess.run(
        [bindir / "tabletctl", "--help"], env=clean, cwd=tmp_path, capture_output=True, text=True
    )
    assert ctl.returncode == 0 and "usage: tabletctl" in ctl.stdout, ctl.stderr
    paths = subprocess.run(
        [bindir / "tablet-agent-paths", "--help"], env=clean, cwd=tmp_path, capture_output=True, text=True
    )
    assert paths.returncode == 0 and "usage: tablet-agent-paths" in paths.stdout, paths.stderr
    unit = (root / "etc/systemd/system/tablet-agent@.service").read_text()
    assert "ExecStart=/usr/local/bin/tablet-agent --config /etc/tablet-agent/%i.toml" in unit
    assert (root / "etc/polkit-1/rules.d/50-tablet-agent.rules").is_file()
    assert (root / "etc/tablet-agent").stat().st_mode & 0o777 == 0o750
    for doc in ("README.md", "example.toml", "example.env", "paths.conf.example"):
        assert (root / "opt/tablet-agent/share/doc" / doc).is_file()


# --- the agent under the unit's system-call policy ---------------------------------------------------


@needs_systemd_analyze
@pytest.mark.skipif(
    ctypes.util.find_library("seccomp") is None, reason="libseccomp is missing: apt-get install libseccomp2"
)
def test_agent_works_under_the_units_system_call_policy(
    primary: Sandbox,
    replica: Sandbox,
    sandbox_factory: SandboxFactory,
    agent_factory: AgentFactory,
    storage_root: Path,
) -> None:
    """SystemCallFilter= and MemoryDenyWriteExecute= as the unit sets them, for the agent and all it runs:
    an xtrabackup full and an incremental backup, then a point-in-time restore replayed by the
    replication applier (mariadb-install-db and a throw-away mariadbd), a builtin backup and restore."""
    policy = [sys.executable, "-m", "tests.seccomp_exec", str(UNIT), "--"]
    probe = subprocess.run(
        [*policy, sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"],
        capture_output=True,
        text=True,
    )
    assert "Operation not permitted" in probe.stderr, probe.stderr  # W+X memory is refused: the policy is on

    def sandboxed(sandbox: Sandbox, **kwargs: object) -> AgentProcess:
        agent = agent_factory(sandbox, start=False, **kwargs)
        agent.argv = [*policy, *agent.argv]
        return agent.start()

    xtra = ["--backup_engine_implementation", "xtrabackup", "--xtrabackup_user", "root"]
    agent = sandboxed(replica, extra=xtra)
    replica.wait_for_gtid(primary.write_rows(30))
    backup(agent)
    middle = primary.write_rows(7)
    replica.wait_for_gtid(primary.write_rows(9, table="u"))
    backup(agent, incremental_from_pos="auto")
    target = sandbox_factory()
    target.make_replica_of(primary, start=False)
    restorer = sandboxed(target, alias="zone1-0000000105", extra=[*xtra, "--binlog_applier=replication"])
    events = restore(restorer, restore_to_pos=middle)
    assert any("replaying binlogs (replication)" in e for e in events), events
    assert int(target.value("SELECT COUNT(*) FROM test.t")) == 37
    restorer.stop()
    agent.stop()

    builtin = sandboxed(replica, alias="zone1-0000000106")
    backup(builtin)  # stops mysqld, copies, starts it again (mariadbd runs under the policy too)
    builtin.stop()
    restore(sandboxed(target, alias="zone1-0000000107"))
    assert int(target.value("SELECT COUNT(*) FROM test.t")) == 37
    assert int(target.value("SELECT COUNT(*) FROM test.u")) == 9


SCHEDULES = ("tablet-agent-backup@", "tablet-agent-incremental@")


@needs_systemd_analyze
@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_units_verify_and_treat_nothing_to_do_as_success(tmp_path: Path, name: str) -> None:
    true = shutil.which("true")
    assert true is not None
    for suffix in (".service", ".timer"):
        text = (SYSTEMD / f"{name}{suffix}").read_text().replace("/usr/local/bin/tabletctl", true)
        (tmp_path / f"{name}{suffix}").write_text(text)
    (tmp_path / UNIT.name).write_text(UNIT.read_text().replace("/usr/local/bin/tablet-agent", true))
    service = (tmp_path / f"{name}.service").read_text()
    assert "SuccessExitStatus=3" in service, "an incremental with nothing new is not a failure"
    timer = (tmp_path / f"{name}.timer").read_text()
    assert "Persistent=true" in timer and "RandomizedDelaySec=" in timer
    result = analyze("verify", str(tmp_path / f"{name}tab1.timer"), str(tmp_path / f"{name}tab1.service"))
    assert result.returncode == 0, result.stderr
    exposure = analyze("security", "--offline=true", "--no-pager", str(tmp_path / f"{name}.service"))
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", exposure.stdout + exposure.stderr)
    assert m is not None and float(m.group(1)) <= MAX_EXPOSURE, exposure.stdout + exposure.stderr
