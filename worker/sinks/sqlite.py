"""SQLite sink: the embedded clienteling database (aiosqlite, WAL).

Schema (money is TEXT holding an exact decimal string, never REAL; instants are TEXT in
UTC, ISO-8601 with microseconds, so text order is time order; dates are TEXT YYYY-MM-DD):

    customers(store, id, version, first_name, last_name, email, phone, status, updated_at,
              synced_at, body)                                          PK (store, id)
    products(store, id, version, sku, name, category, price, currency, status,
             is_unique_piece, updated_at, synced_at, body)              PK (store, id)
    sales(store, id, version, business_date, occurred_at, kind, origin, channel,
          customer_id, customer_linked, employee_id, original_id, display_number,
          location_id, register_id, currency, subtotal, tax, total, shipping, fees, tip,
          line_count, voided, voided_at, warning, committed_at, batch_id, body)
                                                                        PK (store, id)
    sale_lines(store, sale_id, line_no, line_id, sku?, product_id, description, category,
               quantity, unit_price, discount, tax, line_kind, employee_id,
               original_line_id, restock)                  PK (store, sale_id, line_no)
    tenders(store, sale_id, seq, method, amount, reference, method_id)
                                                           PK (store, sale_id, seq)
    voids(store, sale_id, occurred_at, reason, version, batch_id)  PK (store, sale_id)
    trigger_outbox(event_id, store, sale_id, trigger_name, action, customer_id, total,
                   business_date, due_date, due_at, created_at, batch_id, delivered_at,
                   cancelled)                                           PK event_id
    trigger_events(event_id, ..., fired_at)                             PK event_id
    commit_batches(batch_id, store, window_at, sales, voids, triggers, total_sum,
                   ids_sha256, committed_at, outcome)                   PK batch_id

`body` is the canonical JSON of the record (`worker.records.encode`): the one source of
truth for what the columns do not carry (adjustments, attributes, discount, rounding,
tax_included, tenders_known); reads take those from it. `warning` is a JSON array of
"rule: message" strings (`SaleRow.warning_text`). DDL and migrations: `sinks.sqlite_schema`;
the statements: `sinks.sqlite_rows` (the SQLite dialect of `sinks.sql`, which holds the
commit algorithm and the reads both SQL sinks share).

Invariants:

* One writer connection guarded by one asyncio.Lock; every write is one `BEGIN IMMEDIATE`
  transaction, so a batch is all-or-nothing and writers never interleave statements.
* Reads use a second, query-only connection: in WAL mode it sees committed data only.
* A batch is committed iff its `commit_batches` row exists (written in the same
  transaction), which makes re-running a batch a no-op.
* A sale row is replaced only by a strictly newer version; its lines and tenders are
  deleted and rewritten with it.
* `voids` keeps every void ever received (first one wins). A sale is voided iff a void for
  (store, id) exists, so a void that arrives before its sale, and a newer version of a
  voided sale, both end voided.
* Outbox events of a voided sale are cancelled at delivery instead of being delivered.
* The file at the path is the one the connections opened (device + inode of it and its
  -wal, `sinks.sqlite_file`), checked before and after every write and before every read:
  otherwise 503 (`SinkUnavailable`), nothing counted as written, and a database file that is
  back at the path is re-opened. SQLITE_FULL is `SinkFull` (507).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import aiosqlite

from worker.config import Config, SqliteSinkConfig
from worker.errors import ConfigError, SinkError, SinkFull, SinkUnavailable
from worker.sinks.sql import SqlSink
from worker.sinks.sqlite_file import (
    FileIdentity,
    abandon,
    close_pair,
    open_pair,
    reopen,
    space_problem,
)
from worker.sinks.sqlite_rows import SqliteDialect
from worker.sqlite_files import cheap_check, move_aside

log = logging.getLogger("possync.sink")


# SQLite primary result codes worth retrying: the database is busy/locked, the disk is
# full or failing, it cannot be opened, or was made read-only. Everything else (constraint,
# schema, SQL, mismatch) will fail the same way again.
_RETRIABLE_CODES = frozenset(
    {
        5,  # SQLITE_BUSY
        6,  # SQLITE_LOCKED
        7,  # SQLITE_NOMEM
        8,  # SQLITE_READONLY
        9,  # SQLITE_INTERRUPT
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)

_SQLITE_FULL = 13


def _sink_error(exc: sqlite3.Error, what: str) -> SinkError:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
        return SinkFull(f"sqlite sink: {what}: disk full: nothing was written, retry later")
    if isinstance(code, int):
        retriable = (code & 0xFF) in _RETRIABLE_CODES
    else:
        retriable = isinstance(exc, sqlite3.OperationalError)
    if retriable:
        # Busy, locked, I/O: 503 + Retry-After naming the sink; the window retries.
        return SinkUnavailable(f"sqlite sink: {what}: {exc}")
    return SinkError(f"sqlite sink: {what}: {exc}", retriable=False)


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """Turn every sqlite3 error into a SinkError with the right `retriable` flag."""
    try:
        yield
    except sqlite3.Error as exc:
        raise _sink_error(exc, what) from exc


class SqliteSink(SqlSink[aiosqlite.Connection]):
    """Both sink sides over one SQLite file (one writer, one reader connection): the
    connections, their transactions and the file's identity; the rest is `SqlSink`."""

    name: str = "sqlite"

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        path: Path,
        sc: SqliteSinkConfig | None = None,
    ) -> None:
        super().__init__(SqliteDialect())
        self.path = path
        # Set when the file was damaged at start-up and moved aside (shown on /readyz, /status).
        self.recovered_from: str | None = None
        self._w = writer
        self._r = reader
        self._sc = sc or SqliteSinkConfig()
        self._wlock = asyncio.Lock()
        self._rlock = asyncio.Lock()
        self._closed = False
        # The file this sink opened (device + inode of the database and its -wal).
        self._identity = FileIdentity(path)
        # Why the sink is refusing: its file vanished (connections closed), or the last
        # write found the disk full (cleared by the next write that succeeds).
        self.lost: str | None = None
        self.full: str | None = None

    def close(self) -> None:
        """Refuse further calls (the connections are closed by `open_sqlite_sink`)."""
        self._closed = True

    async def close_connections(self) -> None:
        """Close the current writer and reader (at exit)."""
        await close_pair(self._w, self._r)

    def _check_open(self) -> None:
        if self._closed:
            raise SinkError("sqlite sink is closed", retriable=False)

    async def _check_file(self, *, locked: bool) -> None:
        """Refuse (SinkUnavailable) unless the file at `path` is the one the connections
        write to; re-open on a file restored at the path. Cheap when nothing changed."""
        if self.lost is None and self._identity.problem() is None:
            return
        if locked:
            await self._recover()
        else:
            async with self._wlock:
                await self._recover()

    async def _recover(self) -> None:
        """Under the write lock: notice a vanished file and close it; re-open a file that
        is back at the path (see `sinks.sqlite_file`: accepted without a restart)."""
        async with self._rlock:
            if self.lost is None:
                problem = self._identity.problem()
                if problem is None:
                    return
                self.lost = problem
                log.error(
                    "sqlite sink %s: %s; writes refused until the file is back",
                    self.path,
                    problem,
                    extra={"event": "sink.file_lost"},
                )
                await abandon(self._w, self._r, self.path)
            if not self.path.exists():
                raise SinkUnavailable(self._lost_text())
            self._w, self._r = await reopen(self.path, self._sc, self._identity)
            self._identity = FileIdentity(self.path)
            log.warning(
                "sqlite sink %s: a database file is back at the path (%s before); re-opened",
                self.path,
                self.lost,
                extra={"event": "sink.file_reopened"},
            )
            self.lost = None

    def _lost_text(self) -> str:
        return f"sqlite sink: {self.lost}; writes refused until it is restored or possync restarts"

    def _after_commit(self) -> None:
        """A transaction that committed into a file no longer at the path did not happen."""
        problem = self._identity.problem()
        if problem is not None:
            raise SinkUnavailable(
                f"sqlite sink: {problem} (during the write, which is not counted as done)"
            )

    @asynccontextmanager
    async def _write(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error."""
        self._check_open()
        async with self._wlock:
            await self._check_file(locked=True)
            db = self._w
            try:
                with _errors(what):
                    try:
                        # IMMEDIATE takes the write lock up front (waiting busy_timeout), so
                        # the transaction never fails half-way on a lock upgrade. Inside the
                        # try: a cancellation while BEGIN runs must still roll back.
                        await db.execute("BEGIN IMMEDIATE")
                        yield db
                        await db.execute("COMMIT")
                    except BaseException:
                        await self._rollback(db, what)
                        raise
            except SinkFull as exc:
                self.full = exc.message
                raise
            self._after_commit()
            self.full = None

    @asynccontextmanager
    async def _read(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        """One read snapshot on the reader connection."""
        self._check_open()
        await self._check_file(locked=False)
        async with self._rlock:
            db = self._r
            with _errors(what):
                try:
                    await db.execute("BEGIN")
                    yield db
                finally:
                    await self._rollback(db, what)

    @staticmethod
    async def _rollback(db: aiosqlite.Connection, what: str) -> None:
        # Not `if db.in_transaction: ROLLBACK`: after a cancellation the BEGIN may still be
        # running on the connection thread. Connection.rollback() is queued behind it and
        # checks SQLite's own autocommit state there, so it never leaves a transaction open.
        try:
            await db.rollback()
        except sqlite3.Error:
            # The original error is what the caller must see; a failed rollback leaves
            # SQLite to roll back on the next statement or on close.
            log.exception("sqlite sink: rollback after %s failed", what)

    async def health(self) -> None:
        """Raise if the database cannot take writes now: its file is not the one opened, the
        last write found the disk full and there is still no room, or the lock is not free."""
        if self.full is not None:
            problem = await asyncio.to_thread(space_problem, self.path.parent)
            if problem is not None:
                raise SinkFull(f"sqlite sink: {problem}")
            # Room again: green now; the next write that succeeds forgets the failure.
        async with self._write("health"):
            pass


def sink_path(cfg: Config) -> Path:
    """`[sink] path`, else `<data_dir>/clientbook.db`."""
    sc = cfg.sink
    if isinstance(sc, SqliteSinkConfig) and sc.path:
        return Path(sc.path)
    return cfg.data_path / "clientbook.db"


@asynccontextmanager
async def open_sqlite_sink(cfg: Config) -> AsyncIterator[SqliteSink]:
    """Open (creating if needed) the SQLite clienteling database; close it on exit."""
    sc = cfg.sink
    if not isinstance(sc, SqliteSinkConfig):
        raise ConfigError("open_sqlite_sink needs [sink] kind = 'sqlite'", field="$.sink.kind")
    path = sink_path(cfg)
    async with AsyncExitStack() as stack:
        with _errors(f"open {path}"):
            try:
                await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            except OSError as exc:
                raise SinkError(
                    f"sqlite sink: cannot create {path.parent}: {exc}", retriable=True
                ) from exc
            problem = await asyncio.to_thread(cheap_check, path)
            damaged = move_aside(path, problem, "sqlite sink") if problem else None
            writer, reader = await open_pair(path, sc)
        sink = SqliteSink(writer, reader, path, sc)
        # The connections the sink holds at exit (it re-opens them if its file is restored).
        stack.push_async_callback(sink.close_connections)
        if damaged is not None:
            sink.recovered_from = str(damaged)
        stack.callback(sink.close)
        yield sink
