"""tabletctl against a real agent and MariaDB: terminal, pipes, exit codes, restore planning."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.agent_process import AgentProcess
from tests.integration.conftest import AgentFactory
from tests.sandbox import Sandbox

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CTL = [sys.executable, "-m", "agent.ctl.main"]
SLOW = ["--xtrabackup_backup_flags=--throttle=100"]  # ~5 s on a fresh sandbox


def ctl_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TABLETCTL_")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def ctl(agent: AgentProcess, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CTL, "--server", agent.address, *args],
        capture_output=True, text=True, env=ctl_env(), timeout=120, **kwargs,  # type: ignore[call-overload]
    )  # fmt: skip


def in_terminal(argv: Sequence[str], timeout: float = 120) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal (160x40) as stdin, stdout and stderr; its exit code and output."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = ctl_env(TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    env.pop("COLUMNS", None)
    proc = subprocess.Popen(
        list(argv), stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every slave descriptor is closed, the program ended
                break
            if not chunk:
                break
            output += chunk
        else:
            proc.kill()
            raise AssertionError(f"{argv} did not end within {timeout}s:\n{output.decode(errors='replace')}")
        return proc.wait(30), output.decode(errors="replace")
    finally:
        os.close(master)


def to_closed_pipe(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """Run tabletctl with a stdout whose reader is already gone: every write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*CTL, "--server", agent.address, *args],
            stdout=write_end, stderr=subprocess.PIPE, text=True, env=ctl_env(), timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)


def test_in_a_terminal_backup_shows_a_progress_bar_and_backups_a_table(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory
) -> None:
    replica.wait_for_gtid(primary.write_rows(20))
    # Enum values in any case (they used to be refused unless spelled REPLICA / xtrabackup).
    agent = agent_factory(replica, extra=["--init_tablet_type", "replica", "--backup_engine_implementation",
                                          "XtraBackup", "--xtrabackup_user", "root", *SLOW])  # fmt: skip
    code, out = in_terminal([*CTL, "--server", agent.address, "backup"])
    assert code == 0, out
    assert "━" in out, f"no progress bar:\n{out}"
    assert re.search(r"\d(\.\d)? (B|KiB|MiB|GiB)/s", out), f"no transfer rate in the bar:\n{out}"
    assert "backup succeeded" in out

    code, out = in_terminal([*CTL, "--server", agent.address, "backups"])
    assert code == 0, out
    assert "backups in ks/0" in out and "\x1b[" in out  # rich's title, with terminal styling
    for header in ("BACKUP", "ENGINE", "TYPE", "SIZE", "AGE", "DURATION", "STATE", "VERIFIED"):
        assert header in out, out
    assert "xtrabackup" in out and "full" in out and "complete" in out and "ago" in out


def test_exit_codes_backups_table_and_restore_planning(
    primary: Sandbox, replica: Sandbox, agent_factory: AgentFactory
) -> None:
    agent = agent_factory(replica)
    empty = ctl(agent, "backups")
    assert empty.returncode == 0 and empty.stdout == "" and "no backups in ks/0" in empty.stderr, empty

    replica.wait_for_gtid(primary.write_rows(20))
    full = ctl(agent, "backup")
    assert full.returncode == 0, full.stderr
    nothing = ctl(agent, "backup", "--incremental_from_pos", "auto")
    assert nothing.returncode == 3, nothing
    assert "nothing to do" in nothing.stderr and "Traceback" not in nothing.stderr
    for _ in range(2):
        replica.wait_for_gtid(primary.write_rows(10))
        incr = ctl(agent, "backup", "--incremental-from-pos", "auto")
        assert incr.returncode == 0, incr.stderr
    failed = ctl(agent, "backup", "--incremental-from-pos", "MariaDB/0-1-999999")
    assert failed.returncode == 1 and "not a subset" in failed.stderr, failed.stderr

    # Plain columns when stdout is not a terminal: header, the full backup, its incrementals indented.
    table = ctl(agent, "backups")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["BACKUP", "ENGINE", "TYPE"] and len(lines) == 4, table.stdout
    assert " builtin " in lines[1] and " full " in lines[1] and not lines[1].startswith(" ")
    assert all(line.startswith("  ") and " incremental " in line for line in lines[2:]), table.stdout
    assert " ago " in lines[1] and re.search(r" \d+(\.\d)? (B|KiB|MiB|GiB) ", lines[1]), lines[1]
    doc = json.loads(ctl(agent, "backups", "--json").stdout)
    assert doc["directory"] == "ks/0" and len(doc["backups"]) == 3
    names = [b["name"] for b in doc["backups"]]
    assert [b["base"] for b in doc["backups"]] == [None, names[0], names[0]]
    assert doc["backups"][2]["chained_from"] == names[1]

    # A plain restore says what it leaves behind; --latest and backup names become positions.
    plain = ctl(agent, "restore", "--dry_run")
    assert plain.returncode == 0, plain.stderr
    assert "2 incremental backup(s) after it reach further" in plain.stderr and "--latest" in plain.stderr
    latest = ctl(agent, "restore", "--dry_run", "--latest")
    assert latest.returncode == 0, latest.stderr
    assert f"-> incremental {names[2]}" in latest.stdout, latest.stdout
    assert doc["backups"][2]["position"] in latest.stderr
    by_name = ctl(agent, "restore", "--dry_run", "--backup_timestamp", names[0])
    assert by_name.returncode == 0 and f"backup ks/0/{names[0]}" in by_name.stdout, by_name
    to_name = ctl(agent, "restore", "--dry_run", "--restore_to_timestamp", names[1])
    assert to_name.returncode == 0 and f"-> incremental {names[1]}" in to_name.stdout, to_name
    assert names[2] not in to_name.stdout
    unknown = ctl(agent, "restore", "--dry_run", "--backup_timestamp", "2020-01-01.000000.zone1-0000000102")
    assert unknown.returncode == 2 and "no complete backup named" in unknown.stderr, unknown.stderr

    # Usage and connection errors: 2, with what to do.
    abbreviated = ctl(agent, "backups", "--al")
    assert abbreviated.returncode == 2 and "did you mean --all" in abbreviated.stderr
    nobody = subprocess.run([*CTL, "--server", "127.0.0.1:1", "status"], capture_output=True, text=True,
                            env=ctl_env(), timeout=60)  # fmt: skip
    assert nobody.returncode == 2 and "TABLETCTL_SERVER" in nobody.stderr, nobody.stderr
    from_env = subprocess.run([*CTL, "ping"], capture_output=True, text=True,
                              env=ctl_env(TABLETCTL_SERVER=agent.address), timeout=60)  # fmt: skip
    assert from_env.returncode == 0 and from_env.stdout.strip() == "ping", from_env.stderr

    # The reader goes away: no traceback, the SIGPIPE exit code.
    for args in (["status"], ["backups"], ["backups", "--json"]):
        broken = to_closed_pipe(agent, *args)
        assert broken.returncode == 141 and broken.stderr == "", (args, broken.stderr)
    head = subprocess.run(
        f"{' '.join(CTL)} --server {agent.address} backups | head -1",
        shell=True, capture_output=True, text=True, env=ctl_env(), timeout=60,
    )  # fmt: skip
    assert head.stdout.split()[0] == "BACKUP" and "Traceback" not in head.stderr, head


def test_the_daemon_refuses_abbreviated_flags(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "agent.daemon.main", "--tablet-path", "zone1-102", "--init_keyspace", "ks",
            "--init_shard", "0", "--mycnf", str(tmp_path / "my.cnf"), "--file_backup_storage_root", str(tmp_path)]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, env=ctl_env(), timeout=60)
    assert res.returncode == 2, res.stderr
    assert "unrecognized arguments: --mycnf" in res.stderr and "did you mean --mycnf_file" in res.stderr
