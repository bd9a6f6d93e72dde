"""One group commit, one executemany: concurrent appends written as one group, exactly.

The writer first inserts a whole group in one executemany and falls back to the exact
row-by-row path when any key exists. These tests hold the grouped writer to the answers of
the same appends made one at a time (the row-by-row path alone), on a real spool file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tests.factories import T0, make_sale
from worker.buffers.base import AppendResult
from worker.buffers.sqlite import open_spool
from worker.clock import FakeClock
from worker.config import SpoolConfig
from worker.errors import SpoolFull
from worker.records import Sale, encode

Push = tuple[str, list[Sale]]

# Store, records: new keys, a repeat of an earlier key, a newer version, one key twice in
# a group, two stores, single-record pushes (MQTT) and larger ones (>= the bulk fast path).
SEED: list[Push] = [("S1", [make_sale("old")]), ("S2", [make_sale("o2", version=3)])]
GROUP: list[Push] = [
    ("S1", [make_sale("m1")]),
    ("S1", [make_sale("m2")]),
    ("S2", [make_sale("o2", version=3)]),  # duplicate of a committed key
    ("S1", [make_sale("old", version=2)]),  # newer version of a committed key
    ("S1", [make_sale("m1")]),  # the same key again in this very group
    ("S1", [make_sale(f"b{i}") for i in range(20)]),  # bulk-sized, all new
    ("S2", [make_sale("o2", version=4), make_sale("n2")]),
    ("S1", [make_sale(f"b{i}") for i in range(18, 24)]),  # overlaps the bulk one
]


def _table(path: Path) -> list[tuple[str, str, int, int, int]]:
    con = sqlite3.connect(path)
    try:
        return con.execute(
            "SELECT store, rid, version, state, size FROM spool ORDER BY store, rid"
        ).fetchall()
    finally:
        con.close()


async def _grouped(path: Path) -> tuple[list[AppendResult], int, dict[str, int]]:
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        for store, records in SEED:
            await spool.append(store, records)
        before = spool.groups
        # Staged in one loop iteration: the writer wakes after all of them, one group.
        results = await asyncio.gather(*(spool.append(s, r) for s, r in GROUP))
        pending = {s: spool.stats(s).pending for s in ("S1", "S2")}
        return list(results), spool.groups - before, pending


async def _one_at_a_time(path: Path) -> tuple[list[AppendResult], dict[str, int]]:
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        for store, records in SEED:
            await spool.append(store, records)
        results = [await spool.append(s, r) for s, r in GROUP]
        pending = {s: spool.stats(s).pending for s in ("S1", "S2")}
        return results, pending


async def test_a_mixed_group_answers_as_appends_one_at_a_time(tmp_path: Path) -> None:
    grouped, groups, pending = await _grouped(tmp_path / "grouped.db")
    alone, pending_alone = await _one_at_a_time(tmp_path / "alone.db")
    assert groups == 1  # the whole burst was one transaction
    assert grouped == alone
    assert pending == pending_alone
    assert _table(tmp_path / "grouped.db") == _table(tmp_path / "alone.db")
    # And the reference itself is what the rules say, not merely equal to the grouped path.
    assert [(r.accepted, r.duplicates) for r in alone] == [
        (1, 0), (1, 0), (0, 1), (1, 0), (0, 1), (20, 0), (2, 0), (4, 2),
    ]  # fmt: skip


async def test_a_burst_of_new_single_records_is_one_group(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        results = await asyncio.gather(
            *(spool.append("S1", [make_sale(f"q{i}")]) for i in range(300))
        )
        assert [(r.accepted, r.duplicates) for r in results] == [(1, 0)] * 300
        assert spool.groups == 1
        assert spool.stats("S1").pending == 300
    rows = _table(path)
    assert len(rows) == 300
    assert all(state == 0 and size > 0 for _, _, _, state, size in rows)


async def test_a_failed_group_attempt_leaves_nothing_behind(tmp_path: Path) -> None:
    # The all-new attempt of a group with one existing key is rolled back before the
    # row-by-row path: no row may be doubled or lost, and the arrival order of the new
    # keys is the order of the requests.
    path = tmp_path / "s.db"
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale("k5")])
        burst = [spool.append("S1", [make_sale(f"k{i}")]) for i in range(10)]
        results = await asyncio.gather(*burst)
        assert [r.duplicates for r in results] == [0] * 5 + [1] + [0] * 4
    con = sqlite3.connect(path)
    try:
        order = [r[0] for r in con.execute("SELECT rid FROM spool ORDER BY seq")]
    finally:
        con.close()
    assert order == ["k5"] + [f"k{i}" for i in range(10) if i != 5]


def _full_table(path: Path) -> list[tuple[object, ...]]:
    con = sqlite3.connect(path)
    try:
        return con.execute(
            "SELECT seq, store, kind, rid, version, origin, received_at, state, size, body"
            " FROM spool ORDER BY seq"
        ).fetchall()
    finally:
        con.close()


async def test_append_rows_writes_and_answers_as_append(tmp_path: Path) -> None:
    """The backfill's pre-encoded rows: the same group, answers and bytes as `append`."""

    def rows(records: list[Sale]) -> list[tuple[str, str, int, str, bytes]]:
        return [("sale", r.id, r.effective_version, r.origin, encode(r)) for r in records]

    async with open_spool(SpoolConfig(), tmp_path / "rows.db", FakeClock(T0)) as spool:
        for store, records in SEED:
            await spool.append_rows(store, rows(records))
        got = await asyncio.gather(*(spool.append_rows(s, rows(r)) for s, r in GROUP))
        pending = {s: spool.stats(s).pending for s in ("S1", "S2")}
        assert spool.stats("S1").bytes == sum(
            size for store, _, _, state, size in _table(tmp_path / "rows.db")
            if store == "S1" and state == 0
        )  # fmt: skip
    grouped, _, pending_grouped = await _grouped(tmp_path / "grouped.db")
    assert got == grouped and pending == pending_grouped
    assert _full_table(tmp_path / "rows.db") == _full_table(tmp_path / "grouped.db")


async def test_check_room_rows_refuses_what_append_rows_would(tmp_path: Path) -> None:
    cfg = SpoolConfig(max_records_per_store=3)
    async with open_spool(cfg, tmp_path / "s.db", FakeClock(T0)) as spool:
        spool.check_room_rows("S1", 3, 100)
        with pytest.raises(SpoolFull):
            spool.check_room_rows("S1", 4, 100)
        body = encode(make_sale("x"))
        with pytest.raises(SpoolFull):
            await spool.append_rows("S1", [("sale", f"x{i}", 0, "pos", body) for i in range(4)])
        assert spool.stats("S1").pending == 0
