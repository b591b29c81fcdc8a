"""Decode topology records with Vitess's own topodata messages, compiled from shared/vitess-proto into a
temporary directory. They run in a child Python: Vitess's `topodata` package would clash with ours
(same proto package) in one descriptor pool."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

VITESS_PROTO = Path(__file__).resolve().parents[2] / "shared" / "vitess-proto"
CANDIDATES = (VITESS_PROTO, Path("/work/shared/vitess-proto"))

_DECODER = r"""
import base64, json, sys
from google.protobuf import json_format, unknown_fields
import topodata_pb2
out = {}
for key, (kind, data) in json.loads(sys.stdin.read()).items():
    raw = base64.b64decode(data)
    msg = getattr(topodata_pb2, kind)()
    msg.ParseFromString(raw)
    out[key] = {
        "message": json_format.MessageToDict(msg, preserving_proto_field_name=True),
        "unknown_fields": len(unknown_fields.UnknownFieldSet(msg)),
    }
print(json.dumps(out))
"""


def vitess_proto_dir() -> Path | None:
    return next((p for p in CANDIDATES if (p / "topodata.proto").is_file()), None)


def compile_vitess_topodata(out: Path) -> Path:
    source = vitess_proto_dir()
    assert source is not None, "shared/vitess-proto is missing"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{source}", f"--python_out={out}",
         "topodata.proto", "vttime.proto", "vtorcdata.proto"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def decode(compiled: Path, records: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
    """{key: (message name, bytes)} -> {key: {"message": dict, "unknown_fields": n}} with Vitess's messages."""
    payload = json.dumps({k: (kind, base64.b64encode(data).decode()) for k, (kind, data) in records.items()})
    done = subprocess.run(
        [sys.executable, "-c", _DECODER], input=payload, capture_output=True, text=True, cwd=compiled, check=False,
        env={"PYTHONPATH": str(compiled), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result
