"""Set-up checks: what backups and restores need, refused at start (exit 2) and listed by `tabletctl check`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import os
import re
import secrets
import shlex
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.aio.procs import run
from agent.aio.tasks import in_thread
from agent.binlogs.apply import check_applier_tools
from agent.catalog.listing import list_backup_entries, newest_complete_full
from agent.catalog.pitr_path import RestorePath
from agent.config import AgentConfig, EngineName, StorageKind, TabletType
from agent.errors import AgentError, ConfigError, StorageUnreachable
from agent.log import get_logger
from agent.mysql import replication
from agent.mysql.client import MysqlClient, MysqlSession
from agent.mysql.gtid import Flavor
from agent.mysql.mysqld import SERVER_PROGRAMS, find_program
from agent.ops.codecs import codec_for_backup
from agent.ops.restore import swap
from agent.ops.restore.preflight import plan_backups, space_needs
from agent.pipeline.compression import ExternalCodec
from agent.storage import BackupStorage, storage_from_config
from agent.tablet import Tablet
from engines.xtrabackup_tool import PASSWORD_ENV, child_env, find_tool, password_for, settings_from

log = get_logger("agent.ops.check")

CHECK_TIMEOUT = 30.0  # seconds one check may take (object stores retry with backoff)
VERSION_TIMEOUT = 10.0
PROBE_PREFIX = "tablet-agent-check"  # a throw-away backup name: <prefix>.<alias>.<random>
PROBE_OBJECT = "probe"
PROBE_SIZE = 4096

# What mariabackup needs on MariaDB (the README's --xtrabackup_user row): always, and with a source.
XTRABACKUP_GRANTS = ("RELOAD", "PROCESS", "BINLOG MONITOR")
REPLICA_GRANTS = ("SLAVE MONITOR", "REPLICATION SLAVE ADMIN")
GRANT_SYNONYMS = {
    "REPLICATION CLIENT": "BINLOG MONITOR",
    "REPLICA MONITOR": "SLAVE MONITOR",
    "REPLICATION REPLICA ADMIN": "REPLICATION SLAVE ADMIN",
}
SUPER_COVERS = frozenset({"BINLOG MONITOR", "SLAVE MONITOR", "REPLICATION SLAVE ADMIN"})  # before 11.0
_GLOBAL_GRANT = re.compile(r"^GRANT (?P<privileges>.+?) ON \*\.\* TO ", re.IGNORECASE)
_DEFAULT_ROLE = re.compile(r"^SET DEFAULT ROLE [`'](?P<role>[^`']+)[`'] FOR ", re.IGNORECASE)

STORAGE_FIXES = {
    StorageKind.FILE: "give the agent's user write access to --file_backup_storage_root (and a mounted, "
    "read-write filesystem there), or point it at another directory",
    StorageKind.S3: "check --s3_backup_storage_bucket, --s3_backup_aws_endpoint/--s3_backup_aws_region and the "
    "AWS credentials: they need s3:PutObject, s3:GetObject, s3:DeleteObject and s3:ListBucket",
    StorageKind.GCS: "check --gcs_backup_storage_bucket and the Google credentials: they need "
    "roles/storage.objectAdmin on the bucket",
    StorageKind.AZBLOB: "check --azblob_backup_container_name, the account name and key, and that the container "
    "exists",
}


class State(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"  # works, but not as recommended, or could not be checked
    FAIL = "FAIL"  # a backup or a restore would fail


@dataclass(frozen=True)
class CheckResult:
    name: str
    state: State
    detail: str
    fix: str = ""

    def line(self) -> str:
        """`FAIL storage: cannot ...; fix: ...`: one line for people and logs."""
        text = f"{self.name}: {self.detail}"
        return f"{text}; fix: {self.fix}" if self.fix else text


def ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, State.OK, detail)


def warn(name: str, detail: str, fix: str = "") -> CheckResult:
    return CheckResult(name, State.WARN, detail, fix)


def fail(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, State.FAIL, detail, fix)


# --- start-up ------------------------------------------------------------------------------------------


async def check_at_start(config: AgentConfig) -> None:
    """Everything that needs no running mysqld, before anything is touched or served; ConfigError (exit 2)
    with one line per failed check and its fix. Warnings are logged."""
    results = [*ports(config), *await config_checks(config)]
    storage = storage_from_config(config)  # the tablet's own is made later, by Tablet.create
    try:
        # A store that does not answer (yet) is served like a mysqld that does not: the agent starts, the
        # backups fail until it answers; a store that refuses (rights, bucket, credentials) is refused.
        probe = storage_round_trip(storage, config, unreachable=State.WARN)
        results.append(await _bounded("storage", probe, late=State.WARN))
    finally:
        await storage.close()
    report_at_start(results)


def report_at_start(results: Sequence[CheckResult]) -> None:
    failed = [r.line() for r in results if r.state is State.FAIL]
    for r in results:
        if r.state is State.WARN:
            log.warning(r.line())
    if failed:
        raise ConfigError("\n  ".join(failed))


async def warn_at_start(tablet: Tablet) -> None:
    """What only a live mysqld shows, logged as warnings at start (the agent serves anyway): the xtrabackup
    user's connection and grants. Nothing when mysqld does not answer (start-up already said so)."""
    if tablet.config.backup_engine_implementation is not EngineName.XTRABACKUP:
        return
    if not tablet.config.xtrabackup_user or not await tablet.mysqld.is_running():
        return
    for r in await _bounded_all(xtrabackup_user_checks(tablet)):
        if r.state is not State.OK:
            log.warning(r.line() + " (`tabletctl check` checks again)")


# --- everything (the Check RPC) ------------------------------------------------------------------------


async def run_checks(tablet: Tablet) -> list[CheckResult]:
    """Every start-up check but the ports (they are bound), then what only a live check shows: the
    storage round trip, mysqld, the xtrabackup user and grants, binlog settings, room for a restore."""
    results = await config_checks(tablet.config)
    results.append(await _bounded("storage", storage_round_trip(tablet.storage, tablet.config)))
    results.extend(await _bounded_all(live_checks(tablet)))
    return results


async def live_checks(tablet: Tablet) -> list[CheckResult]:
    try:
        info = await tablet.mysqld.server_info()
    except AgentError as e:
        op = tablet.runner.current
        during = f" (during {op.kind} {op.id}, which may have stopped it)" if op is not None else ""
        results = [
            fail(
                "mysqld",
                f"{e}{during}",
                "start mysqld, or fix the [client] group of --mycnf_file / --db_credentials_file",
            )
        ]
    else:
        results = [ok("mysqld", f"{info.flavor} {info.version} at {tablet.credentials.address}")]
        if tablet.config.backup_engine_implementation is EngineName.XTRABACKUP:
            results += await xtrabackup_user_checks(tablet)
        results += await binlog_checks(tablet, info.flavor)
    results.append(await _bounded("restore space", restore_space(tablet)))
    results.append(replay_tools(tablet.config))
    return results


async def _bounded(name: str, check: Awaitable[CheckResult], late: State = State.FAIL) -> CheckResult:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            return await check
    except TimeoutError:
        return CheckResult(
            name, late, f"no answer within {CHECK_TIMEOUT:g}s", "see the agent's log; retry the check"
        )


async def _bounded_all(checks: Awaitable[list[CheckResult]]) -> list[CheckResult]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT * 2):
            return await checks
    except TimeoutError:
        return [fail("mysqld", f"no answer within {CHECK_TIMEOUT * 2:g}s", "see mysqld's error log")]


# --- configuration ---------------------------------------------------------------------------------


async def config_checks(config: AgentConfig) -> list[CheckResult]:
    results = [compression(config), *external_commands(config), start_command(config)]
    results.append(await in_thread(state_dir, config.effective_state_dir))
    if config.backup_engine_implementation is EngineName.XTRABACKUP:
        results += await xtrabackup_tools(config)
    return results


def ports(config: AgentConfig) -> list[CheckResult]:
    """The gRPC and metrics ports are free (a port another program holds is otherwise found late, and
    gRPC's own error is a traceback)."""
    results = []
    for name, address, port, flag, cannot in (
        ("grpc port", config.grpc_bind_address, config.grpc_port, "--grpc_port", "listen on"),
        (
            "metrics port",
            config.metrics_bind_address,
            config.metrics_port,
            "--metrics_port",
            "serve metrics on",
        ),
    ):
        if port == 0:
            continue
        problem = port_problem(address, port)
        if problem:
            results.append(
                fail(
                    name,
                    f"cannot {cannot} {address}:{port}: {problem}",
                    f"stop the program using the port (`ss -ltnp 'sport = :{port}'` shows it) or choose "
                    f"another {flag}",
                )
            )
        else:
            results.append(ok(name, f"{address}:{port} is free"))
    return results


def port_problem(address: str, port: int) -> str:
    """Why `address:port` cannot be listened on ("" when it can), tried as gRPC binds: SO_REUSEADDR,
    every address the name resolves to."""
    try:
        infos = socket.getaddrinfo(
            address.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        return f"cannot resolve {address}: {e.strerror}"
    problems = []
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(sockaddr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return "the port is in use"
                problems.append(e.strerror or str(e))
    return "; ".join(problems) if len(problems) == len(infos) else ""


def compression(config: AgentConfig) -> CheckResult:
    try:
        codec = codec_for_backup(config)
    except AgentError as e:
        return fail(
            "compression",
            str(e),
            "set a valid --compression-engine-name / --compression_level (`tablet-agent --help`)",
        )
    if isinstance(codec, ExternalCodec):
        return ok("compression", f"external: {shlex.join(codec.compress_argv)}")
    level = getattr(codec, "level", None)
    return ok("compression", codec.name + (f" level {level}" if level is not None else ""))


def external_commands(config: AgentConfig) -> list[CheckResult]:
    """The external compressor and decompressor run where the agent runs them."""
    if config.compression_engine_name != "external":
        return []
    results = []
    for flag, command in (
        ("--external-compressor", config.external_compressor),
        ("--external-decompressor", config.external_decompressor),
    ):
        try:
            argv = shlex.split(command or "")
        except ValueError:
            argv = []
        if not argv:
            continue  # the compression check says what is wrong
        found = resolve(argv[0])
        name = flag.removeprefix("--")
        if found is None:
            results.append(
                fail(
                    name,
                    f"{argv[0]!r} is not on the agent's PATH or not executable",
                    f"install it or correct {flag}",
                )
            )
        else:
            results.append(ok(name, found))
    return results


def resolve(program: str) -> str | None:
    """An executable path, or the program found on PATH; None when it cannot be run."""
    if os.sep in program:
        return program if os.path.isfile(program) and os.access(program, os.X_OK) else None
    return shutil.which(program)


def start_command(config: AgentConfig) -> CheckResult:
    name = "mysqld start command"
    command = config.mysqld_start_command
    if not command:
        try:
            server = find_program(SERVER_PROGRAMS, "")
        except AgentError:
            return fail(
                name,
                "neither mariadbd nor mysqld is on PATH or in /usr/sbin, and --mysqld_start_command is not set: "
                "mysqld could not be started again after a builtin backup or a restore",
                "install the server or set --mysqld_start_command (e.g. `systemctl start mariadb@tab1.service`)",
            )
        return ok(name, f"{server} --defaults-file={config.mycnf_file}")
    try:
        argv = shlex.split(command)
    except ValueError as e:
        return fail(name, f"cannot parse {command!r}: {e}", "fix the quoting of --mysqld_start_command")
    if not argv:
        return fail(name, "--mysqld_start_command is empty", "set a command or leave it unset")
    if resolve(argv[0]) is None:
        return fail(
            name,
            f"{argv[0]!r} of --mysqld_start_command is not on the agent's PATH or not executable",
            "install it, give its full path, or correct --mysqld_start_command",
        )
    return ok(name, command)


def state_dir(path: Path) -> CheckResult:
    """The state directory exists (created if missing) and takes a file. Blocks: call it in a thread."""
    name = "state directory"
    try:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".tablet-agent-check-"):
            pass
    except OSError as e:
        return fail(
            name,
            f"cannot write in {path}: {e.strerror or e}",
            "give the agent's user write access to it, or set --state_dir (under systemd: StateDirectory=)",
        )
    return ok(name, f"{path} is writable")


async def xtrabackup_tools(config: AgentConfig) -> list[CheckResult]:
    """The xtrabackup settings, both programs, and that the tool runs (`--version`)."""
    try:
        settings_from(config)
    except AgentError as e:
        fix = "set --xtrabackup_user" if not config.xtrabackup_user else "correct the xtrabackup flags"
        results = [fail("xtrabackup settings", str(e), fix)]
    else:
        results = [ok("xtrabackup settings", f"user {config.xtrabackup_user!r}")]
    root = config.xtrabackup_root_path
    for name, program in (("xtrabackup", config.xtrabackup_binary), ("xbstream", config.xbstream_binary)):
        try:
            path = find_tool(program, root, "backup" if name == "xtrabackup" else "restore")
        except AgentError as e:
            detail, _, fix = str(e).partition("; ")
            results.append(
                fail(name, detail, re.sub(r"^fix ", "correct ", fix) or "set --xtrabackup_root_path")
            )
            continue
        results.append(await tool_version(path) if name == "xtrabackup" else ok(name, path))
    return results


async def tool_version(path: str) -> CheckResult:
    """`xtrabackup --version` runs and says something (mariabackup says it on stderr)."""
    fix = "install a working xtrabackup (or MariaDB's mariabackup), or correct --xtrabackup_binary"
    try:
        async with asyncio.timeout(VERSION_TIMEOUT):
            done = await run([path, "--version"], env=child_env(os.environ), check=False)
    except TimeoutError:
        return fail("xtrabackup", f"`{path} --version` did not finish within {VERSION_TIMEOUT:g}s", fix)
    except AgentError as e:
        return fail("xtrabackup", f"cannot run {path}: {e}", fix)
    lines = [ln.strip() for ln in [*done.stdout.decode(errors="replace").splitlines(), *done.stderr_tail]]
    said = next((ln for ln in lines if "version" in ln.lower() or "based on" in ln.lower()), "")
    if done.returncode != 0 or not said:
        tail = "; ".join(ln for ln in lines if ln)[-300:] or "no output"
        return fail("xtrabackup", f"`{path} --version` exited with {done.returncode}: {tail}", fix)
    return ok("xtrabackup", said if said.startswith(path) else f"{path}: {said}")


# --- storage --------------------------------------------------------------------------------------------


async def storage_round_trip(
    storage: BackupStorage, config: AgentConfig, unreachable: State = State.FAIL
) -> CheckResult:
    """Write a small object where this tablet's backups go (a throw-away backup), read it back, compare,
    and remove it, through the storage's own protocol; a store that does not answer is `unreachable`."""
    directory = f"{config.init_keyspace}/{config.init_shard}"
    name = f"{PROBE_PREFIX}.{config.tablet_alias}.{secrets.token_hex(4)}"
    where = f"{storage.describe()} ({directory})"
    fix = STORAGE_FIXES[config.backup_storage_implementation]
    data = secrets.token_bytes(PROBE_SIZE)
    step = "create a probe backup in"
    handle = None
    try:
        handle = await storage.start_backup(directory, name)
        step = "write a probe object to"
        writer = await handle.add_file(PROBE_OBJECT, len(data))
        try:
            await writer.write(data)
            await writer.close()
        except BaseException:
            await writer.abort()
            raise
        step = "read the probe object back from"
        back = bytearray()
        async for chunk in handle.read_file(PROBE_OBJECT):
            back += chunk
        if bytes(back) != data:
            return fail(
                "storage", f"the probe object read back from {where} differs from what was written", fix
            )
        step = "remove the probe backup from"
        removing, handle = handle, None
        await removing.abort()
    except StorageUnreachable as e:
        return CheckResult(
            "storage", unreachable, f"cannot reach {where} to {step.split(' ', 1)[0]}: {e}", fix
        )
    except AgentError as e:
        return fail("storage", f"cannot {step} {where}: {e}", fix)
    finally:
        if handle is not None:
            with contextlib.suppress(Exception):
                await handle.abort()
    return ok("storage", f"{where}: wrote, read back and removed {PROBE_SIZE} bytes")


# --- mysqld -----------------------------------------------------------------------------------------------


async def xtrabackup_user_checks(tablet: Tablet) -> list[CheckResult]:
    """The xtrabackup user connects as the tool will (same socket or host, same password) and holds the
    grants mariabackup needs: `SHOW GRANTS FOR` its account and its default role."""
    config = tablet.config
    user = (config.xtrabackup_user or "").strip()
    if not user:
        return []  # the settings check says so
    creds = tablet.credentials
    password = password_for(user, creds, os.environ)
    tool_creds = dataclasses.replace(
        creds, user=user, password=password, socket=tablet.mycnf.socket or creds.socket
    )
    name = "xtrabackup user"
    try:
        async with MysqlClient(tool_creds).connection() as session:
            row = await session.query_one("SELECT CURRENT_USER() AS account")
            account = str((row or {}).get("account") or f"{user}@localhost")
            connected = ok(name, f"connects as {account} at {tool_creds.address}")
            try:
                granted = await _grant_result(tablet, account, await _grants(tablet.client, session, account))
            except AgentError as e:
                granted = warn("xtrabackup grants", f"not checked: {e}")
    except AgentError as e:
        how = f"set {PASSWORD_ENV}" if password is None else f"check {PASSWORD_ENV}"
        return [
            fail(
                name,
                str(e),
                f"create the user (`CREATE USER '{user}'@'localhost' IDENTIFIED VIA unix_socket` or with a "
                f"password) or {how} in the agent's environment",
            ),
            warn("xtrabackup grants", "not checked: the xtrabackup user cannot connect"),
        ]
    return [connected, granted]


async def _grants(agent: MysqlClient, session: MysqlSession, account: str) -> set[str]:
    """The global privileges of `account` and of its default role. `SHOW GRANTS FOR` by the agent's own
    user; when that is not allowed, the user's own `SHOW GRANTS` (its grants and its current role's)."""
    user, _, host = account.rpartition("@")
    try:
        lines = await _grant_lines(agent, "SHOW GRANTS FOR %s@%s", (user, host))
        for role in [m.group("role") for ln in lines if (m := _DEFAULT_ROLE.match(ln))]:
            lines += await _grant_lines(agent, "SHOW GRANTS FOR %s", (role,))
    except AgentError:
        lines = await _grant_lines(session, "SHOW GRANTS", ())
    return parse_global_grants(lines)


async def _grant_lines(runner: MysqlClient | MysqlSession, sql: str, args: tuple[str, ...]) -> list[str]:
    return [str(next(iter(row.values()))) for row in await runner.query(sql, args or None)]


def parse_global_grants(lines: Sequence[str]) -> set[str]:
    """Privileges granted `ON *.*`, with MariaDB's newer and older names made one (`REPLICATION CLIENT`
    is `BINLOG MONITOR`); `ALL PRIVILEGES` as "ALL"."""
    found: set[str] = set()
    for line in lines:
        m = _GLOBAL_GRANT.match(line.strip())
        if m is None:
            continue
        for privilege in m.group("privileges").split(","):
            p = " ".join(privilege.split()).upper()
            found.add("ALL" if p in ("ALL", "ALL PRIVILEGES") else GRANT_SYNONYMS.get(p, p))
    return found


async def _grant_result(tablet: Tablet, account: str, granted: set[str]) -> CheckResult:
    name = "xtrabackup grants"
    info = await tablet.mysqld.server_info()
    if info.flavor is not Flavor.MARIADB:
        return warn(name, f"not checked on {info.flavor}: Percona XtraBackup's manual lists the privileges")
    status = await replication.replication_status(tablet.client, info.flavor)
    wanted = list(XTRABACKUP_GRANTS)
    may_replicate = tablet.config.init_tablet_type is not TabletType.PRIMARY
    if status.configured or may_replicate:
        wanted += REPLICA_GRANTS
    missing = [] if "ALL" in granted else [p for p in wanted if p not in granted]
    if not missing:
        return ok(name, f"{account} holds {', '.join(wanted)} on *.*")
    user, _, host = account.rpartition("@")
    statement = f"GRANT {', '.join(missing)} ON *.* TO '{user}'@'{host}'"
    if "SUPER" in granted and all(p in SUPER_COVERS for p in missing):
        return warn(
            name,
            f"{account} holds SUPER instead of {', '.join(missing)}: MariaDB before 11.0 accepts that for "
            "what mariabackup runs, later versions do not",
            f"`{statement}`",
        )
    base_missing = [p for p in missing if p not in REPLICA_GRANTS]
    if base_missing or status.configured:
        replica_missing = status.configured and any(p in REPLICA_GRANTS for p in missing)
        why = " (a replica is backed up with --slave-info --safe-slave-backup)" if replica_missing else ""
        return fail(name, f"{account} lacks {', '.join(missing)} on *.*{why}", f"`{statement}`")
    return warn(
        name,
        f"{account} lacks {', '.join(missing)}: a {tablet.config.init_tablet_type} tablet needs them once "
        "replication is configured",
        f"`{statement}`",
    )


async def binlog_checks(tablet: Tablet, flavor: Flavor) -> list[CheckResult]:
    """What incremental backups and point-in-time restores need from the binary log."""
    client = tablet.client
    settings = await replication.binlog_settings(client)
    restart = "in [mysqld] of --mycnf_file and restart mysqld"
    if not settings.log_bin:
        return [
            fail(
                "binary log",
                "log_bin is OFF: incremental backups, binlog archiving and point-in-time restores need binary logs",
                f"set log_bin (e.g. log_bin=binlog) {restart}",
            )
        ]
    results = [ok("binary log", "log_bin is ON")]
    if flavor is Flavor.MARIADB:
        row = await client.query_one("SELECT @@GLOBAL.gtid_strict_mode AS strict")
        if str((row or {}).get("strict")) in ("1", "ON"):
            results.append(ok("gtid_strict_mode", "ON"))
        else:
            results.append(
                warn(
                    "gtid_strict_mode",
                    "OFF: a replica may apply transactions out of order, and positions stop meaning one history",
                    f"set gtid_strict_mode=ON {restart} (or SET GLOBAL gtid_strict_mode=ON)",
                )
            )
    else:
        row = await client.query_one("SELECT @@GLOBAL.gtid_mode AS mode")
        mode = str((row or {}).get("mode") or "")
        if mode.upper() != "ON":
            results.append(
                fail("gtid_mode", f"{mode or 'OFF'}: positions are GTID sets", f"set gtid_mode=ON {restart}")
            )
    status = await replication.replication_status(client, flavor)
    if status.configured and not settings.log_replica_updates:
        results.append(
            fail(
                "log_slave_updates",
                "OFF on a replica: its binlogs miss the replicated transactions, so its incremental backups "
                "would too",
                f"set log_slave_updates=ON {restart}",
            )
        )
    elif status.configured:
        results.append(ok("log_slave_updates", "ON"))
    if settings.binlog_format.upper() == "ROW":
        results.append(ok("binlog_format", "ROW"))
    else:
        results.append(
            warn(
                "binlog_format",
                f"{settings.binlog_format or 'unknown'}: replaying statements may not give the same rows",
                f"set binlog_format=ROW {restart}",
            )
        )
    return results


async def restore_space(tablet: Tablet) -> CheckResult:
    """Room beside the live data for a staged restore of the newest complete full backup."""
    name = "restore space"
    config = tablet.config
    if config.restore_in_place:
        return ok(name, "--restore_in_place: restores need no room for a second copy")
    try:
        entries = await list_backup_entries(tablet.storage, tablet.backup_directory)
        if not any(e.complete and e.manifest and not e.manifest.incremental for e in entries):
            return ok(name, f"no complete full backup in {tablet.backup_directory} yet: nothing to size")
        full = newest_complete_full(entries)
        plans = await plan_backups(config, RestorePath(full, ()))
        staging = await in_thread(swap.plan, tablet.mycnf, tablet.state_dir, "check")
        needs = await in_thread(space_needs, plans, staging.restore_targets, staging.work_dir.parent)
    except AgentError as e:
        return fail(name, f"cannot plan a restore of the newest full backup: {e}", "see `tabletctl verify`")
    short = [n for n in needs if n.short]
    # Each need names a staging directory (beside the live one); its parent is the place people know.
    sizes = "; ".join(f"{n.directory.parent} needs {_gib(n.needed)}, has {_gib(n.free)} free" for n in needs)
    if short:
        return fail(
            name,
            f"not enough room to stage a restore of {full.name}: {sizes}",
            "free space there, or restore in place (--restore_in_place, or `tabletctl restore --restore_in_place`)",
        )
    return ok(name, f"a staged restore of {full.name} fits: {sizes}")


def replay_tools(config: AgentConfig) -> CheckResult:
    try:
        check_applier_tools(config.binlog_applier)
    except AgentError as e:
        return warn("binlog replay tools", f"point-in-time restores would fail: {e}")
    return ok("binlog replay tools", f"found for --binlog_applier={config.binlog_applier}")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
