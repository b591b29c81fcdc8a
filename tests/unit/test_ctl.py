"""tabletctl and tablet-agent flags, times and names, the backups table and JSON, restore planning (no agent)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import pytest

from agent.config import EngineName, TabletType
from agent.ctl import backups as listing
from agent.ctl.main import EXIT_USAGE, main, make_parser, parse_when
from agent.ctl.render import human_age, human_duration, human_size
from agent.daemon.main import parse_config
from agent.pb import agentdata_pb2, vttime_pb2

NOW = datetime(2026, 11, 23, 18, 0, 0, tzinfo=UTC)


def info(name: str, *, hours_ago: float, pos: str, incr: bool = False, from_pos: str = "", from_backup: str = "",
         size: int = 0, took: float = 60, complete: bool = True) -> agentdata_pb2.BackupInfo:  # fmt: skip
    b = agentdata_pb2.BackupInfo(name=name, directory="ks/0", complete=complete)
    if not complete:
        return b
    started = NOW - timedelta(hours=hours_ago)
    b.engine = "binlog" if incr else "builtin"
    b.incremental, b.position, b.from_position, b.from_backup, b.size_bytes = (
        incr,
        pos,
        from_pos,
        from_backup,
        size,
    )
    b.backup_time.CopyFrom(vttime_pb2.Time(seconds=int(started.timestamp())))
    b.finished_time.CopyFrom(vttime_pb2.Time(seconds=int(started.timestamp() + took)))
    return b


def chain() -> list[agentdata_pb2.BackupInfo]:
    """Oldest first: full A, incremental A1 (FromBackup), full B, B1 and B2 by position, an incomplete one."""
    return [
        info("2026-11-20.180000.zone1-0000000102", hours_ago=72, pos="MariaDB/0-1-10", size=3 << 30, took=754),
        info("2026-11-21.180000.zone1-0000000102", hours_ago=48, pos="MariaDB/0-1-20", incr=True,
             from_pos="MariaDB/0-1-10", from_backup="2026-11-20.180000.zone1-0000000102", size=2048),
        info("2026-11-22.180000.zone1-0000000102", hours_ago=24, pos="MariaDB/0-1-30", size=5 << 20),
        info("2026-11-23.120000.zone1-0000000102", hours_ago=6, pos="MariaDB/0-1-40", incr=True,
             from_pos="MariaDB/0-1-30", size=700),
        info("2026-11-23.150000.zone1-0000000102", hours_ago=3, pos="MariaDB/0-1-55", incr=True,
             from_pos="0-1-40", size=900),
        info("2026-11-23.170000.zone1-0000000102", hours_ago=1, pos="", complete=False),
    ]  # fmt: skip


# --- flags ---


@pytest.mark.parametrize(
    "argv",
    [
        ["--serv", "127.0.0.1:1", "ping"],  # prefix of --server, before the command
        ["ping", "--serv", "127.0.0.1:1"],  # and after it
        ["backups", "--al"],  # prefix of --all
        ["restore", "--backup_time", "2026-11-23T18:45:00Z"],  # prefix of --backup_timestamp
    ],
)
def test_abbreviated_options_are_refused_with_the_full_name(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        make_parser({}).parse_args(argv)
    assert exc.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and "did you mean" in err and "not abbreviated" in err


def test_an_option_of_another_command_names_that_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        make_parser({}).parse_args(["status", "--all"])
    assert "--all is an option of: verify, backups" in capsys.readouterr().err


def test_connection_options_go_before_or_after_the_command() -> None:
    parser = make_parser({})
    assert parser.parse_args(["--server", "h:1", "status"]).server == "h:1"
    assert parser.parse_args(["status", "--server", "h:2"]).server == "h:2"
    assert parser.parse_args(["status"]).server == "127.0.0.1:16002"
    assert make_parser({"TABLETCTL_SERVER": "db7:16002"}).parse_args(["status"]).server == "db7:16002"


def _all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _all_parsers(sub)
    return found


def test_every_option_has_help_and_the_help_shows_defaults_env_and_exit_codes() -> None:
    parser = make_parser({"TABLETCTL_TOPO_SERVER": "etcd1:2379"})
    for p in _all_parsers(parser):
        for action in p._actions:
            assert action.help, f"{p.prog} {action.option_strings or action.dest} has no help text"
    text = parser.format_help()
    for needle in ("TABLETCTL_SERVER", "TABLETCTL_TOKEN", "TABLETCTL_TOPO_SERVER", "(default: 127.0.0.1:16002)",
                   "exit codes", "3    nothing to do", "2    usage or connection error", "RFC 3339"):  # fmt: skip
        assert needle in text, needle
    sub = {p.prog: p.format_help() for p in _all_parsers(parser)}
    assert "(default: 127.0.0.1:16002)" in sub["tabletctl status"]
    assert "(default: etcd1:2379)" in sub["tabletctl tablets"]
    assert "(default: 10.0)" in sub["tabletctl backups"]


def test_engine_names_in_any_case() -> None:
    args = make_parser({}).parse_args(["backup", "--engine", "XtraBackup"])
    assert args.engine == "xtrabackup"
    args = make_parser({}).parse_args(["restore", "--allowed-backup-engines", "BUILTIN"])
    assert args.allowed_backup_engines == ["builtin"]


def test_usage_errors_exit_2_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", "127.0.0.1:1", "restore", "--latest", "--restore_to_pos", "MariaDB/0-1-1"]) == 2
    assert main(["tablets", "noslash", "--topo-server", "127.0.0.1:1"]) == 2
    assert "expected KEYSPACE/SHARD" in capsys.readouterr().err


# --- times and names ---


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-11-23T18:45:00Z", 1795459500),
        ("2026-11-23t18:45:00z", 1795459500),
        ("2026-11-23T20:45:00+02:00", 1795459500),
        ("2026-11-23 18:45:00", 1795459500),  # no offset: UTC
        ("2026-11-23T18:45:00.5Z", 1795459500),
    ],
)
def test_times_are_rfc_3339(text: str, seconds: int) -> None:
    t = parse_when(text)
    assert isinstance(t, vttime_pb2.Time) and t.seconds == seconds


def test_a_backup_name_is_kept_for_later_and_garbage_is_refused() -> None:
    assert parse_when("2026-11-23.184500.zone1-0000000102") == "2026-11-23.184500.zone1-0000000102"
    with pytest.raises(argparse.ArgumentTypeError, match="neither a time nor a backup name"):
        parse_when("yesterday")


# --- the table ---


def test_human_units() -> None:
    assert [human_size(n) for n in (0, 512, 2048, 5 << 20, 3 << 30, int(1.5 * (1 << 40)))] == [
        "0 B", "512 B", "2.0 KiB", "5.0 MiB", "3.0 GiB", "1.5 TiB"]  # fmt: skip
    assert [human_duration(s) for s in (8, 192, 3900, 183600)] == ["8s", "3m12s", "1h05m", "2d03h"]
    assert [human_age(NOW - timedelta(seconds=s), NOW) for s in (45, 720, 3 * 3600, 30 * 3600, 72 * 3600)] == [
        "45s ago", "12m ago", "3h ago", "30h ago", "3d ago"]  # fmt: skip


def test_incrementals_are_grouped_under_the_full_backup_they_chain_from() -> None:
    rows = listing.chain_rows(chain())
    assert [(r.info.name[:17], r.depth, r.base[:17], r.parent[:17]) for r in rows] == [
        ("2026-11-20.180000", 0, "", ""),
        ("2026-11-21.180000", 1, "2026-11-20.180000", "2026-11-20.180000"),  # by FromBackup
        ("2026-11-22.180000", 0, "", ""),
        ("2026-11-23.120000", 1, "2026-11-22.180000", "2026-11-22.180000"),  # by FromPosition
        ("2026-11-23.150000", 1, "2026-11-22.180000", "2026-11-23.120000"),  # through the previous one
        ("2026-11-23.170000", 0, "", ""),  # incomplete
    ]


def test_plain_table_has_a_header_aligned_columns_and_indented_incrementals() -> None:
    lines = listing.render_plain(listing.chain_rows(chain()), NOW).splitlines()
    assert lines[0].split() == list(listing.COLUMNS)
    full = lines[1].split()
    assert full == ["2026-11-20.180000.zone1-0000000102", "builtin", "full", "3.0", "GiB", "3d", "ago", "12m34s",
                    "complete", "-", "MariaDB/0-1-10"]  # fmt: skip
    assert (
        lines[2].startswith("  2026-11-21.180000") and " incremental " in lines[2] and "2.0 KiB" in lines[2]
    )
    assert "incomplete" in lines[6] and lines[6].startswith("2026-11-23.170000")
    starts = {
        line.index(" builtin ") if " builtin " in line else line.index(" binlog ") for line in lines[1:6]
    }
    assert len({lines[0].index("ENGINE")} | {s + 1 for s in starts}) == 1  # ENGINE column aligned


def test_verification_is_shown_when_the_agent_reports_it() -> None:
    backups = chain()[:1]
    backups[0].verification, backups[0].verification_depth = "failed", "deep"
    backups[0].verification_problems.append("object 0: sha256 mismatch")
    assert " failed (deep) " in listing.render_plain(listing.chain_rows(backups), NOW)
    doc = listing.as_json(backups, "ks/0")["backups"][0]
    assert (doc["verification"], doc["verification_problems"]) == ("failed", ["object 0: sha256 mismatch"])


def test_json_has_the_same_keys_for_every_backup() -> None:
    doc = listing.as_json(chain(), "ks/0")
    json.dumps(doc)
    assert doc["directory"] == "ks/0"
    keys = {frozenset(b) for b in doc["backups"]}
    assert len(keys) == 1
    by_name = {b["name"][:17]: b for b in doc["backups"]}
    assert by_name["2026-11-23.150000"]["base"] == "2026-11-22.180000.zone1-0000000102"
    assert by_name["2026-11-23.150000"]["kind"] == "incremental"
    assert by_name["2026-11-20.180000"]["duration_seconds"] == 754
    assert by_name["2026-11-20.180000"]["backup_time"] == "2026-11-20T18:00:00Z"
    assert by_name["2026-11-23.170000"]["kind"] is None and by_name["2026-11-23.170000"]["complete"] is False


# --- restore planning ---


def test_a_plain_restore_takes_the_newest_full_and_the_chain_reaches_further() -> None:
    backups = [b for b in chain() if b.complete]
    full = listing.full_for_restore(backups, None, [])
    assert full is not None and full.name.startswith("2026-11-22")
    assert [b.name[:17] for b in listing.furthest_chain(backups, full)] == [
        "2026-11-23.120000",
        "2026-11-23.150000",
    ]
    older = listing.full_for_restore(backups, NOW - timedelta(hours=30), [])
    assert older is not None and older.name.startswith("2026-11-20")
    assert [b.name[:17] for b in listing.furthest_chain(backups, older)] == ["2026-11-21.180000"]
    assert listing.full_for_restore(backups, None, ["xtrabackup"]) is None
    backups[2].verification = "failed"  # the agent passes over a full backup whose verification failed
    passed_over = listing.full_for_restore(backups, None, [])
    assert passed_over is not None and passed_over.name.startswith("2026-11-20")


# --- the daemon's flags ---

BASE = ["--tablet-path", "zone1-1", "--init_keyspace", "ks", "--init_shard", "0", "--mycnf_file", "/x/my.cnf",
        "--file-backup-storage-root=/b"]  # fmt: skip


def test_daemon_enum_values_in_any_case() -> None:
    config = parse_config([*BASE, "--init_tablet_type", "replica", "--backup_engine_implementation", "XtraBackup",
                           "--log_format", "JSON", "--binlog_applier", "Pipe", "--backup_storage_implementation",
                           "FILE"])  # fmt: skip
    assert config.init_tablet_type is TabletType.REPLICA
    assert config.backup_engine_implementation is EngineName.XTRABACKUP
    assert (config.log_format, config.binlog_applier, config.backup_storage_implementation) == (
        "json", "pipe", "file")  # fmt: skip


@pytest.mark.parametrize("flag", ["--grpc_p", "--mycnf", "--grpc-p", "--vers"])
def test_daemon_refuses_abbreviated_flags(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config([*BASE, flag, "1"])
    assert exc.value.code == 2
    assert "not abbreviated" in capsys.readouterr().err


def test_daemon_still_takes_both_spellings() -> None:
    config = parse_config(
        [*BASE, "--grpc-port=0", "--grpc_bind_address", "127.0.0.1", "--mysqld-start-timeout", "5"]
    )
    assert config.grpc_port == 0 and config.mysqld_start_timeout == 5
