"""Spool damage is never silent, and the salvage is complete and bounded in work.

Each test sends what the probe of issue 12 sent: a spool truncated to half, a 1.7 MB
garbage file, a zero-length file, and 64 damaged bytes in the middle of the WAL.
"""

from __future__ import annotations

import logging
import random
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from tests.factories import T0, make_sale, sale_dict
from worker.buffers.salvage import read_damaged, wal_flag
from worker.buffers.sqlite import open_spool
from worker.buffers.wal import FRAME_HEADER, check_wal
from worker.clock import FakeClock
from worker.config import SpoolConfig
from worker.errors import Unavailable


async def _filled(path: Path, n: int, groups: int = 1) -> None:
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        per = n // groups
        for g in range(groups):
            await spool.append("S1", [make_sale(f"x{g * per + i}") for i in range(per)])


def _pending(path: Path) -> dict[str, bytes]:
    con = sqlite3.connect(path)
    try:
        return {
            r[0]: bytes(r[1])
            for r in con.execute("SELECT rid, body FROM spool WHERE state=0 AND body IS NOT NULL")
        }
    finally:
        con.close()


def _readable_row_by_row(path: Path, top: int) -> tuple[set[str], int]:
    """The oracle: every row SQLite itself can still read, one rowid at a time.

    Returns the rows with an intact body and the count of rows read with a damaged one
    (SQLite reads the part of a page past the end of a cut file as zeros).
    """
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.execute("PRAGMA writable_schema=ON")
    out: set[str] = set()
    damaged = 0
    for rowid in range(1, top + 1):
        try:
            got = con.execute("SELECT rid, body FROM spool WHERE rowid=?", (rowid,)).fetchall()
        except sqlite3.DatabaseError:
            continue
        for rid, body in got:
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                damaged += 1
                continue
            out.add(rid)
    con.close()
    return out, damaged


async def test_spool_truncated_to_half_salvages_every_row_that_reads(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    await _filled(path, 2000)
    before = _pending(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    copy = tmp_path / "copy.db"
    shutil.copyfile(path, copy)
    oracle, torn = _readable_row_by_row(copy, 2000)
    work = read_damaged(copy)

    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        assert spool.recovered_from is not None and "salvaged" in spool.recovered_from
        salvaged = spool.stats("S1").pending
    after = _pending(path)
    print(
        f"truncated to half: {len(oracle)} rows read one by one (+{torn} with a body cut "
        f"short), salvaged {salvaged} of 2000 "
        f"({work.from_pages} only by page scan); {work.sql.reads} SQL reads "
        f"({work.sql.failed_reads} failed), {work.pages_scanned} pages scanned"
    )
    assert len(oracle) >= 500  # about half the rows live in the half that is left
    assert oracle <= set(after)  # nothing SQLite can still read is left behind
    assert all(after[rid] == before[rid] for rid in after)  # bodies exactly as spooled
    assert salvaged == len(after)
    assert work.sql.reads < 200  # ranges and bisection, not one read per row


async def test_garbage_file_salvage_short_circuits(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    rng = random.Random(12)
    path.write_bytes(rng.randbytes(1_700_000))
    work = read_damaged(path)
    # The schema does not read: one SQL attempt per table, then only a pass over the pages.
    assert work.sql.reads == 2 and not work.sql.readable
    assert work.pages_scanned == -(-1_700_000 // 4096)  # the last one is cut short
    assert work.pending == [] and work.quarantined == []
    async with open_spool(SpoolConfig(), path, FakeClock(T0)) as spool:
        assert spool.recovered_from is not None
        assert "salvaged 0 pending rows" in spool.recovered_from
        assert (await spool.append("S1", [make_sale("a")])).accepted == 1


async def test_damaged_interior_page_rows_are_found_by_the_page_scan(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    await _filled(path, 3000)
    con = sqlite3.connect(path)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name='spool'").fetchone()[0]
    con.close()
    data = bytearray(path.read_bytes())
    start = (root - 1) * 4096
    data[start : start + 4096] = b"\xa5" * 4096  # the table's root: no SQL path to any row
    path.write_bytes(bytes(data))
    work = read_damaged(path)
    print(f"root page damaged: {len(work.pending)} of 3000 by page scan, sql rows {work.sql.rows}")
    assert work.sql.rows == 0
    assert len(work.pending) == 3000 and work.from_pages == 3000


async def test_zero_length_spool_is_reported_unless_first_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.appserver import make_config, running  # the app: imported only where it runs

    cfg = make_config(tmp_path)
    path = cfg.spool_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # a fresh install may well find an empty file: not suspicious
    caplog.set_level(logging.WARNING, logger="possync")
    async with running(cfg, T0) as h:
        r = await h.client.get("/readyz", headers=h.admin())
        assert "spool_file" not in (await r.json())["notes"]
        push = await h.client.post(
            "/v1/push/canonical/S1",
            data=orjson.dumps(sale_dict("Z1")),
            headers={**h.store(), "Content-Type": "application/json"},
        )
        assert push.status == 202
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    path.write_bytes(b"")  # now the spool held data, and it is gone
    async with running(cfg, T0) as h:
        r = await h.client.get("/readyz", headers=h.admin())
        notes = (await r.json())["notes"]
        assert "zero bytes" in notes["spool_file"]
        s = await h.client.get("/status", headers=h.admin())
        assert "zero bytes" in (await s.json())["notes"]["spool_file"]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("zero bytes" in r.getMessage() for r in warned)


async def test_wal_damage_after_a_crash_is_reported_and_salvaged(tmp_path: Path) -> None:
    live = tmp_path / "live" / "spool.db"
    crash = tmp_path / "crash" / "spool.db"
    crash.parent.mkdir()
    async with open_spool(SpoolConfig(synchronous="NORMAL"), live, FakeClock(T0)) as spool:
        for i in range(1000):  # one group (transaction) per sale, as live pushes are
            await spool.append("S1", [make_sale(f"w{i}")])
        # What kill -9 leaves on disk: the database and its WAL, no checkpoint.
        shutil.copyfile(live, crash)
        shutil.copyfile(str(live) + "-wal", str(crash) + "-wal")
    wal = Path(str(crash) + "-wal")
    report = check_wal(wal)
    current = [f for f in report.frames if f.current]
    target = current[len(current) // 2]
    data = bytearray(wal.read_bytes())
    at = target.offset + FRAME_HEADER + 2000
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    wal.write_bytes(bytes(data))

    # What plain SQLite makes of it: a consistent, older spool.
    plain = tmp_path / "plain" / "spool.db"
    plain.parent.mkdir()
    shutil.copyfile(crash, plain)
    shutil.copyfile(wal, str(plain) + "-wal")
    sqlite_alone = len(_pending(plain))

    async with open_spool(SpoolConfig(), crash, FakeClock(T0)) as spool:
        salvaged = spool.stats("S1").pending
        with pytest.raises(Unavailable) as red:
            await spool.check_wal()
        assert red.value.field == "spool_wal"
        assert "fails its checksum" in str(red.value)
        assert spool.recovered_from is not None and "WAL damaged" in spool.recovered_from
    kept = sorted(p.name for p in crash.parent.iterdir() if ".wal-damaged-" in p.name)
    print(f"WAL damage: SQLite alone keeps {sqlite_alone} of 1000; salvaged {salvaged}")
    assert len(kept) == 2  # the database and its WAL, as they were
    assert sqlite_alone < salvaged
    # At most the rows of the one damaged page image are lost (a 4 KiB page holds < 20).
    assert 1000 - salvaged <= 20
    assert wal_flag(crash).exists()
    wal_flag(crash).unlink()  # the operator has looked
    async with open_spool(SpoolConfig(), crash, FakeClock(T0)) as spool:
        await spool.check_wal()
        assert spool.stats("S1").pending == salvaged


async def test_acks_and_quarantine_moves_past_a_wal_break_are_completed(tmp_path: Path) -> None:
    live = tmp_path / "live" / "spool.db"
    crash = tmp_path / "crash" / "spool.db"
    crash.parent.mkdir()
    wal = Path(str(live) + "-wal")
    far = T0 + timedelta(days=1)
    async with open_spool(SpoolConfig(synchronous="NORMAL"), live, FakeClock(T0)) as spool:
        for i in range(40):
            await spool.append("S1", [make_sale(f"a{i}")])
        mark = len([f for f in check_wal(wal).frames if f.current])
        for i in range(40, 120):
            await spool.append("S1", [make_sale(f"a{i}")])
        lease = await spool.lease("S1", upto=far, after_seq=0, limit=60)
        await spool.ack(lease.lease_id, [e.seq for e in lease.entries[:50]])
        await spool.quarantine(
            lease.lease_id,
            [
                (e.seq, [{"rule": "total.sum", "field": "total", "message": "x"}])
                for e in lease.entries[50:]
            ],
        )
        shutil.copyfile(live, crash)
        shutil.copyfile(wal, str(crash) + "-wal")
    cwal = Path(str(crash) + "-wal")
    report = check_wal(cwal)
    assert all(f.current for f in report.frames)  # no checkpoint restarted this WAL
    target = report.frames[mark + 2]  # among the appends after the first 40
    data = bytearray(cwal.read_bytes())
    at = target.offset + FRAME_HEADER + 100
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    cwal.write_bytes(bytes(data))

    async with open_spool(SpoolConfig(), crash, FakeClock(T0)) as spool:
        pending = spool.stats("S1").pending
        quarantined = await spool.quarantined.count("S1")
    rows = _pending(crash)
    print(f"WAL break before acks: pending {pending}, quarantined {quarantined}")
    assert quarantined == 10
    # 50 retired and 10 moved: 60 of the 120 remain pending, less at most one page's rows.
    assert 60 - 10 <= pending <= 60
    assert not {f"a{i}" for i in range(60)} & set(rows)


async def test_frames_of_the_broken_transaction_before_the_bad_frame_are_salvaged(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live" / "spool.db"
    crash = tmp_path / "crash" / "spool.db"
    crash.parent.mkdir()
    wal = Path(str(live) + "-wal")
    async with open_spool(SpoolConfig(synchronous="NORMAL"), live, FakeClock(T0)) as spool:
        await spool.append("S1", [make_sale(f"b{i}") for i in range(40)])
        before = len(check_wal(wal).frames)
        await spool.append("S1", [make_sale(f"c{i}") for i in range(200)])  # ~40 frames
        after = len(check_wal(wal).frames)
        for i in range(20):
            await spool.append("S1", [make_sale(f"d{i}")])
        shutil.copyfile(live, crash)
        shutil.copyfile(wal, str(crash) + "-wal")
    cwal = Path(str(crash) + "-wal")
    report = check_wal(cwal)
    target = report.frames[after - 3]  # late in the big transaction, not its commit frame
    assert before < target.index and not target.commit_size
    data = bytearray(cwal.read_bytes())
    at = target.offset + FRAME_HEADER + 3000
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    cwal.write_bytes(bytes(data))
    report = check_wal(cwal)
    assert report.break_at == target.index
    assert report.valid_frames <= before < target.index
    async with open_spool(SpoolConfig(), crash, FakeClock(T0)) as spool:
        pending = spool.stats("S1").pending
    print(f"bad frame late in a 200-row transaction: pending {pending} of 260")
    assert 260 - 10 <= pending <= 260


async def test_wal_with_a_damaged_header_is_salvaged_whole(tmp_path: Path) -> None:
    live = tmp_path / "live" / "spool.db"
    crash = tmp_path / "crash" / "spool.db"
    crash.parent.mkdir()
    wal = Path(str(live) + "-wal")
    async with open_spool(SpoolConfig(synchronous="NORMAL"), live, FakeClock(T0)) as spool:
        for i in range(100):
            await spool.append("S1", [make_sale(f"h{i}")])
        shutil.copyfile(live, crash)
        shutil.copyfile(wal, str(crash) + "-wal")
    cwal = Path(str(crash) + "-wal")
    data = bytearray(cwal.read_bytes())
    data[12] ^= 0xFF  # checkpoint sequence: SQLite now ignores the whole WAL
    cwal.write_bytes(bytes(data))
    plain = tmp_path / "plain" / "spool.db"
    plain.parent.mkdir()
    shutil.copyfile(crash, plain)
    shutil.copyfile(cwal, str(plain) + "-wal")
    try:
        sqlite_alone = len(_pending(plain))
    except sqlite3.OperationalError:  # never checkpointed: without the WAL there is no table
        sqlite_alone = 0
    async with open_spool(SpoolConfig(), crash, FakeClock(T0)) as spool:
        pending = spool.stats("S1").pending
        with pytest.raises(Unavailable, match="header checksum"):
            await spool.check_wal()
    print(f"WAL header damaged: SQLite alone keeps {sqlite_alone} of 100, salvaged {pending}")
    assert sqlite_alone < 100
    assert pending == 100
