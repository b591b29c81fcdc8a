"""`tablet-agent`: the daemon's entry point. Flags, start-up checks, signals, systemd notification."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import MutableMapping, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import uvloop

from agent import AGENT_VERSION
from agent.binlogs.pending import pending_binlogs
from agent.catalog.encryption import keyring_from
from agent.config import (
    GROUP_SUFFIX_ENVS,
    IGNORED_VITESS_FLAGS,
    AgentConfig,
    build_config,
    canonical_key,
    config_keys,
)
from agent.daemon.metrics import AgentMetrics
from agent.daemon.sdnotify import SystemdNotifier
from agent.daemon.server import AgentServer
from agent.daemon.servicer import TabletManagerServicer
from agent.errors import AgentError, ConfigError
from agent.log import configure_logging, get_logger
from agent.operations import Operation
from agent.ops.archive import ROLE, Archiver
from agent.ops.check import check_at_start, warn_at_start
from agent.ops.health import health_problem_kinds
from agent.ops.restore.at_start import restore_on_start, startup_restore_params
from agent.ops.startup import prepare_tablet
from agent.ops.tablet_type import current_type
from agent.pipeline.ratelimit import format_rate
from agent.tablet import Tablet

if TYPE_CHECKING:
    from agent.topo.tablets import MysqldFacts, Registration

EXIT_CONFIG = 2
PENDING_BINLOGS_INTERVAL = 60.0
HEALTH_INTERVAL = 10.0
log = get_logger("agent.daemon.main")


class FlagParser(argparse.ArgumentParser):
    """Exit code 2 on a bad flag, with the closest real flag names for an unknown or abbreviated one."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            known = sorted(s for a in self._actions for s in a.option_strings)
            for arg in message.removeprefix(prefix).split():
                name = arg.partition("=")[0]
                if name.startswith("--"):
                    guesses = [k for k in known if k.startswith(name)] or get_close_matches(name, known, 3)
                    if guesses:
                        message += f" (did you mean {' or '.join(guesses[:3])}? flags are not abbreviated)"
        self.exit(
            EXIT_CONFIG, f"tablet-agent: error: {message}\nrun `tablet-agent --help` for the list of flags\n"
        )


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """`--file-backup-storage-root=x` -> `--file_backup_storage_root=x`: both spellings are accepted."""
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            out.append("--" + canonical_key(name) + eq + value)
        else:
            out.append(arg)
    return out


def make_parser() -> FlagParser:
    parser = FlagParser(
        prog="tablet-agent",
        description="Backup/restore agent for one MySQL/MariaDB tablet (Vitess TabletManager over gRPC). "
        "Every flag is also a TOML key in --config and a TABLET_AGENT_<NAME> environment variable; "
        "dashes and underscores are interchangeable.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,  # `--grpc_p` must not silently mean --grpc_port
    )
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--version", action="version", version=f"tablet-agent {AGENT_VERSION}")
    for name in config_keys():
        field = AgentConfig.model_fields[name]
        default = "" if field.is_required() else f" (default: {field.default})"
        help_text = (field.description or "") + default
        names = ["--" + name] + (["--tablet_path"] if name == "tablet_alias" else [])
        if field.annotation is bool:  # `--grpc_insecure` alone means true; `--grpc_insecure=false` too
            parser.add_argument(*names, dest=name, nargs="?", const="true", metavar="BOOL", help=help_text)
        else:
            parser.add_argument(*names, dest=name, metavar=name.upper(), help=help_text or None)
    for name, why in IGNORED_VITESS_FLAGS.items():
        parser.add_argument("--" + name, dest=name, metavar="VALUE", help=f"vttablet's; ignored: {why}")
    parser.add_argument(
        "--flagfile",
        type=Path,
        help="a file of flags, one `--name=value` per line (# comments): a vttablet flag file works",
    )
    return parser


def read_flagfile(path: Path) -> list[str]:
    """The flags of a vttablet-style flag file: one `--name=value` (or `--name value`) per line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"--flagfile {path}: {e.strerror or e}") from None
    out: list[str] = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        out.extend(text.split(None, 1) if " " in text and "=" not in text.split(" ", 1)[0] else [text])
    return out


SECRET_FLAGS = {
    "topo_etcd_password": "TABLET_AGENT_TOPO_ETCD_PASSWORD",
    "db_password": "TABLET_AGENT_DB_PASSWORD",
}


def parse_config(argv: Sequence[str]) -> AgentConfig:
    argv = normalize_argv(_expand_flagfiles(argv))
    for arg in argv:
        name = arg[2:].partition("=")[0] if arg.startswith("--") else ""
        if name in SECRET_FLAGS:
            raise ConfigError(
                f"--{name}: passwords are never taken from flags (they show in `ps`): set {SECRET_FLAGS[name]} "
                "in the agent's environment instead"
            )
    args: dict[str, Any] = vars(make_parser().parse_args(argv))
    config_file = args.pop("config", None)
    return build_config(args, config_file=config_file)


def _expand_flagfiles(argv: Sequence[str]) -> list[str]:
    """`--flagfile F` / `--flagfile=F` replaced by the file's flags (later flags on the command line win)."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--flagfile", "--flag_file", "--flag-file") and i + 1 < len(args):
            out = read_flagfile(Path(args[i + 1])) + out
            i += 2
            continue
        if arg.startswith(("--flagfile=", "--flag_file=", "--flag-file=")):
            out = read_flagfile(Path(arg.split("=", 1)[1])) + out
        else:
            out.append(arg)
        i += 1
    return out


def archiver(tablet: Tablet, registration: Registration | None) -> Archiver:
    """The binlog archiver; with a topology, the shard's archiver role decides which agent archives."""
    role = None
    if registration is not None:
        from agent.topo.roles import ShardRole

        config = tablet.config
        role = ShardRole(
            registration.global_client,
            config.topo_global_root,
            config.init_keyspace,
            config.init_shard,
            action=ROLE,
            ttl=config.topo_lease_ttl,
        )
    return Archiver(tablet, role)


async def _restore_on_start(tablet: Tablet) -> None:
    try:
        await restore_on_start(tablet)
    except AgentError as e:
        log.error("--restore_from_backup: the restore could not start", error=str(e))


async def serve(config: AgentConfig, argv: Sequence[str] | None = None) -> int:
    notifier = SystemdNotifier()
    if config.restore_from_backup:
        startup_restore_params(config)  # flags that cannot be read end the start with exit 2
    await check_at_start(config)  # set-up mistakes end the start here (exit 2, with the fix)
    tablet = Tablet.create(config)
    log_protection(tablet)
    await prepare_tablet(tablet)
    await warn_at_start(tablet)
    server = AgentServer(TabletManagerServicer(tablet), config)
    port = await server.start(config)
    log.info(
        "tablet-agent serving",
        alias=tablet.alias,
        keyspace=config.init_keyspace,
        shard=config.init_shard,
        address=f"{config.grpc_bind_address}:{port}",
        version=AGENT_VERSION,
    )
    metrics = AgentMetrics(
        tablet.runner, tablet.summary, tablet.archive, config.binlog_archive_interval, tablet.backups_removed
    )
    if config.metrics_port:
        metrics_port = metrics.serve(config.metrics_bind_address, config.metrics_port)
        log.info("metrics served", address=f"{config.metrics_bind_address}:{metrics_port}")
    registration = await register(tablet, port)
    background = [
        asyncio.create_task(tablet.summary.run()),
        asyncio.create_task(track_pending_binlogs(tablet, metrics)),
        asyncio.create_task(track_health(tablet, metrics)),
    ]
    if config.restore_from_backup:
        background.append(asyncio.create_task(_restore_on_start(tablet)))
    if config.binlog_archive_interval:
        background.append(asyncio.create_task(archiver(tablet, registration).run()))
    notifier.notify("READY=1", f"STATUS=serving on {config.grpc_bind_address}:{port}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        server.reload()
        reload_limits(tablet, argv)

    loop.add_signal_handler(signal.SIGHUP, reload)
    watchdog = asyncio.create_task(notifier.run_watchdog())
    await stop.wait()

    log.info("stopping", grace=config.grpc_shutdown_grace)
    notifier.notify("STOPPING=1")
    watchdog.cancel()
    for task in background:
        task.cancel()
    metrics.stop()
    stopping = asyncio.create_task(server.stop(config.grpc_shutdown_grace))
    await tablet.runner.shutdown(config.grpc_shutdown_grace)
    if registration is not None:  # after the operation ended: the record keeps the type it left
        await registration.stop()
    await stopping
    await tablet.storage.close()
    with contextlib.suppress(asyncio.CancelledError):
        await watchdog
    log.info("stopped")
    return 0


def log_protection(tablet: Tablet) -> None:
    """Check the key files now (exit 2 naming a bad one) and log their key ids and the I/O limits."""
    config = tablet.config
    keyring = keyring_from(config)
    if keyring.current is not None:
        log.info("new backups are encrypted", key_id=keyring.current.key_id, key_file=keyring.current.source)
    for key in keyring.keys:
        if key is not keyring.current:
            log.info("decryption key", key_id=key.key_id, key_file=key.source)
    limits = tablet.limits
    log.info(
        "I/O limits",
        backup_max_rate=format_rate(limits.disk),
        storage_max_rate=format_rate(limits.storage),
        backup_io_class=limits.io_class,
    )


def reload_limits(tablet: Tablet, argv: Sequence[str] | None) -> None:
    """SIGHUP: the rate limits and the I/O class from the configuration as it is now (file, environment,
    flags: `argv` as the daemon was started with), applied to running operations too."""
    try:
        config = parse_config(argv) if argv is not None else tablet.config
    except ConfigError as e:
        log.error("limits not reloaded: keeping the old ones", error=str(e))
        return
    tablet.limits.reload(
        config.backup_max_rate, config.storage_max_rate, config.backup_io_class, config.backup_niceness
    )
    log.info(
        "I/O limits reloaded",
        backup_max_rate=format_rate(config.backup_max_rate),
        storage_max_rate=format_rate(config.storage_max_rate),
        backup_io_class=config.backup_io_class,
        backup_niceness=config.backup_niceness,
    )


async def register(tablet: Tablet, port: int) -> Registration | None:
    """Put this tablet in the topology, when one is configured, and keep its type following the
    operations (BACKUP/RESTORE while they run, then the configured type, DRAINED after a point in time)."""
    config = tablet.config
    if not config.topo_implementation:
        return None
    # Imported here: agents without a topology do not load the HTTP client.
    from agent.topo.etcd import PASSWORD_ENV, EtcdClient, EtcdSettings, split_endpoints
    from agent.topo.layout import default_cell_root, resolve_cell
    from agent.topo.tablets import Registration, tablet_record, type_during

    settings = EtcdSettings(
        tls_ca=config.topo_etcd_tls_ca,
        tls_cert=config.topo_etcd_tls_cert,
        tls_key=config.topo_etcd_tls_key,
        tls_server_name=config.topo_etcd_tls_server_name,
        username=config.topo_etcd_username,
        password=os.environ.get(PASSWORD_ENV, ""),
    )
    global_client = EtcdClient(split_endpoints(config.topo_global_server_address), settings)
    cell_client = global_client
    cell_name = tablet.alias.rpartition("-")[0]
    try:
        cell = await resolve_cell(
            global_client,
            config.topo_global_root,
            cell_name,
            server_address=config.topo_cell_server_address or config.topo_global_server_address,
            root=config.topo_cell_root or default_cell_root(config.topo_global_root, cell_name),
            explicit=bool(config.topo_cell_server_address or config.topo_cell_root),
        )
        cell_client = (
            global_client
            if global_client.serves(cell.server_address)
            else EtcdClient(split_endpoints(cell.server_address), settings)
        )
        creds = tablet.credentials
        record = tablet_record(
            config,
            port,
            AGENT_VERSION,
            time.time(),
            mysql_host=None if creds.uses_socket else (creds.host or "localhost"),
            mysql_port=creds.port,
        )
        registration = Registration(
            global_client,
            config.topo_global_root,
            cell,
            cell_client,
            record,
            config.topo_lease_ttl,
            probe=lambda: mysqld_facts(tablet),
        )
        await registration.start()
    except BaseException:
        await cell_client.close()
        await global_client.close()
        raise

    def started(op: Operation) -> None:
        if (during := type_during(op)) is not None:
            registration.set_type(during)

    def finished(_op: Operation) -> None:
        registration.set_type(current_type(tablet))

    tablet.runner.on_start(started)
    tablet.runner.on_finish(finished)
    return registration


async def mysqld_facts(tablet: Tablet) -> MysqldFacts:
    """mysqld's port and the ID of its default utf8mb4 collation, for the tablet record."""
    from agent.topo.tablets import MysqldFacts

    row = await tablet.client.query_one(
        "SELECT @@port AS port, (SELECT ID FROM information_schema.COLLATIONS "
        "WHERE CHARACTER_SET_NAME = 'utf8mb4' AND IS_DEFAULT = 'Yes') AS collation"
    )
    if row is None:
        raise AgentError("mysqld returned no row for @@port")
    return MysqldFacts(port=int(row["port"] or 0), collation=int(row["collation"] or 0))


async def track_pending_binlogs(tablet: Tablet, metrics: AgentMetrics) -> None:
    """Keep the binlog-files-pending metric fresh (every minute; mysqld may be down for a while)."""
    while True:
        await tablet.summary.wait()
        try:
            metrics.binlog_files_pending = await pending_binlogs(
                tablet.client, tablet.mycnf, tablet.summary.newest
            )
        except (AgentError, OSError) as e:
            log.debug("cannot count pending binlogs", error=str(e))
        await asyncio.sleep(PENDING_BINLOGS_INTERVAL)


async def track_health(tablet: Tablet, metrics: AgentMetrics) -> None:
    """Keep the health-problem metric fresh: Status's problems, every HEALTH_INTERVAL seconds."""
    await tablet.summary.wait()
    while True:
        try:
            state = await tablet.mysqld_states.get()
            metrics.health_problems = {kind for kind, _ in health_problem_kinds(tablet, state)}
        except (AgentError, OSError) as e:
            log.debug("cannot evaluate health", error=str(e))
        await asyncio.sleep(HEALTH_INTERVAL)


def export_group_suffix(config: AgentConfig, environ: MutableMapping[str, str]) -> None:
    """Make the programs the agent starts (mariadbd, mariabackup) read the option groups it reads."""
    for name in GROUP_SUFFIX_ENVS:
        if config.mycnf_group_suffix:
            environ[name] = config.mycnf_group_suffix
        else:
            environ.pop(name, None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = parse_config(argv)
    except ConfigError as e:
        print(f"tablet-agent: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    export_group_suffix(config, os.environ)
    configure_logging(config.log_format, config.log_level)
    for name in config.ignored_flags:
        log.warning(
            f"--{name} is accepted for vttablet compatibility and ignored: {IGNORED_VITESS_FLAGS[name]}"
        )
    try:
        return uvloop.run(serve(config, argv))
    except ConfigError as e:
        log.error("configuration error", error=str(e))
        print(f"tablet-agent: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as e:
        log.error("cannot start", error=str(e))
        print(f"tablet-agent: error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
