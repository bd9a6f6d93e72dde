"""Moving a store between instances (docs/scaling.md, "Move a store"): nothing lost or doubled.

Two apps (`a`, `b`) on one PostgreSQL, each with its own spool, both configuring S1 and S2,
driven by fake clocks. Before the move `a` owns S1 and S2, `b` owns S2; `a` holds S1 sales
not yet committed. The move is a config change and a restart of both: `a` owns S2 only, `b`
owns S1 and S2. At S1's next window `b` commits what it took since (the owner) and `a` drains
what its spool still held of S1 (a non-owner runs a store's window only while its spool holds
rows of it), one after the other under S1's window lock. Every sale lands once; at the
window after, `a` no longer runs S1 at all.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from tests.appserver import Harness, make_config, running, until
from tests.factories import sale_dict
from worker import keys
from worker.config import Config

pytest_plugins = ["tests.plugins.postgres"]

NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)  # 10:00 in New York (S1)
S1_WINDOW = datetime(2026, 11, 21, 19, 0, tzinfo=UTC)  # 14:00 New York
S1_NEXT = datetime(2026, 11, 22, 7, 0, tzinfo=UTC)  # 02:00 New York


def _cfg(tmp: Path, name: str, dsn: str, owns: list[str]) -> Config:
    return make_config(
        tmp / name,
        sink={"kind": "postgres", "dsn": dsn, "pool_max": 4, "command_timeout_s": 10},
        instance={"id": name, "owns": owns, "lock_wait_s": 30},
        triggers=[],
    )


async def _push(h: Harness, ids: list[str]) -> None:
    body = json.dumps([sale_dict(i, at=datetime(2026, 11, 21, 14, tzinfo=UTC)) for i in ids])
    resp = await h.client.post(
        "/v1/push/canonical/S1",
        data=body,
        headers={**h.store(), "Content-Type": "application/json"},
    )
    assert resp.status == 202, await resp.text()


def _window_done(h: Harness, at: datetime) -> bool:
    last = h.app[keys.COMMITTER].last.get("S1")
    running = h.app[keys.SCHEDULER].running.get("S1")
    return last is not None and last.window_at == at and (running is None or running.done())


async def _sales(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, count(*) AS n FROM sales WHERE store = 'S1' GROUP BY id"
        )
    finally:
        await conn.close()
    return {r["id"]: r["n"] for r in rows}


async def test_move_a_store_drains_the_old_owner_and_loses_or_doubles_nothing(
    tmp_path: Path, postgres_dsn: str
) -> None:
    old = [f"OLD-{n}" for n in range(30)]
    new = [f"NEW-{n}" for n in range(30)]
    async with (
        running(_cfg(tmp_path, "a", postgres_dsn, ["S1", "S2"]), NOW) as a,
        running(_cfg(tmp_path, "b", postgres_dsn, ["S2"]), NOW) as b,
    ):
        await _push(a, old)
        st: dict[str, Any] = await (await b.client.get("/status", headers=b.admin())).json()
        assert st["instance"]["owns"] == ["S2"]
        assert st["stores"]["S1"]["owned"] is False

    # The move: `a` gives S1 up, `b` takes it; both restart on their new config.
    async with (
        running(_cfg(tmp_path, "a", postgres_dsn, ["S2"]), NOW) as a,
        running(_cfg(tmp_path, "b", postgres_dsn, ["S1", "S2"]), NOW) as b,
    ):
        assert a.spool.stats("S1").pending == len(old)  # kept across the restart
        await _push(b, new)
        a.clock.set(S1_WINDOW)
        b.clock.set(S1_WINDOW)
        await until(lambda: _window_done(a, S1_WINDOW) and _window_done(b, S1_WINDOW))
        ra, rb = a.app[keys.COMMITTER].last["S1"], b.app[keys.COMMITTER].last["S1"]
        assert ra.skipped is None and rb.skipped is None, (ra, rb)
        assert (ra.committed, rb.committed) == (len(old), len(new))
        assert a.spool.stats("S1").pending == 0 and b.spool.stats("S1").pending == 0

        # The old owner has nothing of S1 left: its next S1 window does not run there.
        a.clock.set(S1_NEXT)
        b.clock.set(S1_NEXT)
        await until(lambda: _window_done(b, S1_NEXT))
        await until(lambda: a.app[keys.SCHEDULER].next_due["S1"] > S1_NEXT)
        assert a.app[keys.COMMITTER].last["S1"].window_at == S1_WINDOW
        assert "S1" not in a.app[keys.SCHEDULER].running or (
            a.app[keys.SCHEDULER].running["S1"].done()
        )

    counts = await _sales(postgres_dsn)
    assert counts == dict.fromkeys(old + new, 1)
