"""The spool's group commit: the body that writes one group of staged appends.

Runs on the spool file's writer thread inside the group's one transaction
(`SpoolFile.run`, called by `SqliteSpool`'s writer). Dedup and replacement rules are the
spool's (module docstring of `worker.buffers.sqlite`): the whole group is first one
executemany; only when some key exists does it fall back to each request, row by row.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence

from worker.buffers.base import AppendResult, SpoolRow
from worker.buffers.sqlite_file import SPOOL_INSERT


class Append:
    """One request's records, staged until the group commit answers it."""

    __slots__ = ("future", "nbytes", "received_at", "rows", "store")

    def __init__(
        self, store: str, rows: Sequence[SpoolRow], received_at: float, nbytes: int
    ) -> None:
        self.store = store
        self.rows = rows  # (kind, rid, version, origin, body)
        self.received_at = received_at  # unix s, one for the whole request
        self.nbytes = nbytes
        self.future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()


def write_group(
    db: sqlite3.Connection, group: list[Append]
) -> list[tuple[AppendResult, dict[str, tuple[int, int]]]]:
    """The group-commit body (runs on the DB thread inside one transaction).

    The whole group is first one executemany (every request of the group: many MQTT
    messages or HTTP pushes of one record each cost one C loop, not a statement each);
    only when some key exists does it fall back to each request, row by row.
    """
    insert = SPOOL_INSERT
    if _insert_all_new(db, insert, group):
        return [(AppendResult(len(item.rows), 0), _new_rows(item)) for item in group]
    out: list[tuple[AppendResult, dict[str, tuple[int, int]]]] = []
    for item in group:
        store = item.store
        n = len(item.rows)
        # A group of one request has just failed this very attempt: skip it.
        if len(group) > 1 and n >= _BULK_FAST_PATH and _insert_all_new(db, insert, (item,)):
            out.append((AppendResult(n, 0), _new_rows(item)))
            continue
        accepted = 0
        drows = 0
        dbytes = 0
        received_at = item.received_at
        for kind, rid, version, origin, body in item.rows:
            size = len(body)
            # Fast path: a new key is one statement (the common case, above all in backfill).
            cur = db.execute(insert, (store, kind, rid, version, origin, received_at, size, body))
            if cur.rowcount == 1:
                accepted += 1
                drows += 1
                dbytes += size
                continue
            old = db.execute(
                "SELECT seq, version, state, size FROM spool WHERE store=? AND kind=? AND rid=?",
                (store, kind, rid),
            ).fetchone()
            if old[1] >= version:
                continue  # duplicate: same or older version than what we have (or committed)
            # A newer version: replace under a new seq so an in-flight commit of the old one
            # cannot retire it.
            db.execute("DELETE FROM spool WHERE seq=?", (old[0],))
            db.execute(insert, (store, kind, rid, version, origin, received_at, size, body))
            accepted += 1
            if old[2] == 0:
                dbytes += size - old[3]
            else:
                drows += 1
                dbytes += size
        out.append((AppendResult(accepted, n - accepted), {store: (drows, dbytes)}))
    return out


# Requests of at least this many rows first try one executemany (backfill, batches).
_BULK_FAST_PATH = 16


def _new_rows(item: Append) -> dict[str, tuple[int, int]]:
    """The pending-count delta of a request whose rows were all new keys."""
    return {item.store: (len(item.rows), item.nbytes)}


def _insert_all_new(db: sqlite3.Connection, insert: str, items: Sequence[Append]) -> bool:
    """Insert every row of `items` in one executemany if all keys are new; else undo, False.

    A fresh history load, or a burst of new sales, is all new keys, so this is SQLite's C
    loop instead of a Python statement per row. Any existing key (a duplicate or a newer
    version, also one repeated inside the group) rolls the attempt back and the caller takes
    the row-by-row path, which classifies each row exactly.
    """
    db.execute("SAVEPOINT bulk")
    before = db.total_changes
    params = [
        (store, k, rid, v, o, at, len(body), body)
        for item in items
        for store, at in ((item.store, item.received_at),)
        for k, rid, v, o, body in item.rows
    ]
    db.executemany(insert, params)
    if db.total_changes - before == len(params):
        db.execute("RELEASE bulk")
        return True
    db.execute("ROLLBACK TO bulk")
    db.execute("RELEASE bulk")
    return False
