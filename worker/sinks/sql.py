"""The SQL sinks' one implementation of both sink sides, over a small dialect.

`SqlSink` is the commit algorithm and the read assembly, once: dedupe entities to the newest
version; commit a batch (claim the batch id, read the stored versions, voids first, write
the sales that are strictly newer, rewrite their lines and tenders, void the others, outbox
rows, record the outcome); deliver due triggers (cancel those of voided sales); read a
sale back from its tables; walk the Sales Log and trigger events by keyset.

What differs between databases is a `Dialect`: placeholders (`?` or `$n`), table names,
how a list of ids is bound, how values are bound, the few statements whose syntax differs
(upserts, bulk inserts, row locks, the report) and the driver calls. A subclass of
`SqlSink` adds the connection handling: `_write(what)` and `_read(what)` each yield the
driver's connection inside one transaction (a write one all or nothing, a read one a
snapshot of committed data), and `health`. A third
SQL sink is a dialect, its DDL and those three.

The tables, keys and invariants are described in `worker.sinks.sqlite`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, date, datetime
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from worker.batch import (
    CommitBatch,
    CommitOutcome,
    SaleRow,
    TriggerEvent,
    latest_per_sale,
    warnings_of,
)
from worker.records import Customer, Entity, Product
from worker.sinks.base import SALE_LOG_COLUMNS, EntityOutcome, PageKey, ReportRow
from worker.sinks.sql_rows import (
    BOOL_COLS,
    TABLES,
    TRIGGER_COLUMNS,
    jsonable,
    line_dict,
    tender_dict,
    trigger_event,
)

Tx = TypeVar("Tx")
Tx_contra = TypeVar("Tx_contra", contravariant=True)

_OUTCOME_DECODER = msgspec.json.Decoder(CommitOutcome)
_DICT_DECODER = msgspec.json.Decoder(dict[str, Any])
_JSON = msgspec.json.Encoder()


class Dialect(Protocol[Tx_contra]):
    """What one SQL database needs said its own way. `Tx` is the driver's connection inside
    a transaction. Statements take their parameters in the order their marks appear."""

    # The Sales Log's select list (`SALE_LOG_COLUMNS`; the body-only ones from the body).
    log_select: str
    # The body column as JSON text.
    body: str
    # Appended to the read of stored sale versions at commit / of due outbox rows.
    lock_sales: str
    lock_due: str

    def mark(self, n: int) -> str:
        """The placeholder of the n-th parameter (1-based)."""
        ...

    def table(self, name: str) -> str:
        """A table's name as statements write it."""
        ...

    def in_ids(self, mark: str) -> str:
        """`<column> ...` membership in a list of ids bound as one parameter."""
        ...

    def ids(self, values: Iterable[str]) -> Any:
        """A list of ids as that one parameter."""
        ...

    def param(self, value: date | datetime) -> Any:
        """A date or an aware instant as a bound parameter."""
        ...

    async def fetch(self, tx: Tx_contra, sql: str, args: Sequence[Any]) -> Sequence[Sequence[Any]]:
        """Run a statement, return its rows."""
        ...

    async def execute(self, tx: Tx_contra, sql: str, args: Sequence[Any]) -> None:
        """Run a statement."""
        ...

    async def upsert_entities(
        self,
        tx: Tx_contra,
        store: str,
        customers: Sequence[Customer],
        products: Sequence[Product],
        synced_at: datetime,
    ) -> int:
        """Upsert entities guarded by version; how many rows were written."""
        ...

    async def claim_batch(
        self, tx: Tx_contra, batch: CommitBatch, committed_at: datetime
    ) -> str | None:
        """The stored outcome (JSON) when the batch committed before, else None (claimed)."""
        ...

    async def finish_batch(
        self, tx: Tx_contra, batch: CommitBatch, outcome: str, committed_at: datetime
    ) -> None:
        """Record the batch (manifest and outcome) as committed."""
        ...

    async def insert_voids(self, tx: Tx_contra, batch: CommitBatch) -> None:
        """Keep every void of the batch (the first void of a sale wins)."""
        ...

    async def upsert_sales(
        self, tx: Tx_contra, batch: CommitBatch, rows: Sequence[SaleRow], committed_at: datetime
    ) -> dict[str, bool]:
        """Write sales strictly newer than stored, voided iff a void exists; the ids written
        (in order) and whether each is voided."""
        ...

    async def delete_children(self, tx: Tx_contra, store: str, sale_ids: Sequence[str]) -> None:
        """Delete the lines and tenders of these sales."""
        ...

    async def insert_children(self, tx: Tx_contra, store: str, rows: Sequence[SaleRow]) -> None:
        """Insert the lines and tenders of these sales, numbered from 1."""
        ...

    async def void_existing(self, tx: Tx_contra, store: str, sale_ids: Sequence[str]) -> int:
        """Mark stored, not yet voided sales voided (at their void's instant); how many."""
        ...

    async def insert_triggers(self, tx: Tx_contra, batch: CommitBatch) -> int:
        """Add the batch's outbox rows (an existing event id is kept); how many were new."""
        ...

    async def sales_report(
        self, tx: Tx_contra, store: str, start: date, end: date
    ) -> list[ReportRow]:
        """One Sales Report row per (business date, currency) in [start, end]."""
        ...


class Where:
    """A WHERE clause and its parameters, built one condition at a time."""

    def __init__(self, dialect: Dialect[Any]) -> None:
        self._d = dialect
        self.parts: list[str] = []
        self.args: list[Any] = []

    def add(self, condition: str, *values: Any) -> None:
        """`condition` with `{}` for each value's placeholder, in order."""
        marks = []
        for value in values:
            self.args.append(value)
            marks.append(self._d.mark(len(self.args)))
        self.parts.append(condition.format(*marks))

    def sql(self) -> str:
        """The conditions joined."""
        return " AND ".join(self.parts)

    def next_mark(self) -> str:
        """The placeholder of the parameter after these."""
        return self._d.mark(len(self.args) + 1)


# What `list_triggers(state=...)` adds to its WHERE (`due` binds `now`).
_STATE_WHERE = {
    "pending": "o.delivered_at IS NULL",
    "due": "o.delivered_at IS NULL AND o.due_at <= {}",
    "delivered": "o.delivered_at IS NOT NULL AND o.cancelled = FALSE",
    "cancelled": "o.cancelled = TRUE",
}


class _Statements:
    """The statements that read the same in every dialect, written once per sink."""

    def __init__(self, d: Dialect[Any]) -> None:
        m, t = d.mark, d.table
        key = f"store = {m(1)} AND id = {m(2)}"
        self.existing = {
            name: f"SELECT id FROM {t(name)} WHERE store = {m(1)} AND id {d.in_ids(m(2))}"
            for name in ("customers", "sales")
        }
        self.entity = {
            name: f"SELECT version, {d.body} FROM {t(name)} WHERE {key}"
            for name in ("customers", "products")
        }
        self.sale_states = (
            f"SELECT id, version, voided FROM {t('sales')}"
            f" WHERE store = {m(1)} AND id {d.in_ids(m(2))}{d.lock_sales}"
        )
        self.sale_head = (
            "SELECT version, voided, voided_at, customer_linked, warning, committed_at, batch_id,"
            f" {d.body} FROM {t('sales')} WHERE {key}"
        )
        child = f"store = {m(1)} AND sale_id = {m(2)}"
        self.sale_lines = (
            "SELECT line_id, sku, product_id, description, category, quantity, unit_price,"
            " discount, tax, line_kind, employee_id, original_line_id, restock"
            f" FROM {t('sale_lines')} WHERE {child} ORDER BY line_no"
        )
        self.sale_tenders = (
            f"SELECT method, amount, reference, method_id FROM {t('tenders')}"
            f" WHERE {child} ORDER BY seq"
        )
        cols = ", ".join(TRIGGER_COLUMNS)
        self.due = (
            f"SELECT {', '.join(f'o.{c}' for c in TRIGGER_COLUMNS)}, coalesce(s.voided, FALSE)"
            f" FROM {t('trigger_outbox')} o LEFT JOIN {t('sales')} s"
            " ON s.store = o.store AND s.id = o.sale_id"
            f" WHERE o.delivered_at IS NULL AND o.due_at <= {m(1)}"
            f" ORDER BY o.due_at, o.event_id LIMIT {m(2)}{d.lock_due}"
        )
        self.fire = (
            f"INSERT INTO {t('trigger_events')} ({cols}, fired_at)"
            f" SELECT {cols}, {m(1)} FROM {t('trigger_outbox')}"
            f" WHERE event_id {d.in_ids(m(2))} ON CONFLICT (event_id) DO NOTHING"
        )
        self.mark_outbox = (
            f"UPDATE {t('trigger_outbox')} SET delivered_at = {m(1)}, cancelled = {m(2)}"
            f" WHERE event_id {d.in_ids(m(3))}"
        )
        self.counts = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t(n)})" for n in TABLES)
        self.log = f"SELECT {d.log_select} FROM {t('sales')} WHERE "
        self.count = f"SELECT count(*) FROM {t('sales')} WHERE "
        self.triggers = (
            f"SELECT {', '.join(f'o.{c}' for c in TRIGGER_COLUMNS)}, s.currency, o.delivered_at,"
            f" o.cancelled FROM {t('trigger_outbox')} o LEFT JOIN {t('sales')} s"
            " ON s.store = o.store AND s.id = o.sale_id WHERE "
        )


class SqlSink(Generic[Tx]):
    """Both sink sides over a `Dialect`; subclasses provide `_write`, `_read`, `health`."""

    name: str

    def __init__(self, dialect: Dialect[Tx]) -> None:
        self._d = dialect
        self._q = _Statements(dialect)

    def _write(self, what: str) -> AbstractAsyncContextManager[Tx]:
        """One write transaction (all or nothing)."""
        raise NotImplementedError

    def _read(self, what: str) -> AbstractAsyncContextManager[Tx]:
        """One read snapshot (committed data only)."""
        raise NotImplementedError

    async def upsert_entities(self, store: str, records: Sequence[Entity]) -> EntityOutcome:
        """Upsert customers/products in one transaction; older or equal versions are skipped."""
        customers: dict[str, Customer] = {}
        products: dict[str, Product] = {}
        for rec in records:
            bucket: dict[str, Any] = customers if isinstance(rec, Customer) else products
            seen = bucket.get(rec.id)
            if seen is None or rec.effective_version > seen.effective_version:
                bucket[rec.id] = rec
        synced_at = datetime.now(UTC)
        async with self._write("upsert_entities") as tx:
            applied = await self._d.upsert_entities(
                tx, store, list(customers.values()), list(products.values()), synced_at
            )
        return EntityOutcome(applied=applied, stale=len(records) - applied)

    async def commit_sales(self, batch: CommitBatch) -> CommitOutcome:
        """Write one window batch in one transaction; idempotent by batch id and version."""
        d, store = self._d, batch.store
        latest, superseded = latest_per_sale(batch.sales)
        void_ids = list(dict.fromkeys(v.id for v in batch.voids))
        committed_at = datetime.now(UTC)
        async with self._write("commit_sales") as tx:
            previous = await d.claim_batch(tx, batch, committed_at)
            if previous is not None:
                done = _OUTCOME_DECODER.decode(previous)
                return msgspec.structs.replace(done, already_committed=True)
            existing: dict[str, tuple[int, bool]] = {}
            if latest or void_ids:
                rows = await d.fetch(tx, self._q.sale_states, (store, d.ids([*latest, *void_ids])))
                existing = {r[0]: (r[1], bool(r[2])) for r in rows}
            newer = [
                row
                for sid, row in latest.items()
                if sid not in existing or existing[sid][0] < row.version
            ]
            # Voids first: a sale and its void in the same batch (or a void that came
            # earlier) make the sale land already voided.
            if batch.voids:
                await d.insert_voids(tx, batch)
            written = await d.upsert_sales(tx, batch, newer, committed_at) if newer else {}
            replaced = [sid for sid in written if sid in existing]
            if replaced:
                await d.delete_children(tx, store, replaced)
            if written:
                await d.insert_children(tx, store, [latest[sid] for sid in written])
            voided = sum(
                1
                for sid, is_voided in written.items()
                if is_voided and not (sid in existing and existing[sid][1])
            )
            others = [sid for sid in void_ids if sid not in written and sid in existing]
            if others:
                voided += await d.void_existing(tx, store, others)
            triggers = await d.insert_triggers(tx, batch) if batch.triggers else 0
            outcome = CommitOutcome(
                batch_id=batch.batch_id,
                inserted=len(written) - len(replaced),
                updated=len(replaced),
                unchanged=len(latest) - len(written) + superseded,
                voided=voided,
                triggers=triggers,
            )
            await d.finish_batch(tx, batch, _JSON.encode(outcome).decode(), committed_at)
        return outcome

    async def deliver_due_triggers(self, now: datetime, limit: int = 1000) -> list[TriggerEvent]:
        """Move due outbox events to trigger_events once; cancel those of voided sales."""
        if now.tzinfo is None:
            raise ValueError("naive datetime: sinks store aware UTC instants only")
        d, q = self._d, self._q
        at = d.param(now)
        async with self._write("deliver_due_triggers") as tx:
            rows = await d.fetch(tx, q.due, (at, limit))
            deliver = [r for r in rows if not r[-1]]
            cancel = [r[0] for r in rows if r[-1]]
            if deliver:
                ids = d.ids(r[0] for r in deliver)
                await d.execute(tx, q.fire, (at, ids))
                await d.execute(tx, q.mark_outbox, (at, False, ids))
            if cancel:
                await d.execute(tx, q.mark_outbox, (at, True, d.ids(cancel)))
        return [trigger_event(r) for r in deliver]

    async def _ids(self, table: str, store: str, ids: Collection[str]) -> set[str]:
        if not ids:
            return set()
        async with self._read(f"existing {table}") as tx:
            rows = await self._d.fetch(tx, self._q.existing[table], (store, self._d.ids(ids)))
        return {r[0] for r in rows}

    async def existing_customers(self, store: str, ids: Collection[str]) -> set[str]:
        """Which of `ids` are customers of `store`."""
        return await self._ids("customers", store, ids)

    async def existing_sales(self, store: str, ids: Collection[str]) -> set[str]:
        """Which of `ids` are committed sales of `store`."""
        return await self._ids("sales", store, ids)

    async def _entity(self, table: str, store: str, entity_id: str) -> dict[str, Any] | None:
        async with self._read(f"get {table}") as tx:
            rows = await self._d.fetch(tx, self._q.entity[table], (store, entity_id))
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
        d, q, key = self._d, self._q, (store, sale_id)
        async with self._read("get_sale") as tx:
            head = list(await d.fetch(tx, q.sale_head, key))
            if not head:
                return None
            lines = await d.fetch(tx, q.sale_lines, key)
            tenders = await d.fetch(tx, q.sale_tenders, key)
        version, voided, voided_at, linked, warning, committed_at, batch_id, body = head[0]
        out = _DICT_DECODER.decode(body)
        out["lines"] = [line_dict(r) for r in lines]
        out["tenders"] = [tender_dict(r) for r in tenders]
        out.update(
            record=_DICT_DECODER.decode(body),
            version=version,
            voided=bool(voided),
            voided_at=jsonable(voided_at),
            customer_linked=bool(linked),
            warnings=warnings_of(warning),
            committed_at=jsonable(committed_at),
            batch_id=batch_id,
        )
        return out

    def _log_where(self, store: str, day: date, customer: str | None) -> Where:
        w = Where(self._d)
        w.add("store = {}", store)
        w.add("business_date = {}", self._d.param(day))
        if customer is not None:
            w.add("customer_id = {}", customer)
        return w

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
        w = self._log_where(store, day, customer)
        if after is not None:
            at = self._d.param(datetime.fromisoformat(after[0]))
            w.add("(occurred_at, id) > ({}, {})", at, after[1])
        sql = f"{self._q.log}{w.sql()} ORDER BY occurred_at, id LIMIT {w.next_mark()}"
        async with self._read("sales_log") as tx:
            rows = await self._d.fetch(tx, sql, (*w.args, limit))
        out = []
        for r in rows:
            item = {
                k: jsonable(bool(v) if k in BOOL_COLS and v is not None else v)
                for k, v in zip(SALE_LOG_COLUMNS, r, strict=True)
            }
            item["warnings"] = warnings_of(item.pop("warning"))
            out.append(item)
        return out

    async def count_sales(self, store: str, day: date, *, customer: str | None = None) -> int:
        """How many sales the Sales Log of `day` (with its filter) holds."""
        w = self._log_where(store, day, customer)
        async with self._read("count_sales") as tx:
            rows = list(await self._d.fetch(tx, self._q.count + w.sql(), w.args))
        return int(rows[0][0])

    async def sales_report(self, store: str, start: date, end: date) -> list[ReportRow]:
        """Per (business date, currency): count, gross, returns, net; voided count."""
        async with self._read("sales_report") as tx:
            return await self._d.sales_report(tx, store, start, end)

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
        w = Where(self._d)
        w.add("o.store = {}", store)
        if state == "due":
            if now is None:
                raise ValueError("the `due` state needs `now`")
            w.add(_STATE_WHERE[state], self._d.param(now))
        elif state is not None:
            w.add(_STATE_WHERE[state])
        if trigger is not None:
            w.add("o.trigger_name = {}", trigger)
        if before is not None:
            at = self._d.param(datetime.fromisoformat(before[0]))
            w.add("(o.created_at, o.event_id) < ({}, {})", at, before[1])
        sql = (
            f"{self._q.triggers}{w.sql()}"
            f" ORDER BY o.created_at DESC, o.event_id DESC LIMIT {w.next_mark()}"
        )
        async with self._read("list_triggers") as tx:
            rows = await self._d.fetch(tx, sql, (*w.args, limit))
        out = []
        for r in rows:
            item = {k: jsonable(v) for k, v in zip(TRIGGER_COLUMNS, r, strict=False)}
            item["trigger"] = item.pop("trigger_name")
            item["currency"] = r[-3]
            delivered_at, cancelled = r[-2], r[-1]
            item["delivered_at"] = jsonable(delivered_at)
            item["status"] = (
                "cancelled" if cancelled else "delivered" if delivered_at else "pending"
            )
            out.append(item)
        return out

    async def counts(self) -> dict[str, int]:
        """Row counts per table."""
        async with self._read("counts") as tx:
            rows = list(await self._d.fetch(tx, self._q.counts, ()))
        return {t: int(v) for t, v in zip(TABLES, rows[0], strict=True)}
