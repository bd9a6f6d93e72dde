"""`[[outputs]] kind = "http"` end to end: pushes through our app, the window on the fake
clock, every event at the fake clienteling API exactly once, in order; and an outbox append
that fails right after the sink committed (injected into our own outbox) is delivered by the
window's retry."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.appserver import Harness
from tests.e2e import harness as e2e
from tests.e2e.test_canonical import order
from tests.support.clienteling import FakeClienteling, fake_clienteling
from worker.sinks.fanout import FanoutBook
from worker.sinks.outbox import Outbox

DAY = date(2026, 3, 14)
API_TOKEN = "clienteling-api-token"


def output(api: FakeClienteling) -> dict[str, Any]:
    """Customers, sales and triggers to the fake API, three events a page."""
    return {
        "kind": "http",
        "name": "app",
        "records": ["customer", "sale", "trigger"],
        "url": api.url,
        "token": API_TOKEN,
        "page_size": 3,
    }


def customers() -> list[dict[str, Any]]:
    """Two customers of the store."""
    return [
        {"type": "customer", "id": "C1", "first_name": "Ann", "version": 1},
        {"type": "customer", "id": "C2", "first_name": "Bob", "version": 4},
    ]


def sales() -> list[dict[str, Any]]:
    """Five sales of C1 and C2, each firing both configured triggers."""
    return [order(f"10{i}", customer_id="C1" if i % 2 else "C2") for i in range(5)]


def expected_sales() -> list[str]:
    """The sale event ids in commit order (the spool's order)."""
    return [f"sale:S1:10{i}:" for i in range(5)]


def fanout(h: Harness) -> FanoutBook:
    """The running sink: a fanout, since [[outputs]] is configured."""
    book = h.sink
    assert isinstance(book, FanoutBook)
    return book


async def outputs_status(h: Harness) -> dict[str, Any]:
    """The `outputs` section of /status."""
    resp = await h.client.get("/status", headers=h.admin())
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    outputs: dict[str, Any] = body["outputs"]
    return outputs


def check_exactly_once(api: FakeClienteling) -> None:
    """Every event id applied once; the receiver never stored a second copy."""
    assert len(api.order) == len(set(api.order)) == len(api.events)


async def test_http_output_end_to_end(tmp_path: Path) -> None:
    """Customers go at once, sales and thank-you triggers after the window, follow-ups wait
    for their due time; each event once, in order; /status shows the output."""
    async with (
        fake_clienteling(API_TOKEN) as api,
        e2e.store_app(tmp_path, "canonical", config={"outputs": [output(api)]}) as h,
    ):
        await e2e.push(h, json.dumps(customers()).encode())
        await api.wait_for(lambda: len(api.order) == 2)
        assert api.order == ["customer:S1:C1:1", "customer:S1:C2:4"]
        await e2e.push(h, json.dumps(sales()).encode())
        result = await e2e.run_window(h)
        assert result.committed == 5
        await api.wait_for(lambda: len(api.order) == 2 + 5 + 5)
        status = (await outputs_status(h))["app"]
        log = await e2e.sales_log(h, DAY)
    sale_events = [e for e in api.order if e.startswith("sale:")]
    assert [e.rsplit(":", 1)[0] + ":" for e in sale_events] == expected_sales()
    thanks = [e for e in api.order if e.startswith("trigger:")]
    assert thanks == [f"trigger:S1:10{i}:thank-you" for i in range(5)]
    # Order: the customers, then the window's sales, then their (already due) triggers.
    assert api.order[:2] == ["customer:S1:C1:1", "customer:S1:C2:4"]
    assert api.order.index(sale_events[-1]) < api.order.index(thanks[0])
    check_exactly_once(api)
    assert all(q["auth"] == f"Bearer {API_TOKEN}" for q in api.requests)
    assert len(log) == 5
    # The 30-day follow-ups wait in the outbox for their due time.
    assert status["waiting"] == 5 and status["delivered"] == 12
    assert status["parked"] == 0 and status["pending"] == 0 and status["last_error"] is None
    body = api.events[sale_events[0]]["body"]
    assert body["id"] == "100" and body["total"] == "404.95"


class FailOnce:
    """Our outbox's append failing once for a batch with sales: the instant after the
    primary's commit (a crash there leaves the rows spooled, as this failure does)."""

    def __init__(self, outbox: Outbox) -> None:
        self.real = outbox.append
        self.fired = asyncio.Event()

    async def __call__(self, items: Any) -> int:
        if not self.fired.is_set() and any(it.event.kind == "sale" for it in items):
            self.fired.set()
            raise sqlite3.OperationalError("disk I/O error")
        return await self.real(items)


async def test_append_failure_between_commit_and_outbox_redelivers_on_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink committed, the outbox append failed: the window keeps its rows, retries (the
    sink answers already_committed), the append lands, and the API gets each event once."""
    async with (
        fake_clienteling(API_TOKEN) as api,
        e2e.store_app(tmp_path, "canonical", config={"outputs": [output(api)]}) as h,
    ):
        await e2e.push(h, json.dumps(customers()).encode())
        await api.wait_for(lambda: len(api.order) == 2)
        fault = FailOnce(fanout(h).outbox)
        monkeypatch.setattr(fanout(h).outbox, "append", fault)
        await e2e.push(h, json.dumps(sales()).encode())
        window = asyncio.create_task(e2e.run_window(h))
        await asyncio.wait_for(fault.fired.wait(), 20)
        # The committer now waits out its backoff on the fake clock (< 1 s).
        assert (await e2e.sales_log(h, DAY)) != []  # the sink has them already
        assert h.spool.stats("S1").pending == 5  # and the spool still holds them
        h.clock.advance(1)
        await asyncio.wait_for(window, 20)
        await api.wait_for(lambda: len(api.order) == 2 + 5 + 5)
        assert h.spool.stats("S1").pending == 0
        status = (await outputs_status(h))["app"]
    check_exactly_once(api)
    assert Counter(e.split(":", 1)[0] for e in api.order) == {
        "customer": 2,
        "sale": 5,
        "trigger": 5,
    }
    assert status["waiting"] == 5
