"""xtrabackup's command line: which binaries to run, their argv, the password file, and what they print.

Percona's `xtrabackup`/`xbstream` and MariaDB's `mariabackup`/`mbstream` take the same options. The
configured names (default `xtrabackup`/`xbstream`) are looked up in `--xtrabackup_root_path` or on PATH;
with the default names, MariaDB's are used when Percona's are missing. Errors keep Go's exec wording
(Vitess prints it), e.g. `unable to start backup: exec: "xtrabackup": executable file not found in $PATH`.
"""

from __future__ import annotations

import enum
import math
import os
import re
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.aio.procs import ProcessError, describe_exit, redact_argv
from agent.config import AgentConfig
from agent.errors import AgentError, DataLoss, FailedPrecondition, InvalidArgument
from agent.mysql.client import Credentials
from agent.operations import Operation

DEFAULT_XTRABACKUP = "xtrabackup"
DEFAULT_XBSTREAM = "xbstream"
MARIADB_TOOLS = {DEFAULT_XTRABACKUP: "mariabackup", DEFAULT_XBSTREAM: "mbstream"}
PASSWORD_ENV = "TABLET_AGENT_XTRABACKUP_PASSWORD"
COMPLETED = "completed OK!"
NO_USER = "xtrabackupUser must be specified."
_SECRET_ENV = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|MYSQL_PWD", re.IGNORECASE)
_GTID_START = "GTID of the last change '"
_BINLOG_FILE = re.compile(r"MySQL binlog position: filename '([^']*)', position '(\d+)'")
_ERROR_LINE = re.compile(r"\[ERROR\]|\berror:|FATAL|\bfailed to\b", re.IGNORECASE)


class StreamMode(enum.StrEnum):
    XBSTREAM = "xbstream"
    TAR = "tar"  # xtrabackup 2.4 only (5.7-era servers); 8.0 and mariabackup refuse it


@dataclass(frozen=True)
class Settings:
    """The xtrabackup flags, checked. Flags are split like a shell would (quotes allowed)."""

    user: str
    stream_mode: StreamMode
    backup_flags: tuple[str, ...]
    prepare_flags: tuple[str, ...]
    restore_flags: tuple[str, ...]
    stripes: int
    stripe_block_size: int


def stream_mode(value: str, flag: str = "--xtrabackup_stream_mode") -> StreamMode:
    try:
        return StreamMode(value.strip().lower())
    except ValueError:
        raise InvalidArgument(
            f"{flag}={value!r} is not a valid value for xtrabackup_stream_mode: use xbstream "
            "(tar works only with xtrabackup 2.4 against 5.7-era servers)"
        ) from None


def split_flags(flag: str, value: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(value))
    except ValueError as e:
        raise InvalidArgument(f"cannot parse {flag} {value!r}: {e}") from None
    if redact_argv(argv) != argv:
        raise InvalidArgument(
            f"{flag} must not carry a password (it would show in process listings): "
            f"set {PASSWORD_ENV} in the agent's environment instead"
        )
    return argv


def settings_from(config: AgentConfig) -> Settings:
    """The backup settings; InvalidArgument (`xtrabackupUser must be specified.`) without a user."""
    user = (config.xtrabackup_user or "").strip()
    if not user:
        raise InvalidArgument(NO_USER)
    return Settings(
        user=user,
        stream_mode=stream_mode(config.xtrabackup_stream_mode),
        backup_flags=split_flags("--xtrabackup_backup_flags", config.xtrabackup_backup_flags),
        prepare_flags=split_flags("--xtrabackup_prepare_flags", config.xtrabackup_prepare_flags),
        restore_flags=split_flags("--xbstream_restore_flags", config.xbstream_restore_flags),
        stripes=config.xtrabackup_stripes,
        stripe_block_size=config.xtrabackup_stripe_block_size,
    )


# --- finding the binaries ------------------------------------------------------------------------


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_tool(name: str, root: Path | None, action: str, search_path: str | None = None) -> str:
    """The absolute path of tool `name` (`xtrabackup`/`xbstream` or a configured name).

    With a root path only that directory is searched, else PATH (`search_path`, default $PATH).
    The default names fall back to MariaDB's `mariabackup`/`mbstream`.
    """
    names = [name] + ([MARIADB_TOOLS[name]] if name in MARIADB_TOOLS else [])
    if "/" in name:
        if _executable(Path(name)):
            return name
        reason = f"fork/exec {name}: no such file or directory"
    elif root is not None:
        for candidate in names:
            if _executable(root / candidate):
                return str(root / candidate)
        reason = f"fork/exec {root / name}: no such file or directory"
    else:
        for candidate in names:
            if found := shutil.which(candidate, path=search_path):
                return str(Path(found).absolute())
        reason = f'exec: "{name}": executable file not found in $PATH'
    also = f" (or MariaDB's {MARIADB_TOOLS[name]})" if name in MARIADB_TOOLS else ""
    if "/" in name:
        where = "fix --xtrabackup_binary / --xbstream_binary"
    elif root is not None:
        where = f"fix --xtrabackup_root_path={root}: it must hold {name}{also}"
    else:
        where = (
            f"install {name}{also} on the agent's PATH, or set --xtrabackup_root_path to the directory "
            "that holds it"
        )
    raise FailedPrecondition(f"unable to start {action}: {reason}; {where}")


@dataclass(frozen=True)
class Tools:
    xtrabackup: str
    xbstream: str  # `tar` for tar streams


def find_tools(config: AgentConfig, mode: StreamMode, search_path: str | None = None) -> Tools:
    """The programs a restore runs: xtrabackup, and xbstream (or tar) to extract the stream."""
    root = config.xtrabackup_root_path
    xtrabackup = find_tool(config.xtrabackup_binary, root, "restore", search_path)
    if mode is StreamMode.TAR:
        return Tools(xtrabackup=xtrabackup, xbstream="tar")
    return Tools(
        xtrabackup=xtrabackup, xbstream=find_tool(config.xbstream_binary, root, "restore", search_path)
    )


# --- argv ------------------------------------------------------------------------------------------


def backup_argv(
    tool: str,
    defaults_file: Path,
    target_dir: Path,
    settings: Settings,
    *,
    socket: Path | None,
    replica: bool,
    max_rate: float = 0,
) -> list[str]:
    """`--defaults-file` first (the tools refuse it elsewhere); never a password. `max_rate` (bytes/s, 0:
    none) becomes `--throttle`, unless the configured flags set it."""
    argv = [
        tool,
        f"--defaults-file={defaults_file}",
        "--backup",
        f"--stream={settings.stream_mode}",
        f"--target-dir={target_dir}",
        f"--user={settings.user}",
    ]
    if socket is not None:
        argv.append(f"--socket={socket}")
    if replica:
        # Record the source position and stop the SQL thread while copying (it is started again at the
        # end, or by the agent if the tool dies).
        argv += ["--slave-info", "--safe-slave-backup"]
    if max_rate > 0 and not any(f.startswith("--throttle") for f in settings.backup_flags):
        argv.append(f"--throttle={throttle_for(max_rate)}")
    return argv + list(settings.backup_flags)


# Bytes per second one unit of --throttle lets the tool stream, measured with mariabackup 10.11 (0.44-0.51
# MiB at --throttle=10..40; its manuals say 1 MB or "10 MB chunks"). With some headroom the agent's own
# pacing of the stream is what holds the rate exactly, and the tool's reads never run far ahead of it.
THROTTLE_UNIT = 512 << 10
THROTTLE_HEADROOM = 1.25


def throttle_for(max_rate: float) -> int:
    """`--throttle` (read-and-write pairs per second) for about `max_rate` bytes/s; at least 1."""
    return max(1, math.ceil(max_rate * THROTTLE_HEADROOM / THROTTLE_UNIT))


def extract_argv(
    tools: Tools, mode: StreamMode, target_dir: Path, flags: Sequence[str], parallel: int
) -> list[str]:
    if mode is StreamMode.TAR:
        return [tools.xbstream, "-xi", "-C", str(target_dir)]
    argv = [tools.xbstream, "-x", "-C", str(target_dir)]
    if not any(f.startswith(("-p", "--parallel")) for f in flags):
        argv.append(f"--parallel={parallel}")
    return argv + list(flags)


def prepare_argv(tool: str, mycnf: Path, target_dir: Path, flags: Sequence[str]) -> list[str]:
    return [tool, f"--defaults-file={mycnf}", "--prepare", f"--target-dir={target_dir}", *flags]


def move_back_argv(tool: str, mycnf: Path, target_dir: Path) -> list[str]:
    # The extraction directory is on the targets' filesystem: files are renamed, not copied.
    return [
        tool,
        f"--defaults-file={mycnf}",
        "--move-back",
        "--force-non-empty-directories",
        f"--target-dir={target_dir}",
    ]


# --- password and environment -----------------------------------------------------------------------


def password_for(user: str, credentials: Credentials, environ: Mapping[str, str]) -> str | None:
    """$TABLET_AGENT_XTRABACKUP_PASSWORD, else the agent's own password when the user is the same.
    None: no password (e.g. unix_socket/auth_socket authentication)."""
    if environ.get(PASSWORD_ENV):
        return environ[PASSWORD_ENV]
    if credentials.user == user and credentials.password:
        return credentials.password
    return None


def _quote_option(value: str) -> str:
    """A value for an option file, read back verbatim by mysys (quotes keep `#` and spaces)."""
    if "\0" in value:
        raise InvalidArgument("the xtrabackup password contains a NUL byte, which option files cannot hold")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def option_file_text(mycnf: Path, password: str) -> str:
    """The tablet's option file plus the password in the `[xtrabackup]` group (read by both tools)."""
    return (
        "# written by tablet-agent for one xtrabackup run (mode 0600), removed when it ends\n"
        f"!include {mycnf.absolute()}\n\n[xtrabackup]\npassword={_quote_option(password)}\n"
    )


def write_option_file(path: Path, mycnf: Path, password: str) -> None:
    """Created 0600 and exclusively: never an existing file, nor one a symlink points to."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(option_file_text(mycnf, password))


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment without its secrets."""
    return {k: v for k, v in environ.items() if not _SECRET_ENV.search(k)}


def fresh_dir(path: Path, *subdirs: str) -> None:
    """An empty private directory (whatever a crashed run left there is removed first)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)
    for name in subdirs:
        (path / name).mkdir(mode=0o700)


# --- what the tool prints ----------------------------------------------------------------------------

# (stderr pattern, what it means and the flag that fixes it)
_PROBLEMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"invalid --stream argument|stream.{0,20}tar.{0,40}not supported|tar.{0,40}no longer supported",
            re.I,
        ),
        "the tar stream mode was refused (xtrabackup 8.0 and mariabackup only stream xbstream): "
        "set --xtrabackup_stream_mode=xbstream",
    ),
    (
        re.compile(r"unsupported server version|server version check|no-server-version-check", re.I),
        "this xtrabackup does not support the server's version: install a release that does, or accept "
        "the risk with --xtrabackup_backup_flags=--no-server-version-check",
    ),
    (
        re.compile(r"access denied", re.I),
        f"check --xtrabackup_user, its password (${PASSWORD_ENV}, or none with unix_socket authentication) "
        "and its GRANTs (RELOAD, PROCESS, BINLOG MONITOR; on replicas also SLAVE MONITOR, REPLICATION SLAVE ADMIN)",
    ),
)


class ToolOutput:
    """Reads the tool's stderr line by line: the completion line, the binlog position (a MySQL GTID set
    may span lines) and known problems with their fix. Owned by one tool run."""

    def __init__(self) -> None:
        self.completed = False
        self.gtids: str | None = None
        self.binlog_file: str | None = None
        self.binlog_pos: int | None = None
        self.problems: list[tuple[str, str]] = []  # (the line, the hint)
        self._open_gtids: list[str] | None = None
        self.refused_names: list[str] = []  # xbstream: entries outside the target directory

    def feed(self, line: str) -> None:
        if self._open_gtids is not None:
            self._take_gtids(line)
        elif _GTID_START in line:
            self._open_gtids = []
            self._take_gtids(line.split(_GTID_START, 1)[1])
        if m := _BINLOG_FILE.search(line):
            self.binlog_file, self.binlog_pos = m.group(1), int(m.group(2))
        if "invalid filename " in line:
            self.refused_names.append(line.split("invalid filename ", 1)[1].strip())
        if line.rstrip().endswith(COMPLETED):
            self.completed = True
        for pattern, hint in _PROBLEMS:
            if pattern.search(line) and all(h != hint for _, h in self.problems):
                self.problems.append((line.strip(), hint))

    def _take_gtids(self, text: str) -> None:
        assert self._open_gtids is not None
        part, quote, _ = text.partition("'")
        self._open_gtids.append(part)
        if quote:
            self.gtids = "".join("".join(self._open_gtids).split())
            self._open_gtids = None

    def explain(self) -> str:
        """The problems recognised so far: the tool's own line, then the fix."""
        return "; ".join(f'xtrabackup said "{line}": {hint}' for line, hint in self.problems)

    def failure(self, error: ProcessError) -> AgentError:
        """The tool's ProcessError with the recognised problems and their fix in front of the stderr tail."""
        explained = self.explain()
        if not explained:
            return error
        reason = f"{describe_exit(error.returncode)}; {explained}"
        return ProcessError(
            error.argv, error.returncode, error.stderr_tail, reason, code=grpc.StatusCode.FAILED_PRECONDITION
        )

    def check_completed(self, argv: Sequence[str], tail: Sequence[str]) -> None:
        """Exit status 0 is not enough: the tool must have said it completed."""
        if not self.completed:
            raise ProcessError(
                argv,
                0,
                tail,
                f"exited with status 0 but never printed {COMPLETED!r}: its output cannot be trusted",
            )


def line_logger(op: Operation, output: ToolOutput, tool: str) -> Callable[[str], None]:
    """A stderr callback: each line is read by `output`, logged at debug level, and an error-looking one
    becomes a warning event (the tail of the rest goes with a failure's error)."""

    def on_line(line: str) -> None:
        output.feed(line)
        if _ERROR_LINE.search(line):
            op.warning(f"{tool} stderr: {line}", tool=tool)
        else:
            op.debug(f"{tool} stderr: {line}", tool=tool)

    return on_line


def parse_binlog_info(text: str) -> tuple[str, int, str]:
    """`xtrabackup_binlog_info`: `<file>\\t<position>[\\t<gtids>]` (a MySQL set may span lines)."""
    fields = text.split(None, 2)
    if len(fields) < 2 or not fields[1].isdigit():
        raise DataLoss(f"xtrabackup_binlog_info is not '<file> <position> [<gtids>]': {text[:200]!r}")
    gtids = "".join(fields[2].split()) if len(fields) == 3 else ""
    return fields[0], int(fields[1]), gtids
