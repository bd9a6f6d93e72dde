"""The spool: group commit, dedup by key and version, bounds, leases, recovery.

Includes a hypothesis state machine of the spool against a dict model, with restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.factories import T0, make_sale
from worker.buffers.base import decode_entry
from worker.buffers.sqlite import SqliteSpool, open_spool
from worker.clock import FakeClock
from worker.config import SpoolConfig
from worker.errors import SpoolFull, Unavailable
from worker.health import Health
from worker.records import Void

FAR = T0 + timedelta(days=365)


async def test_append_is_durable_and_dedups(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    path = tmp_path / "spool.db"
    async with open_spool(SpoolConfig(), path, clock) as spool:
        r1 = await spool.append("S1", [make_sale("a"), make_sale("b")])
        r2 = await spool.append("S1", [make_sale("a"), make_sale("b", version=5), make_sale("c")])
        assert (r1.accepted, r1.duplicates) == (2, 0)
        assert (r2.accepted, r2.duplicates) == (2, 1)
        assert spool.stats("S1").pending == 3
    # A separate, plain sqlite3 connection sees every acknowledged row after close.
    con = sqlite3.connect(path)
    rows = dict(con.execute("SELECT rid, version FROM spool WHERE state=0").fetchall())
    con.close()
    assert rows == {"a": 0, "b": 5, "c": 0}


async def test_concurrent_appends_share_group_commits(tmp_path: Path) -> None:
    async with open_spool(SpoolConfig(), tmp_path / "s.db", FakeClock(T0)) as spool:
        results = await asyncio.gather(
            *(spool.append("S1", [make_sale(f"s{i}")]) for i in range(200))
        )
        assert sum(r.accepted for r in results) == 200
        assert spool.groups < 200  # coalesced: fewer transactions than requests
        assert spool.stats("S1").pending == 200


async def test_same_key_twice_in_one_request(tmp_path: Path) -> None:
    async with open_spool(SpoolConfig(), tmp_path / "s.db", FakeClock(T0)) as spool:
        r = await spool.append(
            "S1", [make_sale("a", version=1), make_sale("a", version=1), make_sale("a", version=2)]
        )
        assert (r.accepted, r.duplicates) == (2, 1)
        lease = await spool.lease("S1", upto=FAR, after_seq=0, limit=10)
        assert [(e.rid, e.version) for e in lease.entries] == [("a", 2)]


async def test_cap_refuses_whole_request(tmp_path: Path) -> None:
    cfg = SpoolConfig(max_records_per_store=3)
    async with open_spool(cfg, tmp_path / "s.db", FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale("a"), make_sale("b")])
        with pytest.raises(SpoolFull) as err:
            await spool.append("S1", [make_sale("c"), make_sale("d")])
        assert err.value.retry_after_s > 0
        assert spool.stats("S1").pending == 2
        # Another store has its own bound.
        assert (await spool.append("S2", [make_sale("c"), make_sale("d")])).accepted == 2


async def test_retired_rows_still_dedup_and_newer_versions_return(tmp_path: Path) -> None:
    async with open_spool(SpoolConfig(), tmp_path / "s.db", FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale("a", version=1)])
        lease = await spool.lease("S1", upto=FAR, after_seq=0, limit=10)
        await spool.ack(lease.lease_id, [e.seq for e in lease.entries])
        assert spool.stats("S1").pending == 0
        again = await spool.append("S1", [make_sale("a", version=1)])
        assert (again.accepted, again.duplicates) == (0, 1)
        newer = await spool.append("S1", [make_sale("a", version=2)])
        assert newer.accepted == 1
        assert spool.stats("S1").pending == 1


async def test_newer_version_during_lease_is_not_retired_by_old_ack(tmp_path: Path) -> None:
    async with open_spool(SpoolConfig(), tmp_path / "s.db", FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale("a", version=1)])
        lease = await spool.lease("S1", upto=FAR, after_seq=0, limit=10)
        await spool.append("S1", [make_sale("a", version=2)])
        await spool.ack(lease.lease_id, [e.seq for e in lease.entries])
        pending = await spool.lease("S1", upto=FAR, after_seq=0, limit=10)
        assert [(e.rid, e.version) for e in pending.entries] == [("a", 2)]


async def test_window_cut_uses_arrival_time(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    async with open_spool(SpoolConfig(), tmp_path / "s.db", clock) as spool:
        await spool.append("S1", [make_sale("early")])
        clock.advance(60)
        window = clock.now()
        clock.advance(1)
        await spool.append("S1", [make_sale("late")])
        lease = await spool.lease("S1", upto=window, after_seq=0, limit=10)
        assert [e.rid for e in lease.entries] == ["early"]


async def test_unacked_lease_comes_back_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale("a"), Void(id="a", occurred_at=T0)])
        lease = await spool.lease("S1", upto=FAR, after_seq=0, limit=10)
        assert len(lease.entries) == 2  # leased, never acked: the process "dies" here
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        assert spool.stats("S1").pending == 2
        lease = await spool.lease("S1", upto=FAR, after_seq=0, limit=10)
        assert {type(decode_entry(e)).__name__ for e in lease.entries} == {"Sale", "Void"}


async def test_quarantine_release_and_discard(tmp_path: Path) -> None:
    async with open_spool(SpoolConfig(), tmp_path / "s.db", FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale("bad"), make_sale("bad2")])
        lease = await spool.lease("S1", upto=FAR, after_seq=0, limit=10)
        reasons = [{"rule": "total.sum", "field": "$.total", "message": "off by 1.00"}]
        await spool.quarantine(lease.lease_id, [(e.seq, reasons) for e in lease.entries])
        assert spool.stats("S1").pending == 0
        items = await spool.quarantined.latest("S1")
        assert {i.rid for i in items} == {"bad", "bad2"}
        assert items[0].reasons == reasons
        first, second = items
        assert await spool.quarantined.release(first.qid, make_sale(first.rid), actor="admin")
        assert spool.stats("S1").pending == 1
        assert await spool.quarantined.discard(second.qid, actor="admin", reason="test data")
        assert await spool.quarantined.latest("S1") == []
        audit = await spool.quarantined.audit_log()
        assert [a["action"] for a in audit] == ["quarantine.discard", "quarantine.release"]


async def test_disk_full_is_507_and_spool_stays_consistent(tmp_path: Path) -> None:
    async with open_spool(SpoolConfig(), tmp_path / "s.db", FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale("a")])
        # A real SQLite limit: cap the file at its current page count so the next write fails
        # with SQLITE_FULL, exactly what a full disk reports.
        await spool.file.run(
            lambda db: db.execute(
                "PRAGMA max_page_count=" + str(db.execute("PRAGMA page_count").fetchone()[0])
            )
        )
        from worker.errors import StorageFull

        with pytest.raises(StorageFull):
            await spool.append("S1", [make_sale(f"b{i}") for i in range(500)])
        assert spool.stats("S1").pending == 1
        await spool.file.run(lambda db: db.execute("PRAGMA max_page_count=1073741823"))
        assert (await spool.append("S1", [make_sale("b1")])).accepted == 1


async def test_damaged_spool_is_moved_aside_and_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale(f"x{i}") for i in range(3000)])
    data = bytearray(path.read_bytes())
    # Damage one page in the middle of the table: its rows are lost, the rest must survive.
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle : middle + page] = b"\xff" * page
    path.write_bytes(bytes(data))
    # Damage is found at start-up when the pages it reads (header, schema, pending counts)
    # are hit; otherwise the background check finds it and flags the file for the next start.
    async with open_spool(SpoolConfig(integrity_check_delay_s=0), path, FakeClock(T0)) as spool:
        found_at_start = spool.recovered_from is not None
        if not found_at_start:
            assert spool.integrity_task is not None
            await spool.integrity_task
            assert spool.integrity not in (None, "ok")
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        assert found_at_start or spool.recovered_from is not None
        salvaged = spool.stats("S1").pending
        print(f"damaged one page of {len(data) // page}: salvaged {salvaged} of 3000 pending rows")
        assert 2500 <= salvaged < 3000
        assert (await spool.append("S1", [make_sale("new")])).accepted == 1


async def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        assert spool.recovered_from is not None
        assert Path(spool.recovered_from.split(" (")[0]).exists()
        assert "salvaged 0 pending rows" in spool.recovered_from
        assert (await spool.append("S1", [make_sale("a")])).accepted == 1


async def test_tasks_are_owned_by_health_and_a_dead_writer_fails_waiters(tmp_path: Path) -> None:
    health = Health()
    cfg = SpoolConfig(integrity_check_delay_s=0)
    async with open_spool(cfg, tmp_path / "s.db", FakeClock(T0), health) as spool:
        health.add_check("spool", spool.check)
        assert spool.integrity_task is not None
        await spool.integrity_task  # a one-shot job: done is ok, not "stopped"
        checks = await health.run()
        assert checks["task:spool-writer"] == "ok", checks
        assert checks["task:spool-integrity"] == "ok", checks
        assert checks["spool"] == "ok", checks
        assert any(t.name.startswith("possync-spool") for t in threading.enumerate())

        def broken_hook(records: int, seconds: float) -> None:
            raise RuntimeError("hook bug")

        # The writer dies after writing a group: the group's own waiter is failed, not left
        # hanging, and every later append is refused at once.
        spool.on_group = broken_hook
        with pytest.raises(Unavailable, match="spool writer died"):
            await spool.append("S1", [make_sale("a")])
        assert not spool.writer_alive
        checks = await health.run()
        assert checks["task:spool-writer"].startswith("dead: RuntimeError"), checks
        assert "spool writer died" in checks["spool"], checks
        with pytest.raises(Unavailable, match="spool writer is down"):
            await spool.append("S1", [make_sale("b")])
    # Closed: no task left in the registry, the spool's thread has ended.
    assert health.tasks == {}
    assert not any(t.name.startswith("possync-spool") for t in threading.enumerate())


class SpoolMachine(RuleBasedStateMachine):
    """The spool against a model: dict of key -> (version, pending?)."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "spool.db"
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(T0)
        self.stack: contextlib.AsyncExitStack | None = None
        self.spool: SqliteSpool
        self.model: dict[tuple[str, str], tuple[int, bool]] = {}
        self._open()

    def _open(self) -> None:
        async def go() -> None:
            self.stack = contextlib.AsyncExitStack()
            self.spool = await self.stack.enter_async_context(
                open_spool(SpoolConfig(), self.path, self.clock)
            )

        self.loop.run_until_complete(go())

    def _close(self) -> None:
        assert self.stack is not None
        self.loop.run_until_complete(self.stack.aclose())
        self.stack = None

    @rule(
        store=st.sampled_from(["S1", "S2"]),
        rid=st.sampled_from(list("abcde")),
        version=st.integers(0, 3),
    )
    def append(self, store: str, rid: str, version: int) -> None:
        res = self.loop.run_until_complete(
            self.spool.append(store, [make_sale(rid, version=version)])
        )
        have = self.model.get((store, rid))
        expect_new = have is None or version > have[0]
        assert res.accepted == int(expect_new)
        if expect_new:
            self.model[(store, rid)] = (version, True)

    @rule(
        store=st.sampled_from(["S1", "S2"]),
        n=st.integers(0, 5),
        action=st.sampled_from(["ack", "hold", "release", "quarantine"]),
    )
    def commit_some(self, store: str, n: int, action: str) -> None:
        lease = self.loop.run_until_complete(
            self.spool.lease(store, upto=FAR, after_seq=0, limit=n)
        )
        seqs = [e.seq for e in lease.entries]
        if action == "ack":
            self.loop.run_until_complete(self.spool.ack(lease.lease_id, seqs))
            for e in lease.entries:
                self.model[(store, e.rid)] = (e.version, False)
        elif action == "hold":
            self.loop.run_until_complete(self.spool.hold(lease.lease_id, seqs))
        elif action == "quarantine":
            self.loop.run_until_complete(
                self.spool.quarantine(lease.lease_id, [(s, [{"rule": "x"}]) for s in seqs])
            )
            for e in lease.entries:
                del self.model[(store, e.rid)]
        else:
            self.loop.run_until_complete(self.spool.release(lease.lease_id))

    @precondition(lambda self: self.stack is not None)
    @rule()
    def restart(self) -> None:
        self._close()
        self._open()

    @invariant()
    def pending_matches_model(self) -> None:
        for store in ("S1", "S2"):
            want = {
                rid: v for (s, rid), (v, pending) in self.model.items() if s == store and pending
            }
            lease = self.loop.run_until_complete(
                self.spool.lease(store, upto=FAR, after_seq=0, limit=100)
            )
            self.loop.run_until_complete(self.spool.release(lease.lease_id))
            assert {e.rid: e.version for e in lease.entries} == want
            assert self.spool.stats(store).pending == len(want)

    def teardown(self) -> None:
        if self.stack is not None:
            self._close()
        self.loop.close()
        self.dir.cleanup()


TestSpoolMachine = SpoolMachine.TestCase


async def test_bulk_append_fast_path_and_its_fallback(tmp_path: Path) -> None:
    async with open_spool(SpoolConfig(), tmp_path / "s.db", FakeClock(T0)) as spool:
        first = await spool.append(
            "S1", [make_sale(f"b{i}", version=1) for i in range(100)], priority="bulk"
        )
        assert (first.accepted, first.duplicates) == (100, 0)
        # Mixed request: 50 duplicates, 25 newer versions, 25 new keys: the all-new attempt is
        # rolled back and every row is classified one by one.
        mixed = (
            [make_sale(f"b{i}", version=1) for i in range(50)]
            + [make_sale(f"b{i}", version=2) for i in range(50, 75)]
            + [make_sale(f"n{i}") for i in range(25)]
        )
        second = await spool.append("S1", mixed, priority="bulk")
        assert (second.accepted, second.duplicates) == (50, 50)
        assert spool.stats("S1").pending == 125
        lease = await spool.lease("S1", upto=FAR, after_seq=0, limit=1000)
        versions = {e.rid: e.version for e in lease.entries}
        assert versions["b0"] == 1 and versions["b60"] == 2 and "n3" in versions
        assert len(lease.entries) == 125
