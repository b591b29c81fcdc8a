"""Every line the daemon writes to stderr has one format: stdlib logging records included."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from agent.config import LogFormat
from agent.log import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def test_stdlib_records_come_out_as_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogFormat.JSON, "info")
    logging.getLogger("aiomysql").warning("Unknown table '%s'", "t1")
    logging.getLogger("agent.pipeline.store").info("aborting a backup writer failed: %s", "boom")
    get_logger("agent.daemon.main").info("tablet-agent serving", port=1)
    logging.getLogger("grpc._server").debug("below the level: not written")
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == [
        "Unknown table 't1'",
        "aborting a backup writer failed: boom",
        "tablet-agent serving",
    ]
    assert records[0]["level"] == "warning" and records[0]["logger"] == "aiomysql"
    assert all("timestamp" in r for r in records)


def test_exceptions_from_stdlib_logging_stay_on_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogFormat.JSON, "info")
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert "ValueError: bad" in record["exception"]
