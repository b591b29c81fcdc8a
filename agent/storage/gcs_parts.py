"""Resumable-upload chunk sizing, retry rules and wire helpers for the GCS backend (pure, tested without
a server).

GCS resumable uploads take chunks in order; every chunk but the last must be a multiple of 256 KiB, and
the server answers 308 with `Range: bytes=0-<last byte persisted>` (no Range: nothing persisted). There is
no part-count limit (objects up to 5 TiB), so a chunk size only trades memory against requests: 16 MiB
without a size hint, larger for big hinted objects so a 5 TiB object takes about 80,000 requests.
"""

from __future__ import annotations

import re
from urllib.parse import quote

KIB = 1 << 10
MIB = 1 << 20
CHUNK_UNIT = 256 * KIB
DEFAULT_CHUNK = 16 * MIB
MAX_CHUNK = 64 * MIB
HINT_CHUNKS = 1_000  # with a size hint, aim for about this many chunks (within DEFAULT..MAX_CHUNK)

ATTEMPTS = 6
BACKOFF_BASE = 0.2
BACKOFF_MAX = 8.0
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_RANGE = re.compile(r"^bytes=0-(\d+)$")
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3})", re.MULTILINE)


def round_up(n: int, unit: int = CHUNK_UNIT) -> int:
    return -(-n // unit) * unit


def chunk_size(size_hint: int, base: int = DEFAULT_CHUNK) -> int:
    """Bytes per resumable chunk for an object of `size_hint` bytes (-1: unknown). `base` (a multiple of
    256 KiB) is the size for unknown and small objects; big hinted objects get up to MAX_CHUNK."""
    if base <= 0 or base % CHUNK_UNIT:
        raise ValueError(f"GCS chunk size {base} is not a positive multiple of 256 KiB")
    if size_hint < 0:
        return base
    return max(base, min(MAX_CHUNK, round_up(-(-size_hint // HINT_CHUNKS))))


def is_retryable(status: int) -> bool:
    """Server-side and throttling answers worth another attempt (GCS's own retry guidance)."""
    return status in RETRYABLE_STATUSES or status >= 500


def backoff(attempt: int, jitter: float) -> float:
    """Seconds before retry `attempt` (1-based): exponential, capped, scaled by `jitter` in [0, 1) to
    between half and all of it, so many writers retrying at once spread out."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1)) * (0.5 + jitter / 2))


def persisted(range_header: str | None) -> int:
    """Bytes the server holds of a resumable upload, from a 308's Range header. No header means none.
    `bytes=0-0` is also read as none: chunks are sent in 256 KiB multiples, so GCS never holds exactly one
    byte of an unfinished upload, while gcp-storage-emulator answers `bytes=0-0` for an empty session."""
    if not range_header:
        return 0
    m = _RANGE.match(range_header.strip())
    if not m:
        raise ValueError(f"unexpected Range header {range_header!r} in a resumable upload answer")
    last = int(m.group(1))
    return 0 if last == 0 else last + 1


def content_range(start: int, length: int, total: int | None) -> str:
    """The Content-Range of a chunk of `length` bytes at `start`; `total` is known only with the last."""
    of = "*" if total is None else str(total)
    if length == 0:
        return f"bytes */{of}"
    return f"bytes {start}-{start + length - 1}/{of}"


def object_path(bucket: str, name: str) -> str:
    """The JSON API path of an object (the name is one path segment, '/' included)."""
    return f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"


def batch_delete_body(bucket: str, names: list[str], boundary: str) -> bytes:
    """A JSON API batch request deleting `names` (at most 100 per batch)."""
    parts = []
    for i, name in enumerate(names):
        parts.append(
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <{i + 1}>\r\n\r\n"
            f"DELETE {object_path(bucket, name)} HTTP/1.1\r\n\r\n"
        )
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


def batch_statuses(body: bytes) -> list[int]:
    """The HTTP status of each sub-request in a batch response, in order."""
    return [int(m.group(1)) for m in _STATUS_LINE.finditer(body)]
