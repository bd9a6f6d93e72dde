"""The tests' own look into possync's SQLite files (the spool, the SQLite sink): a connection of
the test's own for one query, closed at once, so nothing the app holds is shared with it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def column(db: Path, sql: str) -> list[Any]:
    """The first column of every row `sql` selects from the file `db`."""
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute(sql)]
    finally:
        con.close()


def sink_sales(path: Path) -> list[str]:
    """Every committed sale id of S1 in the SQLite sink (duplicates kept)."""
    return column(path, "SELECT id FROM sales WHERE store = 'S1'")


def spooled_sales(db: Path) -> set[str]:
    """The ids of the sales the spool holds."""
    return set(column(db, "SELECT rid FROM spool WHERE kind='sale'"))
