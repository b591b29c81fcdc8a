"""An HTTP proxy between the agent and an object store (S3, Azure Blob) that injects faults into object
writes (PutObject, UploadPart, Put Block, Put Block List): 503 answers, dropped connections, or 500 for
good; optionally it also cuts the first answer to each object read short. Everything else passes through."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.sandbox import free_port


class FaultyProxy:
    """`mode`: "flaky" (the first attempt of every 3rd write gets 503, of every 5th a dropped
    connection; retries go through), "down" (every write gets 500), or "pass". With `cut_reads`, the
    first GET of each path sends its headers and half its body, then drops the connection."""

    def __init__(self, upstream: str, mode: str = "flaky", *, cut_reads: bool = False) -> None:
        self.mode = mode
        self.cut_reads = cut_reads
        self.reads: Counter[str] = Counter()
        self.ranges: list[str] = []
        self.upstream = urlsplit(upstream)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.attempts: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self._writes = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._fault(self.command, self.path)
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault:
                    self.send_response(int(fault))
                    payload = f"<Error><Code>{'SlowDown' if fault == '503' else 'InternalError'}</Code></Error>".encode()
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = proxy.upstream.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    asked = self.headers.get("x-ms-range") or self.headers.get("Range")
                    cut = proxy._cut(self.command, self.path, asked, data)
                    self.wfile.write(data[: len(data) // 2] if cut else data)
                    if cut:
                        self.close_connection = True
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _fault(self, method: str, path: str) -> str | None:
        """None to pass, a status code, or "drop"."""
        is_write = method == "PUT" and "/MANIFEST" not in path.split("?", maxsplit=1)[0]
        if not is_write or self.mode == "pass":
            return None
        with self._lock:
            self.attempts[path] += 1
            first = self.attempts[path] == 1
            if first:
                self._writes += 1
            if self.mode == "down":
                fault: str | None = "500"
            elif first and self._writes % 5 == 0:
                fault = "drop"
            elif first and self._writes % 3 == 0:
                fault = "503"
            else:
                fault = None
            if fault:
                self.injected[fault] += 1
            return fault

    def _cut(self, method: str, path: str, asked_range: str | None, data: bytes) -> bool:
        """Whether to cut this answer short (the first read of each path, when cut_reads is on)."""
        if method != "GET" or not self.cut_reads or len(data) < 2:
            return False
        with self._lock:
            if asked_range:
                self.ranges.append(asked_range)
            self.reads[path] += 1
            return self.reads[path] == 1

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
