"""Read mysqld's option file (my.cnf) the way mysqld does, for the paths and settings the agent needs.

Follows MariaDB 10.11's rules, checked against a running server: options of every server group apply in
file order (last wins), `!include`/`!includedir` are followed (missing ones are skipped, as mysqld does),
relative paths are relative to the datadir (mysqld chdirs there), and log names default from the pid
file's stem: `<datadir>/<hostname>.pid`, bare `log_bin` = `<datadir>/<stem>-bin`, relay log
`<datadir>/<stem>-relay-bin` (`log_basename` replaces the stem). A binlog name loses its extension,
an index gets `.index`, a pid file or error log without extension gets `.pid`/`.err`.
A group suffix (mysqld's `--defaults-group-suffix`, `$MARIADB_GROUP_SUFFIX`; Debian's `mariadb@<i>.service`
passes `.<i>`) adds the suffixed twin of every group read (`[mysqld.<i>]`, `[server.<i>]`, `[client.<i>]`,
...; names compare case-insensitively), still applied in file order with the plain groups.
Not modelled: MySQL 8's binlog-on-by-default (set `log_bin` explicitly there).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import ConfigError

SERVER_GROUPS = frozenset({"mysqld", "mariadb", "mariadbd", "server", "client-server", "galera"})
CLIENT_GROUPS = frozenset({"client", "client-server", "client-mariadb"})
_VERSIONED_SERVER_GROUP = re.compile(r"^(mysqld|mariadb|mariadbd)-\d+(\.\d+)*$")
MAX_INCLUDE_DEPTH = 10
DEFAULT_PORT = 3306
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "s": " ", '"': '"', "'": "'", "\\": "\\"}
_OFF_VALUES = frozenset({"0", "off", "false"})

Option = tuple[str, str, str | None]
"""(group, normalized key, value or None for a bare key), in file order."""


@dataclass(frozen=True)
class ClientOptions:
    """A `[client]`-style group: how to connect. Unset options are None."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    socket: Path | None = None
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class MyCnf:
    """Where mysqld keeps its files, all paths absolute."""

    path: Path
    datadir: Path
    socket: Path | None
    port: int
    pid_file: Path
    log_error: Path | None  # None: mysqld logs to stderr
    log_bin: Path | None  # binlog base name (files are `<base>.000001`); None: binlog off
    log_bin_index: Path | None
    relay_log: Path
    innodb_data_home_dir: Path  # `/` when configured empty (absolute innodb_data_file_path)
    innodb_log_group_home_dir: Path
    innodb_data_file_path: str
    innodb_undo_directory: Path
    server_id: int
    client: ClientOptions = field(default_factory=ClientOptions)


def read_mycnf(path: Path, group_suffix: str = "") -> MyCnf:
    """Parse the tablet mysqld's option file, with the groups of `group_suffix` too (mysqld's
    `--defaults-group-suffix`). Raises ConfigError with the fix in the message."""
    options = _read_options(path, "--mycnf_file", "point it at the tablet mysqld's option file")
    suffix = group_suffix.lower()
    server = _last_values(options, lambda g: _is_server_group(_unsuffixed(g, suffix)))
    datadir_value = server.get("datadir")
    if not datadir_value:
        groups = "[mysqld], [mariadb], [server]" + (f", [mysqld{group_suffix}], ..." if suffix else "")
        hint = "" if suffix else "; for an instance's [mysqld.<i>] groups set --mycnf_group_suffix=.<i>"
        raise ConfigError(
            f"{path} sets no datadir in a server group ({groups}): add datadir=<the tablet's data directory>{hint}"
        )
    datadir = _normalize(Path(datadir_value).expanduser())
    if not datadir.is_absolute():
        raise ConfigError(f"{path}: datadir={datadir_value} must be an absolute path")

    def in_datadir(value: str) -> Path:
        return _normalize(datadir / Path(value).expanduser())

    def optional_path(key: str) -> Path | None:
        value = server.get(key)
        return in_datadir(value) if value else None

    basename = server.get("log_basename") or None
    pid_file = optional_path("pid_file")
    if pid_file is None:
        pid_file = datadir / f"{_stem(basename or socket.gethostname())}.pid"
    pid_file = _with_default_ext(pid_file, ".pid")
    stem = basename or _stem(pid_file.name)

    log_bin: Path | None = None
    log_bin_index: Path | None = None
    if "log_bin" in server and (server["log_bin"] or "").lower() not in _OFF_VALUES:
        log_bin = _without_ext(in_datadir(server["log_bin"] or f"{stem}-bin"))
        index = optional_path("log_bin_index") or log_bin
        log_bin_index = index.with_name(_stem(index.name) + ".index")

    log_error: Path | None = None
    if "log_error" in server:
        if error_value := server["log_error"]:
            log_error = _with_default_ext(in_datadir(error_value), ".err")
        else:  # bare: the pid file's name with .err, or <datadir>/<log_basename>.err
            bare = datadir / basename if basename else _without_ext(pid_file)
            log_error = bare.with_name(bare.name + ".err")

    data_home = server.get("innodb_data_home_dir")
    if data_home is not None:  # empty: innodb_data_file_path holds absolute paths
        data_home = str(in_datadir(data_home)) if data_home else "/"
    port = _int(server, "port", path)
    server_id = _int(server, "server_id", path)
    return MyCnf(
        path=path.absolute(),
        datadir=datadir,
        socket=optional_path("socket"),
        port=port or DEFAULT_PORT,
        pid_file=pid_file,
        log_error=log_error,
        log_bin=log_bin,
        log_bin_index=log_bin_index,
        relay_log=_without_ext(in_datadir(server.get("relay_log") or f"{stem}-relay-bin")),
        innodb_data_home_dir=Path(data_home) if data_home is not None else datadir,
        innodb_log_group_home_dir=optional_path("innodb_log_group_home_dir") or datadir,
        innodb_data_file_path=server.get("innodb_data_file_path") or "ibdata1:12M:autoextend",
        innodb_undo_directory=optional_path("innodb_undo_directory") or datadir,
        server_id=1 if server_id is None else server_id,
        client=_client_options(options, path, suffix),
    )


def read_client_options(path: Path, flag: str) -> ClientOptions:
    """The client groups of an option file (e.g. a credentials file named by `flag`)."""
    options = _read_options(path, flag, "point it at an option file with a [client] group")
    return _client_options(options, path)


def _client_options(options: list[Option], path: Path, suffix: str = "") -> ClientOptions:
    client = _last_values(options, lambda g: _unsuffixed(g, suffix) in CLIENT_GROUPS)
    sock = client.get("socket")
    return ClientOptions(
        user=client.get("user") or None,
        password=client.get("password"),
        socket=Path(sock).expanduser() if sock else None,
        host=client.get("host") or None,
        port=_int(client, "port", path) or None,
    )


def _read_options(path: Path, flag: str, fix: str) -> list[Option]:
    if not path.is_file():
        raise ConfigError(f"{flag} {path} does not exist: {fix}")
    try:
        return list(_parse(path, 0))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{flag} {path} cannot be read ({e}): make it readable by the agent") from None


def _parse(path: Path, depth: int) -> Iterator[Option]:
    group: str | None = None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("!"):
            yield from _include(path, line, depth)
            continue
        line = _strip_comment(line)
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{path}:{lineno}: malformed group header {line!r}: write it as [group]")
            group = line[1:-1].strip().lower()
            continue
        if group is None:
            raise ConfigError(f"{path}:{lineno}: option outside any group: put it under a [group] header")
        key, sep, value = line.partition("=")
        yield from _option(group, key.strip(), _unquote(value.strip()) if sep else None)


def _include(path: Path, line: str, depth: int) -> Iterator[Option]:
    directive, _, target = line.replace("\t", " ").partition(" ")
    if depth >= MAX_INCLUDE_DEPTH or not target.strip():
        return  # mysqld skips these with a warning; so do we
    where = path.parent / Path(target.strip()).expanduser()
    if directive == "!include" and where.is_file():
        yield from _parse(where, depth + 1)
    elif directive == "!includedir" and where.is_dir():
        for child in sorted(where.iterdir()):
            if child.suffix == ".cnf" and child.is_file():
                yield from _parse(child, depth + 1)


def _option(group: str, key: str, value: str | None) -> Iterator[Option]:
    name = key.lower().replace("-", "_")
    if name.startswith("loose_"):
        name = name[len("loose_") :]
    if name.startswith("maximum_"):
        return  # limits on SET, not settings
    yield group, name, value
    for prefix, implied in (("skip_", "0"), ("disable_", "0"), ("enable_", "1")):
        if name.startswith(prefix) and value is None:
            yield group, name[len(prefix) :], implied


def _strip_comment(line: str) -> str:
    """Cut a `#` comment that is outside quotes (mysqld's remove_end_comment)."""
    quote = ""
    escape = False
    for i, ch in enumerate(line):
        if ch in "'\"" and not escape:
            quote = "" if quote == ch else (quote or ch)
        if not quote and ch == "#":
            return line[:i].rstrip()
        escape = bool(quote) and ch == "\\" and not escape
    return line


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    out: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, None)
            if nxt is None:
                out.append(ch)
            else:
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
        else:
            out.append(ch)
    return "".join(out)


def _unsuffixed(group: str, suffix: str) -> str:
    """`mysqld.inst1` -> `mysqld` for suffix `.inst1` (both groups are read); other names unchanged."""
    return group[: -len(suffix)] if suffix and group.endswith(suffix) else group


def _is_server_group(group: str) -> bool:
    return group in SERVER_GROUPS or _VERSIONED_SERVER_GROUP.match(group) is not None


def _last_values(options: list[Option], accept: Callable[[str], bool]) -> dict[str, str | None]:
    return {key: value for group, key, value in options if accept(group)}


def _int(values: dict[str, str | None], key: str, path: Path) -> int | None:
    raw = values.get(key)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{path}: {key}={raw!r} is not a whole number") from None


def _stem(name: str) -> str:
    """A file name up to its first dot, as mysqld's fn_ext cuts it."""
    return name.split(".", 1)[0]


def _without_ext(path: Path) -> Path:
    return path.with_name(_stem(path.name))


def _with_default_ext(path: Path, ext: str) -> Path:
    return path if "." in path.name else path.with_name(path.name + ext)


def _normalize(path: Path) -> Path:
    return Path(os.path.normpath(path))
