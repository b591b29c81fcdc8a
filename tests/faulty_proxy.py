"""An HTTP proxy between the agent and an object store (S3, GCS, Azure Blob) that injects faults into object
writes (S3 PutObject, UploadPart; GCS uploads and resumable chunks; Azure Put Block, Put Block List): 503
answers, dropped connections, or 500 for good; optionally it cuts the first download of each object in
the middle. Everything else passes through."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.sandbox import free_port


class FaultyProxy:
    """`mode`: "flaky" (the first attempt of every 3rd write gets 503, of every 5th a dropped
    connection; retries go through), "down" (every write gets 500), or "pass". A write is told apart by
    its path and Content-Range (GCS sends every chunk of an upload to one session URI).
    `keep_host`: forward the client's Host header (the GCS emulator builds session URIs from it, so
    chunks come back through the proxy). `cut_reads`: the first whole-object GET of each object gets
    half its bytes, then the connection drops."""

    def __init__(
        self, upstream: str, mode: str = "flaky", *, keep_host: bool = False, cut_reads: bool = False
    ) -> None:
        self.mode = mode
        self.keep_host = keep_host
        self.reads: Counter[str] = Counter()
        self.ranges: list[str] = []  # Range headers of object reads, in order
        self.cut_reads = cut_reads
        self.upstream = urlsplit(upstream)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.attempts: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()  # "<method> <path without query>"
        self._writes = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.requests[f"{self.command} {self.path.split('?', maxsplit=1)[0]}"] += 1
                fault = proxy._fault(self.command, self.path, self.headers.get("Content-Range", ""))
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
                headers["Host"] = self.headers.get("Host", "") if proxy.keep_host else proxy.upstream.netloc
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
                conn.close()
                asked = self.headers.get("x-ms-range") or self.headers.get("Range")
                if proxy._cut(self.command, self.path, asked) and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.close()
                elif self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _fault(self, method: str, path: str, content_range: str = "") -> str | None:
        """None to pass, a status code, or "drop"."""
        route = path.split("?", maxsplit=1)[0]
        is_write = (method == "PUT" and "/MANIFEST" not in route) or (
            method == "POST" and route.startswith("/upload/")
        )
        if not is_write or self.mode == "pass":
            return None
        key = f"{path} {content_range}"
        with self._lock:
            self.attempts[key] += 1
            first = self.attempts[key] == 1
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

    def _cut(self, method: str, path: str, range_header: str | None) -> bool:
        """Whether to cut this answer short: the first whole-object download of each object, with
        cut_reads (a range read is a resumption, recorded in `ranges`)."""
        if not (self.cut_reads and method == "GET" and _is_download(path)):
            return False
        with self._lock:
            if range_header:
                self.ranges.append(range_header)
                return False
            self.reads[path] += 1
            if self.reads[path] > 1:
                return False
            self.injected["cut"] += 1
            return True

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _is_download(path: str) -> bool:
    """An object's bytes, not a listing or metadata (GCS serves bytes only with alt=media)."""
    route, _, query = path.partition("?")
    if route.startswith("/storage/v1/"):
        return "alt=media" in query
    return not any(k in query for k in ("comp=", "restype=", "list-type=", "uploads", "prefix=", "delete"))
