"""One harness for every integration's end-to-end test.

    async with store_app(tmp_path, "shopify", secret=...) as h:
        await push(h, body, content_type="application/json", headers={...})
        result = await run_window(h)                 # the store's next window, on the fake clock
        log = await sales_log(h, date(2026, 3, 14))  # GET /v1/stores/S1/sales?date=
        sale = await sale_detail(h, "1001")          # GET /v1/stores/S1/sales/{id}
        report = await report(h, date(2026, 3, 14))  # GET /v1/stores/S1/report
        assert await quarantine(h) == []

The window runs because the scheduler's own timer fires: `run_window` moves the fake clock
to the store's next window instant and awaits the commit task the scheduler started. Nothing
sleeps; the loop is yielded to (`sleep(0)`) only until the scheduler has picked the tick up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from tests.appserver import Harness, make_config, running
from worker import keys
from worker.committer import WindowResult

STORE = "S1"
TOKEN = "s1-native-token"
# A Saturday noon UTC in March 2026; windows at 02:00 and 14:00 store time.
NOW = datetime(2026, 3, 14, 18, 0, tzinfo=UTC)


@asynccontextmanager
async def store_app(
    tmp_path: Path,
    source: str,
    *,
    timezone: str = "America/Chicago",
    now: datetime = NOW,
    config: Mapping[str, Any] | None = None,
    **store: Any,
) -> AsyncIterator[Harness]:
    """The real app with one store `S1` of `source` (extra `[[stores]]` keys as kwargs)."""
    entry: dict[str, Any] = {
        "id": STORE,
        "source": source,
        "timezone": timezone,
        "token": TOKEN,
        **store,
    }
    cfg = make_config(tmp_path, stores=[entry], **dict(config or {}))
    async with running(cfg, now) as h:
        yield h


def store_auth() -> dict[str, str]:
    """The store's bearer header."""
    return {"Authorization": f"Bearer {TOKEN}"}


async def push(
    h: Harness,
    body: bytes,
    *,
    source: str | None = None,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
    expect: int = 202,
) -> dict[str, Any]:
    """POST /v1/push/{source}/S1 with the store token (unless `headers` carries auth)."""
    src = source or h.app[keys.CONFIG].stores[0].source
    all_headers = {"Content-Type": content_type, **store_auth(), **dict(headers or {})}
    resp = await h.client.post(f"/v1/push/{src}/{STORE}", data=body, headers=all_headers)
    out: dict[str, Any] = await resp.json()
    assert resp.status == expect, (resp.status, out)
    return out


async def run_window(h: Harness, store: str = STORE) -> WindowResult:
    """Move the fake clock to the store's next window; await the commit the scheduler starts."""
    scheduler = h.app[keys.SCHEDULER]
    before = scheduler.running.get(store)
    due = scheduler.next_due[store]
    if h.clock.now() < due:
        h.clock.set(due)
    for _ in range(100_000):
        task = scheduler.running.get(store)
        if task is not None and task is not before:
            result = await task
            assert result.error is None, result.error
            # Trigger delivery runs after the commit, inside commit_store; let it settle.
            return result
        await asyncio.sleep(0)
    raise AssertionError(f"the scheduler did not start store {store}'s window at {due}")


async def _get(h: Harness, path: str, expect: int = 200) -> Any:
    resp = await h.client.get(path, headers=h.admin())
    out = await resp.json()
    assert resp.status == expect, (resp.status, out)
    return out


async def _all(h: Harness, path: str, key: str) -> list[dict[str, Any]]:
    """Every item of a list endpoint: its pages, through `next` to the last."""
    out = await _get(h, path)
    items: list[dict[str, Any]] = list(out[key])
    while "next" in out:
        out = await _get(h, out["next"])
        items += out[key]
    return items


async def sales_log(h: Harness, day: date, store: str = STORE) -> list[dict[str, Any]]:
    """The Sales Log of one business date (every page)."""
    return await _all(h, f"/v1/stores/{store}/sales?date={day.isoformat()}", "sales")


async def sale_detail(h: Harness, sale_id: str, store: str = STORE) -> dict[str, Any]:
    """One committed sale with its lines, tenders and adjustments."""
    out: dict[str, Any] = await _get(h, f"/v1/stores/{store}/sales/{sale_id}")
    return out


async def report(
    h: Harness, start: date, end: date | None = None, store: str = STORE
) -> list[dict[str, Any]]:
    """Sales Report rows between two business dates."""
    last = end or start
    out = await _get(h, f"/v1/stores/{store}/report?from={start.isoformat()}&to={last.isoformat()}")
    rows: list[dict[str, Any]] = out["rows"]
    return rows


async def quarantine(h: Harness, store: str = STORE) -> list[dict[str, Any]]:
    """Every quarantined record of the store, with reasons (every page)."""
    return await _all(h, f"/v1/admin/quarantine?store={store}", "items")


async def release_rule(
    h: Harness, rule: str, store: str = STORE, expect: int = 200
) -> dict[str, Any]:
    """POST /v1/admin/quarantine/release?store=&rule=: release what now passes `rule`."""
    resp = await h.client.post(
        f"/v1/admin/quarantine/release?store={store}&rule={rule}", headers=h.admin()
    )
    out: dict[str, Any] = await resp.json()
    assert resp.status == expect, (resp.status, out)
    return out


async def customer(h: Harness, customer_id: str, store: str = STORE) -> dict[str, Any]:
    """The stored customer (real time: no window needed)."""
    out: dict[str, Any] = await _get(h, f"/v1/stores/{store}/customers/{customer_id}")
    return out


def utc(text: str) -> datetime:
    """An ISO-8601 instant, as UTC."""
    return datetime.fromisoformat(text).astimezone(UTC)
