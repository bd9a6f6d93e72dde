"""PostgreSQL sink: the clienteling database behind an asyncpg pool.

Same tables, keys and invariants as the SQLite sink (see `worker.sinks.sqlite`), with native
types: money and quantities are NUMERIC (exact, scale kept), instants TIMESTAMPTZ, business
dates DATE, record bodies JSONB. Every table lives in `[sink] schema`; the schema and
tables are created at start-up by idempotent DDL, serialized across processes by an
advisory lock.

Invariants specific to PostgreSQL:

* A batch starts by claiming its `commit_batches` row (`ON CONFLICT DO NOTHING`). A second
  commit of the same batch id blocks on that row until the first one ends, then sees it
  and returns `already_committed`; the outcome is filled in before the transaction commits.
* Bulk writes send one array per column and `INSERT ... SELECT FROM unnest(...)`: one
  round-trip per table whatever the batch size.
* The sales upsert is guarded in SQL (`WHERE excluded.version > sales.version`) and
  `RETURNING` tells which rows were written, so lines/tenders are rewritten only for those.
* Delivery locks due outbox rows with `FOR UPDATE SKIP LOCKED`: concurrent deliverers never
  hand out the same event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec

from worker.config import Config, PostgresSinkConfig
from worker.errors import ConfigError, SinkError, SinkFull
from worker.records import Customer, Entity, Product, SaleLine, Tender
from worker.sinks import postgres_reads as reads
from worker.sinks.base import (
    CommitBatch,
    CommitOutcome,
    EntityOutcome,
    PageKey,
    ReportRow,
    TriggerEvent,
    latest_per_sale,
    utc_text,
    utc_text_opt,
    warnings_of,
)
from worker.sinks.postgres_schema import DDL_LOCK
from worker.sinks.postgres_sql import (
    CUSTOMER,
    LINE,
    PRODUCT,
    SALE,
    TABLES,
    TENDER,
    TRIGGER,
    VOID,
    Sql,
    columns,
    customer_row,
    product_row,
    sale_row,
    trigger_from,
)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger("possync.sink")

# SQLSTATE classes worth retrying: connection exception, transaction rollback
# (serialization failure, deadlock), insufficient resources (disk full, too many
# connections), operator intervention (shutdown, cancel), system error (I/O).
_RETRIABLE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_RETRIABLE_STATES = frozenset({"55P03", "55006"})  # lock_not_available, object_in_use

_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


_DISK_FULL = "53100"


def _sink_error(exc: BaseException, what: str) -> SinkError:
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state == _DISK_FULL:
            return SinkFull(f"postgres sink: {what}: disk full on the server (SQLSTATE 53100)")
        retriable = state[:2] in _RETRIABLE_CLASSES or state in _RETRIABLE_STATES
    elif isinstance(exc, asyncpg.InterfaceError):
        # Client-side data/config errors are ValueErrors; the rest (connection closed, ...)
        # are connection trouble and clear once the pool reconnects.
        retriable = not isinstance(
            exc,
            ValueError
            | asyncpg.UnsupportedClientFeatureError
            | asyncpg.UnsupportedServerFeatureError,
        )
    elif isinstance(exc, asyncpg.InternalClientError):
        retriable = False
    else:  # OSError, TimeoutError: network or server down
        retriable = True
    return SinkError(f"postgres sink: {what}: {exc!r}", retriable=retriable)


@contextmanager
def _errors(what: str) -> Iterator[None]:
    """Turn every driver error into a SinkError with the right `retriable` flag."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise _sink_error(exc, what) from exc


_OUTCOME_DECODER = msgspec.json.Decoder(CommitOutcome)
_DICT_DECODER = msgspec.json.Decoder(dict[str, Any])
_JSON = msgspec.json.Encoder()


class PostgresSink:
    """The Sink protocol over an asyncpg pool."""

    name: str = "postgres"

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], sql: Sql, timeout_s: float) -> None:
        self._pool = pool
        self._sql = sql
        self._timeout = timeout_s
        self._closed = False

    def close(self) -> None:
        """Refuse further calls (the pool is closed by `open_postgres_sink`)."""
        self._closed = True

    @asynccontextmanager
    async def _conn(
        self, what: str, *, write: bool = True
    ) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """A pooled connection inside one transaction; driver errors become SinkError."""
        if self._closed:
            raise SinkError("postgres sink is closed", retriable=False)
        with _errors(what):
            async with self._pool.acquire(timeout=self._timeout) as conn:
                tx = conn.transaction(
                    readonly=not write, isolation="read_committed" if write else "repeatable_read"
                )
                async with tx:
                    yield conn

    async def health(self) -> None:
        """Raise SinkError unless the server answers and accepts writes."""
        # A read-write transaction: inside a READ ONLY one the setting would always be on.
        async with self._conn("health") as conn:
            read_only = await conn.fetchval(self._sql.health)
        if read_only:
            raise SinkError(
                "postgres sink: server is read-only (recovery or standby)", retriable=True
            )

    async def upsert_entities(self, store: str, records: Sequence[Entity]) -> EntityOutcome:
        """Upsert customers/products in one transaction; older or equal versions are skipped."""
        customers: dict[str, Customer] = {}
        products: dict[str, Product] = {}
        for rec in records:
            bucket: dict[str, Any] = customers if isinstance(rec, Customer) else products
            seen = bucket.get(rec.id)
            if seen is None or rec.effective_version > seen.effective_version:
                bucket[rec.id] = rec
        applied = 0
        async with self._conn("upsert_entities") as conn:
            if customers:
                rows = [customer_row(c) for c in customers.values()]
                cols = columns(rows, len(CUSTOMER))
                applied += len(await conn.fetch(self._sql.upsert_customers, store, *cols))
            if products:
                rows = [product_row(p) for p in products.values()]
                cols = columns(rows, len(PRODUCT))
                applied += len(await conn.fetch(self._sql.upsert_products, store, *cols))
        return EntityOutcome(applied=applied, stale=len(records) - applied)

    async def commit_sales(self, batch: CommitBatch) -> CommitOutcome:
        """Write one window batch in one transaction; idempotent by batch id and version."""
        sql = self._sql
        store, batch_id = batch.store, batch.batch_id
        latest, superseded = latest_per_sale(batch.sales)
        void_ids = list(dict.fromkeys(v.id for v in batch.voids))
        sale_rows = [sale_row(row) for row in latest.values()]
        m = batch.manifest
        async with self._conn("commit_sales") as conn:
            claimed = await conn.fetchval(
                sql.claim_batch,
                batch_id,
                store,
                batch.window_at,
                m.sales,
                m.voids,
                m.triggers,
                m.total_sum,
                m.ids_sha256,
            )
            if claimed is None:
                previous = await conn.fetchval(sql.batch_outcome, batch_id)
                return msgspec.structs.replace(
                    _OUTCOME_DECODER.decode(previous), already_committed=True
                )
            existing: dict[str, tuple[int, bool]] = {}
            if latest or void_ids:
                locked = await conn.fetch(sql.lock_sales, store, [*latest, *void_ids])
                existing = {r[0]: (r[1], r[2]) for r in locked}
            # Voids first: a sale and its void in the same batch (or a void that came
            # earlier) make the sale land already voided.
            if batch.voids:
                voids = [(v.id, v.occurred_at, v.reason, v.effective_version) for v in batch.voids]
                await conn.execute(sql.insert_voids, store, batch_id, *columns(voids, len(VOID)))
            written: dict[str, bool] = {}
            if sale_rows:
                returned = await conn.fetch(
                    sql.upsert_sales, store, batch_id, *columns(sale_rows, len(SALE))
                )
                written = {r[0]: r[1] for r in returned}
            replaced = [sid for sid in written if sid in existing]
            if replaced:
                await conn.execute(sql.delete_lines, store, replaced)
                await conn.execute(sql.delete_tenders, store, replaced)
            lines: list[tuple[Any, ...]] = []
            tenders: list[tuple[Any, ...]] = []
            for sid in written:
                s = latest[sid].sale
                lines.extend(
                    (
                        sid,
                        no,
                        ln.line_id,
                        ln.sku,
                        ln.product_id,
                        ln.description,
                        ln.category,
                        ln.quantity,
                        ln.unit_price,
                        ln.discount,
                        ln.tax,
                        ln.line_kind,
                        ln.employee_id,
                        ln.original_line_id,
                        ln.restock,
                    )
                    for no, ln in enumerate(s.lines, 1)
                )
                tenders.extend(
                    (sid, no, t.method, t.amount, t.reference, t.method_id)
                    for no, t in enumerate(s.tenders, 1)
                )
            if lines:
                await conn.execute(sql.insert_lines, store, *columns(lines, len(LINE)))
            if tenders:
                await conn.execute(sql.insert_tenders, store, *columns(tenders, len(TENDER)))

            voided = sum(
                1
                for sid, is_voided in written.items()
                if is_voided and not (sid in existing and existing[sid][1])
            )
            others = [sid for sid in void_ids if sid not in written and sid in existing]
            if others:
                voided += len(await conn.fetch(sql.void_existing, store, others))
            triggers = 0
            if batch.triggers:
                rows = [
                    (
                        t.event_id,
                        t.store,
                        t.sale_id,
                        t.trigger,
                        t.action,
                        t.customer_id,
                        t.total,
                        t.business_date,
                        t.due_date,
                        t.due_at,
                        t.created_at,
                    )
                    for t in batch.triggers
                ]
                inserted = await conn.fetch(
                    sql.insert_outbox, batch_id, *columns(rows, len(TRIGGER))
                )
                triggers = len(inserted)
            outcome = CommitOutcome(
                batch_id=batch_id,
                inserted=len(written) - len(replaced),
                updated=len(replaced),
                unchanged=len(latest) - len(written) + superseded,
                voided=voided,
                triggers=triggers,
            )
            await conn.execute(sql.finish_batch, batch_id, _JSON.encode(outcome).decode())
        return outcome

    async def deliver_due_triggers(self, now: datetime, limit: int = 1000) -> list[TriggerEvent]:
        """Move due outbox events to trigger_events once; cancel those of voided sales."""
        if now.tzinfo is None:
            raise ValueError("naive datetime: the sink stores aware UTC instants only")
        sql = self._sql
        async with self._conn("deliver_due_triggers") as conn:
            rows = await conn.fetch(sql.due_outbox, now, limit)
            deliver = [r for r in rows if not r[-1]]
            cancel = [r[0] for r in rows if r[-1]]
            if deliver:
                ids = [r[0] for r in deliver]
                await conn.execute(sql.fire, now, ids)
                await conn.execute(sql.mark_outbox, now, ids, False)
            if cancel:
                await conn.execute(sql.mark_outbox, now, cancel, True)
        return [trigger_from(r) for r in deliver]

    async def _ids(self, table: str, store: str, ids: Collection[str]) -> set[str]:
        if not ids:
            return set()
        async with self._conn(f"existing {table}", write=False) as conn:
            rows = await conn.fetch(self._sql.existing[table], store, list(ids))
        return {r[0] for r in rows}

    async def existing_customers(self, store: str, ids: Collection[str]) -> set[str]:
        """Which of `ids` are customers of `store`."""
        return await self._ids("customers", store, ids)

    async def existing_sales(self, store: str, ids: Collection[str]) -> set[str]:
        """Which of `ids` are committed sales of `store`."""
        return await self._ids("sales", store, ids)

    async def _entity(self, table: str, store: str, entity_id: str) -> dict[str, Any] | None:
        async with self._conn(f"get {table}", write=False) as conn:
            row = await conn.fetchrow(self._sql.entity[table], store, entity_id)
        if row is None:
            return None
        out = _DICT_DECODER.decode(row[1])
        out["version"] = row[0]
        return out

    async def get_customer(self, store: str, customer_id: str) -> dict[str, Any] | None:
        """The stored customer: its canonical record, `version` = the stored ordering key."""
        return await self._entity("customers", store, customer_id)

    async def get_product(self, store: str, product_id: str) -> dict[str, Any] | None:
        """The stored product: its canonical record, `version` = the stored ordering key."""
        return await self._entity("products", store, product_id)

    async def get_sale(self, store: str, sale_id: str) -> dict[str, Any] | None:
        """The committed sale: canonical record, lines/tenders from their tables, sink state."""
        sql = self._sql
        async with self._conn("get_sale", write=False) as conn:
            head = await conn.fetchrow(sql.sale_head, store, sale_id)
            if head is None:
                return None
            lines = await conn.fetch(sql.sale_lines, store, sale_id)
            tenders = await conn.fetch(sql.sale_tenders, store, sale_id)
        version, voided, voided_at, linked, warning, committed_at, batch_id, body = head
        out = _DICT_DECODER.decode(body)
        out["lines"] = [
            msgspec.to_builtins(
                SaleLine(
                    line_id=r[0],
                    sku=r[1],
                    product_id=r[2],
                    description=r[3],
                    category=r[4],
                    quantity=r[5],
                    unit_price=r[6],
                    discount=r[7],
                    tax=r[8],
                    line_kind=r[9],
                    employee_id=r[10],
                    original_line_id=r[11],
                    restock=r[12],
                )
            )
            for r in lines
        ]
        out["tenders"] = [
            msgspec.to_builtins(Tender(method=r[0], amount=r[1], reference=r[2], method_id=r[3]))
            for r in tenders
        ]
        out.update(
            record=_DICT_DECODER.decode(body),
            version=version,
            voided=voided,
            voided_at=utc_text_opt(voided_at),
            customer_linked=linked,
            warnings=warnings_of(warning),
            committed_at=utc_text(committed_at),
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
        async with self._conn("sales_log", write=False) as conn:
            return await reads.sales_log(conn, self._sql.schema, store, day, limit, after, customer)

    async def count_sales(self, store: str, day: date, *, customer: str | None = None) -> int:
        """How many sales the Sales Log of `day` (with its filter) holds."""
        async with self._conn("count_sales", write=False) as conn:
            return await reads.count_sales(conn, self._sql.schema, store, day, customer)

    async def sales_report(self, store: str, start: date, end: date) -> list[ReportRow]:
        """Per (business date, currency): count, gross, returns, net; voided count."""
        async with self._conn("sales_report", write=False) as conn:
            rows = await conn.fetch(self._sql.sales_report, store, start, end)
        return [
            ReportRow(
                date=r[0],
                currency=r[1],
                count=r[2],
                gross=Decimal(r[3]),
                returns=Decimal(r[4]),
                returns_count=r[6],
                net=Decimal(r[3]) - Decimal(r[4]),
                voided=r[5],
            )
            for r in rows
        ]

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
        async with self._conn("list_triggers", write=False) as conn:
            return await reads.list_triggers(
                conn, self._sql.schema, store, limit, before, state, trigger, now
            )

    async def counts(self) -> dict[str, int]:
        """Row counts per table."""
        async with self._conn("counts", write=False) as conn:
            row = await conn.fetchrow(self._sql.counts)
        assert row is not None  # a SELECT without FROM returns exactly one row
        return {t: int(v) for t, v in zip(TABLES, row, strict=True)}


async def _create_schema(pool: asyncpg.Pool[asyncpg.Record], sql: Sql) -> None:
    async with pool.acquire() as conn, conn.transaction():
        # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs; the
        # transaction-scoped advisory lock makes start-up DDL one-at-a-time.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK)
        await conn.execute(sql.ddl)


async def _close_pool(pool: asyncpg.Pool[asyncpg.Record], timeout_s: float) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout=timeout_s)
    except TimeoutError:
        log.warning("postgres sink: pool did not close in %.0fs; terminating", timeout_s)
        pool.terminate()


@asynccontextmanager
async def open_postgres_sink(cfg: Config) -> AsyncIterator[PostgresSink]:
    """Open the asyncpg pool, create schema and tables if missing, close the pool on exit."""
    pc = cfg.sink
    if not isinstance(pc, PostgresSinkConfig):
        raise ConfigError("open_postgres_sink needs [sink] kind = 'postgres'", field="$.sink.kind")
    sql = Sql(pc.schema)
    with _errors("connect"):
        pool = await asyncpg.create_pool(
            pc.dsn,
            min_size=min(pc.pool_min, pc.pool_max),
            max_size=pc.pool_max,
            command_timeout=pc.command_timeout_s,
            timeout=pc.command_timeout_s,
        )
    try:
        with _errors("create schema"):
            await _create_schema(pool, sql)
        sink = PostgresSink(pool, sql, pc.command_timeout_s)
        try:
            yield sink
        finally:
            sink.close()
    finally:
        await _close_pool(pool, pc.command_timeout_s)
