"""Sink contract under real faults, over every sink: an unavailable database, a failed
commit, reopening, a closed sink; and the SQLite sink's own file and lock behaviour.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tests.contracts.sinks import STORE, T0, Backend, make_batch, make_sale, make_trigger, make_void
from worker.batch import CommitOutcome
from worker.config import Config, SqliteSinkConfig
from worker.errors import SinkError
from worker.records import Customer
from worker.sinks.base import ClientBook
from worker.sinks.sqlite import open_sqlite_sink

pytest_plugins = ["tests.plugins.postgres"]


# -- faults ---------------------------------------------------------------------------------


async def test_health_raises_retriable_while_the_database_is_unavailable(
    sink: ClientBook, backend: Backend
) -> None:
    await sink.health()
    await backend.make_unavailable()
    try:
        with pytest.raises(SinkError) as health_err:
            await sink.health()
        assert health_err.value.retriable
        with pytest.raises(SinkError) as commit_err:
            await sink.commit_sales(make_batch("b1", [make_sale("s-1")]))
        assert commit_err.value.retriable
    finally:
        await backend.make_available()
    await sink.health()
    assert (await sink.commit_sales(make_batch("b1", [make_sale("s-1")]))).inserted == 1


async def test_a_failed_commit_leaves_nothing_behind(sink: ClientBook, backend: Backend) -> None:
    await sink.commit_sales(make_batch("b0", [make_sale("old", version=1)]))
    before = await sink.counts()
    s1 = make_sale("s-1")
    batch = make_batch(
        "b1",
        [s1, make_sale("old", "50.00", version=2)],
        voids=[make_void("old"), make_void("ghost")],
        triggers=[make_trigger(s1, T0)],
    )
    # The outbox is written last but one: everything before it must roll back.
    await backend.fail_inserts_into("trigger_outbox")
    with pytest.raises(SinkError) as err:
        await sink.commit_sales(batch)
    assert not err.value.retriable
    assert await sink.counts() == before
    assert await sink.get_sale(STORE, "s-1") is None
    old = await sink.get_sale(STORE, "old")
    assert old is not None
    assert (old["total"], old["voided"], old["version"]) == ("10.00", False, 1)

    await backend.heal("trigger_outbox")
    out = await sink.commit_sales(batch)
    assert out == CommitOutcome(batch_id="b1", inserted=1, updated=1, voided=1, triggers=1)


async def test_data_survives_reopening(backend: Backend) -> None:
    async with backend.open() as first:
        await first.upsert_entities(STORE, [Customer(id="c1", version=1)])
        await first.commit_sales(make_batch("b1", [make_sale("s-1")]))
    async with backend.open() as second:  # start-up DDL is idempotent
        assert await second.existing_customers(STORE, ["c1"]) == {"c1"}
        assert (await second.commit_sales(make_batch("b1", [make_sale("s-1")]))).already_committed
        assert (await second.counts())["sales"] == 1


async def test_a_closed_sink_refuses_calls(backend: Backend) -> None:
    async with backend.open() as opened:
        pass
    with pytest.raises(SinkError) as err:
        await opened.health()
    assert not err.value.retriable


# -- SQLite specifics ---------------------------------------------------------------------


async def test_sqlite_default_path_is_under_data_dir_and_uses_wal(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    cfg = Config(data_dir=str(data_dir), sink=SqliteSinkConfig(synchronous="FULL"))
    async with open_sqlite_sink(cfg) as opened:
        await opened.health()
        assert opened.path == data_dir / "clientbook.db"
    db = sqlite3.connect(data_dir / "clientbook.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


async def test_sqlite_commit_cancelled_while_waiting_for_the_lock_leaves_no_transaction(
    tmp_path: Path,
) -> None:
    path = tmp_path / "clientbook.db"
    cfg = Config(
        data_dir=str(tmp_path), sink=SqliteSinkConfig(path=str(path), busy_timeout_ms=10_000)
    )
    async with open_sqlite_sink(cfg) as opened:
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(opened.commit_sales(make_batch("b1", [make_sale("s-1")])))
        await asyncio.sleep(0)  # one loop tick: the task is now parked on BEGIN IMMEDIATE
        task.cancel()
        # Release the lock: the BEGIN still running on the connection thread now succeeds.
        locker.execute("ROLLBACK")
        locker.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await opened.commit_sales(make_batch("b1", [make_sale("s-1")]))).inserted == 1
        assert (await opened.counts())["sales"] == 1
