"""Option-file parsing (mysqld's rules, as checked against MariaDB 10.11) and credential precedence."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.mysql.client import ENV_PASSWORD, ENV_USER, Credentials, credentials_from
from agent.mysql.mycnf import ClientOptions, read_client_options, read_mycnf


@pytest.fixture(autouse=True)
def hostname(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr("socket.gethostname", lambda: "db1.example.com")
    return "db1"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


def cnf(tmp_path: Path, body: str, name: str = "my.cnf") -> Path:
    return write(tmp_path / name, body)


def test_minimal_file_gets_mysqld_defaults(tmp_path: Path) -> None:
    c = read_mycnf(cnf(tmp_path, "[mysqld]\ndatadir=/var/db\n"))
    assert c.path == tmp_path / "my.cnf"
    assert c.datadir == Path("/var/db")
    assert c.port == 3306
    assert c.server_id == 1
    assert c.socket is None
    assert c.pid_file == Path("/var/db/db1.pid")
    assert c.log_error is None
    assert c.log_bin is None and c.log_bin_index is None
    assert c.relay_log == Path("/var/db/db1-relay-bin")
    assert c.innodb_data_home_dir == c.innodb_log_group_home_dir == c.innodb_undo_directory == Path("/var/db")
    assert c.innodb_data_file_path == "ibdata1:12M:autoextend"
    assert c.client == ClientOptions()


def test_full_file_with_relative_paths_resolved_against_datadir(tmp_path: Path) -> None:
    c = read_mycnf(
        cnf(
            tmp_path,
            """
            # a comment
            ; another
            [mysqld]
            datadir = /srv/mysql/data/
            socket = /run/mysqld/x.sock
            port = 13306
            pid-file = mysqld.pid
            log-error = /var/log/mysql/error.log
            log_bin = ../binlogs/mysql-bin
            log-bin-index = ../binlogs/mysql-bin.index
            relay-log = relay/relay-bin
            innodb_data_home_dir = /srv/mysql/innodb
            innodb-log-group-home-dir = redo
            innodb_data_file_path = ibdata1:12M;ibdata2:50M:autoextend
            innodb_undo_directory = /srv/mysql/undo
            server-id = 102
            skip-name-resolve
            """,
        )
    )
    assert c.datadir == Path("/srv/mysql/data")
    assert c.socket == Path("/run/mysqld/x.sock")
    assert c.port == 13306
    assert c.pid_file == Path("/srv/mysql/data/mysqld.pid")
    assert c.log_error == Path("/var/log/mysql/error.log")
    assert c.log_bin == Path("/srv/mysql/binlogs/mysql-bin")
    assert c.log_bin_index == Path("/srv/mysql/binlogs/mysql-bin.index")
    assert c.relay_log == Path("/srv/mysql/data/relay/relay-bin")
    assert c.innodb_data_home_dir == Path("/srv/mysql/innodb")
    assert c.innodb_log_group_home_dir == Path("/srv/mysql/data/redo")
    assert c.innodb_data_file_path == "ibdata1:12M;ibdata2:50M:autoextend"
    assert c.innodb_undo_directory == Path("/srv/mysql/undo")
    assert c.server_id == 102


@pytest.mark.parametrize(
    ("lines", "log_bin", "index"),
    [
        ("log-bin", "/d/db1-bin", "/d/db1-bin.index"),  # <datadir>/<hostname up to the first dot>-bin
        ("log_bin=", "/d/db1-bin", "/d/db1-bin.index"),
        ("pid-file=/run/x.y.pid\nlog-bin", "/d/x-bin", "/d/x-bin.index"),  # the pid file's stem
        ("log-basename=base\nlog-bin", "/d/base-bin", "/d/base-bin.index"),
        ("log-bin=foo.log", "/d/foo", "/d/foo.index"),  # the extension is dropped
        ("log-bin=/b/bl.x.y\nlog-bin-index=/i/ix.foo", "/b/bl", "/i/ix.index"),
        ("log-bin=/b/bin\nskip-log-bin", None, None),
        ("log-bin\ndisable_log_bin", None, None),
        ("log_bin=OFF", None, None),
        ("loose-log-bin=/b/loose", "/b/loose", "/b/loose.index"),
    ],
)
def test_binlog_names_follow_mysqld(
    tmp_path: Path, lines: str, log_bin: str | None, index: str | None
) -> None:
    c = read_mycnf(cnf(tmp_path, f"[mysqld]\ndatadir=/d\n{lines}\n"))
    assert c.log_bin == (Path(log_bin) if log_bin else None)
    assert c.log_bin_index == (Path(index) if index else None)


@pytest.mark.parametrize(
    ("lines", "log_error", "pid_file", "relay_log"),
    [
        ("log-error", "/d/db1.err", "/d/db1.pid", "/d/db1-relay-bin"),
        ("log-error=err", "/d/err.err", "/d/db1.pid", "/d/db1-relay-bin"),  # .err added without extension
        ("log-error=/l/mysqld.log", "/l/mysqld.log", "/d/db1.pid", "/d/db1-relay-bin"),
        ("pid-file=/run/x.y.pid\nlog-error", "/run/x.err", "/run/x.y.pid", "/d/x-relay-bin"),
        ("pid-file=/run/mysqld", None, "/run/mysqld.pid", "/d/mysqld-relay-bin"),
        ("log-basename=base\nlog-error", "/d/base.err", "/d/base.pid", "/d/base-relay-bin"),
    ],
)
def test_log_and_pid_names_follow_mysqld(
    tmp_path: Path, lines: str, log_error: str | None, pid_file: str, relay_log: str
) -> None:
    c = read_mycnf(cnf(tmp_path, f"[mysqld]\ndatadir=/d\n{lines}\n"))
    assert c.log_error == (Path(log_error) if log_error else None)
    assert c.pid_file == Path(pid_file)
    assert c.relay_log == Path(relay_log)


def test_every_server_group_applies_in_file_order_and_others_are_ignored(tmp_path: Path) -> None:
    c = read_mycnf(
        cnf(
            tmp_path,
            """
            [client-server]
            socket=/run/common.sock
            [mysqld]
            datadir=/a
            port=1
            [mysql]
            port=2
            [mysqld_safe]
            server_id=99
            [mariadb]
            port=3
            [server]
            server_id=7
            [mysqld-10.11]
            innodb_data_file_path=ibdata1:10M:autoextend
            [MariaDB-10.11]
            datadir=/b
            [galera]
            port=4
            """,
        )
    )
    assert (c.datadir, c.port, c.server_id, c.socket) == (Path("/b"), 4, 7, Path("/run/common.sock"))
    assert c.innodb_data_file_path == "ibdata1:10M:autoextend"


def test_values_quotes_escapes_and_comments(tmp_path: Path) -> None:
    c = read_mycnf(
        cnf(
            tmp_path,
            r"""
            [mysqld]
            datadir = "/data dir"   # trailing comment
            [client]
            user = 'backup' ; not a comment
            password = "p#ss\tw'rd\\"  # the # inside quotes is kept
            host = db.example.com # comment
            port = 3307
            """,
        )
    )
    assert c.datadir == Path("/data dir")
    assert c.client.user == "'backup' ; not a comment"  # quotes are stripped only around the whole value
    assert c.client.password == "p#ss\tw'rd\\"
    assert c.client.host == "db.example.com"
    assert c.client.port == 3307


def test_client_groups(tmp_path: Path) -> None:
    c = read_mycnf(
        cnf(
            tmp_path,
            """
            [mysqld]
            datadir=/d
            socket=/run/server.sock
            [client]
            user=agent
            password=secret
            socket=/run/client.sock
            [client-mariadb]
            port=3310
            """,
        )
    )
    assert c.client == ClientOptions(
        user="agent", password="secret", socket=Path("/run/client.sock"), host=None, port=3310
    )


def test_include_and_includedir(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "50-server.cnf", "[mysqld]\nport=3400\nserver_id=5\n")
    write(tmp_path / "conf.d" / "60-later.cnf", "[mysqld]\nserver_id=6\n")
    write(tmp_path / "conf.d" / "README", "[mysqld]\nserver_id=66\n")  # only *.cnf is read
    write(tmp_path / "extra" / "paths.cnf", "[mysqld]\ndatadir=/included\n")
    c = read_mycnf(
        cnf(
            tmp_path,
            """
            [mysqld]
            datadir=/first
            !includedir conf.d
            !include extra/paths.cnf
            !include /does/not/exist.cnf
            !includedir /does/not/exist
            port=3500
            """,
        )
    )
    assert (c.datadir, c.port, c.server_id) == (Path("/included"), 3500, 6)


def test_include_loop_terminates(tmp_path: Path) -> None:
    path = cnf(tmp_path, "[mysqld]\ndatadir=/d\n!include my.cnf\n")
    assert read_mycnf(path).datadir == Path("/d")


def test_empty_innodb_data_home_dir_means_absolute_data_files(tmp_path: Path) -> None:
    c = read_mycnf(cnf(tmp_path, "[mysqld]\ndatadir=/d\ninnodb_data_home_dir=\n"))
    assert c.innodb_data_home_dir == Path("/")


def test_missing_file_says_which_flag_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--mycnf_file .*/nope.cnf does not exist: point it at"):
        read_mycnf(tmp_path / "nope.cnf")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[mysqld]\nport=1\n", "sets no datadir in a server group"),
        ("[client]\ndatadir=/d\n", "sets no datadir"),
        ("[mysqld]\ndatadir=relative/dir\n", "must be an absolute path"),
        ("datadir=/d\n[mysqld]\n", r"my.cnf:1: option outside any group"),
        ("[mysqld\ndatadir=/d\n", r"my.cnf:1: malformed group header"),
        ("[mysqld]\ndatadir=/d\nport=33o6\n", r"port='33o6' is not a whole number"),
    ],
)
def test_bad_files_raise_config_error_with_the_fix(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_mycnf(cnf(tmp_path, body))


def test_passwords_stay_out_of_reprs(tmp_path: Path) -> None:
    c = read_mycnf(cnf(tmp_path, "[mysqld]\ndatadir=/d\n[client]\nuser=u\npassword=hunter2\n"))
    assert c.client.password == "hunter2"
    assert "hunter2" not in repr(c)
    creds = credentials_from(c, None, {})
    assert "hunter2" not in repr(creds)


# credentials


def mycnf_with_client(tmp_path: Path, client: str = "") -> Path:
    return cnf(tmp_path, f"[mysqld]\ndatadir=/d\nsocket=/run/server.sock\nport=3307\n[client]\n{client}\n")


def test_default_credentials_are_root_over_the_server_socket(tmp_path: Path) -> None:
    creds = credentials_from(read_mycnf(mycnf_with_client(tmp_path)), None, {})
    assert creds == Credentials(
        user="root", password=None, socket=Path("/run/server.sock"), host=None, port=3307
    )
    assert creds.uses_socket
    assert creds.address == "socket /run/server.sock"


def test_precedence_environment_then_file_then_mycnf(tmp_path: Path) -> None:
    mycnf = read_mycnf(mycnf_with_client(tmp_path, "user=cnfuser\npassword=cnfpw\nsocket=/run/client.sock"))
    assert (credentials_from(mycnf, None, {}).user, credentials_from(mycnf, None, {}).password) == (
        "cnfuser",
        "cnfpw",
    )
    creds_file = write(tmp_path / "creds.cnf", "[client]\nuser=fileuser\npassword=filepw\n")
    from_file = credentials_from(mycnf, creds_file, {})
    assert (from_file.user, from_file.password, from_file.socket) == (
        "fileuser",
        "filepw",
        Path("/run/client.sock"),
    )
    env = {ENV_USER: "envuser", ENV_PASSWORD: "envpw"}
    from_env = credentials_from(mycnf, creds_file, env)
    assert (from_env.user, from_env.password) == ("envuser", "envpw")


def test_a_user_brings_its_own_password_and_a_lone_password_keeps_the_user(tmp_path: Path) -> None:
    mycnf = read_mycnf(mycnf_with_client(tmp_path, "user=cnfuser\npassword=cnfpw"))
    only_user = credentials_from(mycnf, None, {ENV_USER: "envuser"})
    assert (only_user.user, only_user.password) == ("envuser", None)
    only_password = credentials_from(mycnf, None, {ENV_PASSWORD: "envpw"})
    assert (only_password.user, only_password.password) == ("cnfuser", "envpw")
    empty_password = credentials_from(mycnf, None, {ENV_PASSWORD: ""})
    assert empty_password.password == ""


def test_credentials_file_may_set_the_address(tmp_path: Path) -> None:
    mycnf = read_mycnf(mycnf_with_client(tmp_path))
    creds_file = write(tmp_path / "creds.cnf", "[client]\nuser=u\nhost=10.0.0.5\nport=3399\n")
    creds = credentials_from(mycnf, creds_file, {})
    assert not creds.uses_socket
    assert creds.address == "10.0.0.5:3399"


def test_world_readable_credentials_file_is_refused(tmp_path: Path) -> None:
    mycnf = read_mycnf(mycnf_with_client(tmp_path))
    creds_file = write(tmp_path / "creds.cnf", "[client]\nuser=u\npassword=topsecret\n", mode=0o644)
    with pytest.raises(ConfigError, match=r"readable by every user: run `chmod 600 .*creds.cnf`") as info:
        credentials_from(mycnf, creds_file, {})
    assert "topsecret" not in str(info.value)


def test_missing_credentials_file_names_the_flag(tmp_path: Path) -> None:
    mycnf = read_mycnf(mycnf_with_client(tmp_path))
    with pytest.raises(ConfigError, match=r"--db_credentials_file .*/none.cnf does not exist"):
        credentials_from(mycnf, tmp_path / "none.cnf", {})


def test_read_client_options_of_a_credentials_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.cnf", "[client]\nuser=x\npassword='a b'\n[mysqld]\nuser=root\n")
    assert read_client_options(path, "--db_credentials_file") == ClientOptions(user="x", password="a b")


def debian_multi_instance(root: Path) -> Path:
    """Debian's layout: my.cnf includes conf.d/ and mariadb.conf.d/; the default server's [mysqld]
    comes first (50-server.cnf), each instance of mariadb@<i>.service has its suffixed groups after."""
    includes = f"!includedir {root}/conf.d/\n!includedir {root}/mariadb.conf.d/\n"  # absolute, as Debian's
    write(root / "my.cnf", "[client-server]\nsocket=/run/mysqld/mysqld.sock\n" + includes)
    write(root / "conf.d/mysql.cnf", "[mysql]\n")
    write(
        root / "mariadb.conf.d/50-client.cnf", "[client]\ndefault-character-set=utf8mb4\n[client-mariadb]\n"
    )
    write(root / "mariadb.conf.d/50-server.cnf", """\
        [server]
        [mysqld]
        user = mysql
        pid-file = /run/mysqld/mysqld.pid
        basedir = /usr
        datadir = /var/lib/mysql
        tmpdir = /tmp
        bind-address = 127.0.0.1
        [mariadb-10.11]
        """)  # fmt: skip
    write(root / "mariadb.conf.d/60-instances.cnf", """\
        [mysqld.tab1]
        datadir = /srv/tab1/data
        socket = /run/mysqld/tab1.sock
        pid-file = /run/mysqld/tab1.pid
        port = 3307
        server-id = 101
        log-bin = /srv/tab1/binlog/tab1-bin
        [client.tab1]
        socket = /run/mysqld/tab1.sock
        user = mysql
        [mariadbd-10.11.TAB1]
        innodb_log_group_home_dir = /srv/tab1/redo

        [mysqld.tab2]
        datadir = /srv/tab2/data
        socket = /run/mysqld/tab2.sock
        port = 3308
        [client-server.tab2]
        port = 3318
        """)  # fmt: skip
    write(
        root / "mariadb.conf.d/70-late.cnf",
        f"[mysqld]\nserver-id = 7\n[mysqld.tab2]\n!include {root}/tab2-extra.cnf\n",
    )
    write(root / "tab2-extra.cnf", "[server.tab2]\nlog-bin\n")
    return root / "my.cnf"


def test_debian_multi_instance_groups_with_a_suffix(tmp_path: Path) -> None:
    path = debian_multi_instance(tmp_path / "etc")
    plain = read_mycnf(path)
    assert (plain.datadir, plain.socket, plain.port, plain.server_id) == (Path("/var/lib/mysql"), Path("/run/mysqld/mysqld.sock"), 3306, 7)  # fmt: skip
    assert plain.client.socket == Path("/run/mysqld/mysqld.sock")

    tab1 = read_mycnf(path, ".tab1")
    assert tab1.datadir == Path("/srv/tab1/data")
    assert (tab1.socket, tab1.port, tab1.pid_file) == (
        Path("/run/mysqld/tab1.sock"),
        3307,
        Path("/run/mysqld/tab1.pid"),
    )
    assert tab1.log_bin == Path("/srv/tab1/binlog/tab1-bin")
    assert tab1.innodb_log_group_home_dir == Path("/srv/tab1/redo")  # versioned group, suffix in capitals
    assert tab1.server_id == 7  # a plain [mysqld] later in file order still wins, as in mysqld
    assert (tab1.client.socket, tab1.client.user) == (Path("/run/mysqld/tab1.sock"), "mysql")

    tab2 = read_mycnf(path, ".tab2")
    assert (tab2.datadir, tab2.socket, tab2.port) == (
        Path("/srv/tab2/data"),
        Path("/run/mysqld/tab2.sock"),
        3318,
    )
    assert tab2.pid_file == Path("/run/mysqld/mysqld.pid")  # from [mysqld]: the instance must set its own
    assert tab2.log_bin == Path("/srv/tab2/data/mysqld-bin")  # bare log-bin in an included [server.tab2]
    assert tab2.client.port == 3318  # [client-server.tab2] is a client group too
    assert read_mycnf(path, ".TAB1").datadir == Path("/srv/tab1/data")  # names compare case-insensitively
    assert read_mycnf(path, ".tab3").datadir == Path("/var/lib/mysql")  # no such groups: the plain ones


def test_suffix_groups_are_not_read_without_the_suffix(tmp_path: Path) -> None:
    path = cnf(tmp_path, "[mysqld.tab1]\ndatadir=/srv/tab1\n")
    with pytest.raises(ConfigError, match=r"sets no datadir.*set --mycnf_group_suffix=\.<i>"):
        read_mycnf(path)
    assert read_mycnf(path, ".tab1").datadir == Path("/srv/tab1")
    with pytest.raises(ConfigError, match=r"sets no datadir in a server group \(.*\[mysqld\.tab2\]"):
        read_mycnf(path, ".tab2")
