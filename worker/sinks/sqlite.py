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
"rule: message" strings (`SaleRow.warning_text`). DDL and migrations: `sinks.sqlite_schema`.

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
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from worker.config import Config, SqliteSinkConfig
from worker.errors import ConfigError, SinkError, SinkFull, SinkUnavailable
from worker.records import Customer, Entity, Product
from worker.sinks import sqlite_reads as reads
from worker.sinks.base import (
    CommitBatch,
    CommitOutcome,
    EntityOutcome,
    PageKey,
    ReportDay,
    ReportRow,
    TriggerEvent,
    latest_per_sale,
    utc_text,
    warnings_of,
)
from worker.sinks.sqlite_file import (
    FileIdentity,
    abandon,
    close_pair,
    open_pair,
    reopen,
    space_problem,
)
from worker.sinks.sqlite_rows import (
    IN_IDS,
    INSERT_BATCH,
    INSERT_LINE,
    INSERT_TENDER,
    INSERT_TRIGGER,
    INSERT_VOID,
    TABLES,
    TRIGGER_COLS,
    UPSERT_CUSTOMER,
    UPSERT_PRODUCT,
    UPSERT_SALE,
    customer_params,
    json_list,
    line_dict,
    line_params,
    money_text,
    product_params,
    sale_params,
    tender_dict,
    trigger_from_row,
    trigger_params,
    void_params,
)
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

_OUTCOME_DECODER = msgspec.json.Decoder(CommitOutcome)
_DICT_DECODER = msgspec.json.Decoder(dict[str, Any])
_JSON = msgspec.json.Encoder()


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


class SqliteSink:
    """The Sink protocol over one SQLite file (one writer, one reader connection)."""

    name: str = "sqlite"

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        path: Path,
        sc: SqliteSinkConfig | None = None,
    ) -> None:
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

    async def upsert_entities(self, store: str, records: Sequence[Entity]) -> EntityOutcome:
        """Upsert customers/products in one transaction; older or equal versions are skipped."""
        customers: dict[str, Customer] = {}
        products: dict[str, Product] = {}
        for rec in records:
            bucket: dict[str, Any] = customers if isinstance(rec, Customer) else products
            seen = bucket.get(rec.id)
            if seen is None or rec.effective_version > seen.effective_version:
                bucket[rec.id] = rec
        synced_at = utc_text(datetime.now(UTC))
        applied = 0
        async with self._write("upsert_entities") as db:
            if customers:
                params = [customer_params(store, c, synced_at) for c in customers.values()]
                async with db.executemany(UPSERT_CUSTOMER, params) as cur:
                    applied += cur.rowcount
            if products:
                params = [product_params(store, p, synced_at) for p in products.values()]
                async with db.executemany(UPSERT_PRODUCT, params) as cur:
                    applied += cur.rowcount
        return EntityOutcome(applied=applied, stale=len(records) - applied)

    async def commit_sales(self, batch: CommitBatch) -> CommitOutcome:
        """Write one window batch in one transaction; idempotent by batch id and version."""
        store = batch.store
        latest, superseded = latest_per_sale(batch.sales)
        void_ids = list(dict.fromkeys(v.id for v in batch.voids))
        committed_at = utc_text(datetime.now(UTC))
        async with self._write("commit_sales") as db:
            done = await db.execute_fetchall(
                "SELECT outcome FROM commit_batches WHERE batch_id = ?", (batch.batch_id,)
            )
            for (outcome_json,) in done:
                previous = _OUTCOME_DECODER.decode(outcome_json)
                return msgspec.structs.replace(previous, already_committed=True)

            existing: dict[str, tuple[int, bool]] = {}
            if latest or void_ids:
                rows = await db.execute_fetchall(
                    f"SELECT id, version, voided FROM sales WHERE store = ? AND id IN {IN_IDS}",
                    (store, json_list([*latest, *void_ids])),
                )
                existing = {r[0]: (r[1], bool(r[2])) for r in rows}
            written = [
                row
                for sid, row in latest.items()
                if sid not in existing or existing[sid][0] < row.version
            ]
            written_ids = {row.sale.id for row in written}
            replaced = [sid for sid in written_ids if sid in existing]

            # Voids first: a sale and its void in the same batch (or a void that came
            # earlier) make the sale land already voided.
            if batch.voids:
                await db.executemany(
                    INSERT_VOID, [void_params(store, v, batch.batch_id) for v in batch.voids]
                )
            void_at: dict[str, str] = {}
            if written:
                rows = await db.execute_fetchall(
                    f"SELECT sale_id, occurred_at FROM voids WHERE store = ? AND sale_id IN {IN_IDS}",
                    (store, json_list(written_ids)),
                )
                void_at = {r[0]: r[1] for r in rows}
                # Generators, not lists: the rows are built on the connection thread while
                # executemany consumes them, so a 5,000-sale batch does not stall the loop.
                await db.executemany(
                    UPSERT_SALE,
                    (
                        sale_params(
                            store, row, void_at.get(row.sale.id), committed_at, batch.batch_id
                        )
                        for row in written
                    ),
                )
            if replaced:
                keys = [(store, sid) for sid in replaced]
                await db.executemany("DELETE FROM sale_lines WHERE store = ? AND sale_id = ?", keys)
                await db.executemany("DELETE FROM tenders WHERE store = ? AND sale_id = ?", keys)
            if written:
                await db.executemany(
                    INSERT_LINE,
                    (
                        line_params(store, row.sale.id, no, ln)
                        for row in written
                        for no, ln in enumerate(row.sale.lines, 1)
                    ),
                )
                await db.executemany(
                    INSERT_TENDER,
                    (
                        (
                            store,
                            row.sale.id,
                            no,
                            t.method,
                            money_text(t.amount),
                            t.reference,
                            t.method_id,
                        )
                        for row in written
                        for no, t in enumerate(row.sale.tenders, 1)
                    ),
                )

            voided = sum(1 for sid in void_at if not (sid in existing and existing[sid][1]))
            others = [
                (store, sid) for sid in void_ids if sid not in written_ids and sid in existing
            ]
            if others:
                async with db.executemany(
                    "UPDATE sales SET voided = 1, voided_at = (SELECT v.occurred_at FROM voids v"
                    " WHERE v.store = sales.store AND v.sale_id = sales.id)"
                    " WHERE store = ? AND id = ? AND voided = 0",
                    others,
                ) as cur:
                    voided += cur.rowcount

            triggers = 0
            if batch.triggers:
                async with db.executemany(
                    INSERT_TRIGGER, [trigger_params(t, batch.batch_id) for t in batch.triggers]
                ) as cur:
                    triggers = cur.rowcount

            outcome = CommitOutcome(
                batch_id=batch.batch_id,
                inserted=len(written) - len(replaced),
                updated=len(replaced),
                unchanged=len(latest) - len(written) + superseded,
                voided=voided,
                triggers=triggers,
            )
            m = batch.manifest
            await db.execute(
                INSERT_BATCH,
                (
                    batch.batch_id,
                    store,
                    utc_text(batch.window_at),
                    m.sales,
                    m.voids,
                    m.triggers,
                    money_text(m.total_sum),
                    m.ids_sha256,
                    committed_at,
                    _JSON.encode(outcome).decode(),
                ),
            )
        return outcome

    async def deliver_due_triggers(self, now: datetime, limit: int = 1000) -> list[TriggerEvent]:
        """Move due outbox events to trigger_events once; cancel those of voided sales."""
        at = utc_text(now)
        async with self._write("deliver_due_triggers") as db:
            rows = await db.execute_fetchall(
                f"SELECT o.{', o.'.join(TRIGGER_COLS)}, coalesce(s.voided, 0)"
                " FROM trigger_outbox o LEFT JOIN sales s ON s.store = o.store AND s.id = o.sale_id"
                " WHERE o.delivered_at IS NULL AND o.due_at <= ?"
                " ORDER BY o.due_at, o.event_id LIMIT ?",
                (at, limit),
            )
            if not rows:
                return []
            deliver = [r for r in rows if not r[-1]]
            cancel = [r[0] for r in rows if r[-1]]
            deliver_ids = json_list(r[0] for r in deliver)
            if deliver:
                await db.execute(
                    f"INSERT INTO trigger_events ({', '.join(TRIGGER_COLS)}, fired_at)"
                    f" SELECT {', '.join(TRIGGER_COLS)}, ? FROM trigger_outbox"
                    f" WHERE event_id IN {IN_IDS} ON CONFLICT (event_id) DO NOTHING",
                    (at, deliver_ids),
                )
                await db.execute(
                    f"UPDATE trigger_outbox SET delivered_at = ? WHERE event_id IN {IN_IDS}",
                    (at, deliver_ids),
                )
            if cancel:
                await db.execute(
                    "UPDATE trigger_outbox SET delivered_at = ?, cancelled = 1"
                    f" WHERE event_id IN {IN_IDS}",
                    (at, json_list(cancel)),
                )
        return [trigger_from_row(r) for r in deliver]

    async def _ids(self, table: str, store: str, ids: Collection[str]) -> set[str]:
        if not ids:
            return set()
        async with self._read(f"existing {table}") as db:
            rows = await db.execute_fetchall(
                f"SELECT id FROM {table} WHERE store = ? AND id IN {IN_IDS}",
                (store, json_list(ids)),
            )
        return {r[0] for r in rows}

    async def existing_customers(self, store: str, ids: Collection[str]) -> set[str]:
        """Which of `ids` are customers of `store`."""
        return await self._ids("customers", store, ids)

    async def existing_sales(self, store: str, ids: Collection[str]) -> set[str]:
        """Which of `ids` are committed sales of `store`."""
        return await self._ids("sales", store, ids)

    async def _entity(self, table: str, store: str, entity_id: str) -> dict[str, Any] | None:
        async with self._read(f"get {table}") as db:
            rows = await db.execute_fetchall(
                f"SELECT version, body FROM {table} WHERE store = ? AND id = ?", (store, entity_id)
            )
        for version, body in rows:
            out = _DICT_DECODER.decode(body)
            out["version"] = version
            return out
        return None

    async def get_customer(self, store: str, customer_id: str) -> dict[str, Any] | None:
        """The stored customer: its canonical record, `version` = the stored ordering key."""
        return await self._entity("customers", store, customer_id)

    async def get_product(self, store: str, product_id: str) -> dict[str, Any] | None:
        """The stored product: its canonical record, `version` = the stored ordering key."""
        return await self._entity("products", store, product_id)

    async def get_sale(self, store: str, sale_id: str) -> dict[str, Any] | None:
        """The committed sale: canonical record, lines/tenders from their tables, sink state."""
        key = (store, sale_id)
        async with self._read("get_sale") as db:
            head = list(
                await db.execute_fetchall(
                    "SELECT version, voided, voided_at, customer_linked, warning, committed_at,"
                    " batch_id, body FROM sales WHERE store = ? AND id = ?",
                    key,
                )
            )
            if not head:
                return None
            lines = await db.execute_fetchall(
                "SELECT line_id, sku, product_id, description, category, quantity, unit_price,"
                " discount, tax, line_kind, employee_id, original_line_id, restock"
                " FROM sale_lines WHERE store = ? AND sale_id = ? ORDER BY line_no",
                key,
            )
            tenders = await db.execute_fetchall(
                "SELECT method, amount, reference, method_id FROM tenders"
                " WHERE store = ? AND sale_id = ? ORDER BY seq",
                key,
            )
        version, voided, voided_at, linked, warning, committed_at, batch_id, body = head[0]
        out = _DICT_DECODER.decode(body)
        record = _DICT_DECODER.decode(body)
        out["lines"] = [line_dict(r) for r in lines]
        out["tenders"] = [tender_dict(r) for r in tenders]
        out.update(
            record=record,
            version=version,
            voided=bool(voided),
            voided_at=voided_at,
            customer_linked=bool(linked),
            warnings=warnings_of(warning),
            committed_at=committed_at,
            batch_id=batch_id,
        )
        return out

    async def sales_log(
        self,
        store: str,
        day: date,
        limit: int = 10_000,
        *,
        after: PageKey | None = None,
        customer: str | None = None,
    ) -> list[dict[str, Any]]:
        """Committed sales of one business date in (occurred_at, id) order, after `after`."""
        async with self._read("sales_log") as db:
            return await reads.sales_log(db, store, day, limit, after, customer)

    async def count_sales(self, store: str, day: date, *, customer: str | None = None) -> int:
        """How many sales the Sales Log of `day` (with its filter) holds."""
        async with self._read("count_sales") as db:
            return await reads.count_sales(db, store, day, customer)

    async def sales_report(self, store: str, start: date, end: date) -> list[ReportRow]:
        """Per (business date, currency): count, gross, returns, net; voided count."""
        async with self._read("sales_report") as db:
            rows = await db.execute_fetchall(
                "SELECT business_date, currency, kind, voided, total FROM sales"
                " WHERE store = ? AND business_date BETWEEN ? AND ?"
                " ORDER BY business_date, currency",
                (store, start.isoformat(), end.isoformat()),
            )
        # Totals are exact decimal text; SQL sum() would go through float.
        days: dict[tuple[str, str], ReportDay] = {}
        for day, currency, kind, voided, total in rows:
            acc = days.get((day, currency))
            if acc is None:
                acc = days[day, currency] = ReportDay()
            acc.add(Decimal(total), kind, bool(voided))
        return [acc.row(date.fromisoformat(d), cur) for (d, cur), acc in days.items()]

    async def list_triggers(
        self,
        store: str,
        limit: int = 1000,
        *,
        before: PageKey | None = None,
        state: str | None = None,
        trigger: str | None = None,
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Trigger events of a store (pending, delivered, cancelled), newest first."""
        async with self._read("list_triggers") as db:
            return await reads.list_triggers(db, store, limit, before, state, trigger, now)

    async def counts(self) -> dict[str, int]:
        """Row counts per table."""
        query = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in TABLES)
        async with self._read("counts") as db:
            rows = await db.execute_fetchall(query)
        (row,) = rows
        return dict(zip(TABLES, row, strict=True))


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
