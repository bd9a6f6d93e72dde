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
from tests.factories import one_line_sale
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
    good = one_line_sale("G1", "2026-03-14T12:00:00-05:00")
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


async def test_refused_pushes_are_events_with_status_field_and_request_id(
    tmp_path: Path, json_log: io.StringIO
) -> None:
    bad = {"type": "sale", "id": "X1", "occurred_at": "not a time", "currency": "USD"}
    async with store_app(tmp_path, "canonical") as h:
        resp = await h.client.post(
            "/v1/push/canonical/S1",
            data=json.dumps(bad),
            headers={
                "Authorization": "Bearer s1-native-token",
                "Content-Type": "application/json",
                "X-Request-Id": "req-abc.123",
            },
        )
        assert resp.status == 400 and resp.headers["X-Request-Id"] == "req-abc.123"
        nobody = await h.client.post("/v1/push/canonical/NOPE", data=b"{}")
        assert nobody.status == 401
        rid = nobody.headers["X-Request-Id"]
        assert len(rid) == 16  # generated: the caller sent none
        odd = await h.client.get("/healthz", headers={"X-Request-Id": "bad id\twith tab"})
        assert odd.headers["X-Request-Id"] != "bad id\twith tab"
    events = [json.loads(x) for x in json_log.getvalue().splitlines() if x.strip()]
    refused = [e for e in events if e["event"] == "push.refused"]
    first, second = refused
    assert (first["status"], first["store"], first["source"], first["request_id"]) == (
        400,
        "S1",
        "canonical",
        "req-abc.123",
    )
    assert first["field"] and "not a time" not in json_log.getvalue()
    # An unknown store is not echoed (ids could be probed); the request id still ties it up.
    assert (second["status"], second["store"], second["request_id"]) == (401, None, rid)


async def test_backfill_progress_and_end_are_events(tmp_path: Path, json_log: io.StringIO) -> None:
    from worker.sources import backfill

    lines = b"".join(
        json.dumps(
            {
                "type": "sale",
                "id": f"B{i}",
                "occurred_at": "2026-03-01T12:00:00-05:00",
                "currency": "USD",
                "lines": [{"sku": "A", "quantity": "1", "unit_price": "10.00"}],
                "subtotal": "10.00",
                "tax": "0",
                "total": "10.00",
                "tenders": [{"method": "Cash", "amount": "10.00"}],
            }
        ).encode()
        + b"\n"
        for i in range(12_000)
    )
    old = backfill.PROGRESS_EVERY
    backfill.PROGRESS_EVERY = 5_000
    try:
        async with store_app(tmp_path, "canonical") as h:
            resp = await h.client.post(
                "/v1/backfill/canonical/S1",
                data=io.BytesIO(lines),
                headers={**h.admin(), "Content-Type": "application/x-ndjson"},
            )
            assert resp.status == 200, await resp.text()
    finally:
        backfill.PROGRESS_EVERY = old
    events = [json.loads(x) for x in json_log.getvalue().splitlines() if x.strip()]
    progress = [e for e in events if e["event"] == "backfill.progress"]
    assert progress and all(e["store"] == "S1" for e in progress)
    (end,) = [e for e in events if e["event"] == "backfill.end"]
    assert (end["records"], end["accepted"], end["failed"]) == (12_000, 12_000, False)
