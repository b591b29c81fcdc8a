"""`make run`: the embedded default. A local primary + replica MariaDB sandbox under ./var, the agent on
the replica with directory storage under ./var/backups, a full backup and a restore, then the agent
keeps serving until Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from agent.ctl.main import main as tabletctl
from tests.agent_process import free_port
from tests.sandbox import Sandbox

REPO = Path(__file__).resolve().parent.parent
VAR = REPO / "var"
ALIAS = "zone1-0000000102"
DEFAULT_PORT = 16002


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def existing_port(root: Path) -> int | None:
    cnf = root / "my.cnf"
    if not cnf.exists():
        return None
    for line in cnf.read_text().splitlines():
        if line.strip().startswith("port"):
            return int(line.split("=", 1)[1])
    return None


def open_sandbox(name: str, server_id: int) -> tuple[Sandbox, bool]:
    root = VAR / name
    port = existing_port(root)
    fresh = port is None or not (root / "data" / "mysql").is_dir()
    if port is not None and fresh:
        for p in root.glob("*"):
            if p.is_file():
                p.unlink()
    sb = Sandbox(root, server_id=server_id, port=port)
    if fresh:
        sb.init()
    if not sb.is_answering():
        sb.start()
    return sb, fresh


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def ctl(address: str, *args: str) -> int:
    print(f"$ tabletctl --server {address} {' '.join(args)}", flush=True)
    return tabletctl(["--server", address, *args])


def main() -> int:
    VAR.mkdir(exist_ok=True)
    say("MariaDB sandboxes under ./var (primary + GTID replica)")
    primary, _ = open_sandbox("primary", 1)
    replica, new_replica = open_sandbox("replica", 2)
    if new_replica or not replica.replica_status():
        replica.make_replica_of(primary)
    replica.wait_replicating()
    pos = primary.write_rows(100, table="demo")
    replica.wait_for_gtid(pos)
    rows = int(replica.value("SELECT COUNT(*) FROM test.demo"))
    print(f"primary port {primary.port}, replica port {replica.port}; test.demo has {rows} rows at {pos}")

    port = int(
        os.environ.get("TABLET_AGENT_GRPC_PORT") or (DEFAULT_PORT if port_free(DEFAULT_PORT) else free_port())
    )
    address = f"127.0.0.1:{port}"
    argv = [
        sys.executable, "-m", "agent.daemon.main", "--tablet-path", ALIAS, "--init_keyspace", "commerce",
        "--init_shard", "0", "--grpc_port", str(port), "--mycnf_file", str(replica.cnf),
        "--backup_storage_implementation", "file", "--file_backup_storage_root", str(VAR / "backups"),
        "--state_dir", str(VAR / "agent-state"), "--log_format", "console",
    ]  # fmt: skip
    say(f"starting tablet-agent for {ALIAS} on {address} (log: var/agent.log)")
    log = (VAR / "agent.log").open("ab")
    agent = subprocess.Popen(argv, stdout=log, stderr=log, cwd=REPO)
    deadline = time.monotonic() + 60
    try:
        while not listening(address):  # quietly: the agent checks the setup before it serves
            if agent.poll() is not None or time.monotonic() > deadline:
                print((VAR / "agent.log").read_text()[-3000:], file=sys.stderr)
                return 1
            time.sleep(0.2)
        if ctl(address, "ping") != 0:
            return 1
        ctl(address, "status")

        say("full builtin backup of the replica (mysqld is stopped for the copy, then restarted)")
        if ctl(address, "backup") != 0:
            return 1
        more = primary.write_rows(50, table="demo")
        replica.wait_for_gtid(more)
        print(f"wrote 50 more rows on the primary: the replica now has "
              f"{replica.value('SELECT COUNT(*) FROM test.demo')} rows")  # fmt: skip

        say("restore the replica from the backup")
        if ctl(address, "restore") != 0:
            return 1
        restored = int(replica.value("SELECT COUNT(*) FROM test.demo"))
        print(f"after the restore the replica holds {restored} rows (the backup had {rows})")
        replica.make_replica_of(primary)
        replica.wait_for_gtid(more)
        print(
            f"re-attached to the primary, it caught up: {replica.value('SELECT COUNT(*) FROM test.demo')} rows"
        )
        ctl(address, "backups")

        say("the agent keeps serving; try, in another terminal:")
        for cmd in ("status", "backup", "backups", "restore --dry-run"):
            print(f"  .venv/bin/tabletctl --server {address} {cmd}")
        print("Ctrl-C stops the agent (the sandboxes keep running; `make run` reuses them).", flush=True)
        if sys.stdin.isatty():
            agent.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
