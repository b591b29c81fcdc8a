"""Resumable chunk sizing, retry classification, Range parsing and batch encoding for the GCS backend."""

from __future__ import annotations

import pytest

from agent.storage.gcs_parts import (
    CHUNK_UNIT,
    DEFAULT_CHUNK,
    MAX_CHUNK,
    MIB,
    backoff,
    batch_delete_body,
    batch_statuses,
    chunk_size,
    content_range,
    is_retryable,
    object_path,
    persisted,
)

TIB = 1 << 40


@pytest.mark.parametrize("hint", [-1, 0, 1, 5 * MIB, 100 * MIB, 47 * (1 << 30), TIB, 5 * TIB])
def test_chunks_are_256_kib_multiples_within_bounds(hint: int) -> None:
    size = chunk_size(hint)
    assert size % CHUNK_UNIT == 0 and DEFAULT_CHUNK <= size <= MAX_CHUNK
    if hint >= 0:
        assert hint // size <= 100_000  # a 5 TiB object in at most ~80,000 requests


def test_big_hints_get_bigger_chunks_and_the_base_is_checked() -> None:
    assert chunk_size(-1) == chunk_size(100 * MIB) == DEFAULT_CHUNK
    assert chunk_size(TIB) == MAX_CHUNK and DEFAULT_CHUNK < chunk_size(30 * (1 << 30)) < MAX_CHUNK
    assert chunk_size(-1, CHUNK_UNIT) == CHUNK_UNIT
    for bad in (0, 1000, CHUNK_UNIT + 1):
        with pytest.raises(ValueError, match="multiple of 256 KiB"):
            chunk_size(-1, bad)


def test_persisted_bytes_from_the_range_header() -> None:
    assert persisted(None) == 0 and persisted("") == 0  # GCS: nothing persisted yet
    assert persisted("bytes=0-262143") == CHUNK_UNIT
    assert persisted("bytes=0-0") == 0  # the emulator's answer for an empty session
    with pytest.raises(ValueError):
        persisted("bytes=5-10")


def test_content_ranges() -> None:
    assert content_range(0, CHUNK_UNIT, None) == "bytes 0-262143/*"
    assert content_range(CHUNK_UNIT, 10, CHUNK_UNIT + 10) == "bytes 262144-262153/262154"
    assert content_range(0, 0, 0) == "bytes */0"


def test_retry_classification_and_backoff_with_jitter() -> None:
    assert all(is_retryable(s) for s in (408, 429, 500, 502, 503, 504, 599))
    assert not any(is_retryable(s) for s in (400, 401, 403, 404, 409, 412))
    assert backoff(1, 0.0) == pytest.approx(0.1) and backoff(1, 0.999) == pytest.approx(0.2, abs=0.001)
    assert backoff(3, 0.5) == pytest.approx(0.6) and backoff(30, 0.999) <= 8.0


def test_batch_delete_encoding_and_answer_parsing() -> None:
    body = batch_delete_body("bkt", ["a/b c", "MANIFEST"], "xyz").decode()
    assert body.count("--xyz\r\nContent-Type: application/http") == 2 and body.endswith("--xyz--\r\n")
    assert f"DELETE {object_path('bkt', 'a/b c')} HTTP/1.1" in body
    assert object_path("bkt", "a/b c") == "/storage/v1/b/bkt/o/a%2Fb%20c"
    answer = b"--r\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n--r\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\n{}\r\n--r--"
    assert batch_statuses(answer) == [204, 404]
