"""The result of verifying a backup, kept beside it as a record object (never in its MANIFEST, which is
never rewritten): when, how deep, and every stored object found bad."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.catalog.listing import READ_CONCURRENCY, BackupEntry
from agent.errors import NotFound
from agent.storage.base import BackupHandle

RECORD_NAME = "tablet-agent-verification.json"
MAX_RECORD = 1 << 20


class Depth(enum.StrEnum):
    LIGHT = "light"  # every object re-read, its hashes checked
    DEEP = "deep"  # restored into a scratch mysqld that started and passed CHECK TABLE


class Verification(BaseModel):
    model_config = ConfigDict(frozen=True)

    backup: str  # `<keyspace>/<shard>/<name>`
    depth: Depth
    ok: bool
    problems: list[str] = Field(default_factory=list)  # each names the stored object or the check
    objects: int = 0
    bytes: int = 0
    verified_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    verified_by: str = ""  # tablet alias
    agent_version: str = ""


async def write_verification(handle: BackupHandle, result: Verification) -> None:
    await handle.put_record(RECORD_NAME, result.model_dump_json(indent=2).encode())


async def read_verification(handle: BackupHandle) -> Verification | None:
    """The backup's last verification; None when it was never verified or the record is not one."""
    data = bytearray()
    try:
        async for chunk in handle.read_file(RECORD_NAME):
            data += chunk
            if len(data) > MAX_RECORD:
                return None
    except NotFound:
        return None
    try:
        return Verification.model_validate_json(bytes(data))
    except ValidationError:
        return None


async def read_verifications(entries: Sequence[BackupEntry]) -> list[Verification | None]:
    """The verification of each complete backup (None for incomplete ones), a few reads at a time."""
    slots = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(entry: BackupEntry) -> Verification | None:
        if not entry.complete:
            return None
        async with slots:
            return await read_verification(entry.handle)

    return list(await asyncio.gather(*(one(e) for e in entries)))
