"""MariaDB's `master.info`: the replication source a restore must put back after it wipes the datadir.

Line layout (MariaDB 10.x): 1 line count, 2 log file, 3 position, 4 host, 5 user, 6 password, 7 port,
8 connect retry, ...; later `key=value` lines such as `using_gtid=2` (0 no, 1 current_pos, 2 slave_pos).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.mysql.client import SqlRunner

USE_GTID = {"0": "no", "1": "current_pos", "2": "slave_pos"}


@dataclass(frozen=True)
class ReplicationSource:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    connect_retry: int
    use_gtid: str


def read_master_info(path: Path) -> ReplicationSource | None:
    """The source recorded in `path`, or None when there is none (or the file is not understood)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if len(lines) < 8 or not lines[3].strip():
        return None
    options = dict(line.split("=", 1) for line in lines[8:] if "=" in line)
    try:
        return ReplicationSource(
            host=lines[3].strip(),
            port=int(lines[6]),
            user=lines[4],
            password=lines[5],
            connect_retry=int(float(lines[7] or 60)),
            use_gtid=USE_GTID.get(options.get("using_gtid", "2"), "slave_pos"),
        )
    except ValueError:
        return None


async def configure_source(client: SqlRunner, source: ReplicationSource) -> None:
    """Point replication at `source` without starting it (GTID mode: resumes from gtid_slave_pos)."""
    use_gtid = source.use_gtid if source.use_gtid != "no" else "slave_pos"
    await client.execute(
        "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s, "
        f"MASTER_CONNECT_RETRY=%s, MASTER_USE_GTID={use_gtid}",
        (source.host, source.port, source.user, source.password, source.connect_retry),
    )
