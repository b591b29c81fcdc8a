"""The tablet: the agent's view of its one mysqld, its storage and its operations, wired from config."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from agent.catalog.summary import BackupSummary
from agent.config import AgentConfig
from agent.log import get_logger
from agent.mysql.client import Credentials, MysqlClient, credentials_from
from agent.mysql.mycnf import MyCnf, read_mycnf
from agent.mysql.mysqld import Mysqld
from agent.mysql.state import MysqldStateCache
from agent.operations import HISTORY_LIMIT, Operation, OperationRunner
from agent.pipeline.ratelimit import RateLimits
from agent.statedir.history import append_history, read_history
from agent.storage import BackupStorage, storage_from_config

log = get_logger("agent.tablet")


@dataclass
class ArchiveState:
    """The binlog archiver's state, for Status and metrics (`ops.archive`)."""

    active: bool = False  # this agent archives (holds the role, or there is no topology)
    last_shipped: float = 0.0  # time.time() of the last shipment
    gap: str = ""  # binlogs purged before they were shipped: why the chain is broken
    problem: str = ""  # the last failure, until a shipment succeeds


@dataclass
class Tablet:
    """Long-lived objects shared by the servicer and the operations. Built once by `Tablet.create`."""

    config: AgentConfig
    mycnf: MyCnf
    credentials: Credentials
    client: MysqlClient
    mysqld: Mysqld
    runner: OperationRunner
    storage: BackupStorage
    state_dir: Path
    started_monotonic: float
    summary: BackupSummary
    mysqld_states: MysqldStateCache
    limits: RateLimits  # --backup_max_rate, --storage_max_rate, --backup_io_class (reloaded on SIGHUP)
    restored_to: str = ""  # what the last restore brought the tablet to, for Status
    unfinished_restore: str = ""  # a restore that could not be finished or rolled back: why, for Status
    archive: ArchiveState = field(default_factory=ArchiveState)
    drained: bool = False  # restored to a point in time: out of serving, as Vitess's DRAINED
    backups_removed: Counter[str] = field(default_factory=Counter)  # by kind (full/incremental/incomplete)
    expiry_error: str = ""  # why the last backup expiry failed ("" after a success), for Status
    expiry_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one expiry at a time in this agent

    @classmethod
    def create(cls, config: AgentConfig, environ: dict[str, str] | None = None) -> Tablet:
        mycnf = read_mycnf(config.mycnf_file, config.mycnf_group_suffix)
        creds = credentials_from(
            mycnf, config.db_credentials_file, dict(os.environ) if environ is None else environ
        )
        client = MysqlClient(creds)
        state_dir = config.effective_state_dir
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        runner = OperationRunner(config.tablet_alias)
        runner.remember(read_history(state_dir))
        runner.on_finish(lambda op: _record(state_dir, op))
        storage = storage_from_config(config)
        summary = BackupSummary(storage, f"{config.init_keyspace}/{config.init_shard}")
        runner.on_finish(lambda _op: summary.refresh())
        mysqld = Mysqld(mycnf, client, config.mysqld_start_command)
        states = MysqldStateCache(client, mysqld)
        runner.on_finish(lambda _op: states.invalidate())
        return cls(
            config=config,
            mycnf=mycnf,
            credentials=creds,
            client=client,
            mysqld=mysqld,
            runner=runner,
            storage=storage,
            state_dir=state_dir,
            started_monotonic=time.monotonic(),
            summary=summary,
            mysqld_states=states,
            limits=RateLimits(
                config.backup_max_rate,
                config.storage_max_rate,
                config.backup_io_class,
                config.backup_niceness,
            ),
        )

    @property
    def alias(self) -> str:
        return self.config.tablet_alias

    @property
    def backup_directory(self) -> str:
        """`<keyspace>/<shard>`: where this tablet's backups live in the storage."""
        return f"{self.config.init_keyspace}/{self.config.init_shard}"

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic


def _record(state_dir: Path, op: Operation) -> None:
    try:
        append_history(state_dir, op, HISTORY_LIMIT)
    except OSError as e:
        log.warning("cannot record the operation in the state directory", error=str(e))
