"""The window timer against the real app: start-up catch-up once, no doubled windows."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.appserver import Harness, make_config, running, until
from tests.factories import sale_dict
from worker import keys
from worker.committer import WindowResult
from worker.windows import due_catch_up

NOW = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)
PUSH = "/v1/push/canonical/S1"


async def push_sale(h: Harness, sid: str, at: datetime) -> None:
    resp = await h.client.post(PUSH, json=sale_dict(sid, at=at), headers=h.store())
    assert resp.status == 202, await resp.text()


async def next_window(h: Harness, store: str = "S1") -> WindowResult:
    """Move the clock to the store's next window; the commit the scheduler starts for it."""
    scheduler = h.app[keys.SCHEDULER]
    before = scheduler.running.get(store)
    h.clock.set(scheduler.next_due[store])
    await until(lambda: scheduler.running.get(store) not in (None, before))
    return await scheduler.running[store]


async def test_missed_windows_are_caught_up_once_at_start_up(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    async with running(cfg, NOW) as h:
        await push_sale(h, "A-1", NOW)
        first = await next_window(h)
        assert first.committed == 1
        await push_sale(h, "A-2", h.clock.now())  # after that window: still pending at exit
    s1 = cfg.store("S1")
    assert s1 is not None
    later = first.window_at + timedelta(days=3)  # six windows of S1 missed while down
    async with running(cfg, later) as h:
        scheduler = h.app[keys.SCHEDULER]
        await until(lambda: "S1" in scheduler.running)
        caught = await scheduler.running["S1"]
        expected = due_catch_up(
            first.window_at,
            later,
            cfg.store_zone(s1),
            cfg.store_times(s1),
            "S1",
            cfg.windows.spread_s,
        )
        assert expected is not None and first.window_at + timedelta(days=2) < expected <= later
        assert caught.window_at == expected  # the latest missed window, and only that one
        assert (caught.committed, caught.error) == (1, None)
        assert "S2" not in scheduler.running  # S2 never ran a window: nothing to catch up
        assert scheduler.next_due["S1"] == h.app[keys.WINDOWS].after(s1, later)
        assert h.spool.stats("S1").pending == 0


async def test_a_window_is_skipped_while_the_previous_commit_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(make_config(tmp_path), NOW) as h:
        scheduler = h.app[keys.SCHEDULER]
        await push_sale(h, "B-1", NOW)
        release = asyncio.Event()

        async def overrunning() -> WindowResult:
            await release.wait()
            return WindowResult(store="S1", window_at=NOW, started_at=NOW)

        # A commit that overruns into the next window (as a very large one would).
        slow = asyncio.create_task(overrunning())
        scheduler.running["S1"] = slow
        due = scheduler.next_due["S1"]
        with caplog.at_level(logging.WARNING, logger="possync.committer"):
            h.clock.set(due)
            await until(lambda: scheduler.next_due["S1"] > due)
        assert scheduler.running["S1"] is slow  # not doubled
        assert any("previous commit still running" in r.getMessage() for r in caplog.records)
        assert h.spool.stats("S1").pending == 1
        release.set()
        await slow
        result = await next_window(h)  # the next window commits what the skipped one left
        assert (result.committed, result.error) == (1, None)
        assert h.spool.stats("S1").pending == 0
