"""The spool's pending index: what start-up reads, and the upgrade from the older index.

Start-up counts pending rows and bytes per store (`PENDING_COUNTS`). With 1M pending rows
among 2M, reading that from the table (bodies and retired rows included) took 3.4 s of a
cold 5.0 s start (bench P7); from the partial covering index `spool_pending0` it reads only
the pending rows' keys and sizes. A spool made by an older version carries the older index
`spool_pending(store, state, seq)`: opening it replaces that index (once, logged) and keeps
every row and count.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from tests.factories import T0, make_sale
from worker.buffers.sqlite import open_spool
from worker.buffers.sqlite_file import PENDING_COUNTS
from worker.clock import FakeClock
from worker.config import SpoolConfig
from worker.errors import SpoolDamaged

FAR = T0 + timedelta(days=1)


def _plan(db: sqlite3.Connection, sql: str) -> str:
    return " ".join(str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + sql))


def _indexes(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        db.close()


async def test_start_up_count_reads_the_partial_index_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_spool(SpoolConfig(), path, FakeClock(T0)):
        pass
    db = sqlite3.connect(path)
    try:
        assert "COVERING INDEX spool_pending0" in _plan(db, PENDING_COUNTS)
        # The lease's page query walks the same index in seq order (no sort step).
        lease = (
            "SELECT seq FROM spool WHERE store='S' AND state=0 AND seq>0 AND received_at<=1 "
            "ORDER BY seq LIMIT 10"
        )
        plan = _plan(db, lease)
        assert "INDEX spool_pending0" in plan
        assert "TEMP B-TREE" not in plan
    finally:
        db.close()


async def test_retired_rows_leave_the_index_and_counts_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    sales = [make_sale(f"r{i}") for i in range(6)]
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        await spool.append("S1", sales[:4])
        await spool.append("S2", sales[4:])
        lease = await spool.lease("S1", upto=FAR, after_seq=0, limit=10)
        await spool.ack(lease.lease_id, [e.seq for e in lease.entries[:3]])
        await spool.release(lease.lease_id)
        before = {s: spool.stats(s) for s in ("S1", "S2")}
    db = sqlite3.connect(path)
    try:
        in_index = db.execute(
            "SELECT count(*) FROM spool INDEXED BY spool_pending0 WHERE state=0"
        ).fetchone()[0]
        assert in_index == 3  # one of S1 and two of S2; the three retired rows are not in it
    finally:
        db.close()
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        assert {s: spool.stats(s) for s in ("S1", "S2")} == before
        assert before["S1"].pending == 1 and before["S1"].bytes > 0
        assert before["S2"].pending == 2


async def test_an_older_spool_gets_the_new_index_once_and_keeps_its_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale("a"), make_sale("b"), make_sale("c")])
        expected = spool.stats("S1")
    # Make it what an older version left: its index, not ours.
    db = sqlite3.connect(path)
    try:
        db.executescript(
            "DROP INDEX spool_pending0;CREATE INDEX spool_pending ON spool(store, state, seq);"
        )
    finally:
        db.close()
    with caplog.at_level(logging.WARNING, logger="possync.spool"):
        async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
            assert spool.stats("S1") == expected
            lease = await spool.lease("S1", upto=FAR, after_seq=0, limit=10)
            assert [e.rid for e in lease.entries] == ["a", "b", "c"]
            await spool.release(lease.lease_id)
    rebuilt = [r for r in caplog.records if getattr(r, "event", None) == "spool.index_rebuild"]
    assert len(rebuilt) == 1
    names = _indexes(path)
    assert "spool_pending" not in names
    assert "spool_pending0" in names
    # The next start finds nothing to replace: no second warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="possync.spool"):
        async with open_spool(SpoolConfig(), path, FakeClock(T0)):
            pass
    assert not [r for r in caplog.records if getattr(r, "event", None) == "spool.index_rebuild"]


async def test_a_damaged_data_page_found_by_a_lease_is_flagged_not_crashed(tmp_path: Path) -> None:
    """Start-up no longer reads the bodies, so damage to a data page shows at the first read
    of it: a lease raises `SpoolDamaged` (503, field "spool"), the file is flagged for the
    next start's salvage, integrity says why, and `oldest` (for /status) degrades to None."""
    path = tmp_path / "s.db"
    big = "x" * 3000  # a few rows per 4 KiB page, so the middle of the file is row data
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale(f"r{i}", attributes={"memo": big}) for i in range(60)])
    data = bytearray(path.read_bytes())
    middle = (len(data) // 4096 // 2) * 4096
    data[middle : middle + 4096] = b"\xa5" * 4096
    path.write_bytes(bytes(data))
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        assert spool.stats("S1").pending == 60  # counted from the index alone
        with pytest.raises(SpoolDamaged) as err:
            await spool.lease("S1", upto=FAR, after_seq=0, limit=100)
        assert err.value.status == 503
        assert err.value.field == "spool"
        assert spool.integrity is not None
        assert "malformed" in spool.integrity
        assert await spool.oldest("S1") is None
    assert (tmp_path / "s.db.damaged").exists()
