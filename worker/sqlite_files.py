"""Damaged SQLite files: detect at open, move aside, salvage what still reads.

Used by the spool and the embedded SQLite sink so that a corrupted file is reported on
/readyz and /status and the service keeps serving, instead of crash-looping at start-up.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("possync.files")


def quick_check(path: Path) -> str | None:
    """None if the file is sound (or absent), else what is wrong with it."""
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return str(exc) or type(exc).__name__
    if row is None or row[0] != "ok":
        return str(row[0] if row else "quick_check returned nothing")
    return None


def cheap_check(path: Path) -> str | None:
    """A start-up check that reads a few pages, not the whole file.

    Catches a garbage header, an unreadable schema and a truncated file (page_count x
    page_size beyond the file's size). Damage inside data pages is found by the full
    `quick_check`, which runs in the background after start-up (`flag_file` carries its
    verdict to the next start).
    """
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            pages = con.execute("PRAGMA page_count").fetchone()[0]
            size = con.execute("PRAGMA page_size").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return str(exc) or type(exc).__name__
    wal = Path(str(path) + "-wal")
    # With a WAL, pages may still live only in the WAL: compare against both files.
    have = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    if pages * size > have:
        return f"file is truncated: {pages} pages of {size} bytes expected, {have} bytes present"
    return None


def flag_file(path: Path) -> Path:
    """Where a background check leaves its verdict for the next start."""
    return path.with_name(path.name + ".damaged")


def move_aside(path: Path, problem: str, what: str) -> Path:
    """Rename the file (and its -wal/-shm) to `<name>.corrupt-<stamp>`; return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(target) + suffix))
    log.error(
        "%s %s is damaged (%s); moved aside to %s, starting fresh", what, path, problem, target
    )
    return target


def salvage_rows(
    path: Path, table: str, columns: str, where: str = "1", step: int = 1000
) -> Iterator[tuple[Any, ...]]:
    """Yield every row of `table` that still reads, walking rowid ranges around bad pages."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return
    try:
        try:
            top = con.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0]
        except sqlite3.DatabaseError:
            top = None
        if top is None:
            top = 1 << 40  # unknown: walk until the ranges stop yielding
        lo = 0
        empty_runs = 0
        while lo <= top and empty_runs < 1000:
            hi = lo + step
            sql = f"SELECT {columns} FROM {table} WHERE rowid > ? AND rowid <= ? AND ({where})"
            try:
                rows = con.execute(sql, (lo, hi)).fetchall()
            except sqlite3.DatabaseError:
                rows = []
                if step > 1:  # narrow down around the damaged page
                    yield from _salvage_range(con, sql, lo, hi)
            empty_runs = 0 if rows else empty_runs + 1
            yield from rows
            lo = hi
    finally:
        con.close()


def _salvage_range(
    con: sqlite3.Connection, sql: str, lo: int, hi: int
) -> Iterator[tuple[Any, ...]]:
    for rid in range(lo, hi):
        try:
            yield from con.execute(sql, (rid, rid + 1)).fetchall()
        except sqlite3.DatabaseError:
            continue
