from pathlib import Path

import pytest

from agent.config import AgentConfig, build_config, normalize_alias
from agent.daemon.main import export_group_suffix, main, normalize_argv, parse_config
from agent.errors import ConfigError

BASE = {
    "tablet_alias": "zone1-102",
    "init_keyspace": "ks",
    "init_shard": "0",
    "mycnf_file": "/tmp/my.cnf",
    "file_backup_storage_root": "/tmp/backups",
}


def test_alias_is_normalized_to_ten_digits() -> None:
    assert normalize_alias("zone1-102") == "zone1-0000000102"
    assert normalize_alias("zone1-0000000102") == "zone1-0000000102"


@pytest.mark.parametrize(
    "bad", ["zone1", "zone1-", "-12", "zone 1-12", "zone1-12345678901", "zone1-99999999999"]
)
def test_bad_alias_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="tablet alias"):
        normalize_alias(bad)


def test_dash_and_underscore_spellings_are_the_same_flag() -> None:
    argv = ["--tablet-path", "zone1-7", "--init-keyspace=ks", "--init_shard", "-80", "--mycnf-file", "/x/my.cnf",
            "--file-backup-storage-root", "/b", "--backup-engine-implementation=xtrabackup"]  # fmt: skip
    cfg = parse_config(argv)
    assert cfg.tablet_alias == "zone1-0000000007"
    assert cfg.init_shard == "-80"
    assert cfg.backup_engine_implementation == "xtrabackup"
    assert normalize_argv(["--a-b-c=d-e", "-x", "v-w"]) == ["--a_b_c=d-e", "-x", "v-w"]


def test_precedence_flags_over_env_over_toml(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('init_keyspace = "from_toml"\ngrpc-port = 1111\nconcurrency = 3\n')
    env = {"TABLET_AGENT_GRPC_PORT": "2222", "TABLET_AGENT_CONCURRENCY": "5"}
    flags = {k: v for k, v in BASE.items() if k != "init_keyspace"} | {"concurrency": "7"}
    cfg = build_config(flags, environ=env, config_file=toml)
    assert (cfg.init_keyspace, cfg.grpc_port, cfg.concurrency) == ("from_toml", 2222, 7)


def test_missing_identity_names_the_flags() -> None:
    with pytest.raises(ConfigError, match=r"--tablet-path.*--init_keyspace"):
        build_config({"init_shard": "0", "mycnf_file": "/x"}, environ={})


def test_file_storage_needs_root() -> None:
    with pytest.raises(ConfigError, match="--file_backup_storage_root is required"):
        build_config({k: v for k, v in BASE.items() if k != "file_backup_storage_root"}, environ={})


def test_unknown_toml_key(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text("no_such_key = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'no_such_key'"):
        build_config(BASE, environ={}, config_file=toml)


def test_config_is_frozen() -> None:
    cfg = build_config(BASE, environ={})
    assert isinstance(cfg, AgentConfig)
    with pytest.raises(ValueError, match="frozen"):
        cfg.grpc_port = 1  # type: ignore[misc]


def test_unknown_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--no-such-flag", "1"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no_such_flag" in capsys.readouterr().err


def test_bad_alias_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--tablet-path", "nope", "--init_keyspace", "ks", "--init_shard", "0", "--mycnf_file", "/x",
               "--file_backup_storage_root", "/b"])  # fmt: skip
    assert rc == 2
    assert "invalid tablet alias 'nope'" in capsys.readouterr().err


def test_gcs_storage_needs_a_bucket_and_takes_vitess_flag_names() -> None:
    base = {"tablet_alias": "zone1-1", "init_keyspace": "ks", "init_shard": "0", "mycnf_file": "/x/my.cnf"}
    with pytest.raises(ConfigError, match="--gcs_backup_storage_bucket is required"):
        build_config({**base, "backup_storage_implementation": "gcs"}, environ={})
    cfg = build_config(
        {**base, "backup-storage-implementation": "gcs", "gcs-backup-storage-bucket": "b",
         "gcs_backup_storage_root": "prod", "gcs_backup_storage_endpoint": "http://127.0.0.1:9023"},
        environ={},
    )  # fmt: skip
    assert cfg.backup_storage_implementation == "gcs" and cfg.gcs_backup_storage_root == "prod"
    from agent.storage import storage_from_config

    storage = storage_from_config(cfg)
    assert storage.describe() == "gs://b/prod"


def test_state_dir_defaults_to_systemd_state_directory() -> None:
    assert build_config(BASE, environ={}).effective_state_dir == Path("/tmp/tablet-agent")
    env = {"STATE_DIRECTORY": "/var/lib/tablet-agent/tab1"}
    assert build_config(BASE, environ=env).effective_state_dir == Path("/var/lib/tablet-agent/tab1")
    # Several StateDirectory= paths arrive joined with ':'; the first is the unit's own.
    env = {"STATE_DIRECTORY": "/var/lib/tablet-agent/tab1:/var/lib/other"}
    assert build_config(BASE, environ=env).effective_state_dir == Path("/var/lib/tablet-agent/tab1")


def test_an_explicit_state_dir_wins_over_state_directory(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": "/var/lib/tablet-agent/tab1"}
    assert build_config(BASE | {"state_dir": "/flag"}, environ=env).state_dir == Path("/flag")
    env_setting = env | {"TABLET_AGENT_STATE_DIR": "/env"}
    assert build_config(BASE, environ=env_setting).state_dir == Path("/env")
    toml = tmp_path / "agent.toml"
    toml.write_text('state_dir = "/toml"\n')
    assert build_config(BASE, environ=env, config_file=toml).state_dir == Path("/toml")


def test_group_suffix_defaults_from_mariadb_environment(tmp_path: Path) -> None:
    assert build_config(BASE, environ={}).mycnf_group_suffix == ""
    env = {"MYSQL_GROUP_SUFFIX": ".old", "MARIADB_GROUP_SUFFIX": ".tab1"}
    assert build_config(BASE, environ=env).mycnf_group_suffix == ".tab1"  # MariaDB's order
    assert build_config(BASE, environ={"MYSQL_GROUP_SUFFIX": ".old"}).mycnf_group_suffix == ".old"
    toml = tmp_path / "agent.toml"
    toml.write_text('mycnf_group_suffix = ".toml"\n')
    assert build_config(BASE, environ=env, config_file=toml).mycnf_group_suffix == ".toml"
    explicit = env | {"TABLET_AGENT_MYCNF_GROUP_SUFFIX": ""}
    assert build_config(BASE, environ=explicit).mycnf_group_suffix == ""


@pytest.mark.parametrize("bad", [". tab1", ".tab1]", "[x", ".a#b", ".a=b"])
def test_bad_group_suffix_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"--mycnf_group_suffix: invalid mycnf_group_suffix"):
        build_config(BASE | {"mycnf_group_suffix": bad}, environ={})


def test_children_read_the_agents_option_groups() -> None:
    environ = {"MYSQL_GROUP_SUFFIX": ".stale", "PATH": "/bin"}
    export_group_suffix(build_config(BASE | {"mycnf_group_suffix": ".tab1"}, environ={}), environ)
    assert environ == {"MARIADB_GROUP_SUFFIX": ".tab1", "MYSQL_GROUP_SUFFIX": ".tab1", "PATH": "/bin"}
    export_group_suffix(build_config(BASE, environ={}), environ)
    assert environ == {"PATH": "/bin"}


def test_rates_io_class_and_key_files(tmp_path: Path) -> None:
    cfg = build_config(
        BASE
        | {
            "backup_max_rate": "50M",
            "storage-max-rate": "1.5G",
            "backup_io_class": "Best-Effort:7",
            "backup_decryption_key_files": " /k/a.key, /k/b.key ,",
        },
        environ={},
    )
    assert (cfg.backup_max_rate, cfg.storage_max_rate) == (50 << 20, 3 << 29)
    assert cfg.backup_io_class == "best-effort:7"
    assert cfg.decryption_key_paths == [Path("/k/a.key"), Path("/k/b.key")]
    for bad in ({"backup_max_rate": "fast"}, {"backup_io_class": "lazy"}, {"storage_max_rate": "-1"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build_config(BASE | bad, environ={})


def test_sighup_reloads_the_limits_from_the_config_file(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from agent.daemon.main import reload_limits
    from agent.pipeline.ratelimit import RateLimits

    toml = tmp_path / "agent.toml"
    toml.write_text('backup_max_rate = "10M"\n')
    argv = [f"--{k}={v}" for k, v in BASE.items()] + ["--config", str(toml)]
    cfg = parse_config(argv)
    tablet = SimpleNamespace(config=cfg, limits=RateLimits(cfg.backup_max_rate, cfg.storage_max_rate))
    running = tablet.limits.for_operation()
    assert running.disk.rate == 10 << 20
    toml.write_text('backup_max_rate = "20M"\nstorage_max_rate = 1000\nbackup_io_class = "none"\n')
    reload_limits(tablet, argv)  # type: ignore[arg-type]
    assert (running.disk.rate, running.storage.rate, running.io_class) == (20 << 20, 1000, "none")
    toml.write_text('backup_max_rate = "lots"\n')
    reload_limits(tablet, argv)  # type: ignore[arg-type]  # refused: the old limits stay
    assert running.disk.rate == 20 << 20
