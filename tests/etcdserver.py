"""A real etcd for tests: Debian's etcd-server on 127.0.0.1 free ports, own data directory; optionally
TLS (with client certificates required) from test certificates."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.sandbox import free_port

MISSING_ETCD = "etcd is not installed: `apt-get install etcd-server etcd-client` to run the topology tests"


def find_etcd() -> str | None:
    return shutil.which("etcd")


@dataclass(frozen=True)
class EtcdTls:
    """Server certificate and key, the CA that signs clients (required when set) and one client's pair."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


class EtcdServer:
    def __init__(self, root: Path, tls: EtcdTls | None = None, extra: Sequence[str] = ()) -> None:
        program = find_etcd()
        assert program is not None, MISSING_ETCD
        self.port = free_port()
        while (peer := free_port()) == self.port:
            pass
        self.address = f"127.0.0.1:{self.port}"
        self.tls = tls
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{self.address}"
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.argv = [
            program, "--name", "test", "--data-dir", str(root / "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer}",
        ]  # fmt: skip
        if tls is not None:
            self.argv += ["--cert-file", str(tls.server_cert), "--key-file", str(tls.server_key),
                          "--client-cert-auth", "--trusted-ca-file", str(tls.ca)]  # fmt: skip
        self.argv += extra
        self._log = (root / "etcd.log").open("ab")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("ETCD")},
        )  # fmt: skip
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.check_hostname = False
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1, context=context).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"etcd did not start: see {self.root / 'etcd.log'}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)

    def close(self) -> None:
        self.stop()
        self._log.close()
