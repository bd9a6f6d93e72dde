"""Shredded sales: the SQLite sink's columns of every pending sale, made before the window.

A window spends most of its sink time building ~80 bound parameters per sale (the sale
row, its lines and tenders) in Python with the GIL held. The shredder does that work
between windows: a background task reads the spool's pending sales through its own
read-only connection, decodes each body once, and writes the columns the sink would write
into a side file beside the sink database (`<sink>.shred`). The sink attaches that file
read-only and copies a shredded sale with `INSERT ... SELECT` (one statement per table and
page, no Python per row and no GIL while SQLite copies).

Schema of the side file (no declared column types: values are kept exactly as bound)::

    shred_sales(sid PRIMARY KEY,               -- the spool seq the sale was read from
                store, id, version, shape,     -- shape: SHAPE of the code that shredded it
                body,                          -- the body text the sink would store
                business_date ... line_count)  -- the sale's own columns (`INTRINSIC`)
    shred_lines(sid, line_no, line_id ... restock)    PK (sid, line_no)
    shred_tenders(sid, seq, method ... method_id)     PK (sid, seq)
    shred_state(key PRIMARY KEY, value)        -- 'cursor': the last spool seq read

Invariants:

* The sink holds exactly what the parameter path writes. A shredded sale is used only when
  its store, id, version and `shape` match the batch's row AND its body is byte for byte the
  row's body (`SaleRow.body_text()`). The columns are a pure function of that body (made by
  the same `sale_params` / `line_params` / `tender_params` as the parameter path), so equal
  bodies give equal columns. Anything else (not shredded yet, shredded by another version of
  this code, a body that differs) takes the parameter path.
* Values decided at the window (customer link, warnings, voided, committed_at, batch_id)
  are bound from the batch, never read from the shred.
* The shredder never writes the spool (it opens it `mode=ro`); the sink never writes the
  side file (attached `mode=ro`, so its `BEGIN IMMEDIATE` takes no lock on it). A lost or
  damaged side file costs speed only: the sink re-creates it at open, the parameter path
  covers whatever it lacks.
* The shredder is owned by the health registry (`task:sink-shredder` on /readyz): a bug
  kills it (red); an operational SQLite error (disk full, busy, I/O) is a note on /readyz
  (`sink_shredder`) and is retried after `idle_s`, since shreds only save time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiosqlite

from worker.batch import CommitBatch, SaleRow
from worker.clock import Clock
from worker.config import Config, SqliteSinkConfig
from worker.health import Health
from worker.records import DECODE_ERRORS, SPOOLED_DECODER, Sale, localize, localized_body
from worker.sinks.base import utc_text
from worker.sinks.sqlite_rows import (
    LINE_COLS,
    SALE_COLS,
    TENDER_COLS,
    SqliteDialect,
    json_list,
    line_params,
    newer_only,
    sale_params,
    tender_params,
)

log = logging.getLogger("possync.sink")

# Bump when what a shred row holds, or how it is made, changes: older rows are then ignored.
SHAPE = 1
ALIAS = "shred"

# Positions in `sale_params` of the sale's own columns (the rest is the window's).
INTRINSIC = (*range(3, 9), *range(10, 23))
_SALE_COLS = [SALE_COLS[i] for i in INTRINSIC]
_LINE_COLS = LINE_COLS[3:]  # after store, sale_id, line_no
_TENDER_COLS = TENDER_COLS[3:]  # after store, sale_id, seq

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS shred_sales(sid INTEGER PRIMARY KEY, store, id, version, shape,
    body, {", ".join(_SALE_COLS)});
CREATE INDEX IF NOT EXISTS shred_sales_key ON shred_sales(store, id, version);
CREATE TABLE IF NOT EXISTS shred_lines(sid, line_no, {", ".join(_LINE_COLS)},
    PRIMARY KEY (sid, line_no)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shred_tenders(sid, seq, {", ".join(_TENDER_COLS)},
    PRIMARY KEY (sid, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shred_state(key TEXT PRIMARY KEY, value);
"""


def _marks(n: int) -> str:
    return ", ".join("?" * n)


_PUT_SALE = f"INSERT OR REPLACE INTO shred_sales VALUES ({_marks(6 + len(_SALE_COLS))})"
_PUT_LINE = f"INSERT INTO shred_lines VALUES ({_marks(2 + len(_LINE_COLS))})"
_PUT_TENDER = f"INSERT INTO shred_tenders VALUES ({_marks(2 + len(_TENDER_COLS))})"
_IN = "IN (SELECT value FROM json_each(?))"
_PENDING = (
    "SELECT seq, store, body FROM spool WHERE seq > ? AND kind = 'sale' AND state = 0"
    " AND body IS NOT NULL AND received_at <= ? ORDER BY seq LIMIT ?"
)


def read_only(path: Path) -> str:
    """The URI that opens `path` read-only (percent-encoded: any name is safe in it)."""
    return path.resolve().as_uri() + "?mode=ro"


def shred_path(sink: Path) -> Path:
    """The side file beside the sink database."""
    return Path(f"{sink}.shred")


def _connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    db = sqlite3.connect(
        path, isolation_level=None, timeout=5.0, check_same_thread=check_same_thread
    )
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # a lost shred costs speed, never data
    return db


def prepare(path: Path) -> None:
    """Create the side file and its tables when missing (a damaged one is started over)."""
    try:
        db = _connect(path)
        try:
            db.executescript(SCHEMA)
        finally:
            db.close()
    except sqlite3.DatabaseError:
        log.warning("sink shreds %s unreadable; starting them over", path, exc_info=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        db = _connect(path)
        try:
            db.executescript(SCHEMA)
        finally:
            db.close()


async def attach(writer: aiosqlite.Connection, sink: Path) -> bool:
    """Attach the side file read-only to the sink's writer; False (parameter path only)
    when it cannot be."""
    path = shred_path(sink)
    try:
        await asyncio.to_thread(prepare, path)
        await writer.execute(f"ATTACH DATABASE ? AS {ALIAS}", (read_only(path),))
    except (OSError, sqlite3.Error):
        log.warning("sink shreds %s not attached; every sale takes the parameter path", path)
        return False
    return True


class Shred:
    """One spooled sale's rows of the side file."""

    __slots__ = ("lines", "sale", "tenders")

    def __init__(
        self, sale: tuple[Any, ...], lines: list[tuple[Any, ...]], tenders: list[tuple[Any, ...]]
    ) -> None:
        self.sale = sale
        self.lines = lines
        self.tenders = tenders


def shred(seq: int, store: str, body: bytes, zone: ZoneInfo) -> Shred | None:
    """The side file's rows of one spooled body, made as the window makes its `SaleRow`
    (decoded, localized, the spooled bytes reused as its body, `validation`) and with the
    parameter path's own functions; None when the body is not a sale that path would take."""
    try:
        record = SPOOLED_DECODER.decode(body)
    except DECODE_ERRORS:
        return None
    if not isinstance(record, Sale):
        return None
    sale = localize(record, zone)
    if sale.business_date is None:
        return None
    row = SaleRow(
        sale=sale, version=record.effective_version, body=localized_body(body, record, sale)
    )
    p = sale_params(store, row, None, "", "")
    return Shred(
        (seq, store, sale.id, row.version, SHAPE, p[-1], *(p[i] for i in INTRINSIC)),
        [(seq, *t[2:]) for t in line_params(store, [row])],
        [(seq, *t[2:]) for t in tender_params(store, [row])],
    )


# The window's rows of one page, staged in the writer's temp schema (memory): what the
# window decided, and the shred (`sid`) whose body is byte for byte the row's.
_STAGE_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS window_rows(id TEXT PRIMARY KEY, version, linked,"
    " voided_at, warning, body, sid)"
)
_STAGE = "INSERT INTO temp.window_rows VALUES (?, ?, ?, ?, ?, ?, NULL)"
_MATCH = (
    f"UPDATE temp.window_rows SET sid = (SELECT s.sid FROM {ALIAS}.shred_sales s"
    " WHERE s.store = ? AND s.id = window_rows.id AND s.version = window_rows.version"
    " AND s.shape = ? AND s.body = window_rows.body)"
)
_HITS = "SELECT id FROM temp.window_rows WHERE sid IS NOT NULL"
_KEYED = f"SELECT DISTINCT id FROM {ALIAS}.shred_sales WHERE store = ? AND id {_IN} AND shape = ?"
# Per column of `sales`: from the window (bound or staged), else the shred.
_FROM_WINDOW = {
    "store": "?",
    "id": "w.id",
    "version": "w.version",
    "customer_linked": "w.linked",
    "voided": "(w.voided_at IS NOT NULL)",
    "voided_at": "w.voided_at",
    "warning": "w.warning",
    "committed_at": "?",
    "batch_id": "?",
    "body": "w.body",
}
_COPY_SALES = (
    f"INSERT INTO sales ({', '.join(SALE_COLS)})"
    f" SELECT {', '.join(_FROM_WINDOW.get(c, f's.{c}') for c in SALE_COLS)}"
    f" FROM temp.window_rows w JOIN {ALIAS}.shred_sales s ON s.sid = w.sid"
    " WHERE w.sid IS NOT NULL ORDER BY w.rowid " + newer_only("sales", SALE_COLS, ("store", "id"))
)
_COPY_LINES = (
    f"INSERT INTO sale_lines ({', '.join(LINE_COLS)})"
    f" SELECT ?, w.id, l.line_no, {', '.join(f'l.{c}' for c in _LINE_COLS)}"
    f" FROM temp.window_rows w JOIN {ALIAS}.shred_lines l ON l.sid = w.sid"
    f" WHERE w.sid IS NOT NULL AND w.id {_IN} ORDER BY w.rowid, l.line_no"
)
_COPY_TENDERS = (
    f"INSERT INTO tenders ({', '.join(TENDER_COLS)})"
    f" SELECT ?, w.id, t.seq, {', '.join(f't.{c}' for c in _TENDER_COLS)}"
    f" FROM temp.window_rows w JOIN {ALIAS}.shred_tenders t ON t.sid = w.sid"
    f" WHERE w.sid IS NOT NULL AND w.id {_IN} ORDER BY w.rowid, t.seq"
)


class ShreddedDialect(SqliteDialect):
    """The SQLite dialect that copies shredded sales from the attached side file
    (`INSERT ... SELECT`) and binds every other sale as `SqliteDialect` does."""

    def __init__(self) -> None:
        self.attached = False  # the side file is attached to the current writer
        self.copied = 0  # sales copied from shreds (for tests and the benchmark notes)

    async def upsert_sales(
        self,
        tx: aiosqlite.Connection,
        batch: CommitBatch,
        rows: Sequence[SaleRow],
        committed_at: datetime,
    ) -> dict[str, bool]:
        """Copy the rows whose shred matches; bind the others."""
        if not self.attached or not rows:
            return await super().upsert_sales(tx, batch, rows, committed_at)
        store, at = batch.store, utc_text(committed_at)
        void_at = await self.voids_at(tx, store, rows)
        await tx.execute(_STAGE_TABLE)
        await tx.execute("DELETE FROM temp.window_rows")
        keyed = await tx.execute_fetchall(
            _KEYED, (store, json_list(r.sale.id for r in rows), SHAPE)
        )
        hits: set[str] = set()
        if keyed:
            ids = {r[0] for r in keyed}
            await tx.executemany(
                _STAGE,
                (
                    (
                        r.sale.id,
                        r.version,
                        int(r.customer_linked),
                        void_at.get(r.sale.id),
                        r.warning_text(),
                        r.body_text(),
                    )
                    for r in rows
                    if r.sale.id in ids
                ),
            )
            await tx.execute(_MATCH, (store, SHAPE))
            await tx.execute(_COPY_SALES, (store, at, batch.batch_id))
            hits = {r[0] for r in await tx.execute_fetchall(_HITS, ())}
            self.copied += len(hits)
        rest = [r for r in rows if r.sale.id not in hits]
        if rest:
            await self.upsert_params(tx, batch, rest, void_at, at)
        return {row.sale.id: row.sale.id in void_at for row in rows}

    async def insert_children(
        self, tx: aiosqlite.Connection, store: str, rows: Sequence[SaleRow]
    ) -> None:
        """Copy the lines and tenders of the sales copied from shreds; bind the others."""
        if not self.attached:
            await super().insert_children(tx, store, rows)
            return
        staged = {r[0] for r in await tx.execute_fetchall(_HITS, ())}
        copied = json_list(r.sale.id for r in rows if r.sale.id in staged)
        if staged:
            await tx.execute(_COPY_LINES, (store, copied))
            await tx.execute(_COPY_TENDERS, (store, copied))
        rest = [r for r in rows if r.sale.id not in staged]
        if rest:
            await super().insert_children(tx, store, rest)
        await tx.execute("DELETE FROM temp.window_rows")


class Shredder:
    """Shreds the spool's pending sales into the side file, a slice at a time, on a thread."""

    def __init__(
        self,
        spool: Path,
        shreds: Path,
        zones: dict[str, ZoneInfo],
        clock: Clock,
        *,
        slice_rows: int = 500,
        idle_s: float = 1.0,
        min_age_s: float = 60.0,
    ) -> None:
        self.spool = spool
        self.shreds = shreds
        self.zones = zones
        self.clock = clock
        self.slice_rows = slice_rows
        self.idle_s = idle_s
        # Only sales spooled at least this long ago: shredding costs about as much CPU as
        # decoding a sale, so it runs in the quiet between windows, not beside intake bursts
        # or a window that takes what just arrived (which binds its parameters instead).
        self.min_age_s = min_age_s
        self.stop = asyncio.Event()
        self.caught_up = asyncio.Event()  # set while nothing old enough is left to shred
        self.problem: str | None = None  # the last step's failure, while it lasts
        self.shredded = 0  # sales shredded since start (for tests and /metrics-style reads)
        self._conns: tuple[sqlite3.Connection, sqlite3.Connection] | None = None

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """The spool (read-only) and the side file (with the spool attached read-only, for
        `prune`); opened once and kept (closing the last connection of a WAL file
        checkpoints it: milliseconds per slice). Used by one job at a time, on a thread."""
        if self._conns is None:
            src = sqlite3.connect(
                read_only(self.spool), uri=True, timeout=5.0, check_same_thread=False
            )
            try:
                dst = _connect(self.shreds, check_same_thread=False)
                dst.executescript(SCHEMA)
                dst.execute("ATTACH DATABASE ? AS spool", (read_only(self.spool),))
            except BaseException:
                src.close()
                raise
            self._conns = (src, dst)
        return self._conns

    def close(self) -> None:
        """Close the connections (no job may be running)."""
        if self._conns is not None:
            for db in self._conns:
                db.close()
            self._conns = None

    def step(self) -> int:
        """Shred the next slice of pending sales; how many spool rows were read (0: none)."""
        src, dst = self._open()
        found = dst.execute("SELECT value FROM shred_state WHERE key = 'cursor'").fetchone()
        cursor = int(found[0]) if found else 0
        top = src.execute("SELECT coalesce(max(seq), 0) FROM spool").fetchone()[0]
        if top < cursor:  # a new spool (salvaged, or replaced): read it from the start
            cursor = 0
        cutoff = self.clock.now().timestamp() - self.min_age_s
        rows = src.execute(_PENDING, (cursor, cutoff, self.slice_rows)).fetchall()
        if not rows:
            return 0
        self._write(dst, rows)
        return len(rows)

    def _write(self, dst: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        sales: list[tuple[Any, ...]] = []
        lines: list[tuple[Any, ...]] = []
        tenders: list[tuple[Any, ...]] = []
        for seq, store, body in rows:
            zone = self.zones.get(store)
            made = None if zone is None else shred(seq, store, bytes(body), zone)
            if made is None:
                continue
            sales.append(made.sale)
            lines.extend(made.lines)
            tenders.extend(made.tenders)
        seqs = _json_ids(r[0] for r in rows)
        dst.execute("BEGIN IMMEDIATE")
        try:
            # A seq read again (a new spool file reuses numbers): its old children go first.
            dst.execute(f"DELETE FROM shred_lines WHERE sid {_IN}", (seqs,))
            dst.execute(f"DELETE FROM shred_tenders WHERE sid {_IN}", (seqs,))
            dst.executemany(_PUT_SALE, sales)
            dst.executemany(_PUT_LINE, lines)
            dst.executemany(_PUT_TENDER, tenders)
            dst.execute("INSERT OR REPLACE INTO shred_state VALUES ('cursor', ?)", (rows[-1][0],))
            dst.execute("COMMIT")
        except BaseException:
            if dst.in_transaction:  # SQLITE_FULL and I/O errors roll back by themselves
                dst.execute("ROLLBACK")
            raise
        self.shredded += len(sales)

    def prune(self) -> int:
        """Drop the shreds of sales no longer pending in the spool; how many."""
        _, dst = self._open()
        gone = "NOT EXISTS (SELECT 1 FROM spool.spool p WHERE p.seq = sid AND p.state = 0)"
        dst.execute("BEGIN IMMEDIATE")
        try:
            n = dst.execute(f"DELETE FROM shred_sales WHERE {gone}").rowcount
            dst.execute(f"DELETE FROM shred_lines WHERE {gone}")
            dst.execute(f"DELETE FROM shred_tenders WHERE {gone}")
            dst.execute("COMMIT")
        except BaseException:
            if dst.in_transaction:  # SQLITE_FULL and I/O errors roll back by themselves
                dst.execute("ROLLBACK")
            raise
        return int(n)

    @staticmethod
    async def _finish(job: Callable[[], int]) -> int:
        """Run `job` on a thread; cancelled, still wait for it: it closes its connections
        (one on the spool) before the spool's final checkpoint runs."""
        fut = asyncio.get_running_loop().run_in_executor(None, job)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await fut
            raise

    async def run(self) -> None:
        """Shred until stopped: slice after slice while there is work, then prune once and
        wait `idle_s` (stop-aware, on the injectable clock)."""
        try:
            await self._loop()
        finally:
            self.close()

    async def _loop(self) -> None:
        pruned = True
        while not self.stop.is_set():
            try:
                read = await self._finish(self.step)
                if not read and not pruned:
                    await self._finish(self.prune)
                    pruned = True
            except sqlite3.OperationalError as exc:
                # Disk full, busy past the timeout, I/O: shreds only save time, so this is
                # shown on /readyz as a note and retried; the windows bind every sale.
                if self.problem is None:
                    log.warning("sink shredder: %s; retrying", exc, extra={"event": "sink.shred"})
                self.problem = str(exc)
                self.close()
                read = 0
            else:
                self.problem = None
            if read:
                self.caught_up.clear()
                pruned = False
                continue
            if self.problem is None:
                self.caught_up.set()
            deadline = self.clock.now() + timedelta(seconds=self.idle_s)
            await self.clock.wait_until(deadline, self.stop)


def _json_ids(values: Iterator[int]) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def shredder_for(cfg: Config, clock: Clock) -> Shredder | None:
    """The shredder of a SQLite sink (None for other sinks)."""
    if not isinstance(cfg.sink, SqliteSinkConfig):
        return None
    from worker.sinks.sqlite import sink_path

    zones = {s.id: cfg.store_zone(s) for s in cfg.stores}
    return Shredder(cfg.spool_path, shred_path(sink_path(cfg)), zones, clock)


@contextlib.asynccontextmanager
async def shredding(cfg: Config, clock: Clock, health: Health) -> AsyncIterator[Shredder | None]:
    """Run the SQLite sink's shredder for the life of the context, owned by `health`."""
    shredder = shredder_for(cfg, clock)
    if shredder is None:
        yield None
        return

    def note() -> str | None:
        if shredder.problem is None:
            return None
        return f"sink shredder failing ({shredder.problem}); windows bind every sale meanwhile"

    health.note_sources["sink_shredder"] = note
    try:
        async with health.owned_task("sink-shredder", shredder.run()):
            yield shredder
            shredder.stop.set()
    finally:
        health.note_sources.pop("sink_shredder", None)
