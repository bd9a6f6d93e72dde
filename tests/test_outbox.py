"""The outbox and the HTTP output against a real fake clienteling API, on the fake clock.

Each test opens the outbox (`<tmp>/outbox.db`), the real HTTP output and the delivery tasks
exactly as `open_sink` does, appends events and watches the fake API (`tests/support/
clienteling.py`). Waits are on the outbox's `progress` pulses and the API's condition; time
moves only by `FakeClock.advance` (retry backoff, trigger due times, pruning).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.support.clienteling import FakeClienteling, fake_clienteling
from tests.support.config import config_dict, store
from worker.clock import FakeClock
from worker.config import Config, decode
from worker.health import Health
from worker.metrics import Metrics
from worker.sinks.http import idempotency_key
from worker.sinks.outbox import Outbox, Staged, delivering, open_outbox
from worker.sinks.outputs import OutEvent, Output, open_output

NOW = datetime(2026, 3, 14, 18, 0, tzinfo=UTC)
API_TOKEN = "api-token-123"


def cfg_for(tmp: Path, url: str, **output: Any) -> Config:
    """One store, one HTTP output `app` (overrides as kwargs)."""
    out = {
        "kind": "http",
        "name": "app",
        "records": ["customer", "sale", "void", "trigger", "manifest"],
        "url": url,
        "token": API_TOKEN,
        "page_size": 2,
        "retry_max_s": 4.0,
        **output,
    }
    return decode(
        config_dict(tmp, admin_token="admin-token-x", stores=[store("S1", "s1-tok")], outputs=[out])
    )


def event(eid: str, kind: str = "customer", store: str = "S1", **body: Any) -> OutEvent:
    """An event with a small JSON body."""
    raw = msgspec.Raw(msgspec.json.encode({"id": eid, **body}))
    return OutEvent(event_id=eid, kind=kind, store=store, at=NOW, body=raw)  # type: ignore[arg-type]


def staged(eid: str, kind: str = "customer", store: str = "S1", **extra: Any) -> Staged:
    """`event` wrapped for `append`."""
    return Staged(event=event(eid, kind, store), **extra)


class Running:
    """An open outbox with its outputs delivering."""

    def __init__(self, outbox: Outbox, clock: FakeClock, health: Health, api: FakeClienteling):
        self.outbox = outbox
        self.clock = clock
        self.health = health
        self.api = api


@asynccontextmanager
async def running(
    cfg: Config, api: FakeClienteling, outputs: dict[str, Output] | None = None
) -> AsyncIterator[Running]:
    """Outbox + outputs + delivery tasks, as `open_sink` enters them."""
    clock = FakeClock(NOW)
    health = Health()
    async with AsyncExitStack() as stack:
        outbox = await stack.enter_async_context(open_outbox(cfg, clock, Metrics()))
        opened = dict(outputs or {})
        for out in cfg.outputs:
            if out.name not in opened:
                opened[out.name] = await stack.enter_async_context(open_output(cfg, out))
        await stack.enter_async_context(delivering(outbox, opened, health))
        yield Running(outbox, clock, health, api)


async def wait_status(r: Running, cond: Any, name: str = "app") -> dict[str, Any]:
    """The output's status once `cond(status)` holds, re-read at each delivery pulse."""
    got: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal got
        got = (await r.outbox.status())[name]
        return bool(cond(got))

    while True:
        pulse = r.outbox.progress.mark()  # before the read, so no pulse is missed
        if await check():
            return got
        await asyncio.wait_for(pulse.wait(), 20)


async def test_append_fans_out_by_kind_idempotently_and_is_on_disk(tmp_path: Path) -> None:
    """Each output gets the kinds it lists; a second append of the same ids writes nothing."""
    outs = [
        {
            "kind": "http",
            "name": "crm",
            "records": ["customer", "sale"],
            "url": "http://127.0.0.1:9/x",
        },
        {"kind": "http", "name": "tr", "records": ["trigger"], "url": "http://127.0.0.1:9/y"},
    ]
    cfg = decode(
        config_dict(tmp_path, admin_token="a-tok", stores=[store("S1", "t")], outputs=outs)
    )
    items = [staged("c1"), staged("s1", "sale"), staged("t1", "trigger"), staged("p1", "product")]
    async with open_outbox(cfg, FakeClock(NOW), Metrics()) as outbox:
        assert await outbox.append(items) == 3
        assert await outbox.append(items) == 0
    # Reopened from the file alone: the rows are there.
    async with open_outbox(cfg, FakeClock(NOW), Metrics()) as outbox:
        counts = await outbox.counts()
    assert counts["crm"]["pending"] == 2
    assert counts["tr"]["pending"] == 1
    assert sum(counts["tr"].values()) == 1


async def test_pages_in_order_with_key_and_token(tmp_path: Path) -> None:
    """Five events at page size 2: three POSTs, in order, each keyed by its event ids."""
    async with fake_clienteling(API_TOKEN) as api:
        cfg = cfg_for(tmp_path, api.url)
        async with running(cfg, api) as r:
            await r.outbox.append([staged(f"c{i}") for i in range(5)])
            await api.wait_for(lambda: len(api.order) == 5)
            st = await wait_status(r, lambda s: s["delivered"] == 5)
    assert api.order == [f"c{i}" for i in range(5)]
    assert [q["ids"] for q in api.requests] == [["c0", "c1"], ["c2", "c3"], ["c4"]]
    assert all(q["auth"] == f"Bearer {API_TOKEN}" for q in api.requests)
    for q in api.requests:
        assert q["key"] == idempotency_key([event(i) for i in q["ids"]])
    assert st["parked"] == 0 and st["last_error"] is None


async def test_500_is_retried_with_backoff_same_key(tmp_path: Path) -> None:
    """A 500 keeps the page: the retry (after the fake clock moved) sends the same key."""
    async with fake_clienteling(API_TOKEN) as api:
        api.script = ["500", "500"]
        cfg = cfg_for(tmp_path, api.url)
        async with running(cfg, api) as r:
            await r.outbox.append([staged("c1"), staged("c2")])
            st = await wait_status(r, lambda s: s["retrying"] and len(api.requests) == 1)
            assert "HTTP 500" in st["last_error"]
            first_wait = datetime.fromisoformat(st["retry_at"]) - NOW
            assert timedelta(0) < first_wait <= timedelta(seconds=4)
            r.clock.advance(4)
            st = await wait_status(r, lambda s: s["retrying"] and len(api.requests) == 2)
            r.clock.advance(4)
            st = await wait_status(r, lambda s: s["delivered"] == 2)
    assert len(api.requests) == 3
    assert len({q["key"] for q in api.requests}) == 1
    assert api.order == ["c1", "c2"]


async def test_429_retry_after_is_honoured(tmp_path: Path) -> None:
    """429 with Retry-After: 30 waits 30 s even though retry_max_s is 4."""
    async with fake_clienteling(API_TOKEN) as api:
        api.script = ["429:30"]
        cfg = cfg_for(tmp_path, api.url)
        async with running(cfg, api) as r:
            await r.outbox.append([staged("c1")])
            st = await wait_status(r, lambda s: s["retrying"])
            assert "HTTP 429" in st["last_error"]
            assert datetime.fromisoformat(st["retry_at"]) - NOW >= timedelta(seconds=30)
            r.clock.advance(30)
            await wait_status(r, lambda s: s["delivered"] == 1)
    assert len(api.requests) == 2


async def test_503_retry_after_is_honoured(tmp_path: Path) -> None:
    """503 with Retry-After: 12 waits at least 12 s."""
    async with fake_clienteling(API_TOKEN) as api:
        api.script = ["503:12"]
        async with running(cfg_for(tmp_path, api.url), api) as r:
            await r.outbox.append([staged("c1")])
            st = await wait_status(r, lambda s: s["retrying"])
            assert datetime.fromisoformat(st["retry_at"]) - NOW >= timedelta(seconds=12)
            r.clock.advance(12)
            await wait_status(r, lambda s: s["delivered"] == 1)


async def test_timeout_is_retriable(tmp_path: Path) -> None:
    """An API that does not answer within timeout_s: retried, same key, delivered once."""
    async with fake_clienteling(API_TOKEN) as api:
        api.script = ["hang"]
        cfg = cfg_for(tmp_path, api.url, timeout_s=0.3)
        async with running(cfg, api) as r:
            await r.outbox.append([staged("c1")])
            st = await wait_status(r, lambda s: s["retrying"])
            assert "no answer within 0.3 s" in st["last_error"]
            r.clock.advance(4)
            await wait_status(r, lambda s: s["delivered"] == 1)
    assert [q["mode"] for q in api.requests] == ["hang", "ok"]
    assert api.requests[0]["key"] == api.requests[1]["key"]
    assert api.order == ["c1"]


async def test_answered_twice_receiver_dedups(tmp_path: Path) -> None:
    """The API applied the page but its answer was lost (500): the retry carries the same key,
    the receiver answers 200 without applying again, every event is stored once."""
    async with fake_clienteling(API_TOKEN) as api:
        api.script = ["apply_then_500"]
        cfg = cfg_for(tmp_path, api.url)
        async with running(cfg, api) as r:
            await r.outbox.append([staged("c1"), staged("c2"), staged("c3")])
            await wait_status(r, lambda s: s["retrying"])
            r.clock.advance(4)
            await wait_status(r, lambda s: s["delivered"] == 3)
    first = api.requests[0]["key"]
    assert api.keys[first] == 2
    assert api.order == ["c1", "c2", "c3"]
    assert len(api.events) == 3


async def test_400_parks_the_page_and_delivery_goes_on(tmp_path: Path) -> None:
    """A 400 parks its page (state failed, the rule as reason, counted); the next page goes."""
    async with fake_clienteling(API_TOKEN) as api:
        api.script = ["400"]
        cfg = cfg_for(tmp_path, api.url, page_size=1)
        async with running(cfg, api) as r:
            await r.outbox.append([staged("c1"), staged("c2")])
            st = await wait_status(r, lambda s: s["delivered"] == 1 and s["parked"] == 1)
            parked = await r.outbox.parked("app")
    assert "HTTP 400" in st["last_error"] and "fatal" in st["last_error"]
    assert parked == [
        {"event_id": "c1", "kind": "customer", "store": "S1", "reason": parked[0]["reason"]}
    ]
    assert "HTTP 400" in parked[0]["reason"]
    assert api.order == ["c2"]


async def test_trigger_waits_for_due_at_and_a_void_cancels(tmp_path: Path) -> None:
    """Triggers go only once due; a void cancels its sale's undelivered triggers, also those
    appended after it."""
    async with fake_clienteling(API_TOKEN) as api:
        cfg = cfg_for(tmp_path, api.url)
        due = NOW + timedelta(days=1)
        async with running(cfg, api) as r:
            await r.outbox.append(
                [
                    staged("trigger:X1", "trigger", due_at=due, sale_id="X1"),
                    staged("trigger:X2", "trigger", due_at=due, sale_id="X2"),
                    staged("trigger:X0", "trigger", due_at=NOW - timedelta(hours=1), sale_id="X0"),
                    staged("c1"),
                ]
            )
            await wait_status(r, lambda s: s["delivered"] == 2)
            assert api.order == ["trigger:X0", "c1"]
            await r.outbox.append([staged("void:X2", "void", sale_id="X2")])
            await r.outbox.append([staged("trigger:X2b", "trigger", due_at=due, sale_id="X2")])
            st = await wait_status(r, lambda s: s["delivered"] == 3)
            assert st["waiting"] == 1 and st["cancelled"] == 2
            r.clock.advance(24 * 3600)
            st = await wait_status(r, lambda s: s["delivered"] == 4)
    assert api.order == ["trigger:X0", "c1", "void:X2", "trigger:X1"]


async def test_order_per_store_kept_with_concurrency(tmp_path: Path) -> None:
    """Two lanes: each store's events arrive in the order they were appended."""
    async with fake_clienteling(API_TOKEN) as api:
        cfg = cfg_for(tmp_path, api.url, page_size=1, concurrency=4)
        stores = ["S1", "S2", "S3", "S4", "S5"]
        items = [staged(f"{s}:{i}", store=s) for i in range(6) for s in stores]
        async with running(cfg, api) as r:
            await r.outbox.append(items)
            await wait_status(r, lambda s: s["delivered"] == len(items))
    for s in stores:
        got = [e for e in api.order if e.startswith(f"{s}:")]
        assert got == [f"{s}:{i}" for i in range(6)]


async def test_delivered_rows_are_pruned_after_a_day(tmp_path: Path) -> None:
    """Delivered rows stay a day (for /status), then go; parked rows stay."""
    async with fake_clienteling(API_TOKEN) as api:
        api.script = ["400"]
        cfg = cfg_for(tmp_path, api.url, page_size=1)
        async with running(cfg, api) as r:
            await r.outbox.append([staged("c1"), staged("c2")])
            await wait_status(r, lambda s: s["delivered"] == 1 and s["parked"] == 1)
            assert await r.outbox.prune() == 0
            r.clock.advance(25 * 3600)
            assert await r.outbox.prune() == 1
            st = (await r.outbox.status())["app"]
    assert st["delivered"] == 0 and st["parked"] == 1


class _Broken:
    """An output with a bug: it raises something that is not a SinkError."""

    name = "app"

    async def deliver(self, events: Any) -> None:
        raise RuntimeError("bug in the output")


async def test_a_dead_delivery_task_is_visible_on_readyz(tmp_path: Path) -> None:
    """An output that raises an unexpected error kills its delivery task: health says so."""
    async with fake_clienteling(API_TOKEN) as api:
        cfg = cfg_for(tmp_path, api.url)
        async with running(cfg, api, outputs={"app": _Broken()}) as r:
            await r.outbox.append([staged("c1")])
            task = r.health.tasks["output:app"]
            with pytest.raises(ExceptionGroup):
                await task
            checks = await r.health.run()
            st = (await r.outbox.status())["app"]
    assert checks["task:output:app"].startswith("dead:")
    assert st["pending"] == 1  # nothing was marked delivered


async def test_pending_rows_follow_a_changed_concurrency(tmp_path: Path) -> None:
    """Appended with four lanes, delivered after a restart with one: nothing is stranded in
    a lane that no longer exists."""
    async with fake_clienteling(API_TOKEN) as api:
        stores = ["S1", "S2", "S3", "S4", "S5", "S6"]
        wide = cfg_for(tmp_path, api.url, concurrency=4)
        async with open_outbox(wide, FakeClock(NOW), Metrics()) as outbox:
            await outbox.append([staged(f"{s}:0", store=s) for s in stores])
        narrow = cfg_for(tmp_path, api.url, concurrency=1)
        async with running(narrow, api) as r:
            await wait_status(r, lambda s: s["delivered"] == len(stores))
    assert sorted(api.order) == sorted(f"{s}:0" for s in stores)
