"""A real etcd for tests: Debian's etcd-server on 127.0.0.1 free ports, own data directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.sandbox import free_port

MISSING_ETCD = "etcd is not installed: `apt-get install etcd-server etcd-client` to run the topology tests"


def find_etcd() -> str | None:
    return shutil.which("etcd")


class EtcdServer:
    def __init__(self, root: Path) -> None:
        program = find_etcd()
        assert program is not None, MISSING_ETCD
        self.port = free_port()
        while (peer := free_port()) == self.port:
            pass
        self.address = f"127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self._log = (root / "etcd.log").open("wb")
        self.process = subprocess.Popen(
            [
                program, "--name", "test", "--data-dir", str(root / "data"),
                "--listen-client-urls", f"http://{self.address}", "--advertise-client-urls", f"http://{self.address}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"test=http://127.0.0.1:{peer}",
            ],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("ETCD")},
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{self.address}/health", timeout=1).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not start: see {root / 'etcd.log'}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(10)
        self._log.close()
