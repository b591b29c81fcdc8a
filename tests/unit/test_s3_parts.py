"""Multipart part sizing and retry classification for the S3 backend."""

from __future__ import annotations

import pytest

from agent.storage.s3 import MIB, MIN_PART, PARTS, backoff, is_retryable, part_size

TIB = 1 << 40
MAX_PART, MAX_PARTS = PARTS.max_part, PARTS.max_parts


def part_size_for(number: int, first: int, size_hint: int) -> int:
    return PARTS.size_of(number - 1, first, size_hint)


@pytest.mark.parametrize("size", [0, 1, 5 * MIB, 100 * MIB, 47 * (1 << 30), TIB, 5 * TIB - 1, 5 * TIB])
def test_known_sizes_fit_in_the_part_limit_with_room(size: int) -> None:
    first = part_size(size)
    assert MIN_PART <= first <= MAX_PART and first % MIB == 0
    parts = -(-size // first)
    assert parts <= 9_000 and PARTS.capacity(first, size) >= size * 1.1
    assert all(part_size_for(n, first, size) == first for n in (1, 5000, MAX_PARTS))


def test_min_part_size_flag_is_a_floor() -> None:
    assert part_size(1, 64 * MIB) == 64 * MIB
    assert part_size(10 * TIB // 2, 64 * MIB) > 64 * MIB


def test_unknown_size_grows_to_hold_5_tib_and_never_exceeds_s3_limits() -> None:
    first = part_size(-1)
    assert first == 16 * MIB
    sizes = [part_size_for(n, first, -1) for n in range(1, MAX_PARTS + 1)]
    assert sizes[0] == sizes[999] == first and sizes[1000] == 2 * first
    assert max(sizes) <= MAX_PART and sum(sizes) == PARTS.capacity(first, -1) >= 5 * TIB


def test_retry_classification_and_backoff() -> None:
    assert is_retryable(503, "SlowDown") and is_retryable(500, "") and is_retryable(429, "")
    assert is_retryable(None, "RequestTimeout")
    assert not is_retryable(403, "AccessDenied") and not is_retryable(404, "NoSuchKey")
    assert [backoff(n) for n in (1, 2, 3)] == [0.2, 0.4, 0.8] and backoff(20) == 5.0
