import asyncio
import os
import socket
from pathlib import Path

from agent.daemon.sdnotify import SystemdNotifier


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    return sock


def test_notify_sends_datagrams_to_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with _listener(path) as sock:
        n = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
        assert n.notify("READY=1", "STATUS=serving")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
        assert n.notify("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_socket_address() -> None:
    name = f"tablet-agent-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    with sock:
        assert SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_without_systemd_nothing_happens() -> None:
    n = SystemdNotifier({})
    assert not n.enabled
    assert not n.notify("READY=1")
    assert n.watchdog_interval is None


async def test_watchdog_pings_at_half_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "wd.sock"
    with _listener(path) as sock:
        sock.setblocking(False)
        n = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
        assert n.watchdog_interval == 0.1
        task = asyncio.create_task(n.run_watchdog())
        await asyncio.sleep(0.35)
        task.cancel()
        pings = []
        while True:
            try:
                pings.append(sock.recv(100))
            except BlockingIOError:
                break
        assert pings.count(b"WATCHDOG=1") >= 3


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = SystemdNotifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None
