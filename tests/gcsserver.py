"""A local Google Cloud Storage for tests: gcp-storage-emulator (PyPI) on 127.0.0.1, one per test session.

What the emulator lacks against the real service (found by reading its source and by the tests):
requests are served one at a time (a plain `http.server.HTTPServer`, HTTP/1.0) behind a listen backlog
of 5, so a burst of concurrent connections (the agent stats all objects of a backup at once) waits for
TCP's one-second SYN retries; it is started here with a backlog of 512 instead. A resumable session
cannot be cancelled (DELETE on the session URI answers 501, so an abandoned session stays in its memory,
never visible as an object); a status query on a session with no bytes answers `Range: bytes=0-0`
instead of no Range header; each chunk rewrites the whole upload so far (quadratic in the object size).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.sandbox import free_port

_LAUNCH = """
import sys, http.server
http.server.HTTPServer.request_queue_size = 512
from gcp_storage_emulator.__main__ import main
main(sys.argv[1:])
"""


class GcsServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        args = ["-d", str(workdir / "data"), "start", "--host", "127.0.0.1", "--port", str(self.port),
                "--in-memory", "--quiet"]  # fmt: skip
        self._log = (workdir / "gcs-emulator.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"},
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1).read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gcp-storage-emulator did not start: see {workdir}") from None
                time.sleep(0.1)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.endpoint + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def create_bucket(self, name: str) -> None:
        self._call("POST", "/storage/v1/b?project=test", {"name": name})

    def object_names(self, bucket: str, prefix: str = "") -> list[str]:
        query = urllib.parse.urlencode({"prefix": prefix}) if prefix else ""
        listing = self._call("GET", f"/storage/v1/b/{bucket}/o?{query}")
        return sorted(item["name"] for item in listing.get("items") or [])

    def read(self, bucket: str, name: str) -> bytes:
        path = f"/download/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"
        with urllib.request.urlopen(self.endpoint + path, timeout=60) as resp:
            data: bytes = resp.read()
        return data

    def write(self, bucket: str, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        req = urllib.request.Request(
            f"{self.endpoint}/upload/storage/v1/b/{bucket}/o?{query}", data=data, method="POST"
        )
        urllib.request.urlopen(req, timeout=60).read()

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(10)
        self._log.close()
