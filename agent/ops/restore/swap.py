"""Staging directories for a staged restore and the swap that puts them in place (and back).

Each directory mysqld keeps data in (datadir; InnoDB data, log and undo homes where separate) gets a
staging directory on the same filesystem: beside it (`.<name>.tablet-agent-staged-<op>`), or inside it
when it is a mount point. The restore fills the staging directories while mysqld serves. The swap moves
the live directory's entries aside into `...-previous-<op>` and the staged entries in, one rename each,
so a datadir that is a mount point works too and the directory keeps its owner and mode. A binlog or
relay-log directory of its own (often shared with other files) only has its binlog files moved.

Every move is a set of renames from one directory to another, repeated safely after a crash: the
restore journal says which phase was under way. All functions block: call them in threads.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import FailedPrecondition
from agent.mysql.mycnf import MyCnf
from agent.statedir.restore_journal import SwapTargetRecord
from engines.base import RestoreTargets

PREFIX = ".tablet-agent-"
ALWAYS_KEPT = ("lost+found",)
_NUMBERED = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Staging:
    """The swap targets of one restore and the directories its engine fills."""

    targets: tuple[SwapTargetRecord, ...]
    restore_targets: RestoreTargets
    work_dir: Path  # scratch space on the datadir's filesystem


def _roots(cnf: MyCnf) -> list[Path]:
    """The directories whose every entry belongs to mysqld, outermost only."""
    dirs = {cnf.datadir, cnf.innodb_data_home_dir, cnf.innodb_log_group_home_dir, cnf.innodb_undo_directory}
    if Path("/") in dirs:
        raise FailedPrecondition(
            f"{cnf.path} sets an empty innodb_data_home_dir (data files at absolute paths): a staged restore "
            "cannot stage them; restore in place (--restore_in_place)"
        )
    ordered = sorted(dirs, key=lambda p: len(p.parts))
    roots: list[Path] = []
    for d in ordered:
        if not any(d.is_relative_to(r) for r in roots):
            roots.append(d)
    return roots


def _is_mount_point(path: Path) -> bool:
    try:
        return path.stat().st_dev != path.parent.stat().st_dev or os.path.ismount(path)
    except FileNotFoundError:
        return False


def _kept_names(root: Path, cnf: MyCnf, state_dir: Path) -> tuple[str, ...]:
    """Entries of `root` that are not mysqld's data: the agent's state, runtime files."""
    kept = set(ALWAYS_KEPT)
    for path in (state_dir, cnf.pid_file, cnf.socket, cnf.log_error):
        if path is not None and path.is_relative_to(root) and path != root:
            kept.add(path.relative_to(root).parts[0])
    if cnf.socket is not None:
        kept.add(cnf.socket.name + ".lock")
    return tuple(sorted(kept))


def _beside_or_inside(root: Path, suffix: str) -> Path:
    """`<parent>/.<name>.tablet-agent-<suffix>` beside `root`, or inside it when it is a mount point (a
    sibling would be on another filesystem)."""
    if _is_mount_point(root):
        return root / f"{PREFIX}{suffix}"
    return root.parent / f".{root.name}{PREFIX}{suffix}"


def plan(cnf: MyCnf, state_dir: Path, operation_id: str) -> Staging:
    """Where this restore stages each directory (nothing is created yet)."""
    staged_name, previous_name = f"staged-{operation_id}", f"previous-{operation_id}"
    targets: list[SwapTargetRecord] = []
    staged_of: dict[Path, Path] = {}
    roots = _roots(cnf)
    for root in roots:
        staged = _beside_or_inside(root, staged_name)
        targets.append(
            SwapTargetRecord(
                live=root,
                staged=staged,
                previous=_beside_or_inside(root, previous_name),
                stems=None,
                keep=_kept_names(root, cnf, state_dir),
            )
        )
        staged_of[root] = staged
    stems_by_dir: dict[Path, list[str]] = {}
    for base in (cnf.log_bin, cnf.relay_log):
        if base is not None:
            stems_by_dir.setdefault(base.parent, []).append(base.name)
    for directory, stems in sorted(stems_by_dir.items()):
        if any(directory.is_relative_to(r) for r in roots):
            continue  # moves with the directory it is in
        staged = directory / f"{PREFIX}{staged_name}"
        targets.append(
            SwapTargetRecord(
                live=directory,
                staged=staged,
                previous=directory / f"{PREFIX}{previous_name}",
                stems=tuple(stems),
                keep=(),
            )
        )
        staged_of[directory] = staged

    def staged_path(path: Path) -> Path:
        for live, stage in staged_of.items():
            if path.is_relative_to(live):
                return stage / path.relative_to(live)
        raise AssertionError(f"{path} is in no staged directory")

    restore_targets = RestoreTargets(
        datadir=staged_path(cnf.datadir),
        innodb_data_home_dir=staged_path(cnf.innodb_data_home_dir),
        innodb_log_group_home_dir=staged_path(cnf.innodb_log_group_home_dir),
        innodb_undo_directory=staged_path(cnf.innodb_undo_directory),
        binlog_dir=staged_path(cnf.log_bin.parent) if cnf.log_bin is not None else None,
    )
    datadir_root = next(r for r in roots if cnf.datadir.is_relative_to(r))
    work_dir = _beside_or_inside(datadir_root, f"work-{operation_id}")
    return Staging(tuple(targets), restore_targets, work_dir)


def create(staging: Staging) -> None:
    """Fresh, empty staging directories with the owner and mode of the directories they stand for."""
    discard(staging.targets, staging.work_dir)
    for t in staging.targets:
        _mkdir_like(t.staged, t.live)
    r = staging.restore_targets
    for d in (r.datadir, r.innodb_data_home_dir, r.innodb_log_group_home_dir, r.innodb_undo_directory):
        d.mkdir(parents=True, exist_ok=True)
    if r.binlog_dir is not None:
        r.binlog_dir.mkdir(parents=True, exist_ok=True)
    _mkdir_like(staging.work_dir, staging.restore_targets.datadir)


def _mkdir_like(path: Path, like: Path) -> None:
    path.mkdir(mode=0o750)
    if like.exists():
        st = like.stat()
        os.chmod(path, st.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(path, st.st_uid, st.st_gid)


def _ours(name: str, target: SwapTargetRecord) -> bool:
    """Whether `name` in the live directory is data the swap moves."""
    if name.startswith(PREFIX) or (name.startswith(".") and PREFIX in name):
        return False
    if target.stems is None:
        return name not in target.keep
    for stem in target.stems:
        if name.startswith(stem + "."):
            suffix = name[len(stem) + 1 :]
            if suffix in ("index", "state") or _NUMBERED.match(suffix):
                return True
    return False


def _move(src: Path, dst: Path, names: Iterable[str]) -> None:
    dst.mkdir(mode=0o750, exist_ok=True)
    moved = False
    for name in names:
        os.rename(src / name, dst / name)
        moved = True
    if moved:
        _fsync_dir(src)
        _fsync_dir(dst)


def _listing(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def move_aside(targets: Iterable[SwapTargetRecord]) -> None:
    """The live data into the `previous` directories."""
    for t in targets:
        _move(t.live, t.previous, [n for n in _listing(t.live) if _ours(n, t)])


def move_in(targets: Iterable[SwapTargetRecord]) -> None:
    """The staged entries into the live directories (which hold none of theirs now)."""
    for t in targets:
        _move(t.staged, t.live, _listing(t.staged))
        if t.staged.is_dir():
            t.staged.rmdir()


def move_out(targets: Iterable[SwapTargetRecord]) -> None:
    """Undo `move_in` (and whatever mysqld created since): the live data back into `staged`."""
    for t in targets:
        _move(t.live, t.staged, [n for n in _listing(t.live) if _ours(n, t)])


def move_back(targets: Iterable[SwapTargetRecord]) -> None:
    """Undo `move_aside`: the previous data back into the live directories."""
    for t in targets:
        if t.previous.is_dir():
            _move(t.previous, t.live, _listing(t.previous))
            t.previous.rmdir()


def discard(targets: Iterable[SwapTargetRecord], work_dir: Path | None = None) -> None:
    """Remove staging (and work) directories: what a restore left before the swap, or after a rollback."""
    for t in targets:
        shutil.rmtree(t.staged, ignore_errors=True)
    if work_dir is not None:
        shutil.rmtree(work_dir, ignore_errors=True)


def drop_previous(targets: Iterable[SwapTargetRecord]) -> None:
    """Remove the previous data once the restore is committed."""
    for t in targets:
        shutil.rmtree(t.previous, ignore_errors=True)
        shutil.rmtree(t.staged, ignore_errors=True)


def previous_dirs(targets: Iterable[SwapTargetRecord]) -> list[Path]:
    return [t.previous for t in targets if t.previous.is_dir()]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def find_previous(cnf: MyCnf) -> list[Path]:
    """Previous data that committed restores kept (`--keep_previous_datadir`)."""
    found: set[Path] = set()
    for root in _roots(cnf):
        found.update(root.parent.glob(f".{root.name}{PREFIX}previous-*"))
        found.update(root.glob(f"{PREFIX}previous-*"))
    for base in (cnf.log_bin, cnf.relay_log):
        if base is not None:
            found.update(base.parent.glob(f"{PREFIX}previous-*"))
    return sorted(p for p in found if p.is_dir())
