from pathlib import Path

from agent.mysql.master_info import read_master_info

REAL = (
    "33\nbinlog.000001\n3091\n127.0.0.1\nrepl\nrepl-secret\n45609\n1\n0\n"
    + "\n" * 24
    + ("using_gtid=2\ndo_domain_ids=0\nignore_domain_ids=0\nEND_MARKER\n")
)


def test_reads_the_source_of_a_real_master_info(tmp_path: Path) -> None:
    path = tmp_path / "master.info"
    path.write_text(REAL)
    src = read_master_info(path)
    assert src is not None
    assert (src.host, src.port, src.user, src.password, src.connect_retry, src.use_gtid) == (
        "127.0.0.1", 45609, "repl", "repl-secret", 1, "slave_pos",
    )  # fmt: skip
    assert "repl-secret" not in repr(src)


def test_missing_or_garbled_files_give_none(tmp_path: Path) -> None:
    assert read_master_info(tmp_path / "none") is None
    bad = tmp_path / "bad"
    bad.write_text("33\nx\n")
    assert read_master_info(bad) is None
    bad.write_text("33\nx\n4\nhost\nu\np\nnot-a-port\n1\n")
    assert read_master_info(bad) is None
