"""systemd's sd_notify protocol over $NOTIFY_SOCKET (a unix datagram socket), and the watchdog pinger."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping


class SystemdNotifier:
    """Sends `READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=...` when run under systemd; no-op otherwise."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # An abstract-namespace socket is spelled with a leading '@'.
        self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval: float | None = int(usec) / 2_000_000 if wanted else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *states: str) -> bool:
        """Send one datagram with the given `KEY=VALUE` lines. Returns False when not under systemd."""
        if not self._address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(self._address)
            sock.sendall("\n".join(states).encode())
        return True

    async def run_watchdog(self) -> None:
        """Ping `WATCHDOG=1` at half the configured WatchdogSec until cancelled."""
        if self.watchdog_interval is None or not self.enabled:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)
