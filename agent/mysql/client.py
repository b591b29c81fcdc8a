"""SQL access to the tablet's mysqld: the credentials to use and short-lived aiomysql connections.

No connection pool: backups restart mysqld, and pooled connections would be dead afterwards.
Each call opens a connection (unix socket when configured, else TCP), runs, and closes it;
`MysqlClient.connection()` keeps one open for statements that share a session (`SET sql_log_bin=0`).
Passwords never appear in messages or reprs.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiomysql
import grpc
import pymysql

from agent.errors import AgentError, ConfigError, Unavailable
from agent.mysql.mycnf import ClientOptions, MyCnf, read_client_options

ENV_USER = "TABLET_AGENT_DB_USER"
ENV_PASSWORD = "TABLET_AGENT_DB_PASSWORD"
CLIENT_ERRNO_MIN = 2000  # errors numbered from 2000 come from the client library, not the server
CLOSE_TIMEOUT = 1.0
PERMISSION_ERRNOS = frozenset({1044, 1045, 1142, 1143, 1227, 1698})
_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")

_SQL_ERRORS = (pymysql.err.MySQLError, OSError, asyncio.IncompleteReadError)

Args = Sequence[Any] | Mapping[str, Any] | None


@dataclass(frozen=True)
class Credentials:
    """Who the agent connects as, and where: the socket unless a host other than localhost is set."""

    user: str
    password: str | None = field(default=None, repr=False)
    socket: Path | None = None
    host: str | None = None
    port: int = 3306

    @property
    def uses_socket(self) -> bool:
        return self.socket is not None and self.host in (None, "localhost")

    @property
    def address(self) -> str:
        """Where mysqld is reached, for messages."""
        return f"socket {self.socket}" if self.uses_socket else f"{self.host or 'localhost'}:{self.port}"


def credentials_from(mycnf: MyCnf, credentials_file: Path | None, environ: Mapping[str, str]) -> Credentials:
    """Credentials by precedence: environment > credentials file > the mycnf's [client] > root, no password.

    A layer that names a user brings its own password (or none); a layer with only a password keeps
    the user of the layers below.
    """
    layers = [mycnf.client]
    if credentials_file is not None:
        if credentials_file.is_file() and credentials_file.stat().st_mode & 0o004:
            raise ConfigError(
                f"--db_credentials_file {credentials_file} is readable by every user: "
                f"run `chmod 600 {credentials_file}`"
            )
        wanted = environ.get(ENV_USER) or mycnf.client.user
        layers.append(
            read_json_credentials(credentials_file, wanted)
            if _is_json(credentials_file)
            else read_client_options(credentials_file, "--db_credentials_file")
        )
    layers.append(ClientOptions(user=environ.get(ENV_USER) or None, password=environ.get(ENV_PASSWORD)))
    user, password = "root", None
    for layer in layers:
        if layer.user:
            user, password = layer.user, layer.password
        elif layer.password is not None:
            password = layer.password
    files = layers[:-1][::-1]  # the environment sets no address
    return Credentials(
        user=user,
        password=password,
        socket=next((o.socket for o in files if o.socket), mycnf.socket),
        host=next((o.host for o in files if o.host), None),
        port=next((o.port for o in files if o.port), mycnf.port),
    )


def _is_json(path: Path) -> bool:
    try:
        return path.read_text(errors="replace").lstrip().startswith("{")
    except OSError:
        return False  # the option-file reader reports it


def read_json_credentials(path: Path, wanted_user: str | None) -> ClientOptions:
    """Vitess's JSON credentials file (`{"user": ["password", ...]}`): the entry of `wanted_user`, or the
    only entry; ConfigError naming the users and the fix otherwise."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--db_credentials_file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
        for k, v in data.items()
    ):
        raise ConfigError(f'--db_credentials_file {path}: expected Vitess\'s form {{"user": ["password"]}}')
    if wanted_user in data:
        user = wanted_user
    elif len(data) == 1:
        user = next(iter(data))
    else:
        raise ConfigError(
            f"--db_credentials_file {path} holds several users ({', '.join(sorted(data))}): say which one the "
            f"agent connects as with the [client] user of --mycnf_file or {ENV_USER}"
        )
    passwords = data[user]
    return ClientOptions(user=user, password=passwords[0] if passwords else None)


class QueryError(AgentError):
    """mysqld refused a statement; `errno` is its error number."""

    def __init__(self, message: str, errno: int) -> None:
        code = grpc.StatusCode.PERMISSION_DENIED if errno in PERMISSION_ERRNOS else None
        super().__init__(message, code)
        self.errno = errno


class SqlRunner(Protocol):
    """What the query helpers need: a `MysqlClient` or one session of it."""

    async def query(self, sql: str, args: Args = None) -> list[dict[str, Any]]: ...

    async def query_one(self, sql: str, args: Args = None) -> dict[str, Any] | None: ...

    async def execute(self, sql: str, args: Args = None) -> int: ...


class MysqlSession:
    """One open connection (autocommit on). Obtained from `MysqlClient.connection()`."""

    def __init__(self, conn: Any, address: str) -> None:
        self._conn = conn
        self._address = address

    async def query(self, sql: str, args: Args = None) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name."""
        try:
            async with self._conn.cursor(aiomysql.DictCursor) as cur:
                await cur.execute(sql, args)
                return list(await cur.fetchall())
        except _SQL_ERRORS as e:
            raise self._error(sql, e) from None

    async def query_one(self, sql: str, args: Args = None) -> dict[str, Any] | None:
        rows = await self.query(sql, args)
        return rows[0] if rows else None

    async def execute(self, sql: str, args: Args = None) -> int:
        """Run a statement; returns the affected row count."""
        try:
            async with self._conn.cursor() as cur:
                return int(await cur.execute(sql, args))
        except _SQL_ERRORS as e:
            raise self._error(sql, e) from None

    def _error(self, sql: str, e: BaseException) -> AgentError:
        errno = _errno(e)
        if 0 < errno < CLIENT_ERRNO_MIN:
            return QueryError(f"mysqld refused `{describe_sql(sql)}`: {_reason(e)}", errno)
        return Unavailable(
            f"lost the connection to mysqld at {self._address} during `{describe_sql(sql)}`: {_reason(e)}"
        )


class MysqlClient:
    """Opens a fresh connection per call; see the module doc."""

    def __init__(self, creds: Credentials, connect_timeout: float = 5.0) -> None:
        self.credentials = creds
        self.connect_timeout = connect_timeout

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[MysqlSession]:
        """One session for several statements; raises Unavailable when mysqld cannot be reached."""
        try:
            conn = await self._open()
        except (pymysql.err.MySQLError, OSError, TimeoutError) as e:
            creds = self.credentials
            raise Unavailable(
                f"cannot connect to mysqld at {creds.address} as {creds.user!r}: {_reason(e)}"
            ) from None
        try:
            yield MysqlSession(conn, self.credentials.address)
        finally:
            await _close(conn)

    async def query(self, sql: str, args: Args = None) -> list[dict[str, Any]]:
        async with self.connection() as s:
            return await s.query(sql, args)

    async def query_one(self, sql: str, args: Args = None) -> dict[str, Any] | None:
        async with self.connection() as s:
            return await s.query_one(sql, args)

    async def execute(self, sql: str, args: Args = None) -> int:
        async with self.connection() as s:
            return await s.execute(sql, args)

    async def ping(self) -> bool:
        """True when mysqld answers, even if it refuses these credentials (it is running then)."""
        try:
            conn = await self._open()
        except pymysql.err.MySQLError as e:
            return 0 < _errno(e) < CLIENT_ERRNO_MIN
        except (OSError, TimeoutError):
            return False
        await _close(conn)
        return True

    async def _open(self) -> Any:
        creds = self.credentials
        where: dict[str, Any] = (
            {"unix_socket": str(creds.socket)}
            if creds.uses_socket
            else {"host": creds.host or "localhost", "port": creds.port}
        )
        async with asyncio.timeout(self.connect_timeout):  # aiomysql's own timeout covers TCP connect only
            return await aiomysql.connect(
                user=creds.user,
                password=creds.password or "",
                connect_timeout=self.connect_timeout,
                autocommit=True,
                charset="utf8mb4",
                **where,
            )


def describe_sql(sql: str, limit: int = 80) -> str:
    """A statement for messages: string literals (which may hold passwords) blanked, whitespace folded."""
    text = " ".join(_LITERAL.sub("'…'", sql).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _close(conn: Any) -> None:
    try:
        await asyncio.wait_for(conn.ensure_closed(), CLOSE_TIMEOUT)  # polite COM_QUIT
    except Exception:  # the connection goes away either way
        pass
    finally:
        conn.close()  # idempotent; frees the transport even when cancelled


def _errno(e: BaseException) -> int:
    args = getattr(e, "args", ())
    return args[0] if isinstance(e, pymysql.err.MySQLError) and args and isinstance(args[0], int) else 0


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    args: tuple[Any, ...] = e.args if isinstance(e, pymysql.err.MySQLError) else ()
    text = f"({args[0]}) {args[1]}" if len(args) >= 2 else (str(e) or type(e).__name__)
    return f"{text} ({e.__cause__})" if e.__cause__ is not None else text
