"""`tabletctl`: the agent's command-line client (exit codes: see EPILOG)."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import signal
import sys
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format

from agent.catalog.manifest import looks_like_backup_name
from agent.config import EngineName
from agent.ctl import backups as listing
from agent.ctl.progress import follow
from agent.ctl.render import Console, human_size, pb_time, print_event, render_expiry, render_status
from agent.ctl.shard import choose, render_tablets, survey
from agent.errors import AgentError, ConfigError
from agent.pb import (
    agentdata_pb2,
    logutil_pb2,
    tabletmanagerdata_pb2,
    tabletmanagerservice_pb2_grpc,
    vttime_pb2,
)
from agent.topo.etcd import PASSWORD_ENV, EtcdClient, EtcdSettings
from agent.topo.locks import shard_lock
from agent.topo.tablets import list_tablets

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOTHING_TO_DO = 0, 1, 2, 3
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
DEFAULT_SERVER = "127.0.0.1:16002"
ENGINES = tuple(e.value for e in EngineName)
# Errors that say the request could not be made or was refused as given, not that an operation failed.
USAGE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
}
READ_COMMANDS = {"ping", "status", "backups", "check"}
CHECK_TIMEOUT = 90.0  # the agent bounds each of its checks to 30 s

EPILOG = f"""\
environment:
  TABLETCTL_SERVER       the agent's address when --server is not given (default {DEFAULT_SERVER})
  TABLETCTL_TOKEN        bearer token sent with every call (a token of the agent's --grpc_auth_token_file);
                         read from the environment only, so it never shows in `ps`
  TABLETCTL_TOPO_SERVER  etcd endpoints for `tablets` and `backup-shard` when --topo-server is not given
  TABLET_AGENT_TOPO_ETCD_PASSWORD  etcd password for --topo-etcd-username (as the agent's)

times (--backup_timestamp, --restore_to_timestamp):
  RFC 3339 (2026-11-23T18:45:00Z, 2026-11-23T20:45:00+02:00; without an offset: UTC), or a backup's
  name as `tabletctl backups` lists it (2026-11-23.184500.zone1-0000000102)

exit codes:
  0    ok
  1    the operation failed or was cancelled
  2    usage or connection error: a bad flag or value, the agent unreachable, the call not allowed
  3    nothing to do: an incremental backup found nothing new since the position
  130  interrupted (Ctrl-C); a backup or restore goes on in the agent: `tabletctl watch`, `tabletctl cancel`
  141  the reader of the output went away (`tabletctl backups | head -1`), as other programs killed by SIGPIPE
"""


class CtlParser(argparse.ArgumentParser):
    """No prefix matching (`--serv` is refused), defaults shown in --help, exit code 2 on usage errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        top = self.prog == "tabletctl"
        if top:  # an unknown option before the command would otherwise be taken for the command
            owners = option_owners(self)
            for arg in sys.argv[1:] if args is None else args:
                if arg == "--":
                    break
                if arg.startswith("--") and arg.partition("=")[0] not in owners:
                    self.error(unrecognized([arg], owners))
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and top:  # what no command took (an option of another command)
            self.error(unrecognized(extras, option_owners(self)))
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and appends `(default: X)` to options whose default says something."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and action.option_strings
            and default not in (None, False, "", [], argparse.SUPPRESS)
        ):
            text += " (default: %(default)s)"
        return text


def option_owners(parser: argparse.ArgumentParser, command: str = "") -> dict[str, list[str]]:
    """Every option string, with the commands that take it ("" for the top level)."""
    owners: dict[str, list[str]] = {}
    for action in parser._actions:
        for name in action.option_strings:
            owners.setdefault(name, []).append(command)
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                for name, commands in option_owners(sub, sub_name).items():
                    owners.setdefault(name, []).extend(c for c in commands if c not in owners[name])
    return owners


def unrecognized(extras: Sequence[str], owners: Mapping[str, Sequence[str]]) -> str:
    """`unrecognized arguments: --serv (did you mean --server? options are not abbreviated)`."""
    message = f"unrecognized arguments: {' '.join(extras)}"
    for extra in extras:
        name = extra.partition("=")[0]
        if not name.startswith("--"):
            continue
        if name in owners:
            commands = ", ".join(c for c in owners[name] if c)
            message += f" ({name} is an option of: {commands})"
            continue
        known = sorted(owners)
        guesses = [k for k in known if k.startswith(name)] or difflib.get_close_matches(name, known, 3)
        if guesses:
            message += f" (did you mean {' or '.join(guesses[:3])}? options are not abbreviated)"
    return message


def parse_when(value: str) -> vttime_pb2.Time | str:
    """An RFC 3339 time (no offset: UTC), or a backup's name (returned as is, resolved later)."""
    text = value.strip()
    if looks_like_backup_name(text):
        return text
    try:
        t = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a time nor a backup name: use RFC 3339 such as 2026-11-23T18:45:00Z "
            "or a name that `tabletctl backups` lists, such as 2026-11-23.184500.zone1-0000000102"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    ts = t.timestamp()
    return vttime_pb2.Time(seconds=int(ts), nanoseconds=round((ts - int(ts)) * 1e9))


def engine_name(value: str) -> str:
    return value.strip().lower()


def add_connection_options(p: argparse.ArgumentParser, environ: Mapping[str, str], *, top: bool) -> None:
    """The connection options, on the top parser and again on every command (there without a default of
    their own, so `tabletctl status --server X` works as well as `tabletctl --server X status`)."""

    def option(*names: str, default: object, help: str, **kwargs: Any) -> None:
        if not top:
            if default not in (None, ""):
                help += f" (default: {default})"
            default = argparse.SUPPRESS
        p.add_argument(*names, default=default, help=help, **kwargs)

    option(
        "--server",
        metavar="HOST:PORT",
        default=environ.get("TABLETCTL_SERVER") or DEFAULT_SERVER,
        help="the agent's gRPC address [env TABLETCTL_SERVER]",
    )
    option(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=10.0,
        help="deadline of short calls (ping, status, backups, remove-backup)",
    )
    option(
        "--tls_ca",
        "--tls-ca",
        type=Path,
        metavar="FILE",
        default=None,
        help="CA that signed the agent's certificate; enables TLS (default: plaintext)",
    )
    option(
        "--tls_cert",
        "--tls-cert",
        type=Path,
        metavar="FILE",
        default=None,
        help="client certificate, for an agent that requires mTLS (its --grpc_ca)",
    )
    option(
        "--tls_key", "--tls-key", type=Path, metavar="FILE", default=None, help="the client certificate's key"
    )


def make_parser(environ: Mapping[str, str] | None = None) -> CtlParser:
    environ = os.environ if environ is None else environ
    p = CtlParser(
        prog="tabletctl",
        description="Client for tablet-agent: the tablet's state, its backups, backing up and restoring.",
        epilog=EPILOG,
    )
    add_connection_options(p, environ, top=True)
    sub = p.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=CtlParser,
        help="`tabletctl COMMAND --help` shows a command's options",
    )

    def command(name: str, text: str, epilog: str | None = None) -> CtlParser:
        parser: CtlParser = sub.add_parser(name, help=text, description=text, epilog=epilog)
        add_connection_options(parser, environ, top=False)
        return parser

    ping = command("ping", "check that the agent answers")
    ping.add_argument("--payload", default="ping", help="text the agent echoes back")
    st = command("status", "show the tablet's state: mysqld, replication, operations, backups, health")
    st.add_argument("--json", action="store_true", help="print the Status message as JSON")
    ck = command(
        "check",
        "check the agent's set-up as backups and restores need it: one OK/WARN/FAIL line per check, with the "
        "fix (exit 1 when one fails)",
        epilog="The start-up checks (compression, programs, state directory, xtrabackup) again, and what only a\n"
        "live check shows: the storage round trip, the xtrabackup user's connection and grants, binlog\n"
        f"settings, room for a staged restore of the newest full backup. Waits up to {CHECK_TIMEOUT:g}s, or\n"
        "--timeout when longer.",
    )
    ck.add_argument("--json", action="store_true", help="print the Check response as JSON")

    b = command("backup", "take a backup and follow it (events, progress bar on a terminal)")
    _backup_options(b)
    b.add_argument(
        "--upgrade_safe",
        "--upgrade-safe",
        action="store_true",
        help="shut mysqld down with innodb_fast_shutdown=0 first (builtin engine)",
    )
    b.add_argument(
        "--mysql_shutdown_timeout",
        "--mysql-shutdown-timeout",
        type=float,
        metavar="SECONDS",
        help="seconds for mysqld's clean shutdown (default: the agent's --mysql_shutdown_timeout)",
    )
    b.add_argument(
        "--cancel_on_disconnect",
        "--cancel-on-disconnect",
        action="store_true",
        help="cancel the backup if this client goes away (default: it goes on in the agent)",
    )

    r = command(
        "restore",
        "restore this tablet from a backup and follow it",
        epilog="Without a point in time, the newest complete full backup (or the newest taken at or before\n"
        "--backup_timestamp) is restored, without the incremental backups after it: tabletctl warns when\n"
        "those reach further, and --latest restores to the newest point they reach.",
    )
    r.add_argument(
        "--backup_timestamp",
        "--backup-timestamp",
        type=parse_when,
        metavar="TIME|NAME",
        help="restore the newest full backup taken at or before this time, or the backup of "
        "this name (an incremental's name: to its position)",
    )
    point = r.add_mutually_exclusive_group()
    point.add_argument(
        "--restore_to_pos",
        "--restore-to-pos",
        default="",
        metavar="POSITION",
        help="point in time: a GTID position (MariaDB/0-1-1234), inclusive",
    )
    point.add_argument(
        "--restore_to_timestamp",
        "--restore-to-timestamp",
        type=parse_when,
        metavar="TIME|NAME",
        help="point in time: RFC 3339 (exclusive), or a backup's name (to its position)",
    )
    point.add_argument(
        "--latest",
        action="store_true",
        help="point in time: the newest position the incremental backups after the full backup reach",
    )
    r.add_argument(
        "--dry_run",
        "--dry-run",
        action="store_true",
        help="show what would be restored and check the backups' objects; change nothing",
    )
    r.add_argument(
        "--allowed_backup_engines",
        "--allowed-backup-engines",
        action="append",
        default=[],
        type=engine_name,
        choices=ENGINES,
        metavar="ENGINE",
        help=f"only backups made by this engine ({', '.join(ENGINES)}); repeatable (default: any)",
    )
    r.add_argument(
        "--restore_in_place",
        "--restore-in-place",
        action="store_true",
        help="restore into the live directories after verifying every object, instead of staging beside "
        "them (for hosts without room for a second copy; no way back if it fails)",
    )
    r.add_argument(
        "--restore_over_existing_data",
        "--restore-over-existing-data",
        action="store_true",
        help="allow replacing a writable mysqld without a replication source that holds user schemas",
    )
    r.add_argument(
        "--cancel_on_disconnect",
        "--cancel-on-disconnect",
        action="store_true",
        help="cancel the restore if this client goes away (default: it goes on in the agent)",
    )
    v = command(
        "verify",
        "read back and check backups without touching the tablet (exit 1 when one is damaged)",
        epilog="Light (the default): every stored object is read and its CRC-32 and sha256 checked against\n"
        "the MANIFEST. --deep also restores the backup into a scratch directory, starts a throw-away\n"
        "mysqld on it and runs CHECK TABLE. The result is stored beside each backup (`tabletctl backups`).",
    )
    v.add_argument(
        "names", nargs="*", metavar="NAME", help="backups to verify (default: the newest full one)"
    )
    v.add_argument("--all", action="store_true", help="verify every complete backup of the shard")
    v.add_argument("--deep", action="store_true", help="also restore into a scratch mysqld and CHECK TABLE")
    command(
        "discard-previous",
        "remove the data that staged restores replaced and kept (--keep_previous_datadir)",
    )

    w = command("watch", "follow an operation's events until it ends (its result is the exit code)")
    w.add_argument("id", nargs="?", default="", help="operation id (default: the current or last one)")
    c = command("cancel", "cancel the running operation (mysqld and replication are put back)")
    c.add_argument("id", nargs="?", default="", help="operation id (default: the current one)")
    ls = command("backups", "list the shard's backups: full ones with their incrementals under them")
    ls.add_argument(
        "--all",
        action="store_true",
        help="include incomplete backups (no MANIFEST: failed or still being written)",
    )
    ls.add_argument(
        "--json", action="store_true", help="print one JSON document (same keys for every backup)"
    )
    rm = command("remove-backup", "remove a backup from the storage")
    rm.add_argument("name", help="the backup's name, as `tabletctl backups` lists it")
    rm.add_argument(
        "--force", action="store_true", help="also remove the incremental backups that chain from it"
    )
    ex = command(
        "expire",
        "apply the agent's retention policy (--backup_retention_full/--backup_retention_days/"
        "--binlog_retention_days): remove the backups it lets go",
    )
    ex.add_argument(
        "--dry_run",
        "--dry-run",
        action="store_true",
        help="print the plan (what is kept and why), remove nothing",
    )
    ex.add_argument("--json", action="store_true", help="print the plan as one JSON document")

    for name, text in (
        ("tablets", "list a shard's tablets from the topology, with their health"),
        ("backup-shard", "back up a shard on its best tablet (healthy, least lag)"),
    ):
        t = command(name, text)
        t.add_argument("shard", metavar="KEYSPACE/SHARD", help="e.g. ks/0 or ks/-80")
        t.add_argument(
            "--topo-server",
            "--topo_server",
            "--topo_global_server_address",
            metavar="HOST:PORT,...",
            default=environ.get("TABLETCTL_TOPO_SERVER", ""),
            help="etcd endpoints, comma-separated [env TABLETCTL_TOPO_SERVER]",
        )
        t.add_argument(
            "--topo-root",
            "--topo_root",
            "--topo_global_root",
            default="/vitess/global",
            help="the topology's key prefix in etcd",
        )
        t.add_argument(
            "--topo-etcd-tls-ca",
            "--topo_etcd_tls_ca",
            type=Path,
            metavar="FILE",
            help="CA of etcd's server certificate; enables TLS to etcd (default: plaintext)",
        )
        t.add_argument(
            "--topo-etcd-tls-cert",
            "--topo_etcd_tls_cert",
            type=Path,
            metavar="FILE",
            help="client certificate for etcd (with --topo-etcd-tls-key)",
        )
        t.add_argument(
            "--topo-etcd-tls-key",
            "--topo_etcd_tls_key",
            type=Path,
            metavar="FILE",
            help="the etcd client certificate's key",
        )
        t.add_argument(
            "--topo-etcd-tls-server-name",
            "--topo_etcd_tls_server_name",
            default="",
            metavar="NAME",
            help="name expected in etcd's certificate (default: the endpoint's host)",
        )
        t.add_argument(
            "--topo-etcd-username",
            "--topo_etcd_username",
            default="",
            metavar="USER",
            help=f"etcd user; the password comes from {PASSWORD_ENV} (default: no authentication)",
        )
        if name == "backup-shard":
            t.add_argument(
                "--allow_primary",
                "--allow-primary",
                action="store_true",
                help="back up the primary when no replica is healthy",
            )
            _backup_options(t, allow_primary=False)
            t.add_argument(
                "--lock-wait",
                "--lock_wait",
                type=float,
                default=0.0,
                metavar="SECONDS",
                help="seconds to wait for the shard lock (0: fail at once when it is held)",
            )
    return p


def _backup_options(p: argparse.ArgumentParser, *, allow_primary: bool = True) -> None:
    if allow_primary:
        p.add_argument(
            "--allow_primary",
            "--allow-primary",
            action="store_true",
            help="allow backing up a primary (a builtin backup stops its mysqld)",
        )
    p.add_argument(
        "--concurrency",
        type=int,
        default=0,
        metavar="N",
        help="files copied in parallel, 1-64 (default: the agent's --concurrency)",
    )
    p.add_argument(
        "--incremental_from_pos",
        "--incremental-from-pos",
        default="",
        metavar="POS|auto|NAME",
        help="take an incremental backup of the binlogs after this GTID position; auto: after "
        "the newest complete backup; NAME: after that backup (default: a full backup)",
    )
    p.add_argument(
        "--engine",
        "--backup_engine",
        "--backup-engine",
        type=engine_name,
        choices=ENGINES,
        metavar="ENGINE",
        help=f"engine of a full backup: {', '.join(ENGINES)} (default: the "
        "agent's --backup_engine_implementation)",
    )


async def _events(
    call: AsyncIterable[
        tabletmanagerdata_pb2.BackupResponse | tabletmanagerdata_pb2.RestoreFromBackupResponse
    ],
    started: list[bool],
) -> AsyncIterator[logutil_pb2.Event]:
    async for msg in call:
        started[0] = True
        yield msg.event


class BearerToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Sends `authorization: Bearer <TABLETCTL_TOKEN>` with every call (tokens never go on the command line)."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def _with_token(self, details: Any) -> Any:
        metadata = tuple(details.metadata or ()) + self._metadata
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


def open_channel(
    args: argparse.Namespace, interceptors: list[Any] | None, address: str | None = None
) -> grpc.aio.Channel:
    target = address or args.server
    if args.tls_ca is None:
        return grpc.aio.insecure_channel(target, interceptors=interceptors)
    creds = grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes(),
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )
    return grpc.aio.secure_channel(target, creds, interceptors=interceptors)


class UsageError(Exception):
    """A request tabletctl refuses before sending it (exit code 2); the message says how to fix it."""


async def run(args: argparse.Namespace) -> int:
    token = os.environ.get("TABLETCTL_TOKEN", "")
    interceptors = [BearerToken(token)] if token else None
    if args.command in ("tablets", "backup-shard"):
        return await run_shard(args, interceptors)
    async with open_channel(args, interceptors) as channel:
        stub = tabletmanagerservice_pb2_grpc.TabletManagerStub(channel)
        cmd = args.command
        if cmd == "ping":
            resp = await stub.Ping(
                tabletmanagerdata_pb2.PingRequest(payload=args.payload), timeout=args.timeout
            )
            print(resp.payload)
        elif cmd == "status":
            status = await stub.Status(agentdata_pb2.StatusRequest(), timeout=args.timeout)
            if args.json:
                print(
                    json_format.MessageToJson(
                        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                    )
                )
            else:
                print(render_status(status))
        elif cmd == "check":
            return await run_check(stub, args)
        elif cmd == "backup":
            req = tabletmanagerdata_pb2.BackupRequest(
                concurrency=args.concurrency,
                allow_primary=args.allow_primary,
                incremental_from_pos=args.incremental_from_pos,
                upgrade_safe=args.upgrade_safe,
                cancel_on_disconnect=args.cancel_on_disconnect,
            )
            if args.engine:
                req.backup_engine = args.engine
            if args.mysql_shutdown_timeout is not None:
                req.mysql_shutdown_timeout.seconds = int(args.mysql_shutdown_timeout)
            return await follow_operation(stub, agentdata_pb2.BACKUP, lambda: stub.Backup(req))
        elif cmd == "restore":
            rreq = await restore_request(stub, args)
            return await follow_operation(stub, agentdata_pb2.RESTORE, lambda: stub.RestoreFromBackup(rreq))
        elif cmd == "verify":
            vreq = agentdata_pb2.VerifyBackupRequest(names=args.names, all=args.all, deep=args.deep)
            return await follow_operation(stub, agentdata_pb2.VERIFY, lambda: stub.VerifyBackup(vreq))
        elif cmd == "discard-previous":
            dresp = await stub.DiscardPrevious(agentdata_pb2.DiscardPreviousRequest(), timeout=args.timeout)
            for path in dresp.removed:
                print(f"removed {path}")
            if not dresp.removed:
                print("no previous data to discard", file=sys.stderr)
        elif cmd == "watch":
            async for msg in stub.WatchOperation(agentdata_pb2.WatchOperationRequest(id=args.id)):
                if msg.HasField("event"):
                    print_event(msg.event)
                    continue
                op = msg.operation
                if line := phases_line(op):
                    print(line, file=sys.stderr)
                if op.result == agentdata_pb2.NOTHING_TO_DO:
                    return EXIT_NOTHING_TO_DO
                if op.result in (agentdata_pb2.FAILED, agentdata_pb2.CANCELLED):
                    result = agentdata_pb2.OperationResult.Name(op.result).lower()
                    print(f"tabletctl: operation {op.id} {result}: {op.error}", file=sys.stderr)
                    return EXIT_FAILED
        elif cmd == "cancel":
            cresp = await stub.CancelOperation(agentdata_pb2.CancelOperationRequest(id=args.id))
            print(
                f"operation {cresp.operation.id}: {agentdata_pb2.OperationResult.Name(cresp.operation.result).lower()}"
            )
        elif cmd == "backups":
            await show_backups(stub, args)
        elif cmd == "remove-backup":
            rmresp = await stub.RemoveBackup(
                agentdata_pb2.RemoveBackupRequest(name=args.name, force=args.force), timeout=args.timeout
            )
            for name in rmresp.removed:
                print(f"removed {name}")
        elif cmd == "expire":
            exresp = await stub.ExpireBackups(
                agentdata_pb2.ExpireBackupsRequest(dry_run=args.dry_run), timeout=max(args.timeout, 600)
            )
            if args.json:
                print(json_format.MessageToJson(exresp, preserving_proto_field_name=True))
            else:
                print(render_expiry(exresp))
    return EXIT_OK


async def run_check(stub: Any, args: argparse.Namespace) -> int:
    """`tabletctl check`: one line per check, `FAIL name: detail; fix: ...`; exit 1 when one failed."""
    resp = await stub.Check(agentdata_pb2.CheckRequest(), timeout=max(args.timeout, CHECK_TIMEOUT))
    if args.json:
        print(
            json_format.MessageToJson(
                resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )
    else:
        for r in resp.results:
            state = agentdata_pb2.CheckState.Name(r.state).removeprefix("CHECK_")
            fix = f"; fix: {r.fix}" if r.fix else ""
            print(f"{state:<4} {r.name}: {r.detail}{fix}")
    failed = sum(r.state == agentdata_pb2.CHECK_FAIL for r in resp.results)
    if failed:
        print(f"tabletctl: {failed} check(s) failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def follow_operation(stub: Any, kind: int, start: Any) -> int:
    """Start a backup or restore, print its events (and progress) until it ends; its exit code."""
    started = [False]
    try:
        await follow(stub, _events(start(), started))
        await print_phases(stub, kind)
    except grpc.aio.AioRpcError as e:
        if not started[0]:
            raise  # refused before it began: main() maps the code
        code, details = e.code(), e.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE:
            print(
                f"tabletctl: lost the connection to the agent ({details}); the operation goes on there: "
                "`tabletctl watch` follows it, `tabletctl cancel` stops it",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if code is grpc.StatusCode.FAILED_PRECONDITION and await ended_with(
            stub, kind, details, agentdata_pb2.NOTHING_TO_DO
        ):
            print(f"tabletctl: nothing to do: {details}", file=sys.stderr)
            return EXIT_NOTHING_TO_DO
        print(f"tabletctl: {code.name}: {details}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def phases_line(op: agentdata_pb2.Operation) -> str:
    """`phases: copying files 8.3s (1.2 GiB), ...`: where the operation's time went."""
    parts = []
    for t in op.phases:
        size = f" ({human_size(t.bytes)})" if t.bytes else ""
        parts.append(f"{t.phase} {t.seconds:.1f}s{size}")
    return "phases: " + ", ".join(parts) if parts else ""


async def print_phases(stub: Any, kind: int) -> None:
    """The phase timings of the operation that just ended (the newest finished one of `kind`)."""
    try:
        status = await stub.Status(agentdata_pb2.StatusRequest(finished_operations=5), timeout=10)
    except grpc.aio.AioRpcError:
        return
    for op in status.finished_operations:
        if op.kind == kind:
            if line := phases_line(op):
                print(line, file=sys.stderr)
            return


async def ended_with(stub: Any, kind: int, error: str, result: int) -> bool:
    """Whether the newest finished operation of `kind` that ended with `error` has `result`: the
    operation's own record (Status), rather than the wording of its error."""
    try:
        status = await stub.Status(agentdata_pb2.StatusRequest(finished_operations=10), timeout=10)
    except grpc.aio.AioRpcError:
        return False
    for op in status.finished_operations:  # newest first
        if op.kind == kind and op.error == error:
            return bool(op.result == result)
    return False


async def list_all(stub: Any, timeout: float) -> agentdata_pb2.ListBackupsResponse:
    resp: agentdata_pb2.ListBackupsResponse = await stub.ListBackups(
        agentdata_pb2.ListBackupsRequest(include_incomplete=True), timeout=timeout
    )
    if not resp.directory:  # an agent from before ListBackupsResponse.directory
        status = await stub.Status(agentdata_pb2.StatusRequest(finished_operations=1), timeout=timeout)
        resp.directory = f"{status.keyspace}/{status.shard}"
    return resp


async def show_backups(stub: Any, args: argparse.Namespace) -> None:
    resp = await list_all(stub, args.timeout)
    shown = [b for b in resp.backups if b.complete or args.all]
    if args.json:
        print(json.dumps(listing.as_json(shown, resp.directory), indent=2, sort_keys=True))
        return
    if not shown:
        incomplete = len(resp.backups)
        more = f" ({incomplete} incomplete: `tabletctl backups --all` shows them)" if incomplete else ""
        print(f"no backups in {resp.directory}{more}", file=sys.stderr)
        return
    rows = listing.chain_rows(shown)
    now = listing.now_utc()
    if sys.stdout.isatty():
        listing.render_rich(rows, now, resp.directory, Console())
    else:
        print(listing.render_plain(rows, now))


async def restore_request(
    stub: Any, args: argparse.Namespace
) -> tabletmanagerdata_pb2.RestoreFromBackupRequest:
    """The RestoreFromBackup request: backup names turned into times or positions, --latest into the
    newest reachable position, and a warning when a plain restore leaves newer points behind."""
    req = tabletmanagerdata_pb2.RestoreFromBackupRequest(
        restore_to_pos=args.restore_to_pos,
        dry_run=args.dry_run,
        allowed_backup_engines=args.allowed_backup_engines,
        cancel_on_disconnect=args.cancel_on_disconnect,
        restore_in_place=args.restore_in_place,
        restore_over_existing_data=args.restore_over_existing_data,
    )
    if isinstance(args.restore_to_timestamp, vttime_pb2.Time):
        req.restore_to_timestamp.CopyFrom(args.restore_to_timestamp)
    if isinstance(args.backup_timestamp, vttime_pb2.Time):
        req.backup_time.CopyFrom(args.backup_timestamp)
    if req.restore_to_pos or req.HasField("restore_to_timestamp"):
        return req  # a point in time given as such: the agent finds the path
    resp = await list_all(stub, args.timeout)
    backups = [b for b in resp.backups if b.complete]

    def named(name: str, option: str) -> agentdata_pb2.BackupInfo:
        found = listing.find(backups, name)
        if found is None:
            raise UsageError(
                f"{option}: no complete backup named {name} in {resp.directory}; `tabletctl backups` lists them"
            )
        return found

    if isinstance(args.restore_to_timestamp, str):
        b = named(args.restore_to_timestamp, "--restore_to_timestamp")
        note(f"restoring to backup {b.name}'s position {b.position}")
        req.restore_to_pos = b.position
        return req
    if isinstance(args.backup_timestamp, str):
        b = named(args.backup_timestamp, "--backup_timestamp")
        if b.incremental and args.latest:
            raise UsageError(
                f"--latest and --backup_timestamp {b.name} (an incremental backup) disagree: give one of them"
            )
        if b.incremental:
            note(f"{b.name} is an incremental backup: restoring to its position {b.position}")
            req.restore_to_pos = b.position
            return req
        req.backup_time.CopyFrom(b.backup_time)
    before = pb_time(req.backup_time) if req.HasField("backup_time") else None
    full = listing.full_for_restore(backups, before, args.allowed_backup_engines)
    if full is None:
        return req  # the agent explains why nothing can be restored
    chain = listing.furthest_chain(backups, full)
    if args.latest:
        if chain:
            req.restore_to_pos = chain[-1].position
            req.ClearField("backup_time")
            note(
                f"--latest: full backup {full.name} and {len(chain)} incremental(s) up to "
                f"{chain[-1].name}, position {req.restore_to_pos}"
            )
        else:
            note(f"--latest: no incremental backup continues full backup {full.name}; restoring it alone")
    elif chain:
        note(
            f"WARNING: this restores full backup {full.name} (position {full.position}) only; "
            f"{len(chain)} incremental backup(s) after it reach further, up to position "
            f"{chain[-1].position} ({chain[-1].name}): pass --latest to restore to there, or "
            "--restore_to_pos / --restore_to_timestamp for a point in between"
        )
    return req


def note(text: str) -> None:
    print(f"tabletctl: {text}", file=sys.stderr, flush=True)


async def run_shard(args: argparse.Namespace, interceptors: list[Any] | None) -> int:
    keyspace, slash, shard = args.shard.partition("/")
    if not slash or not keyspace or not shard:
        raise UsageError(f"expected KEYSPACE/SHARD such as ks/0 or ks/-80, got {args.shard!r}")
    endpoints = [e.strip() for e in args.topo_server.split(",") if e.strip()]
    if not endpoints:
        raise UsageError("give --topo-server host:port (or set TABLETCTL_TOPO_SERVER)")
    if (args.topo_etcd_tls_cert is None) != (args.topo_etcd_tls_key is None):
        raise UsageError("give --topo-etcd-tls-cert and --topo-etcd-tls-key together")
    settings = EtcdSettings(
        tls_ca=args.topo_etcd_tls_ca,
        tls_cert=args.topo_etcd_tls_cert,
        tls_key=args.topo_etcd_tls_key,
        tls_server_name=args.topo_etcd_tls_server_name,
        username=args.topo_etcd_username,
        password=os.environ.get(PASSWORD_ENV, ""),
    )
    try:
        topo = EtcdClient(endpoints, settings)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    async with topo:
        if args.command == "tablets":
            records = await list_tablets(topo, args.topo_root, keyspace, shard)
            print(
                render_tablets(
                    await survey(records, lambda address: open_channel(args, interceptors, address))
                )
            )
            return EXIT_OK
        # The lock comes first: concurrent runs must not choose while another one's backup runs.
        async with shard_lock(
            topo, args.topo_root, keyspace, shard, f"backup-shard of {args.shard}", wait=args.lock_wait
        ):
            records = await list_tablets(topo, args.topo_root, keyspace, shard)
            candidates = await survey(records, lambda address: open_channel(args, interceptors, address))
            chosen = choose(candidates, args.allow_primary, args.shard)
            kind = f"incremental (from {args.incremental_from_pos})" if args.incremental_from_pos else "full"
            print(
                f"backing up {args.shard} on {chosen.alias} ({chosen.tablet_type}, lag {chosen.lag}s) at {chosen.address}: {kind}",
                flush=True,
            )
            req = tabletmanagerdata_pb2.BackupRequest(
                concurrency=args.concurrency,
                allow_primary=chosen.is_primary,
                incremental_from_pos=args.incremental_from_pos,
            )
            if args.engine:
                req.backup_engine = args.engine
            async with open_channel(args, interceptors, chosen.address) as channel:
                stub = tabletmanagerservice_pb2_grpc.TabletManagerStub(channel)
                return await follow_operation(stub, agentdata_pb2.BACKUP, lambda: stub.Backup(req))


def rpc_exit(e: grpc.aio.AioRpcError, args: argparse.Namespace) -> int:
    """Print a failed call's error with what to do about it; its exit code."""
    code, details = e.code(), e.details() or ""
    hint = ""
    if code is grpc.StatusCode.UNAVAILABLE:
        hint = (
            f"; is tablet-agent running and listening at {args.server}? "
            "Set --server or TABLETCTL_SERVER (and --tls_ca if the agent uses TLS)"
        )
    elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        hint = "; set TABLETCTL_TOKEN to a token of the agent's --grpc_auth_token_file (admin for changes)"
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        hint = f"; the agent did not answer within --timeout {args.timeout:g}s"
    print(f"tabletctl: {code.name}: {details}{hint}", file=sys.stderr)
    if code in USAGE_CODES or (code is grpc.StatusCode.DEADLINE_EXCEEDED and args.command in READ_COMMANDS):
        return EXIT_USAGE
    return EXIT_FAILED


def _main(argv: Sequence[str]) -> int:
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return asyncio.run(run(args))
    except UsageError as e:
        print(f"tabletctl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.aio.AioRpcError as e:
        return rpc_exit(e, args)
    except AgentError as e:  # topology and shard choice
        print(f"tabletctl: {e.code.name}: {e}", file=sys.stderr)
        return EXIT_USAGE if e.code is grpc.StatusCode.UNAVAILABLE else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly; stdout goes to /dev/null so the interpreter's
        # own flush at exit does not complain (https://docs.python.org/3/library/signal.html#note-on-sigpipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(
            "\ntabletctl: interrupted; a backup or restore goes on in the agent "
            "(`tabletctl watch` follows it, `tabletctl cancel` stops it)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
