"""The window lock (worker.locks) on a real PostgreSQL, and two committers on one database.

* One session holds a store's advisory lock: a second instance gets `WindowLocked` naming the
  holder, another store is free, and killing the holder's backend (`pg_terminate_backend`,
  what PostgreSQL does when a holder's process dies) frees it.
* `lock_wait_s` waits in PostgreSQL (`lock_timeout`): visible in `waiting`, served when the
  holder lets go, `WindowLocked` when it does not in time.
* Two apps (instances `a`, `b`) on one database, each with its own spool: while a third
  session holds S1, a window reports `skipped = "locked"` (metric, `/status` waiting); once
  it is free both commit their own part under the lock, a sale pushed to both lands once.
* The in-process lock (SQLite sink) excludes within one process and wakes a waiter.
* `[instance] owns` names configured stores, each once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.appserver import Harness, make_config, running, until
from tests.factories import sale_dict
from worker import keys
from worker.config import decode
from worker.errors import ConfigError
from worker.locks import LocalLock, PostgresLock, WindowLocked
from worker.sources.mqtt import subscription_filter

pytest_plugins = ["tests.plugins.postgres"]

NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)


async def _terminate(dsn: str, instance: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        # With a timeout the call returns once the backend is gone (PostgreSQL >= 14).
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE application_name = $1",
            f"possync:{instance}",
        )
        return len(rows)
    finally:
        await conn.close()


async def test_advisory_lock_excludes_names_the_holder_and_frees_when_its_session_dies(
    postgres_dsn: str,
) -> None:
    a = PostgresLock(postgres_dsn, "public", "a", 10.0)
    b = PostgresLock(postgres_dsn, "public", "b", 10.0)
    try:
        async with a.hold("S1"):
            assert a.held == {"S1"}
            with pytest.raises(WindowLocked) as got:
                async with b.hold("S1"):
                    pytest.fail("two holders of one store")
            assert got.value.holder == "a"
            assert b.held == set()
            async with b.hold("S2"):  # another store is its own lock
                assert b.held == {"S2"}
            assert await _terminate(postgres_dsn, "a") == 1
            async with b.hold("S1"):  # the dead session's lock is free
                assert b.held == {"S1"}
        assert a.held == set()
        async with a.hold("S1"):  # a reconnects for its next hold
            pass
    finally:
        await a.close()
        await b.close()


async def test_lock_wait_is_visible_served_on_release_and_bounded(postgres_dsn: str) -> None:
    a = PostgresLock(postgres_dsn, "public", "a", 10.0)
    b = PostgresLock(postgres_dsn, "public", "b", 10.0)
    try:
        async with a.hold("S1"):
            with pytest.raises(WindowLocked):
                async with b.hold("S1", wait_s=0.2):
                    pytest.fail("lock_timeout ignored")

            async def wait_then_hold() -> set[str]:
                async with b.hold("S1", wait_s=30):
                    return set(b.held)

            waiter = asyncio.create_task(wait_then_hold())
            await until(lambda: "S1" in b.waiting)
            assert not waiter.done()
        assert await asyncio.wait_for(waiter, 30) == {"S1"}
        assert b.waiting == set()
    finally:
        await a.close()
        await b.close()


async def test_local_lock_excludes_in_process_and_wakes_a_waiter() -> None:
    lock = LocalLock()
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def holder() -> None:
        async with lock.hold("S1"):
            entered.set()
            await leave.wait()

    task = asyncio.create_task(holder())
    await entered.wait()
    with pytest.raises(WindowLocked):
        async with lock.hold("S1"):
            pytest.fail("two holders")

    async def waiter() -> bool:
        async with lock.hold("S1", wait_s=30):
            return True

    w = asyncio.create_task(waiter())
    await until(lambda: "S1" in lock.waiting)
    leave.set()
    assert await asyncio.wait_for(w, 10)
    await task
    assert lock.held == set()


def test_owns_must_name_configured_stores_once(tmp_path: Path) -> None:
    base = make_config(tmp_path)
    raw: dict[str, Any] = {
        "data_dir": str(tmp_path),
        "http": {"admin_token": "x" * 20},
        "stores": [{"id": s.id, "token": s.token} for s in base.stores],
    }
    assert decode({**raw, "instance": {"owns": ["S2"]}}).instance.owns == ["S2"]
    with pytest.raises(ConfigError) as e:
        decode({**raw, "instance": {"owns": ["S1", "NOPE"]}})
    assert e.value.field == "$.instance.owns[1]"
    with pytest.raises(ConfigError) as e:
        decode({**raw, "instance": {"owns": ["S1", "S1"]}})
    assert e.value.field == "$.instance.owns[1]"


@asynccontextmanager
async def _instance(tmp: Path, name: str, dsn: str, wait_s: float) -> AsyncIterator[Harness]:
    cfg = make_config(
        tmp / name,
        sink={"kind": "postgres", "dsn": dsn, "pool_max": 4, "command_timeout_s": 10},
        instance={"id": name, "lock_wait_s": wait_s},
        triggers=[],
    )
    async with running(cfg, NOW) as h:
        yield h


async def _push(h: Harness, ids: list[str]) -> None:
    body = json.dumps([sale_dict(i, at=datetime(2026, 11, 21, 10, tzinfo=UTC)) for i in ids])
    resp = await h.client.post(
        "/v1/push/canonical/S1",
        data=body,
        headers={**h.store(), "Content-Type": "application/json"},
    )
    assert resp.status == 202, await resp.text()


async def _commit(h: Harness) -> dict[str, Any]:
    resp = await h.client.post("/v1/admin/commit?store=S1", headers=h.admin())
    body: dict[str, Any] = await resp.json()
    assert resp.status == 200, body
    got: dict[str, Any] = body["stores"]["S1"]
    return got


async def _status(h: Harness) -> dict[str, Any]:
    resp = await h.client.get("/status", headers=h.admin())
    body: dict[str, Any] = await resp.json()
    return body


async def test_two_committers_one_database_one_commits_the_other_reports_locked(
    tmp_path: Path, postgres_dsn: str
) -> None:
    outsider = PostgresLock(postgres_dsn, "public", "x", 10.0)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(_instance(tmp_path, "a", postgres_dsn, 1.0))
        b = await stack.enter_async_context(_instance(tmp_path, "b", postgres_dsn, 5.0))
        await _push(a, [f"A-{n}" for n in range(20)] + ["BOTH-1"])
        await _push(b, [f"B-{n}" for n in range(20)] + ["BOTH-1"])

        async with outsider.hold("S1"):
            pending = asyncio.create_task(_commit(a))
            await until(lambda: "S1" in a.app[keys.COMMITTER].window_lock.waiting)
            st = await _status(a)
            assert st["instance"]["id"] == "a"
            assert st["instance"]["locks_waiting"] == ["S1"]
            assert st["stores"]["S1"]["lock"] == "waiting"
            locked = await asyncio.wait_for(pending, 30)
        assert locked["skipped"] == "locked", locked
        assert locked["committed"] == 0
        last = a.app[keys.COMMITTER].last["S1"]
        assert last.locked_by == "x"
        metrics = await (await a.client.get("/metrics", headers=a.admin())).text()
        assert 'possync_window_locked_total{store="S1"} 1.0' in metrics
        assert 'possync_window_commits_total{result="skipped_locked",store="S1"} 1.0' in metrics

        # Both at once: one holds the lock, the other waits its turn (lock_wait_s) and
        # commits its own spool's part; the sale both received lands once.
        first, second = await asyncio.gather(_commit(a), _commit(b))
        assert first["skipped"] is None and second["skipped"] is None, (first, second)
        st_a, st_b = await _status(a), await _status(b)
        assert st_a["instance"]["locks_held"] == [] and st_b["instance"]["locks_held"] == []
        assert st_a["stores"]["S1"]["pending"] == 0 and st_b["stores"]["S1"]["pending"] == 0

    conn = await asyncpg.connect(postgres_dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, count(*) AS n FROM sales WHERE store = 'S1' GROUP BY id"
        )
    finally:
        await conn.close()
    counts = {r["id"]: r["n"] for r in rows}
    assert set(counts) == {f"A-{n}" for n in range(20)} | {f"B-{n}" for n in range(20)} | {"BOTH-1"}
    assert set(counts.values()) == {1}


def test_shared_group_subscribes_through_share() -> None:
    assert subscription_filter("pos") == "pos/+/+/+"
    assert subscription_filter("pos", "possync") == "$share/possync/pos/+/+/+"
