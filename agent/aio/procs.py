"""Child processes: `spawn` and `run`.

Every subprocess of the daemon goes through `spawn`: the child runs in its own process group, its
stderr is drained line by line into a callback (the operation log) with a bounded tail kept for the
error, and when the caller fails or is cancelled the whole group gets SIGTERM, then SIGKILL after a
grace period, and is always reaped, even if the caller is cancelled again meanwhile. A non-zero exit
raises `ProcessError` carrying the argv (secrets redacted), the exit status and the stderr tail.
Secrets never go in argv: pass them through `env` or option files.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import platform
import re
import shlex
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from agent.aio.pipes import grow_transport_pipe
from agent.aio.tasks import complete, run_concurrently
from agent.errors import AgentError

T = TypeVar("T")

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
STREAM_LIMIT = 4 << 20  # StreamReader buffer limit: the pipeline reads 1-4 MiB chunks from stdout
KILL_GRACE = 5.0
TAIL_LINES = 20  # a failed child's last stderr lines go with its error
MAX_LINE = 8192
MAX_RUN_OUTPUT = 64 << 20

_SECRET = r"[A-Za-z0-9_-]*(?:password|passwd|secret|token|credential)[A-Za-z0-9_-]*"
_SECRET_WITH_VALUE = re.compile(rf"^(--?{_SECRET})=.*$", re.IGNORECASE)
_SECRET_FLAG = re.compile(rf"^--?{_SECRET}$", re.IGNORECASE)

_log = logging.getLogger(__name__)


def redact_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """argv with secret values hidden: `--password=x` -> `--password=****`, `-px` -> `-p****`."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("****")
            hide_next = False
        elif m := _SECRET_WITH_VALUE.match(arg):
            out.append(f"{m.group(1)}=****")
        elif _SECRET_FLAG.match(arg):
            out.append(arg)
            hide_next = True
        elif arg.startswith("-p") and len(arg) > 2:
            out.append("-p****")
        else:
            out.append(arg)
    return tuple(out)


def format_argv(argv: Sequence[str]) -> str:
    """A shell-quoted, redacted rendering of argv for messages."""
    return shlex.join(redact_argv(argv))


class ProcessError(AgentError):
    """A child exited non-zero (or misbehaved). Carries the redacted argv, exit status and stderr tail."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stderr_tail: Sequence[str],
        reason: str | None = None,
        code: grpc.StatusCode | None = None,
    ) -> None:
        self.argv = redact_argv(argv)
        self.returncode = returncode
        self.stderr_tail = tuple(stderr_tail)
        if reason is None:
            reason = describe_exit(returncode)
        message = f"{shlex.join(self.argv)}: {reason}"
        if self.stderr_tail:
            message += "; stderr:\n" + "\n".join(self.stderr_tail)
        super().__init__(message, code)


class ExecError(AgentError):
    """The program could not be started (not installed, not executable). Message follows Go's exec."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, program: str, reason: str) -> None:
        self.program = program
        super().__init__(reason)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "did not exit"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _exec_error(argv: Sequence[str], cwd: Path | None, e: OSError) -> AgentError:
    program = argv[0]
    if cwd is not None and e.filename is not None and str(e.filename) == str(cwd):
        return ExecError(program, f"cannot start {program}: working directory {cwd}: {e.strerror}")
    reason = "executable file not found in $PATH" if isinstance(e, FileNotFoundError) else e.strerror
    if "/" in program:
        return ExecError(program, f"fork/exec {program}: {(e.strerror or str(e)).lower()}")
    return ExecError(program, f'exec: "{program}": {reason}')


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The stream protocol plus a future resolved when the child exits, whatever its pipes do."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class Process:
    """A running child in its own process group; obtained from `spawn`."""

    def __init__(
        self,
        transport: asyncio.SubprocessTransport,
        protocol: _Protocol,
        argv: Sequence[str],
        *,
        on_stderr_line: Callable[[str], None] | None,
        tail_lines: int,
        kill_grace: float,
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._pid = transport.get_pid()
        self._argv = redact_argv(argv)
        self._on_line = on_stderr_line
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._grace = kill_grace
        self._shutdown_task: asyncio.Task[None] | None = None
        assert protocol.stderr is not None
        self._stderr_task = asyncio.create_task(self._drain_stderr(protocol.stderr))

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def argv(self) -> tuple[str, ...]:
        """The redacted argv."""
        return self._argv

    @property
    def returncode(self) -> int | None:
        return self._transport.get_returncode()

    @property
    def stderr_tail(self) -> tuple[str, ...]:
        return tuple(self._tail)

    @property
    def stdout(self) -> asyncio.StreamReader:
        if self._protocol.stdout is None:
            raise RuntimeError(f"{shlex.join(self._argv)}: stdout is not a pipe")
        return self._protocol.stdout

    def error(self, reason: str | None = None) -> ProcessError:
        return ProcessError(self._argv, self.returncode, self.stderr_tail, reason)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write to the child's stdin; if the child stopped reading, raise its `ProcessError`."""
        stdin = self._protocol.stdin
        if stdin is None:
            raise RuntimeError(f"{shlex.join(self._argv)}: stdin is not a pipe")
        try:
            if stdin.is_closing():  # uvloop closes the pipe when the child exits
                raise BrokenPipeError
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            done, _ = await asyncio.wait([self._protocol.exited], timeout=self._grace)
            if not done:
                raise self.error("closed its input while still running") from None
            await self._finish_stderr()
            reason = None if self.returncode != 0 else "exited before reading all its input"
            raise self.error(reason) from None

    async def close_stdin(self) -> None:
        """Signal end of input (no-op when stdin is not a pipe or already closed)."""
        stdin = self._protocol.stdin
        if stdin is None or stdin.is_closing():
            return
        stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await stdin.wait_closed()

    async def wait(self, *, check: bool = True) -> int:
        """Wait for exit and for stderr to be drained; raise `ProcessError` on non-zero if `check`.

        Does not wait for stdout: read it to EOF first if you need all of it.
        """
        await asyncio.shield(self._protocol.exited)
        await self._finish_stderr()
        rc = self.returncode
        assert rc is not None
        if check and rc != 0:
            raise self.error()
        return rc

    async def shutdown(self) -> None:
        """SIGTERM the group, SIGKILL after the grace period, reap. Cancellation cannot skip the reap."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.create_task(self._terminate())
        try:
            await complete(self._shutdown_task)
        except Exception as e:
            _log.error("cleaning up %s failed: %s", shlex.join(self._argv), e)

    def close(self) -> None:
        """Release the pipes (the child has exited or was killed)."""
        self._transport.close()

    async def _terminate(self) -> None:
        exited = self._protocol.exited
        if not exited.done():
            self._signal_group(signal.SIGTERM)
            done, _ = await asyncio.wait([exited], timeout=self._grace)
            if not done:
                self._signal_group(signal.SIGKILL)
                await asyncio.wait([exited])
        self._signal_group(signal.SIGKILL)  # whatever the leader left behind in its group
        self.close()
        await self._finish_stderr(grace=1.0)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, sig)

    async def _finish_stderr(self, grace: float | None = None) -> None:
        """Wait for stderr EOF; a grandchild holding the pipe open gets killed with the group."""
        limit = self._grace if grace is None else grace
        done, _ = await asyncio.wait([self._stderr_task], timeout=limit)
        if not done:
            self._signal_group(signal.SIGKILL)
            done, _ = await asyncio.wait([self._stderr_task], timeout=1.0)
        if not done:
            self._stderr_task.cancel()
            await asyncio.wait([self._stderr_task])

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        pending = b""
        while data := await stream.read(65536):
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._emit(line)
            if len(pending) > MAX_LINE:
                self._emit(pending)
                pending = b""
        if pending:
            self._emit(pending)

    def _emit(self, raw: bytes) -> None:
        line = raw[:MAX_LINE].decode("utf-8", errors="replace").rstrip("\r")
        self._tail.append(line)
        if self._on_line is not None:
            try:
                self._on_line(line)
            except Exception:
                _log.exception("stderr callback of %s failed", shlex.join(self._argv))


@contextlib.asynccontextmanager
async def spawn(
    argv: Sequence[str],
    *,
    stdin: int = DEVNULL,
    stdout: int = DEVNULL,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_stderr_line: Callable[[str], None] | None = None,
    check: bool = True,
    kill_grace: float = KILL_GRACE,
    tail_lines: int = TAIL_LINES,
    limit: int = STREAM_LIMIT,
    pass_fds: Sequence[int] = (),
    niceness: int = 0,
    io_class: str = "",
) -> AsyncIterator[Process]:
    """Run argv for the duration of the block.

    `niceness` > 0 lowers the child's CPU priority right after it starts (before it starts its
    threads, in practice), for tools that must not starve the database they work on; `io_class`
    (`idle`, `best-effort[:0-7]`, see `io_priority`) sets its I/O scheduling class the same way.

    stdin/stdout: `PIPE`, `DEVNULL` or an open fd. On normal exit stdin is closed and the child
    awaited (`ProcessError` on non-zero when `check`); on error or cancellation the group is
    terminated and reaped before the exception propagates. `env` replaces the environment.
    """
    if not argv:
        raise ValueError("empty argv")
    loop = asyncio.get_running_loop()
    starting = asyncio.ensure_future(
        loop.subprocess_exec(
            lambda: _Protocol(limit, loop),
            *argv,
            stdin=stdin,
            stdout=stdout,
            stderr=PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    )

    def wrap(transport: asyncio.SubprocessTransport, protocol: _Protocol) -> Process:
        return Process(
            transport,
            protocol,
            argv,
            on_stderr_line=on_stderr_line,
            tail_lines=tail_lines,
            kill_grace=kill_grace,
        )

    try:
        # Not interruptible midway: asyncio would kill only the leader, leaving its children behind.
        transport, protocol = await complete(starting)
    except OSError as e:
        raise _exec_error(argv, cwd, e) from None
    except asyncio.CancelledError:
        if starting.done() and not starting.cancelled() and starting.exception() is None:
            await wrap(*starting.result()).shutdown()
        raise
    for fd in (0, 1):
        grow_transport_pipe(transport.get_pipe_transport(fd))
    if niceness:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, transport.get_pid(), niceness)
    if io_class:
        set_io_priority(transport.get_pid(), io_class)
    proc = wrap(transport, protocol)
    ok = False
    try:
        yield proc
        await proc.close_stdin()
        await proc.wait(check=check)
        ok = True
    finally:
        if ok:
            proc.close()
        else:
            await proc.shutdown()


IO_CLASSES = {"realtime": 1, "best-effort": 2, "idle": 3}
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "ppc64le": 273, "s390x": 282}  # syscall numbers
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_SHIFT = 13


def io_priority(spec: str) -> int | None:
    """An I/O class spec as the kernel's ioprio value: `idle`, `best-effort[:0-7]`, `realtime[:0-7]`; `none`
    or empty: None (inherit). ValueError for anything else."""
    name, _, level = spec.strip().lower().partition(":")
    if name in ("", "none"):
        return None
    if name not in IO_CLASSES or (level and not (level.isdigit() and 0 <= int(level) <= 7)):
        raise ValueError(f"invalid I/O class {spec!r}: use idle, best-effort[:0-7], realtime[:0-7] or none")
    return IO_CLASSES[name] << _IOPRIO_CLASS_SHIFT | (int(level) if level and name != "idle" else 0)


def set_io_priority(pid: int, spec: str) -> bool:
    """ioprio_set(2) for a process (`ionice -c` without the program): whether it was applied. The class
    matters with the BFQ (or CFQ) I/O scheduler; others ignore it."""
    value = io_priority(spec)
    number = _IOPRIO_SET.get(platform.machine())
    if value is None or number is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, _IOPRIO_WHO_PROCESS, pid, value) != 0:
        _log.debug("ioprio_set(%d, %s) failed: %s", pid, spec, os.strerror(ctypes.get_errno()))
        return False
    return True


@dataclass(frozen=True)
class CompletedProcess:
    argv: tuple[str, ...]  # redacted
    returncode: int
    stdout: bytes
    stderr_tail: tuple[str, ...]


async def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    on_stderr_line: Callable[[str], None] | None = None,
    max_output: int = MAX_RUN_OUTPUT,
    io_class: str = "",
) -> CompletedProcess:
    """Run a short command to completion, capturing stdout (at most `max_output` bytes).

    For a deadline wrap the call in `asyncio.timeout(...)`: the cancellation terminates the group.
    """
    out = bytearray()

    async def feed(p: Process) -> None:
        if input:
            await p.write(input)
        await p.close_stdin()

    async def collect(p: Process) -> None:
        while data := await p.stdout.read(1 << 20):
            out.extend(data)
            if len(out) > max_output:
                raise p.error(f"wrote more than {max_output} bytes to stdout")

    async with spawn(
        argv,
        stdin=PIPE if input else DEVNULL,
        stdout=PIPE,
        env=env,
        cwd=cwd,
        on_stderr_line=on_stderr_line,
        check=check,
        io_class=io_class,
    ) as p:
        await run_concurrently(feed(p), collect(p))
        rc = await p.wait(check=check)
    return CompletedProcess(redact_argv(argv), rc, bytes(out), p.stderr_tail)
