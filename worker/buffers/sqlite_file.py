"""The spool's file: its schema, its writer connection on its one thread, its recovery.

`SpoolFile` owns a `sqlite3.Connection` that lives on a private single-thread executor
(`ThreadPoolExecutor(max_workers=1)`). Every write of the spool, the quarantine and the
state rooms runs there, so the file has exactly one writer and the event loop never
blocks on SQLite or fsync. A call is one hop: `run(fn)` hands one function to the thread
and that function is one transaction (`BEGIN IMMEDIATE` .. `COMMIT`), so a group commit
of many requests costs one hop, not one per row. Reads (`read`: lease pages, pending ids,
lists) run on a read-only connection on a second thread, each in one WAL snapshot, and
WAL checkpoints on a third (`checkpoint`; the writer's connection never checkpoints), so
neither queues in front of a group commit (`SqliteFile` with `reader=True`).

`open_spool_file` creates or recovers the file before anything reads it (the recovery
rules are in `worker.buffers.sqlite`'s module head): WAL frame check and copies, move a
damaged file aside, salvage what still reads into a fresh one. It yields the open file and
closes it (WAL checkpoint, then the connection, then the thread) on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from worker.buffers import salvage
from worker.buffers.base import Entry
from worker.config import SpoolConfig
from worker.sqlite_files import SqliteFile, mark_opened, move_aside

log = logging.getLogger("possync.spool")
T = TypeVar("T")

# The spool table alone (bench/pipeline.py's raw baseline writes into the same shape).
SPOOL_TABLE = """
CREATE TABLE IF NOT EXISTS spool(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    store TEXT NOT NULL, kind TEXT NOT NULL, rid TEXT NOT NULL,
    version INTEGER NOT NULL, origin TEXT NOT NULL,
    received_at REAL NOT NULL, state INTEGER NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0, size INTEGER NOT NULL, body BLOB,
    UNIQUE(store, kind, rid));
-- The pending rows (state 0) of each store in seq order, with their size: what leases read,
-- and the start-up count of pending rows and bytes per store reads this index alone, never
-- the table's bodies, nor the retired rows (P7: 3.4 s -> 0.3 s cold for 1M pending of 2M).
-- It replaced spool_pending(store, state, seq), dropped where an older version left it.
DROP INDEX IF EXISTS spool_pending;
CREATE INDEX IF NOT EXISTS spool_pending0 ON spool(store, state, seq, size) WHERE state=0;
"""

# Pending rows and bytes per store, the first read at start-up: it reads `spool_pending0`
# alone (tests/test_spool_index.py holds the plan).
PENDING_COUNTS = (
    "SELECT store, count(*), coalesce(sum(size), 0) FROM spool WHERE state=0 GROUP BY store"
)

# An `Entry`'s fields, in its order.
ENTRY_COLS = "seq, store, kind, rid, version, origin, received_at, held, body"


def lease_slice(
    store: str, after: int, cutoff: float, n: int, db: sqlite3.Connection
) -> list[Entry]:
    """Up to `n` pending rows of a store with seq > after, received at or before cutoff
    (walks `spool_pending0` in seq order)."""
    cur = db.execute(
        f"SELECT {ENTRY_COLS} FROM spool "
        "WHERE store=? AND state=0 AND seq>? AND received_at<=? ORDER BY seq LIMIT ?",
        (store, after, cutoff, n),
    )
    # Each row is an Entry's fields in order: built in C (starmap), not indexed in Python.
    return list(itertools.starmap(Entry, cur))


SCHEMA = (
    SPOOL_TABLE
    + """
CREATE TABLE IF NOT EXISTS quarantine(
    qid INTEGER PRIMARY KEY AUTOINCREMENT,
    store TEXT NOT NULL, kind TEXT NOT NULL, rid TEXT NOT NULL, version INTEGER NOT NULL,
    received_at REAL NOT NULL, quarantined_at REAL NOT NULL, reasons TEXT NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS quarantine_store ON quarantine(store, qid);
CREATE TABLE IF NOT EXISTS audit(
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, action TEXT NOT NULL,
    store TEXT, ref TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS deliveries(
    store TEXT NOT NULL, source TEXT NOT NULL, delivery_id TEXT NOT NULL, seen_at REAL NOT NULL,
    PRIMARY KEY(store, source, delivery_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv(
    store TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(store, key)) WITHOUT ROWID;
"""
)

# A row into the spool table (new key; the caller decides what happens to an old one).
SPOOL_INSERT = (
    "INSERT OR IGNORE INTO spool(store, kind, rid, version, origin, received_at, state, held, size, body) "
    "VALUES(?,?,?,?,?,?,0,0,?,?)"
)


class SpoolFile(SqliteFile):
    """The spool's file: its schema on the shared one-thread connection."""

    def __init__(self, path: Path, synchronous: str) -> None:
        super().__init__(
            path, synchronous, SCHEMA, "spool", reader=True, before_schema=_note_old_index
        )


def _note_old_index(db: sqlite3.Connection) -> None:
    """Before the schema runs: say so when it is about to replace an older version's index."""
    old = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type='index' AND name='spool_pending'"
    ).fetchone()
    if old is not None:
        log.warning(
            "spool: replacing index spool_pending with spool_pending0 (once, after an"
            " upgrade; it reads every pending row, so this start takes longer)",
            extra={"event": "spool.index_rebuild"},
        )


@dataclass(frozen=True, slots=True)
class FileNotes:
    """What opening found, for /readyz and /status."""

    recovered_from: str | None  # where a damaged file went and what was salvaged
    missing: str | None  # a spool opened before was missing or empty


async def _open(
    path: Path,
    cfg: SpoolConfig,
    damaged: Path | None,
    pre: salvage.Preflight,
    probe: Callable[[sqlite3.Connection], T],
) -> tuple[SpoolFile, T, tuple[int, int]]:
    """Open the file, salvage from `damaged`, put back lost WAL frames, run `probe`."""
    file = SpoolFile(path, cfg.synchronous)
    salvaged = (0, 0)
    try:
        await file.connect()
        if damaged is not None:
            got = await file.call(functools.partial(salvage.salvage_into, damaged))
            salvaged = (len(got.pending), len(got.quarantined))
        pre.note = await file.call(functools.partial(salvage.after_open, pre, path))
        found = await file.read(probe)
    except BaseException:
        await file.close(checkpoint=False)
        raise
    return file, found, salvaged


@contextlib.asynccontextmanager
async def open_spool_file(
    path: Path, cfg: SpoolConfig, probe: Callable[[sqlite3.Connection], T]
) -> AsyncIterator[tuple[SpoolFile, T, FileNotes]]:
    """Open (creating or recovering) the spool file; `probe` is the first read of it.

    A `sqlite3.DatabaseError` from the probe is damage the start-up check could not see (a
    data page of the pending index): the file gets the same treatment, found one step later.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Before SQLite reads the WAL (it would silently stop at a bad frame): see salvage.py.
    pre, damaged = await asyncio.to_thread(salvage.prepare_files, path)
    try:
        file, found, salvaged = await _open(path, cfg, damaged, pre, probe)
    except sqlite3.DatabaseError as exc:
        if damaged is not None:
            raise
        damaged = move_aside(path, str(exc) or "malformed", "spool")
        file, found, salvaged = await _open(path, cfg, damaged, pre, probe)
    try:
        await asyncio.to_thread(mark_opened, path)
        notes = FileNotes(salvage.recovered_note(damaged, salvaged, pre), pre.missing)
        yield file, found, notes
    finally:
        await file.close(checkpoint=True)
