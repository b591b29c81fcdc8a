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
from agent.mysql.client import Credentials, MysqlClient, credentials_from
from agent.mysql.mycnf import MyCnf, read_mycnf
from agent.mysql.mysqld import Mysqld
from agent.mysql.state import MysqldStateCache
from agent.operations import OperationRunner
from agent.storage import BackupStorage, storage_from_config


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
    restored_to: str = ""  # what the last restore brought the tablet to, for Status
    unfinished_restore: str = ""  # a restore that could not be finished or rolled back: why, for Status
    drained: bool = False  # restored to a point in time: out of serving, as Vitess's DRAINED
    backups_removed: Counter[str] = field(default_factory=Counter)  # by kind (full/incremental/incomplete)
    expiry_error: str = ""  # why the last backup expiry failed ("" after a success), for Status
    expiry_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one expiry at a time in this agent

    @classmethod
    def create(cls, config: AgentConfig, environ: dict[str, str] | None = None) -> Tablet:
        mycnf = read_mycnf(config.mycnf_file)
        creds = credentials_from(
            mycnf, config.db_credentials_file, dict(os.environ) if environ is None else environ
        )
        client = MysqlClient(creds)
        state_dir = config.effective_state_dir
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        runner = OperationRunner(config.tablet_alias)
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
