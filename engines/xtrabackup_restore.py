"""Restoring an xtrabackup backup into the directories it is given (staging directories, or the tablet's
emptied ones for an in-place restore).

The stored objects are decompressed and verified (stripes reassembled in order) and piped into
`xbstream -x` (parallel extraction) in the work directory, which is on the datadir's filesystem, so
`--move-back` renames files instead of copying them; `--prepare` applies the redo log in between. The
extracted `xtrabackup_binlog_info` must agree with the MANIFEST's position, which the caller sets as
the GTID state. `--move-back` reads the tablet's option file with the target directories put in place
of the tablet's, and the files get the owner of the tablet's datadir (the mysqld user).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from agent.aio.pipes import grow_pipe, stop_first_on_cancel, write_all
from agent.aio.procs import ExecError, Process, ProcessError, format_argv, run, spawn
from agent.aio.tasks import complete, in_thread
from agent.catalog.manifest import Manifest, StoredObject
from agent.config import AgentConfig
from agent.errors import DataLoss, FailedPrecondition, InvalidArgument
from agent.mysql.gtid import parse_position
from agent.operations import Operation
from agent.pipeline.compression import Codec
from agent.pipeline.encryption import opener_for
from agent.pipeline.load import DecodedStream, unstripe
from agent.pipeline.progress import FileProgress
from engines.base import RestoreContext, RestoreTargets, stored_path
from engines.xtrabackup_layout import Layout, layout_of, object_records
from engines.xtrabackup_tool import (
    ToolOutput,
    child_env,
    extract_argv,
    find_tools,
    fresh_dir,
    line_logger,
    move_back_argv,
    parse_binlog_info,
    prepare_argv,
    split_flags,
)

MOVE_BACK_OPTIONS = "move-back.cnf"


async def restore_backup(ctx: RestoreContext, config: AgentConfig) -> None:
    op, manifest = ctx.op, ctx.manifest
    layout = layout_of(manifest)
    records = object_records(manifest, layout)
    tools = find_tools(config, layout.stream_mode)
    restore_flags = split_flags("--xbstream_restore_flags", config.xbstream_restore_flags)
    prepare_flags = split_flags("--xtrabackup_prepare_flags", config.xtrabackup_prepare_flags)
    work = ctx.work_dir / "xtrabackup"
    options = ctx.work_dir / MOVE_BACK_OPTIONS
    await in_thread(fresh_dir, work)
    try:
        op.set_phase("extracting the backup stream")
        await _extract(
            ctx,
            layout,
            records,
            ctx.codec,
            extract_argv(tools, layout.stream_mode, work, restore_flags, ctx.concurrency),
        )
        await in_thread(check_binlog_info, work, manifest, op)
        op.set_phase("preparing the backup (applying the redo log)")
        io_class = ctx.limits.io_class if ctx.limits is not None else ""
        await _run_tool(op, prepare_argv(tools.xtrabackup, ctx.mycnf.path, work, prepare_flags), io_class)
        op.set_phase("moving the files into place")
        await in_thread(write_move_back_options, options, ctx.mycnf.path, ctx.targets)
        await _run_tool(op, move_back_argv(tools.xtrabackup, options, work), io_class)
    finally:
        await complete(in_thread(shutil.rmtree, work, True))
        await complete(in_thread(options.unlink, True))
    await in_thread(fix_ownership, ctx.targets, ctx.mycnf.datadir)


def write_move_back_options(path: Path, mycnf: Path, targets: RestoreTargets) -> None:
    """The tablet's option file with the target directories in place of the tablet's own."""
    lines = [
        f"!include {mycnf}",
        "[mysqld]",
        f"datadir={targets.datadir}",
        f"innodb_data_home_dir={targets.innodb_data_home_dir}",
        f"innodb_log_group_home_dir={targets.innodb_log_group_home_dir}",
        f"innodb_undo_directory={targets.innodb_undo_directory}",
    ]
    path.write_text("".join(f"{line}\n" for line in lines))


async def _extract(
    ctx: RestoreContext,
    layout: Layout,
    records: dict[str, StoredObject | None],
    codec: Codec,
    argv: list[str],
) -> None:
    op, handle = ctx.op, ctx.handle
    names = layout.object_names
    sizes = await asyncio.gather(*(handle.file_size(n) for n in names))
    total = sum((r.size if (r := records[n]) else s) or 0 for n, s in zip(names, sizes, strict=True))
    op.add_total(total)
    progress = FileProgress(op, "restoring", layout.file_name, total)
    streams = [
        DecodedStream(
            handle.read_file(n),
            codec,
            expected_crc32_hex=r.crc32 if (r := records[n]) else None,
            expected_sha256_hex=r.sha256 if r else None,
            name=stored_path(handle, n),
            opener=opener_for(ctx.cipher, n, stored_path(handle, n)),
            limits=ctx.limits,
        )
        for n in names
    ]
    source: AsyncIterator[bytes] = streams[0] if layout.stripes == 0 else unstripe(streams, layout.block_size)
    output = ToolOutput()
    op.info(f"running {format_argv(argv)}")
    read_end, write_end = os.pipe()
    stdin = [write_end]  # closed by _feed at the end of the stream, else below
    try:
        grow_pipe(write_end)
        async with spawn(
            argv,
            stdin=read_end,
            env=child_env(os.environ),
            on_stderr_line=line_logger(op, output, "xbstream"),
            io_class=ctx.limits.io_class if ctx.limits is not None else "",
        ) as proc:
            os.close(read_end)
            read_end = -1
            await stop_first_on_cancel(proc, _feed(proc, source, stdin, progress))
        # xbstream/mbstream skip entries named outside the target ("invalid filename") and still exit 0.
        if output.refused_names:
            raise DataLoss(
                f"backup stream names files outside the restore directory ({', '.join(output.refused_names[:3])}): "
                "refusing a forged or corrupt backup"
            )
    except ExecError as e:
        raise FailedPrecondition(f"unable to start restore: {e}") from None
    finally:
        for fd in (read_end, stdin[0]):
            if fd >= 0:
                os.close(fd)
        for stream in streams:
            await stream.aclose()


async def _feed(
    proc: Process, source: AsyncIterator[bytes], stdin: list[int], progress: FileProgress
) -> None:
    """Write the decoded stream into the tool's stdin (`stdin[0]`, closed and set to -1 at the end) from
    threads: the event loop only moves the decoded chunks along."""
    broken = False
    try:
        async for chunk in source:
            progress(len(chunk))
            if not broken:
                broken = not await in_thread(write_all, stdin[0], chunk)
            # after a broken pipe, keep reading: a hash mismatch explains a broken stream best
    finally:
        os.close(stdin[0])
        stdin[0] = -1
    if broken:
        await proc.wait()  # the tool's own error, if it failed
        raise proc.error("stopped reading its input before the end of the stream")


async def _run_tool(op: Operation, argv: list[str], io_class: str) -> None:
    """Run `--prepare` or `--move-back` to the end; it must exit 0 and say it completed."""
    output = ToolOutput()
    op.info(f"running {format_argv(argv)}")
    try:
        result = await run(
            argv,
            env=child_env(os.environ),
            on_stderr_line=line_logger(op, output, "xtrabackup"),
            io_class=io_class,
        )
    except ExecError as e:
        raise FailedPrecondition(f"unable to start restore: {e}") from None
    except ProcessError as e:
        raise output.failure(e) from None
    output.check_completed(result.argv, result.stderr_tail)


def check_binlog_info(work: Path, manifest: Manifest, op: Operation) -> None:
    """The extracted backup's own position must be the MANIFEST's: the GTID state is set from it."""
    path = work / "xtrabackup_binlog_info"
    if not path.is_file() or not manifest.position:
        return
    binlog, offset, gtids = parse_binlog_info(path.read_text(errors="replace"))
    op.info(f"the backup's xtrabackup_binlog_info: {binlog}:{offset} {gtids}")
    if not gtids:
        return
    try:
        want = parse_position(manifest.position)
        got = parse_position(gtids, default_flavor=want.flavor)
    except InvalidArgument as e:
        op.warning(f"cannot compare xtrabackup_binlog_info with the MANIFEST's position: {e}")
        return
    if str(got) != str(want):
        raise DataLoss(
            f"backup {manifest.backup_name}: its xtrabackup_binlog_info says position {got} but its MANIFEST "
            f"says {want}; refusing to restore a backup whose position is uncertain"
        )


def fix_ownership(targets: RestoreTargets, owner_of: Path) -> None:
    """Give the restored files the owner of `owner_of` (the tablet's datadir: the mysqld user)."""
    if os.geteuid() != 0:
        return  # the files already belong to the agent's user, which then is the mysqld user
    st = owner_of.stat()
    skip = {p.resolve() for p in targets.keep}
    roots = {targets.datadir, targets.innodb_data_home_dir, targets.innodb_log_group_home_dir}
    roots.add(targets.innodb_undo_directory)
    for root in roots:
        if root == Path("/") or not root.is_dir():
            continue  # "/": innodb_data_home_dir left empty, data files at absolute paths
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if Path(dirpath, d).resolve() not in skip]
            for name in [".", *dirnames, *filenames]:
                path = os.path.join(dirpath, name)
                entry = os.lstat(path)
                if (entry.st_uid, entry.st_gid) != (st.st_uid, st.st_gid):
                    os.lchown(path, st.st_uid, st.st_gid)
