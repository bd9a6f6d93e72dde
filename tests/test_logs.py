"""Structured logs: one JSON event per line with its figures; a human line for a terminal;
the request id on every line logged while serving a request; a window's story in events."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import push, run_window, store_app
from worker.logs import REQUEST_ID, HumanFormatter, JsonFormatter


def _record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("possync.test")
    return logger.makeRecord("possync.test", logging.INFO, "f.py", 1, msg, args, None, extra=extra)


def test_json_line_has_event_and_figures() -> None:
    line = JsonFormatter().format(_record("x %d", 3, event="window.end", store="S1", committed=3))
    body = json.loads(line)
    assert body["event"] == "window.end" and body["msg"] == "x 3"
    assert body["store"] == "S1" and body["committed"] == 3
    assert body["level"] == "INFO" and body["logger"] == "possync.test"
    assert body["ts"].endswith("+00:00")
    assert "\n" not in line


def test_plain_log_calls_are_events_too() -> None:
    assert json.loads(JsonFormatter().format(_record("plain")))["event"] == "log"


def test_request_id_comes_from_the_context() -> None:
    token = REQUEST_ID.set("req-42")
    try:
        assert json.loads(JsonFormatter().format(_record()))["request_id"] == "req-42"
    finally:
        REQUEST_ID.reset(token)
    assert "request_id" not in json.loads(JsonFormatter().format(_record()))


def test_human_line() -> None:
    line = HumanFormatter().format(_record("hello %s", "there", event="window.end", store="S1"))
    assert "INFO" in line and "possync.test: hello there" in line
    assert "[window.end]" in line and "store=S1" in line


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


async def test_a_window_tells_its_story(tmp_path: Path, json_log: io.StringIO) -> None:
    good = {
        "type": "sale",
        "id": "G1",
        "occurred_at": "2026-03-14T12:00:00-05:00",
        "currency": "USD",
        "lines": [{"sku": "A", "quantity": "1", "unit_price": "10.00"}],
        "subtotal": "10.00",
        "tax": "0",
        "total": "10.00",
        "tenders": [{"method": "Cash", "amount": "10.00"}],
    }
    bad = {**good, "id": "B1", "total": "12.00", "tenders": [{"method": "Cash", "amount": "12"}]}
    async with store_app(tmp_path, "canonical") as h:
        await push(h, json.dumps([good, bad]).encode())
        await run_window(h)
    events = [json.loads(line) for line in json_log.getvalue().splitlines() if line.strip()]
    by_event = {e["event"]: e for e in events}
    start, end = by_event["window.start"], by_event["window.end"]
    assert start["store"] == end["store"] == "S1" and end["source"] == "canonical"
    assert (end["committed"], end["quarantined"], end["held"]) == (1, 1, 0)
    assert end["triggers_skipped"] == {"no_customer": 2}
    q = by_event["sale.quarantined"]
    assert (q["record_id"], q["rules"]) == ("B1", ["total.sum"])
    assert "12.00" not in json_log.getvalue()  # rule ids, never values
