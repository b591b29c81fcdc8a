import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.aio.procs import PIPE, ExecError, ProcessError, redact_argv, run, spawn
from agent.aio.tasks import complete, in_thread, run_concurrently


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def _wait_gone(pid: int, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        await asyncio.sleep(0.02)
    return False


def _pids_in(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


async def _read_pids(path: Path, count: int) -> list[int]:
    for _ in range(200):
        if len(pids := _pids_in(path)) >= count:
            return pids[:count]
        await asyncio.sleep(0.01)
    raise AssertionError("child never wrote its pids")


async def test_run_captures_stdout_and_passes_env() -> None:
    result = await run(
        ["sh", "-c", 'printf "%s" "$GREETING"'], env={"GREETING": "hello", "PATH": os.environ["PATH"]}
    )
    assert result.returncode == 0
    assert result.stdout == b"hello"


async def test_run_feeds_input() -> None:
    result = await run(["cat"], input=b"x" * 300_000)
    assert result.stdout == b"x" * 300_000


async def test_nonzero_exit_raises_with_redacted_argv_status_and_stderr_tail() -> None:
    script = "for i in $(seq 1 50); do echo line$i >&2; done; exit 3"
    with pytest.raises(ProcessError) as info:
        await run(["sh", "-c", script, "sh", "--password=hunter2", "-phunter2"])
    err = info.value
    assert err.returncode == 3
    assert err.stderr_tail == tuple(f"line{i}" for i in range(31, 51))
    assert "hunter2" not in str(err)
    assert "--password=****" in str(err)
    assert "exited with status 3" in str(err)
    assert "line50" in str(err)


async def test_check_false_returns_the_status() -> None:
    result = await run(["sh", "-c", "exit 4"], check=False)
    assert result.returncode == 4


async def test_stderr_lines_reach_the_callback_in_order() -> None:
    lines: list[str] = []
    await run(["sh", "-c", "echo one >&2; printf 'two\\r\\nthree' >&2"], on_stderr_line=lines.append)
    assert lines == ["one", "two", "three"]


async def test_a_failing_callback_does_not_stop_the_drain() -> None:
    def boom(line: str) -> None:
        raise RuntimeError(line)

    result = await run(["sh", "-c", "seq 1 1000 >&2; echo done"], on_stderr_line=boom)
    assert result.stdout == b"done\n"
    assert result.stderr_tail[-1] == "1000"


async def test_missing_program_gives_go_style_message() -> None:
    with pytest.raises(ExecError) as info:
        await run(["xtrabackup-does-not-exist"])
    assert str(info.value) == 'exec: "xtrabackup-does-not-exist": executable file not found in $PATH'
    with pytest.raises(ExecError, match="fork/exec /nonexistent/xtrabackup: no such file or directory"):
        await run(["/nonexistent/xtrabackup"])


def test_redaction() -> None:
    argv = [
        "mysql",
        "--password=s3cret",
        "--xtrabackup-password",
        "s3cret",
        "-ps3cret",
        "--user=root",
        "-h",
        "x",
    ]
    assert redact_argv(argv) == (
        "mysql",
        "--password=****",
        "--xtrabackup-password",
        "****",
        "-p****",
        "--user=root",
        "-h",
        "x",
    )


async def test_cancellation_terminates_the_whole_group_and_reaps(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $$ $! > {pids}; wait"

    async def body() -> None:
        async with spawn(["sh", "-c", script]):
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    leader, child = await _read_pids(pids, 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_gone(leader)
    assert await _wait_gone(child)


async def test_sigterm_ignored_gets_sigkill_after_grace(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"trap '' TERM; sleep 60 & echo $$ $! > {pids}; wait; wait"
    started = time.monotonic()

    async def body() -> None:
        async with spawn(["sh", "-c", script], kill_grace=0.3):
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    leader, child = await _read_pids(pids, 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5
    assert await _wait_gone(leader)
    assert await _wait_gone(child)


async def test_error_in_body_kills_child_and_propagates_unchanged(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    with pytest.raises(KeyError):
        async with spawn(["sh", "-c", f"echo $$ > {pids}; sleep 60"]):
            (pid,) = await _read_pids(pids, 1)
            raise KeyError("boom")
    assert await _wait_gone(pid)


async def test_repeated_cancellation_cannot_skip_the_reap(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"trap '' TERM; echo $$ > {pids}; while :; do sleep 0.05; done"

    async def body() -> None:
        async with spawn(["sh", "-c", script], kill_grace=0.5):
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    (pid,) = await _read_pids(pids, 1)
    task.cancel()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_gone(pid, 0.5)


async def test_grandchild_holding_stderr_does_not_hang_wait(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    started = time.monotonic()
    async with spawn(["sh", "-c", f"sleep 60 & echo $! > {pids}; exit 0"], kill_grace=0.3) as p:
        assert await p.wait() == 0
    assert time.monotonic() - started < 3
    (child,) = await _read_pids(pids, 1)
    assert await _wait_gone(child)


async def test_streaming_through_stdin_and_stdout() -> None:
    data = os.urandom(3 << 20)
    got = bytearray()
    async with spawn(["cat"], stdin=PIPE, stdout=PIPE) as p:

        async def feed() -> None:
            for i in range(0, len(data), 1 << 20):
                await p.write(data[i : i + (1 << 20)])
            await p.close_stdin()

        async def drain() -> None:
            while chunk := await p.stdout.read(4 << 20):
                got.extend(chunk)

        await run_concurrently(feed(), drain())
    assert got == data


async def test_writing_to_a_child_that_died_raises_its_error() -> None:
    with pytest.raises(ProcessError, match="exited with status 7") as info:
        async with spawn(["sh", "-c", "echo bad input >&2; exit 7"], stdin=PIPE) as p:
            for _ in range(100):
                await p.write(b"x" * (1 << 20))
    assert info.value.stderr_tail == ("bad input",)


async def test_run_concurrently_raises_the_original_error_and_cancels_the_rest() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fail() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("first")

    with pytest.raises(ValueError, match="first"):
        await run_concurrently(slow(), fail())
    assert cancelled.is_set()


async def test_run_concurrently_reports_failures_that_happen_together() -> None:
    async def fail(message: str, after: float) -> None:
        try:
            await asyncio.sleep(after)
        finally:
            # a failure in cleanup while being cancelled is a failure too
            if message == "second":
                raise OSError(message)
        raise ValueError(message)

    with pytest.raises(ValueError, match="first") as info:
        await run_concurrently(fail("first", 0.01), fail("second", 60))
    assert info.value.__notes__ == ["also failed meanwhile: OSError: second"]


async def test_in_thread_cancellation_waits_for_the_call() -> None:
    finished = threading.Event()

    def blocking() -> None:
        time.sleep(0.2)
        finished.set()

    task = asyncio.create_task(in_thread(blocking))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


async def test_complete_defers_cancellation_until_done() -> None:
    done = asyncio.Event()

    async def cleanup() -> None:
        await asyncio.sleep(0.1)
        done.set()

    task = asyncio.create_task(complete(cleanup()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done.is_set()


async def test_python_child_sees_no_secret_in_argv() -> None:
    result = await run(
        [sys.executable, "-c", "import os,sys; print(os.environ['MYSQL_PWD'] == 'pw', len(sys.argv))"],
        env={**os.environ, "MYSQL_PWD": "pw"},
    )
    assert result.stdout.split() == [b"True", b"1"]
