"""Which files make up a stopped tablet, and where a backup's file entries go back on restore.

Vitess's builtin engine names each file by a base directory and a relative name:
`InnoDBData` (innodb_data_home_dir), `InnoDBLog` (innodb_log_group_home_dir), `Data` (datadir) and
`BinLog` (the binlog directory).
"""

from __future__ import annotations

import enum
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.aio.localfiles import write_durably
from agent.errors import DataLoss
from agent.mysql.gtid import MariaDBGTIDSet
from agent.mysql.mycnf import MyCnf

# Files that describe this server instance or its runtime, never data to copy to another one.
EXCLUDED_NAMES = frozenset(
    {
        "auto.cnf",  # MySQL's server_uuid: a copy would clash with the source
        "master.info",
        "relay-log.info",
        "multi-master.info",
        "ibtmp1",
        "mysql.sock",
        "mysqld.sock",
        "lost+found",
        "#innodb_temp",
    }
)
EXCLUDED_SUFFIXES = (".pid", ".sock", ".sock.lock", ".err", ".tmp")
# Besides the numbered files: the index, and MariaDB's `.state` (the binlog GTID state saved at shutdown
# and read at start-up; a stale one would make a restored server believe it has GTIDs it does not have).
BINLOG_SIDE_FILES = frozenset({"index", "state"})
# Schemas every server has (and Vitess's sidecar schema): not user data.
SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys", "_vt"})
INNODB_LOG_RE = re.compile(r"^ib_logfile\d+$")


class FileBase(enum.StrEnum):
    """Which mysqld directory a file's name is relative to (the `Base` of Vitess's builtin FileEntry)."""

    INNODB_DATA = "InnoDBData"
    INNODB_LOG = "InnoDBLog"
    BINLOG = "BinLog"
    DATA = "Data"


@dataclass(frozen=True)
class DataFile:
    base: FileBase
    name: str  # relative to the base directory, '/'-separated
    path: Path
    size: int


def base_directories(cnf: MyCnf) -> dict[FileBase, Path]:
    dirs = {
        FileBase.DATA: cnf.datadir,
        FileBase.INNODB_DATA: cnf.innodb_data_home_dir,
        FileBase.INNODB_LOG: cnf.innodb_log_group_home_dir,
    }
    if cnf.log_bin is not None:
        dirs[FileBase.BINLOG] = cnf.log_bin.parent
    return dirs


def innodb_data_files(cnf: MyCnf) -> list[str]:
    """File names from innodb_data_file_path (`ibdata1:12M;ibdata2:50M:autoextend`)."""
    return [spec.split(":", 1)[0] for spec in cnf.innodb_data_file_path.split(";") if spec.strip()]


class _Exclusions:
    """What the listing leaves out, with every directory resolved once (not once per file)."""

    def __init__(self, cnf: MyCnf, exclude: tuple[Path, ...]) -> None:
        extra = (cnf.pid_file, cnf.log_error, cnf.socket)
        self.paths = {str(p.resolve()) for p in (*exclude, *(p for p in extra if p is not None))}
        # binlog and relay-log directories (resolved) -> the stems of their numbered files
        self.log_stems: dict[str, set[str]] = {}
        for base in (cnf.log_bin, cnf.relay_log):
            if base is not None:
                self.log_stems.setdefault(str(base.parent.resolve()), set()).add(base.name)

    def runtime_file(self, directory: str, name: str, path: str) -> bool:
        """`name` in `directory` (resolved, as is `path`) is the server's runtime state, not data."""
        if name in EXCLUDED_NAMES or name.endswith(EXCLUDED_SUFFIXES) or name.startswith("#sql"):
            return True
        if path in self.paths:
            return True
        for stem in self.log_stems.get(directory, ()):
            suffix = name[len(stem) + 1 :] if name.startswith(stem + ".") else ""
            if suffix in BINLOG_SIDE_FILES or suffix.isdigit():
                return True
        return False


def _regular_files(directory: str, rel: str, skip: _Exclusions) -> Iterator[tuple[str, int]]:
    """(relative name, size) of the regular files under `directory` (resolved), symlinks neither followed
    nor listed, in os.walk's top-down sorted order; one scandir per directory, no resolve per file."""
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    subdirs = []
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if e.name not in EXCLUDED_NAMES and e.path not in skip.paths:
                subdirs.append(e)
        elif e.is_file(follow_symlinks=False) and not skip.runtime_file(directory, e.name, e.path):
            yield rel + e.name, e.stat(follow_symlinks=False).st_size
    for d in subdirs:
        yield from _regular_files(d.path, f"{rel}{d.name}/", skip)


def find_files_to_backup(cnf: MyCnf, exclude: tuple[Path, ...] = ()) -> list[DataFile]:
    """Every file a stopped mysqld needs, largest first (so parallel copies finish together)."""
    files: list[DataFile] = []
    claimed: set[str] = set()  # resolved paths: a file under two base directories is copied once

    def add(base: FileBase, root: Path, path: Path) -> None:
        resolved = str(path.resolve())
        if resolved not in claimed:
            claimed.add(resolved)
            files.append(DataFile(base, path.relative_to(root).as_posix(), path, path.stat().st_size))

    for name in innodb_data_files(cnf):
        path = cnf.innodb_data_home_dir / name
        if path.is_file():
            add(FileBase.INNODB_DATA, cnf.innodb_data_home_dir, path)
    if cnf.innodb_log_group_home_dir.is_dir():
        for entry in sorted(cnf.innodb_log_group_home_dir.iterdir()):
            if INNODB_LOG_RE.match(entry.name) and entry.is_file():
                add(FileBase.INNODB_LOG, cnf.innodb_log_group_home_dir, entry)

    datadir = str(cnf.datadir.resolve())
    for rel, size in _regular_files(datadir, "", _Exclusions(cnf, exclude)):
        if f"{datadir}/{rel}" not in claimed:
            files.append(DataFile(FileBase.DATA, rel, cnf.datadir / rel, size))
    files.sort(key=lambda f: f.size, reverse=True)
    return files


def restore_path(dirs: Mapping[FileBase, Path], base: str, parent_path: str, name: str) -> Path:
    """Where a file entry goes. Refuses anything that would land outside its base directory."""
    try:
        root = dirs[FileBase(base)]
    except (ValueError, KeyError):
        raise DataLoss(f"backup file entry has an unknown or unusable base {base!r}") from None
    rel = PurePosixPath(parent_path) / name if parent_path else PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\0" in str(rel):
        raise DataLoss(f"backup file entry {str(rel)!r} escapes its directory: refusing to restore it")
    dest = root / rel
    # A symlink inside the target must not redirect the write elsewhere.
    real_root = root.resolve()
    if not dest.parent.resolve().is_relative_to(real_root):
        raise DataLoss(f"backup file entry {str(rel)!r} resolves outside {root}: refusing to restore it")
    return dest


def clear_directory(path: Path, keep: tuple[Path, ...] = ()) -> None:
    """Remove everything inside `path` (not `path` itself), except `keep` entries."""
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o750, exist_ok=True)
        return
    kept = {p.resolve() for p in keep}
    for entry in path.iterdir():
        if entry.resolve() in kept:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def clear_binlogs(cnf: MyCnf) -> None:
    """Remove the binlog and relay-log files, indexes and GTID state (their directories may be shared)."""
    for base in (cnf.log_bin, cnf.relay_log):
        if base is None or not base.parent.is_dir():
            continue
        stem = base.name
        for entry in base.parent.iterdir():
            suffix = entry.name[len(stem) + 1 :] if entry.name.startswith(stem + ".") else ""
            if suffix in BINLOG_SIDE_FILES or suffix.isdigit():
                entry.unlink()


def write_binlog_state(directory: Path, log_bin_name: str, gtids: MariaDBGTIDSet) -> None:
    """Give a cleared MariaDB its binlog GTID state before it starts: `<log_bin>.state` in the binlog
    `directory`, one GTID per line, is what the server reads at start-up when it has no binlog (the same
    as `SET GLOBAL gtid_binlog_state` afterwards, which waits up to a second for the first binlog
    checkpoint)."""
    write_durably(directory / f"{log_bin_name}.state", "".join(f"{gtid}\n" for gtid in gtids).encode())


def user_schemas_on_disk(datadir: Path) -> list[str]:
    """Database directories of a stopped server's datadir that are not system schemas."""
    if not datadir.is_dir():
        return []
    return sorted(
        d.name
        for d in datadir.iterdir()
        if d.is_dir()
        and not d.name.startswith(("#", "."))
        and d.name not in SYSTEM_SCHEMAS
        and d.name != "lost+found"
    )
