"""Multipart upload sizing and retries for the S3 backend (pure, so they are tested without a server).

S3 limits: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000 parts per object, objects
up to 5 TiB. With a size hint, one part size is chosen so the object fits in 9,000 parts (room for the
hint to be low by 10%). Without one, parts start at the minimum and double every 1,000 parts, which
still reaches 5 TiB within 10,000 parts while small streams use little memory.
"""

from __future__ import annotations

MIB = 1 << 20
MIN_PART = 5 * MIB
MAX_PART = 5 << 30
MAX_PARTS = 10_000
TARGET_PARTS = 9_000
DOUBLING_EVERY = 1_000
DEFAULT_PART = 16 * MIB


def part_size(size_hint: int, min_part: int = MIN_PART) -> int:
    """The part size for an object of `size_hint` bytes (-1: unknown, then the first part's size)."""
    floor = max(MIN_PART, min_part)
    if size_hint < 0:
        return max(floor, DEFAULT_PART)
    needed = -(-size_hint // TARGET_PARTS)
    size = max(floor, -(-needed // MIB) * MIB)
    return min(size, MAX_PART)


def part_size_for(part_number: int, first: int, size_hint: int) -> int:
    """Size of part `part_number` (1-based): constant with a hint, doubling every 1,000 parts without."""
    if size_hint >= 0:
        return first
    return min(MAX_PART, first << ((part_number - 1) // DOUBLING_EVERY))


def capacity(first: int, size_hint: int) -> int:
    """Bytes an upload can hold within MAX_PARTS parts."""
    if size_hint >= 0:
        return first * MAX_PARTS
    return sum(part_size_for(n, first, -1) for n in range(1, MAX_PARTS + 1, DOUBLING_EVERY)) * DOUBLING_EVERY


RETRYABLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "InternalError",
     "ServiceUnavailable", "503", "500", "502", "504"}
)  # fmt: skip
ATTEMPTS = 5
BACKOFF_BASE = 0.2
BACKOFF_MAX = 5.0


def backoff(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (1-based)."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * (2 ** (attempt - 1))))


def is_retryable(status: int | None, code: str) -> bool:
    return (status is not None and status >= 500) or status == 429 or code in RETRYABLE_CODES
