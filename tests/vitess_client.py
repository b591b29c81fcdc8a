"""Call the agent as Vitess does: stubs compiled from shared/vitess-proto (Vitess's own .proto files) into a
temporary directory, run in a child Python (Vitess's packages share names with ours, so both cannot live in
one descriptor pool). Each answer comes back as every field of Vitess's message, defaults included, with
the count of fields Vitess's message does not know."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.vitess_topo import vitess_proto_dir

_CALLER = r"""
import json, os, sys, time
import grpc
from google.protobuf import unknown_fields
import tabletmanagerdata_pb2 as tmd
import tabletmanagerservice_pb2_grpc as tms

def fields(msg):
    out = {}
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        if f.message_type is not None and not f.is_repeated:
            out[f.name] = fields(value) if msg.HasField(f.name) else None
        elif f.enum_type is not None:
            out[f.name] = f.enum_type.values_by_number[value].name
        else:
            out[f.name] = value
    return out

def unknown(msg):
    n = len(unknown_fields.UnknownFieldSet(msg))
    for f, value in msg.ListFields():
        if f.message_type is not None and not f.is_repeated:
            n += unknown(value)
    return n

address, calls = sys.argv[1], json.loads(sys.stdin.read())
stop_file = sys.argv[2] if len(sys.argv) > 2 else None  # poll: repeat the calls until this file exists
results = []
with grpc.insecure_channel(address) as channel:
    stub = tms.TabletManagerStub(channel)
    while True:
        for method, request in calls:
            req = getattr(tmd, method + "Request")(**request)
            try:
                resp = getattr(stub, method)(req, timeout=30)
            except grpc.RpcError as e:
                results.append({"code": e.code().name, "details": e.details()})
                continue
            results.append({"code": "OK", "response": fields(resp), "unknown_fields": unknown(resp)})
        if stop_file is None or os.path.exists(stop_file):
            break
        time.sleep(0.02)
print(json.dumps(results))
"""


@dataclass(frozen=True)
class Answer:
    code: str  # gRPC status code name
    details: str = ""
    response: dict[str, Any] | None = None  # every field of Vitess's response message
    unknown_fields: int = 0


def compile_vitess_stubs(out: Path) -> Path:
    """Python messages and gRPC stubs for all of Vitess's protos (grpcio-tools brings protoc)."""
    source = vitess_proto_dir()
    assert source is not None, "shared/vitess-proto is missing"
    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(p.name for p in source.glob("*.proto"))
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{source}", f"--python_out={out}",
         f"--grpc_python_out={out}", *protos],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def call(stubs: Path, address: str, *calls: tuple[str, dict[str, Any]]) -> list[Answer]:
    """Run `(method, request fields)` calls in order on the agent at `address` with Vitess's stubs."""
    done = subprocess.run(
        [sys.executable, "-c", _CALLER, address], input=json.dumps(calls), capture_output=True, text=True,
        cwd=stubs, check=False, timeout=120, env={"PYTHONPATH": str(stubs), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [Answer(**a) for a in json.loads(done.stdout)]


class Poller:
    """Repeats `calls` every 20 ms in a child process until `stop()`; `stop()` returns every answer."""

    def __init__(
        self, stubs: Path, address: str, stop_file: Path, *calls: tuple[str, dict[str, Any]]
    ) -> None:
        self._stop_file = stop_file
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CALLER, address, str(stop_file)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=stubs,
            env={"PYTHONPATH": str(stubs), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(calls))
        self._proc.stdin.close()
        self._proc.stdin = None  # sent: communicate() must not flush it again

    def stop(self, timeout: float = 60) -> list[Answer]:
        self._stop_file.touch()
        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise
        assert self._proc.returncode == 0, err
        return [Answer(**a) for a in json.loads(out)]
