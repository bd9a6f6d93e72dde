"""The WAL frame checker against WAL files SQLite itself wrote."""

from __future__ import annotations

import shutil
import sqlite3
import struct
from pathlib import Path

from worker.buffers.wal import FRAME_HEADER, WAL_HEADER, check_wal, lost_pages, wal_checksum


def _live_wal(tmp: Path, transactions: int, rows_per_tx: int = 5) -> tuple[Path, Path]:
    """A db with `transactions` committed in its WAL; a copy of db + WAL as kill -9 leaves it."""
    src = tmp / "live.db"
    con = sqlite3.connect(src, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for tx in range(transactions):
        con.execute("BEGIN")
        for r in range(rows_per_tx):
            con.execute("INSERT INTO t(v) VALUES(?)", (f"tx{tx}-row{r}-" + "x" * 200,))
        con.execute("COMMIT")
    crash = tmp / "crash"
    crash.mkdir()
    shutil.copyfile(src, crash / "c.db")
    shutil.copyfile(Path(str(src) + "-wal"), crash / "c.db-wal")
    con.close()
    return crash / "c.db", crash / "c.db-wal"


def _rows(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        con.close()


def test_checksum_matches_what_sqlite_wrote(tmp_path: Path) -> None:
    _, wal = _live_wal(tmp_path, 40)
    report = check_wal(wal)
    assert report.header_ok and report.page_size == 4096
    assert len(report.frames) > 40
    assert all(f.current and f.intact for f in report.frames)
    assert report.break_at is None and not report.drops_data
    assert report.valid_frames == len(report.frames)  # the last frame is a commit
    # The header's own checksum, recomputed from its first 24 bytes, is the stored one.
    data = wal.read_bytes()
    magic = struct.unpack_from(">I", data)[0]
    stored = struct.unpack_from(">2I", data, 24)
    assert wal_checksum(data[:24], 0, 0, big_endian=magic & 1 == 1) == stored


def test_damage_in_the_middle_is_found_and_sqlite_really_drops_the_rest(tmp_path: Path) -> None:
    db, wal = _live_wal(tmp_path, 200)
    report = check_wal(wal)
    step = FRAME_HEADER + report.page_size
    middle = len(report.frames) // 2
    data = bytearray(wal.read_bytes())
    at = WAL_HEADER + middle * step + FRAME_HEADER + 1000
    data[at : at + 64] = bytes(b ^ 0x5A for b in data[at : at + 64])
    wal.write_bytes(bytes(data))

    report = check_wal(wal)
    assert report.break_at == middle
    assert [f.index for f in report.damaged] == [middle]
    assert report.drops_data
    assert report.lost_commits >= 90  # about half of 200 one-frame transactions
    assert all(f.intact for f in report.lost[1:])
    assert "fails its checksum" in report.summary()
    # The intact lost frames are readable page images; the damaged one is not among them.
    pages = lost_pages(bytes(data), report)
    bad = report.frames[middle]
    assert pages
    for pgno, image in pages.items():
        newest = [f for f in report.lost if f.intact and f.page == pgno][-1]
        start = newest.offset + FRAME_HEADER
        assert image == bytes(data[start : start + report.page_size])
    assert bad.page in pages or not any(f.intact and f.page == bad.page for f in report.lost)

    # What SQLite does with this WAL: it keeps the valid prefix only, and integrity is "ok".
    kept = _rows(db)
    assert kept < 200 * 5 * 0.6
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_frames_of_an_older_generation_are_not_damage(tmp_path: Path) -> None:
    src = tmp_path / "g.db"
    con = sqlite3.connect(src, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(50):
        con.execute("INSERT INTO t(v) VALUES(?)", ("y" * 300 + str(i),))
    con.execute("PRAGMA wal_checkpoint(PASSIVE)")  # WAL restarts on the next write
    con.execute("INSERT INTO t(v) VALUES('after')")
    data = Path(str(src) + "-wal").read_bytes()
    con.close()
    copy = tmp_path / "copy.db-wal"
    copy.write_bytes(data)
    report = check_wal(copy)
    assert any(not f.current for f in report.frames)  # the old tail is still in the file
    assert report.break_at is None and not report.drops_data


def test_unreadable_header_with_frames_behind_it_drops_data(tmp_path: Path) -> None:
    _, wal = _live_wal(tmp_path, 10)
    data = bytearray(wal.read_bytes())
    data[0:4] = b"\x00\x00\x00\x00"
    wal.write_bytes(bytes(data))
    report = check_wal(wal)
    assert report.problem is not None and report.drops_data


def test_header_checksum_damage_drops_every_frame(tmp_path: Path) -> None:
    _, wal = _live_wal(tmp_path, 10)
    data = bytearray(wal.read_bytes())
    data[12] ^= 0xFF  # the checkpoint sequence: covered by the header checksum
    wal.write_bytes(bytes(data))
    report = check_wal(wal)
    assert not report.header_ok and report.break_at == 0
    assert report.lost_commits == 11 and report.drops_data  # CREATE TABLE + 10 inserts


def test_absent_and_empty_wal_are_fine(tmp_path: Path) -> None:
    assert not check_wal(tmp_path / "none-wal").drops_data
    (tmp_path / "e-wal").write_bytes(b"")
    assert not check_wal(tmp_path / "e-wal").drops_data
