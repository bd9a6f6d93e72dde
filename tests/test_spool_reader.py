"""The spool's side connections: reads off the writer's thread, checkpoints off its commits,
and window work (acks) that lets staged live appends go first.

Real spool files throughout; the writer's thread is held with a threading.Event (no sleeps):
what must not wait for it is shown to finish while it is held.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.factories import T0, make_sale
from worker.buffers import sqlite as spool_mod
from worker.buffers import sqlite_group
from worker.buffers.sqlite import SqliteSpool, open_spool
from worker.clock import FakeClock
from worker.config import SpoolConfig

FAR = T0 + timedelta(days=1)


async def _hold_writer(spool: SqliteSpool) -> tuple[threading.Event, asyncio.Task[None]]:
    """Occupy the writer's thread until the returned event is set."""
    entered = threading.Event()
    release = threading.Event()

    def block(db: sqlite3.Connection) -> None:
        entered.set()
        release.wait(30)

    task = asyncio.create_task(spool.file.run(block))
    await asyncio.to_thread(entered.wait, 30)
    return release, task


async def test_reads_do_not_queue_behind_the_writer(tmp_path: Path) -> None:
    async with open_spool(SpoolConfig(), tmp_path / "s.db", FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale("r1"), make_sale("r2")])
        release, held = await _hold_writer(spool)
        try:
            # The writer's thread is busy (in a write transaction): every read still answers.
            lease = await spool.lease("S1", upto=FAR, after_seq=0, limit=10)
            assert [e.rid for e in lease.entries] == ["r1", "r2"]
            assert await spool.pending_ids("S1", "sale", ["r1", "x"]) == {"r1"}
            assert [e.rid for e in await spool.pending_entries("S1")] == ["r1", "r2"]
            assert await spool.oldest("S1") == T0.timestamp()
            assert not held.done()
        finally:
            release.set()
            await held
        await spool.ack(lease.lease_id, [lease.entries[0].seq])
        # A read after a write returns sees it (a new snapshot per read).
        assert await spool.pending_ids("S1", "sale", ["r1", "r2"]) == {"r2"}


async def test_a_read_is_one_snapshot(tmp_path: Path) -> None:
    async with open_spool(SpoolConfig(), tmp_path / "s.db", FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale("a")])
        seen: list[int] = []
        first = threading.Event()
        written = threading.Event()

        def two_reads(db: sqlite3.Connection) -> None:
            seen.append(db.execute("SELECT count(*) FROM spool").fetchone()[0])
            first.set()
            written.wait(30)
            seen.append(db.execute("SELECT count(*) FROM spool").fetchone()[0])

        reading = asyncio.create_task(spool.file.read(two_reads))
        await asyncio.to_thread(first.wait, 30)
        await spool.append("S1", [make_sale("b")])  # committed between the two statements
        written.set()
        await reading
        assert seen == [1, 1]
        assert (
            await spool.file.read(lambda db: db.execute("SELECT count(*) FROM spool").fetchone()[0])
            == 2
        )


async def test_the_writer_does_not_checkpoint_the_checkpointer_does(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_spool(SpoolConfig(synchronous="NORMAL"), path, FakeClock(T0)) as spool:
        body = b'{"pad":"' + b"x" * 3000 + b'"}'  # about a page per row
        for g in range(15):
            rows = [("sale", f"c{g}-{i}", 1, "pos", body) for i in range(100)]
            await spool.append_rows("S1", rows)
            if spool.checkpoints:
                break
        async with asyncio.timeout(30):
            await spool.checkpointed.wait()
        assert spool.checkpoints >= 1
        # Copied back into the file: the WAL's backlog is below the trigger again.
        assert spool.file.wal_backlog() < 1000
        # The writer's own connection no longer checkpoints at SQLite's 1,000 frames.
        auto = await spool.file.call(
            lambda db: db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert auto > 1000
        pending = spool.stats("S1").pending
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT count(*) FROM spool WHERE state=0").fetchone()[0] == pending
    finally:
        con.close()


async def test_a_dead_checkpointer_is_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.health import Health

    health = Health()
    async with open_spool(SpoolConfig(), tmp_path / "s.db", FakeClock(T0), health) as spool:

        async def broken() -> tuple[int, int, int]:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(spool.file, "checkpoint", broken)
        monkeypatch.setattr(spool.file, "wal_backlog", lambda: 5000)
        await spool.append("S1", [make_sale("d1")])
        task = health.tasks["spool-checkpoint"]
        with pytest.raises(sqlite3.OperationalError):
            await task
        checks = await health.run()
        assert checks["task:spool-checkpoint"].startswith("dead"), checks


async def test_an_ack_lets_staged_live_appends_go_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    gate = threading.Event()
    inside = threading.Event()
    write_group = sqlite_group.write_group
    retire = spool_mod._retire

    def traced_group(db: sqlite3.Connection, group: list[Any]) -> Any:
        if not gate.is_set():
            inside.set()
            gate.wait(30)
        order.append("group:" + ",".join(r[1] for item in group for r in item.rows))
        return write_group(db, group)

    def traced_retire(db: sqlite3.Connection, seqs: list[int]) -> tuple[int, int]:
        order.append("ack")
        return retire(db, seqs)

    async with open_spool(SpoolConfig(), tmp_path / "s.db", FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale("old")])
        lease = await spool.lease("S1", upto=FAR, after_seq=0, limit=10)
        monkeypatch.setattr(spool_mod, "write_group", traced_group)
        monkeypatch.setattr(spool_mod, "_retire", traced_retire)
        first = asyncio.create_task(spool.append("S1", [make_sale("p1")]))
        await asyncio.to_thread(inside.wait, 30)  # p1's group is on the writer's thread
        ack = asyncio.create_task(spool.ack(lease.lease_id, [lease.entries[0].seq]))
        await asyncio.sleep(0)  # the ack is waiting now (a yield, not a wait for work)
        second = asyncio.create_task(spool.append("S1", [make_sale("p2")]))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, second, ack)
    assert order == ["group:p1", "group:p2", "ack"]
