"""Runs the real `tablet-agent` daemon as a subprocess and talks to it over gRPC."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from agent.pb import tabletmanagerdata_pb2, tabletmanagerservice_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class AgentProcess:
    """One daemon process. `start()` waits until Ping answers; `stop()` sends SIGTERM and reaps it."""

    def __init__(
        self,
        mycnf: Path,
        storage_root: Path,
        workdir: Path,
        *,
        alias: str = "zone1-0000000102",
        keyspace: str = "ks",
        shard: str = "0",
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log_path = workdir / f"agent-{self.port}.log"
        self.argv = [
            sys.executable, "-m", "agent.daemon.main",
            "--tablet-path", alias, "--init_keyspace", keyspace, "--init_shard", shard,
            "--grpc_port", str(self.port), "--mycnf_file", str(mycnf),
            "--backup_storage_implementation", "file", "--file_backup_storage_root", str(storage_root),
            "--state_dir", str(workdir / f"state-{alias}"),
            "--log_format", "json",
            *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def _ping(self) -> None:
        with grpc.insecure_channel(self.address) as ch:
            tabletmanagerservice_pb2_grpc.TabletManagerStub(ch).Ping(
                tabletmanagerdata_pb2.PingRequest(payload="up"), timeout=1
            )

    def start(self, timeout: float = 30.0, probe: Callable[[], object] | None = None) -> AgentProcess:
        """Start and wait until `probe` (default: a plaintext Ping) stops raising grpc.RpcError."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, env=self.env, cwd=REPO)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                (probe or self._ping)()
                return self
            except grpc.RpcError:
                time.sleep(0.1)
        raise TimeoutError(f"agent did not answer Ping within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self, channel: grpc.Channel) -> tabletmanagerservice_pb2_grpc.TabletManagerStub:
        return tabletmanagerservice_pb2_grpc.TabletManagerStub(channel)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
