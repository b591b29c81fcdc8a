"""`tabletctl`: the agent's command-line client. Exit codes: 0 ok, 1 operation failed, 2 usage/connection."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format

from agent.ctl.progress import follow
from agent.ctl.render import print_event, render_expiry, render_status
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

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CONNECTION_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class CtlParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"tabletctl: error: {message}\n")


def _parse_time(value: str) -> vttime_pb2.Time:
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time; use RFC 3339, e.g. 2026-11-23T18:45:00Z"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    ts = t.timestamp()
    return vttime_pb2.Time(seconds=int(ts), nanoseconds=int((ts - int(ts)) * 1e9))


def make_parser() -> CtlParser:
    p = CtlParser(prog="tabletctl", description="Client for tablet-agent.")
    p.add_argument("--server", default="127.0.0.1:16002", help="agent address HOST:PORT")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for unary calls")
    p.add_argument(
        "--tls_ca", "--tls-ca", type=Path, help="CA that signed the agent's certificate (enables TLS)"
    )
    p.add_argument("--tls_cert", "--tls-cert", type=Path, help="client certificate for mTLS")
    p.add_argument("--tls_key", "--tls-key", type=Path, help="client key for mTLS")
    sub = p.add_subparsers(dest="command", required=True, parser_class=CtlParser)
    ping = sub.add_parser("ping", help="check the agent answers")
    ping.add_argument("--payload", default="ping")
    st = sub.add_parser("status", help="show the tablet's state")
    st.add_argument("--json", action="store_true")
    b = sub.add_parser("backup", help="take a backup and follow it")
    b.add_argument("--allow_primary", "--allow-primary", action="store_true")
    b.add_argument("--concurrency", type=int, default=0)
    b.add_argument("--incremental_from_pos", "--incremental-from-pos", default="")
    b.add_argument("--engine", "--backup_engine", "--backup-engine", default=None)
    b.add_argument("--upgrade_safe", "--upgrade-safe", action="store_true")
    b.add_argument("--mysql_shutdown_timeout", "--mysql-shutdown-timeout", type=float, default=None)
    b.add_argument("--cancel_on_disconnect", "--cancel-on-disconnect", action="store_true")
    r = sub.add_parser("restore", help="restore from a backup and follow it")
    r.add_argument("--backup_timestamp", "--backup-timestamp", type=_parse_time, default=None)
    r.add_argument("--restore_to_pos", "--restore-to-pos", default="")
    r.add_argument("--restore_to_timestamp", "--restore-to-timestamp", type=_parse_time, default=None)
    r.add_argument("--dry_run", "--dry-run", action="store_true")
    r.add_argument("--allowed_backup_engines", "--allowed-backup-engines", action="append", default=[])
    r.add_argument("--cancel_on_disconnect", "--cancel-on-disconnect", action="store_true")
    w = sub.add_parser("watch", help="follow an operation's events")
    w.add_argument("id", nargs="?", default="")
    c = sub.add_parser("cancel", help="cancel the running operation")
    c.add_argument("id", nargs="?", default="")
    ls = sub.add_parser("backups", help="list backups")
    ls.add_argument("--all", action="store_true", help="include incomplete backups")
    ls.add_argument("--json", action="store_true")
    rm = sub.add_parser("remove-backup", help="remove a backup")
    rm.add_argument("name")
    rm.add_argument("--force", action="store_true")
    ex = sub.add_parser("expire", help="apply the agent's retention policy: remove the backups it lets go")
    ex.add_argument("--dry_run", "--dry-run", action="store_true", help="print the plan, remove nothing")
    ex.add_argument("--json", action="store_true")
    for name, text in (("tablets", "list a shard's tablets from the topology, with their health"),
                       ("backup-shard", "back up a shard on its best tablet (healthy, least lag)")):  # fmt: skip
        t = sub.add_parser(name, help=text)
        t.add_argument("shard", metavar="KEYSPACE/SHARD")
        t.add_argument("--topo-server", "--topo_server", "--topo_global_server_address",
                       default=os.environ.get("TABLETCTL_TOPO_SERVER", ""), help="etcd endpoints, comma-separated")  # fmt: skip
        t.add_argument("--topo-root", "--topo_root", "--topo_global_root", default="/vitess/global")
        t.add_argument("--topo-etcd-tls-ca", "--topo_etcd_tls_ca", type=Path, default=None)
        t.add_argument("--topo-etcd-tls-cert", "--topo_etcd_tls_cert", type=Path, default=None)
        t.add_argument("--topo-etcd-tls-key", "--topo_etcd_tls_key", type=Path, default=None)
        t.add_argument("--topo-etcd-tls-server-name", "--topo_etcd_tls_server_name", default="")
        t.add_argument("--topo-etcd-username", "--topo_etcd_username", default="",
                       help=f"etcd user; the password comes from {PASSWORD_ENV}")  # fmt: skip
        if name == "backup-shard":
            t.add_argument("--allow_primary", "--allow-primary", action="store_true")
            t.add_argument("--incremental_from_pos", "--incremental-from-pos", default="")
            t.add_argument("--engine", "--backup_engine", "--backup-engine", default=None)
            t.add_argument("--concurrency", type=int, default=0)
            t.add_argument(
                "--lock-wait",
                "--lock_wait",
                type=float,
                default=0.0,
                help="seconds to wait for the shard lock",
            )
    return p


async def _events(
    call: AsyncIterable[
        tabletmanagerdata_pb2.BackupResponse | tabletmanagerdata_pb2.RestoreFromBackupResponse
    ],
) -> AsyncIterator[logutil_pb2.Event]:
    async for msg in call:
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
                print(json_format.MessageToJson(status, preserving_proto_field_name=True))
            else:
                print(render_status(status))
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
            await follow(stub, _events(stub.Backup(req)))
        elif cmd == "restore":
            rreq = tabletmanagerdata_pb2.RestoreFromBackupRequest(
                restore_to_pos=args.restore_to_pos,
                dry_run=args.dry_run,
                allowed_backup_engines=args.allowed_backup_engines,
                cancel_on_disconnect=args.cancel_on_disconnect,
            )
            if args.backup_timestamp is not None:
                rreq.backup_time.CopyFrom(args.backup_timestamp)
            if args.restore_to_timestamp is not None:
                rreq.restore_to_timestamp.CopyFrom(args.restore_to_timestamp)
            await follow(stub, _events(stub.RestoreFromBackup(rreq)))
        elif cmd == "watch":
            async for msg in stub.WatchOperation(agentdata_pb2.WatchOperationRequest(id=args.id)):
                if msg.HasField("event"):
                    print_event(msg.event)
                elif msg.operation.result == agentdata_pb2.FAILED:
                    print(f"operation failed: {msg.operation.error}", file=sys.stderr)
                    return EXIT_FAILED
        elif cmd == "cancel":
            cresp = await stub.CancelOperation(agentdata_pb2.CancelOperationRequest(id=args.id))
            print(
                f"operation {cresp.operation.id}: {agentdata_pb2.OperationResult.Name(cresp.operation.result)}"
            )
        elif cmd == "backups":
            lresp = await stub.ListBackups(
                agentdata_pb2.ListBackupsRequest(include_incomplete=args.all), timeout=args.timeout
            )
            if args.json:
                print(json_format.MessageToJson(lresp, preserving_proto_field_name=True))
            else:
                for b in lresp.backups:
                    kind = "incremental" if b.incremental else "full"
                    state = "complete" if b.complete else "INCOMPLETE"
                    print(f"{b.name}\t{b.engine or 'builtin'}\t{kind}\t{state}\t{b.size_bytes}\t{b.position}")
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
            print(
                json_format.MessageToJson(exresp, preserving_proto_field_name=True)
                if args.json
                else render_expiry(exresp)
            )
    return EXIT_OK


async def run_shard(args: argparse.Namespace, interceptors: list[Any] | None) -> int:
    keyspace, slash, shard = args.shard.partition("/")
    if not slash or not keyspace or not shard:
        print(f"tabletctl: error: expected KEYSPACE/SHARD, got {args.shard!r}", file=sys.stderr)
        return EXIT_USAGE
    endpoints = [e.strip() for e in args.topo_server.split(",") if e.strip()]
    if not endpoints:
        print("tabletctl: error: give --topo-server host:port (or TABLETCTL_TOPO_SERVER)", file=sys.stderr)
        return EXIT_USAGE
    if (args.topo_etcd_tls_cert is None) != (args.topo_etcd_tls_key is None):
        print("tabletctl: error: give --topo-etcd-tls-cert and --topo-etcd-tls-key together", file=sys.stderr)
        return EXIT_USAGE
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
        print(f"tabletctl: error: {e}", file=sys.stderr)
        return EXIT_USAGE
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
                await follow(stub, _events(stub.Backup(req)))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(run(args))
    except grpc.aio.AioRpcError as e:
        code = e.code()
        print(f"tabletctl: {code.name}: {e.details()}", file=sys.stderr)
        if code in CONNECTION_CODES and args.command in {"ping", "status", "backups"}:
            return EXIT_USAGE
        if code in {grpc.StatusCode.INVALID_ARGUMENT} or (
            code is grpc.StatusCode.UNAVAILABLE and "connect" in (e.details() or "").lower()
        ):
            return EXIT_USAGE
        return EXIT_FAILED
    except AgentError as e:  # topology and shard choice
        print(f"tabletctl: {e.code.name}: {e}", file=sys.stderr)
        return EXIT_USAGE if e.code is grpc.StatusCode.UNAVAILABLE else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def _json_dump(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)


if __name__ == "__main__":
    sys.exit(main())
